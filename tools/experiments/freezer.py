"""Cut a TCP sender off on an NFQUEUE in its own mangle OUTPUT, and answer it as a proxy
that has no path left could (experiment (h) of docs/platform.md, ``rto_revert.py``).

    python freezer.py --queue Q [--icmp] [--zero-window] [--v6]

Accepts every packet until SIGUSR1; from then on drops every segment of the sender
(the path is gone) and, per option, answers each dropped segment:

- ``--icmp``: a retransmission of the oldest unacknowledged byte (its sequence number
  is the lowest seen since the cut) gets an ICMP destination unreachable quoting it
  (IPv4 type 3 code 0 "net unreachable", IPv6 type 1 code 0 "no route"), from the
  receiver's address: the sender may revert one step of its RTO back-off (RFC 6069);
- ``--zero-window``: every segment gets an ACK from the receiver acknowledging
  nothing new (ACK = the segment's sequence number for the head, else the lowest seen)
  with a zero window and timestamps echoed.

On SIGUSR2 the path returns: with ``--zero-window`` a window update (same ACK, window
65535) is sent, with ``--icmp`` one more ICMP quoting the head (it may clock out a
retransmission at once), then everything is accepted again. Prints ``ready`` and one JSON
line per event: ``cut``, ``seg`` (each segment seen while cut: time, seq, length),
``back``, ``first_after`` (the first segment after SIGUSR2 with its delay), and at exit
a summary. Packets must be final (no GSO on the queue, TSO off on the link).
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time

from netfilterqueue import NetfilterQueue


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Segment:
    """The fields of one IPv4 or IPv6 TCP segment this script needs."""

    def __init__(self, ip: bytes) -> None:
        self.ip = ip
        self.v6 = ip[0] >> 4 == 6
        if self.v6:
            self.src, self.dst, off = ip[8:24], ip[24:40], 40
        else:
            self.src, self.dst, off = ip[12:16], ip[16:20], (ip[0] & 15) * 4
        tcp = ip[off:]
        self.off = off
        self.sport, self.dport, self.seq, self.ack = struct.unpack("!HHII", tcp[:12])
        doff = (tcp[12] >> 4) * 4
        self.flags = tcp[13]
        self.plen = len(tcp) - doff
        self.tsval = self.tsecr = None
        i = 20
        while i < doff:
            k = tcp[i]
            if k == 0:
                break
            if k == 1:
                i += 1
                continue
            ln = tcp[i + 1]
            if k == 8 and ln == 10:
                self.tsval, self.tsecr = struct.unpack("!II", tcp[i + 2:i + 10])
            i += max(ln, 2)


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, win: int,
               ts: tuple[int, int] | None) -> bytes:
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", *ts) if ts else b""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack,
                                ((20 + len(opts)) // 4) << 4, 0x10, win, 0, 0) + opts)
    v6 = len(src) == 16
    pseudo = src + dst + (struct.pack("!IxxxB", len(tcp), 6) if v6
                          else struct.pack("!BBH", 0, 6, len(tcp)))
    tcp[16:18] = struct.pack("!H", csum(pseudo + bytes(tcp)))
    return ip_packet(src, dst, 6, bytes(tcp))


def ip_packet(src: bytes, dst: bytes, proto: int, body: bytes) -> bytes:
    if len(src) == 16:
        return struct.pack("!IHBB", 6 << 28, len(body), proto, 64) + src + dst + body
    hdr = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0)
                    + src + dst)
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    return bytes(hdr) + body


def icmp_unreachable(seg: Segment) -> bytes:
    """Destination unreachable from the receiver's address to the sender, quoting
    ``seg``'s IP header and the start of its TCP header."""
    if seg.v6:
        quote = seg.ip[:seg.off + 32]
        body = bytearray(struct.pack("!BBHI", 1, 0, 0, 0) + quote)
        pseudo = seg.dst + seg.src + struct.pack("!IxxxB", len(body), 58)
        body[2:4] = struct.pack("!H", csum(pseudo + bytes(body)))
        return ip_packet(seg.dst, seg.src, 58, bytes(body))
    quote = seg.ip[:seg.off + 8]
    body = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quote)
    body[2:4] = struct.pack("!H", csum(bytes(body)))
    return ip_packet(seg.dst, seg.src, 1, bytes(body))


class Freezer:
    def __init__(self, icmp: bool, zero_window: bool) -> None:
        self.icmp, self.zero_window = icmp, zero_window
        self.cut_at: float | None = None
        self.back_at: float | None = None
        self.head: int | None = None
        self.last: Segment | None = None
        self.first_after = False
        self.n = {"dropped": 0, "icmp": 0, "zero_acks": 0}
        self.raw = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
                    6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)}

    def send(self, pkt: bytes, dst: bytes) -> None:
        v6 = len(dst) == 16
        self.raw[6 if v6 else 4].sendto(pkt, (socket.inet_ntop(
            socket.AF_INET6 if v6 else socket.AF_INET, dst), 0))

    def answer(self, seg: Segment, win: int) -> None:
        ack_of = seg.seq if self.head is None else min(self.head, seg.seq)
        ts = (seg.tsecr, seg.tsval) if seg.tsval is not None else None
        self.send(tcp_packet(seg.dst, seg.src, seg.dport, seg.sport, seg.ack, ack_of, win, ts),
                  seg.src)

    def cut(self) -> None:
        self.cut_at = time.monotonic()
        print(json.dumps({"event": "cut"}), flush=True)

    def back(self) -> None:
        self.back_at = time.monotonic()
        seg = self.last
        if seg is not None:
            if self.zero_window:
                self.answer(seg, 65535)
            if self.icmp and self.head is not None and seg.seq == self.head:
                self.send(icmp_unreachable(seg), seg.src)
                self.n["icmp"] += 1
        self.cut_at = None
        print(json.dumps({"event": "back"}), flush=True)

    def __call__(self, pkt) -> None:
        now = time.monotonic()
        seg = Segment(pkt.get_payload())
        if self.cut_at is None:
            if self.back_at is not None and not self.first_after:
                self.first_after = True
                print(json.dumps({"event": "first_after", "delay_s": round(now - self.back_at, 4),
                                  "seq": seg.seq, "len": seg.plen}), flush=True)
            pkt.accept()
            return
        pkt.drop()
        self.n["dropped"] += 1
        if seg.plen and (self.head is None or seg.seq < self.head):
            self.head = seg.seq
        self.last = seg if seg.plen else (self.last or seg)
        print(json.dumps({"event": "seg", "t": round(now - self.cut_at, 4), "seq": seg.seq,
                          "len": seg.plen}), flush=True)
        if self.zero_window:
            self.answer(seg, 0)
            self.n["zero_acks"] += 1
        if self.icmp and seg.plen and seg.seq == self.head:
            self.send(icmp_unreachable(seg), seg.src)
            self.n["icmp"] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--icmp", action="store_true")
    ap.add_argument("--zero-window", action="store_true")
    a = ap.parse_args(argv)
    f = Freezer(a.icmp, a.zero_window)
    q = NetfilterQueue()
    q.bind(a.queue, f)
    signal.signal(signal.SIGUSR1, lambda *_: f.cut())
    signal.signal(signal.SIGUSR2, lambda *_: f.back())

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    fd = q.get_fd()
    try:
        while True:  # (select, not a blocking run(): signals are handled at once)
            if select.select([fd], [], [], 0.5)[0]:
                q.run(block=False)
    except KeyboardInterrupt:
        pass
    q.unbind()
    print(json.dumps({"event": "summary", **f.n}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
