"""Rewrite the source or destination IPv4 address of every packet of one NFQUEUE.

    python rewrite.py --queue Q (--src OLD=NEW | --dst OLD=NEW)

Used by hooks.py (docs/platform.md §6). Checksums are recomputed in full (packets must be
final: run on links without TSO/GSO). Prints ``ready``; on SIGTERM a JSON line with the
number of packets rewritten and passed unchanged.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys

from mangle import csum
from netfilterqueue import NetfilterQueue


def rewrite(ip: bytes, field: str, old: bytes, new: bytes) -> bytes | None:
    off = 12 if field == "src" else 16
    if ip[off:off + 4] != old:
        return None
    ihl = (ip[0] & 15) * 4
    iph = bytearray(ip[:ihl])
    iph[off:off + 4] = new
    iph[10:12] = b"\0\0"
    iph[10:12] = struct.pack("!H", csum(bytes(iph)))
    seg = bytearray(ip[ihl:])
    if iph[9] == 6:
        seg[16:18] = b"\0\0"
        pseudo = bytes(iph[12:20]) + struct.pack("!BBH", 0, 6, len(seg))
        seg[16:18] = struct.pack("!H", csum(pseudo + bytes(seg)))
    return bytes(iph) + bytes(seg)


def _stop(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queue", type=int, required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--src")
    g.add_argument("--dst")
    a = ap.parse_args(argv)
    field = "src" if a.src else "dst"
    old, new = (socket.inet_aton(x) for x in (a.src or a.dst).split("="))
    counts = {"rewritten": 0, "unchanged": 0}

    def cb(pkt) -> None:
        out = rewrite(pkt.get_payload(), field, old, new)
        if out is None:
            counts["unchanged"] += 1
        else:
            counts["rewritten"] += 1
            pkt.set_payload(out)
        pkt.accept()

    q = NetfilterQueue()
    q.bind(a.queue, cb)
    signal.signal(signal.SIGTERM, _stop)
    print("ready", flush=True)
    try:
        q.run()
    except KeyboardInterrupt:
        pass
    q.unbind()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
