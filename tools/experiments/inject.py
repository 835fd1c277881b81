"""Send one hand-made IPv4 TCP segment on a raw socket, optionally with a wrong checksum.

    python inject.py --src A --dst B --dport P [--sport P] [--flags S] [--payload N | --text T]
                     [--seq N] [--ack N] [--bad-csum] [--mark M]

Prints the segment's TCP checksum as sent. A raw socket hands the kernel a finished packet
(``CHECKSUM_NONE``): this is what a frame from a real wire looks like to the receiver.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys

FLAGS = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def segment(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes,
            bad: bool, seq: int | None = None, ack: int = 0) -> bytes:
    fl = sum(FLAGS[c] for c in flags)
    if seq is None:
        seq = random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      fl, 65535, 0, 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    c = csum(pseudo + tcp)
    if bad:
        c ^= 0x0F0F
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000,
                     64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + tcp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--sport", type=int, default=40000)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--flags", default="S")
    ap.add_argument("--payload", type=int, default=0)
    ap.add_argument("--bad-csum", action="store_true")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--ack", type=int, default=0)
    ap.add_argument("--text", default=None, help="payload text (instead of --payload zeros)")
    ap.add_argument("--mark", type=int, default=0, help="SO_MARK of the raw socket")
    a = ap.parse_args(argv)
    payload = a.text.encode() if a.text is not None else bytes(a.payload)
    pkt = segment(a.src, a.dst, a.sport, a.dport, a.flags, payload, a.bad_csum, a.seq, a.ack)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    if a.mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, a.mark)
    s.sendto(pkt, (a.dst, 0))
    print(f"sent {len(pkt)} bytes, tcp checksum 0x{struct.unpack('!H', pkt[36:38])[0]:04x}"
          f"{' (wrong)' if a.bad_csum else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
