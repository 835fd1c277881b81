"""Rewrite one chosen segment of a native MPTCP connection on an NFQUEUE (experiment (e)).

    python mangle.py --queue Q --action A [--nth N] [--only-src ADDR]

Accepts every packet, except the N-th one that qualifies for the action, which it rewrites:

- ``strip-dss``: a data segment (payload, no MP_CAPABLE): its DSS option becomes NOPs;
- ``dss-dll0``: a pure ACK carrying a DSS: the DSS becomes DATA_ACK (kept) + a mapping with
  data-level length 0 (32-bit DSN 0, subflow seq 0);
- ``mp-fail``: a pure ACK carrying a DSS: the DSS becomes an MP_FAIL whose DSN is the DSS's
  DATA_ACK (RFC 8684 §3.7 layout: 1e 0c 60 00 + 64-bit DSN);
- ``bad-synack-hmac``: a SYN/ACK with MP_JOIN: one bit of its truncated HMAC is flipped;
- ``bad-ack-hmac``: an ACK with the 24-byte MP_JOIN: one bit of its HMAC is flipped.

IPv4 only, packets must be final (no GSO, checksums complete: run without NFQA_CFG_F_GSO and
turn TSO/GSO off on the link). Prints ``ready``, then one JSON line per rewritten packet, and
on SIGTERM a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys

from netfilterqueue import NetfilterQueue


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def options(raw: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(raw):
        k = raw[i]
        if k == 0:
            break
        if k == 1:
            out.append((1, b"\x01"))
            i += 1
            continue
        ln = raw[i + 1]
        out.append((k, raw[i:i + ln]))
        i += ln
    return out


def rebuild(ip: bytes, new_opts: bytes) -> bytes:
    ihl = (ip[0] & 15) * 4
    tcp = ip[ihl:]
    doff = (tcp[12] >> 4) * 4
    new_opts += b"\x01" * (-len(new_opts) % 4)
    if len(new_opts) > 40:
        raise ValueError("options do not fit")
    hdr = bytearray(tcp[:20])
    hdr[12] = ((20 + len(new_opts)) // 4) << 4 | (hdr[12] & 15)
    hdr[16:18] = b"\0\0"
    seg = bytes(hdr) + new_opts + tcp[doff:]
    iph = bytearray(ip[:ihl])
    iph[2:4] = struct.pack("!H", ihl + len(seg))
    iph[10:12] = b"\0\0"
    iph[10:12] = struct.pack("!H", csum(bytes(iph)))
    pseudo = bytes(iph[12:20]) + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(pseudo + seg)
    return bytes(iph) + seg[:16] + struct.pack("!H", c) + seg[18:]


def is_mptcp(opt: bytes, subtype: int) -> bool:
    return opt[0] == 30 and len(opt) > 2 and opt[2] >> 4 == subtype


class Mangler:
    def __init__(self, action: str, nth: int, only_src: str | None) -> None:
        self.action, self.nth, self.only_src = action, nth, only_src
        self.seen = 0
        self.done: list[dict] = []

    def qualifies(self, ip: bytes) -> tuple[bool, list]:
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        if self.only_src and socket.inet_ntoa(ip[12:16]) != self.only_src:
            return False, []
        doff = (tcp[12] >> 4) * 4
        payload = struct.unpack("!H", ip[2:4])[0] - ihl - doff
        flags = tcp[13]
        opts = options(tcp[20:doff])
        has_dss = any(is_mptcp(o, 2) for _, o in opts)
        has_mpc = any(is_mptcp(o, 0) for _, o in opts)
        mpj = [o for _, o in opts if is_mptcp(o, 1)]
        if self.action == "bad-synack-hmac":
            return flags & 0x12 == 0x12 and any(len(o) == 16 for o in mpj), opts
        if self.action == "bad-ack-hmac":
            return flags & 0x12 == 0x10 and any(len(o) == 24 for o in mpj), opts
        if flags & 0x07:  # SYN, RST, FIN
            return False, opts
        if self.action == "strip-dss":
            return payload > 0 and has_dss and not has_mpc, opts
        return payload == 0 and flags == 0x10 and has_dss, opts

    def rewrite(self, ip: bytes, opts: list) -> tuple[bytes, dict]:
        out, note = b"", {}
        for k, o in opts:
            if self.action in ("bad-synack-hmac", "bad-ack-hmac") and is_mptcp(o, 1):
                flipped = bytearray(o)
                flipped[4] ^= 0x01
                note["mp_join_before"], note["mp_join_after"] = o.hex(), bytes(flipped).hex()
                out += bytes(flipped)
                continue
            if not is_mptcp(o, 2):
                out += o
                continue
            flags = o[3]
            note["dss_before"] = o.hex()
            ack = b""
            if flags & 0x01:
                ack = o[4:12] if flags & 0x02 else o[4:8]
            if self.action == "strip-dss":
                out += b"\x01" * len(o)
            elif self.action == "dss-dll0":
                fl = (flags & 0x03) | 0x04  # keep A/a, add M with a 32-bit DSN
                body = ack + struct.pack("!IIH", 0, 0, 0)
                new = bytes([30, 4 + len(body), 0x20, fl]) + body
                out += new
                note["dss_after"] = new.hex()
            elif self.action == "mp-fail":
                dsn = int.from_bytes(ack, "big") if ack else 0
                new = bytes([30, 12, 0x60, 0]) + struct.pack("!Q", dsn)
                out += new
                note["mp_fail"] = new.hex()
        return rebuild(ip, out), note

    def __call__(self, pkt) -> None:
        ip = pkt.get_payload()
        ok, opts = self.qualifies(ip)
        if ok:
            self.seen += 1
            if self.seen == self.nth:
                new, note = self.rewrite(ip, opts)
                pkt.set_payload(new)
                ihl = (ip[0] & 15) * 4
                seq = struct.unpack("!I", ip[ihl + 4:ihl + 8])[0]
                note.update({"action": self.action, "seq": seq,
                             "src": socket.inet_ntoa(ip[12:16])})
                self.done.append(note)
                print(json.dumps({"event": "rewritten", **note}), flush=True)
        pkt.accept()


def _stop(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--action", choices=("strip-dss", "dss-dll0", "mp-fail", "bad-synack-hmac",
                                            "bad-ack-hmac"), required=True)
    ap.add_argument("--nth", type=int, default=3)
    ap.add_argument("--only-src", default=None)
    a = ap.parse_args(argv)
    m = Mangler(a.action, a.nth, a.only_src)
    q = NetfilterQueue()
    q.bind(a.queue, m)
    signal.signal(signal.SIGTERM, _stop)
    print("ready", flush=True)
    try:
        q.run()
    except KeyboardInterrupt:
        pass
    q.unbind()
    print(json.dumps({"event": "summary", "qualifying": m.seen, "rewritten": len(m.done)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
