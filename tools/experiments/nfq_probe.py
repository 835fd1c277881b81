"""Read one NFQUEUE, record each packet's metadata, accept it unchanged.

    python nfq_probe.py --queue Q [--gso] [--seconds S]

Run inside the namespace whose rule feeds queue Q. Prints ``ready`` once bound; on SIGTERM
(or after S seconds) prints one JSON object: ``{"packets": [...]}``, one entry per packet
with the hook, the mark, the addresses and ports, the ``NFQA_SKB_INFO`` flags
(CSUMNOTREADY=1, GSO=2, CSUM_NOTVERIFIED=4), the IP length, the TCP payload length and
flags, and whether the TCP checksum field in the bytes handed over verifies
(``csum_ok``). Uses fnfqueue's C layer (the ``NFQA_SKB_INFO``
attribute is not exposed by its Python API).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from fnfqueue import ffi, lib

HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_csum_ok(pkt: bytes) -> bool | None:
    """Does the TCP checksum of this IPv4/IPv6 packet verify? None if not TCP."""
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 6:
            return None
        seg = pkt[ihl:struct.unpack("!H", pkt[2:4])[0]]
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    elif v == 6:
        if pkt[6] != 6:
            return None
        seg = pkt[40:40 + struct.unpack("!H", pkt[4:6])[0]]
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(seg), 6)
    else:
        return None
    return ones_sum(pseudo + seg) == 0xFFFF


def describe(pkt: bytes) -> dict:
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        tot = struct.unpack("!H", pkt[2:4])[0]
        t = pkt[ihl:]
    else:
        tot = 40 + struct.unpack("!H", pkt[4:6])[0]
        t = pkt[40:]
    doff = (t[12] >> 4) * 4
    if v == 4:
        src, dst = (socket.inet_ntop(socket.AF_INET, pkt[i:i + 4]) for i in (12, 16))
    else:
        src, dst = (socket.inet_ntop(socket.AF_INET6, pkt[i:i + 16]) for i in (8, 24))
    return {"src": src, "dst": dst, "ip_len": tot, "sport": struct.unpack("!H", t[0:2])[0],
            "dport": struct.unpack("!H", t[2:4])[0], "tcp_flags": t[13],
            "payload": tot - (len(pkt) - len(t)) - doff, "csum_ok": tcp_csum_ok(pkt)}


class Probe:
    def __init__(self, queue: int, gso: bool) -> None:
        self.conn = ffi.new("struct nfq_connection *")
        if lib.init_connection(self.conn) == -1:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        self.pkts = ffi.new("struct nfq_packet*[]", 64)
        self._keep = []
        for i in range(64):
            p = ffi.new("struct nfq_packet *")
            b = ffi.new("char []", 80 * 1024)
            p.buffer, p.len = b, 80 * 1024
            self._keep.append((p, b))
            self.pkts[i] = p
        self.seq = 0
        fd = self.conn.fd
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.call(lib.bind_queue, queue)
        self.call(lib.set_mode, queue, 0xFFFF, lib.NFQNL_COPY_PACKET)
        if gso:
            self.call(lib.set_flags, queue, lib.NFQA_CFG_F_GSO, lib.NFQA_CFG_F_GSO)
        self.queue = queue
        self.records: list[dict] = []

    def call(self, fn, *args) -> None:
        self.seq += 1
        if fn(self.conn, *args, 1, self.seq) == -1:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        while True:
            n = lib.receive(self.conn, self.pkts, 1)
            if n == -1:
                if ffi.errno in (errno.EAGAIN, errno.EINTR):
                    select.select([self.conn.fd], [], [], 0.1)
                    continue
                raise OSError(ffi.errno, os.strerror(ffi.errno))
            p = self.pkts[0]
            err = lib.parse_packet(p)
            if p.seq == self.seq:
                if err not in (-1, 0):
                    raise OSError(err, os.strerror(err))
                return

    def read(self) -> None:
        n = lib.receive(self.conn, self.pkts, 64)
        if n == -1:
            return
        now = time.monotonic()
        for i in range(n):
            p = self.pkts[i]
            if lib.parse_packet(p) != 0:
                continue
            a = p.attr[lib.NFQA_PAYLOAD]
            data = bytes(ffi.buffer(ffi.cast("char *", a.buffer), a.len))
            si = p.attr[lib.NFQA_SKB_INFO]
            info = 0
            if si.buffer != ffi.NULL:
                info = struct.unpack("!I", bytes(ffi.buffer(ffi.cast("char *", si.buffer), 4)))[0]
            m = p.attr[lib.NFQA_MARK]
            mark = 0
            if m.buffer != ffi.NULL:
                mark = struct.unpack("!I", bytes(ffi.buffer(ffi.cast("char *", m.buffer), 4)))[0]
            rec = {"t": now, "hook": HOOKS.get(p.hook, p.hook), "info": info, "mark": mark,
                   "queue": self.queue}
            try:
                rec.update(describe(data))
            except (IndexError, struct.error):
                rec["unparsed"] = len(data)
            self.records.append(rec)
            lib.set_verdict(self.conn, p, lib.NF_ACCEPT, 0, 0, 0)

    def unbind(self) -> None:
        try:
            self.call(lib.unbind_queue, self.queue)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--gso", action="store_true", help="set NFQA_CFG_F_GSO on the queue")
    ap.add_argument("--seconds", type=float, default=600.0)
    a = ap.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    probe = Probe(a.queue, a.gso)
    print("ready", flush=True)
    end = time.monotonic() + a.seconds
    fd = probe.conn.fd
    while not stop and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            probe.read()
    probe.unbind()
    json.dump({"packets": probe.records}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
