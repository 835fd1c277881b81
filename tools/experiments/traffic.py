"""Minimal TCP traffic for the experiments: a sink and a source.

    python traffic.py sink --port P [--bind ADDR] [--rcvbuf N] [--read-after S] [--mptcp]
    python traffic.py source --to ADDR --port P --bytes N [--chunk C] [--gap S] [--bind ADDR]
                             [--mptcp] [--hold S] [--orphan]

The sink accepts one connection, optionally sleeps ``--read-after`` seconds before reading
(to let its receive window close), reads to EOF and prints one JSON line with the byte count
and SHA-256. The source connects, writes ``--bytes`` of a counting pattern in ``--chunk``
writes ``--gap`` seconds apart, keeps the socket open ``--hold`` seconds, and prints one
JSON line (bytes written, error if any). ``--mptcp`` uses IPPROTO_MPTCP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import time

IPPROTO_MPTCP = 262


def pattern(n: int, off: int = 0) -> bytes:
    return bytes((off + i) % 251 for i in range(n))


def sock(family: int, mptcp: bool) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def sink(a) -> int:
    s = sock(family_of(a.bind), a.mptcp)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    s.bind((a.bind, a.port))
    s.listen(1)
    print(json.dumps({"event": "listening"}), flush=True)
    c, peer = s.accept()
    t0 = time.monotonic()
    if a.read_after:
        time.sleep(a.read_after)
    t_read = time.monotonic()
    h, n = hashlib.sha256(), 0
    err = None
    try:
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
    except OSError as e:
        err = e.strerror
    print(json.dumps({"event": "done", "bytes": n, "sha256": h.hexdigest(), "error": err,
                      "read_started": t_read - t0, "elapsed": time.monotonic() - t0}),
          flush=True)
    return 0


def source(a) -> int:
    s = sock(family_of(a.to), a.mptcp)
    if a.bind:
        s.bind((a.bind, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect((a.to, a.port))
    print(json.dumps({"event": "connected", "local": s.getsockname()[:2]}), flush=True)
    sent, err = 0, None
    h = hashlib.sha256()
    if a.orphan:
        # fill the send buffer without blocking, then close: the socket becomes an orphan
        s.setblocking(False)
        try:
            while sent < a.bytes:
                sent += s.send(pattern(min(a.chunk, a.bytes - sent), sent))
        except BlockingIOError:
            pass
        if a.hold:
            time.sleep(a.hold)
        s.close()
        print(json.dumps({"event": "closed", "bytes": sent}), flush=True)
        return 0
    try:
        while sent < a.bytes:
            b = pattern(min(a.chunk, a.bytes - sent), sent)
            s.sendall(b)
            h.update(b)
            sent += len(b)
            if a.gap:
                time.sleep(a.gap)
        if a.hold:
            time.sleep(a.hold)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    except OSError as e:
        err = e.strerror
    print(json.dumps({"event": "done", "bytes": sent, "sha256": h.hexdigest(), "error": err}),
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("sink")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--bind", default="0.0.0.0")
    k.add_argument("--rcvbuf", type=int, default=0)
    k.add_argument("--read-after", type=float, default=0.0)
    k.add_argument("--mptcp", action="store_true")
    o = sub.add_parser("source")
    o.add_argument("--to", required=True)
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--bytes", type=int, required=True)
    o.add_argument("--chunk", type=int, default=1 << 16)
    o.add_argument("--gap", type=float, default=0.0)
    o.add_argument("--hold", type=float, default=0.0)
    o.add_argument("--bind", default="")
    o.add_argument("--mptcp", action="store_true")
    o.add_argument("--orphan", action="store_true",
                   help="write what fits without blocking, wait --hold s, close() and exit")
    a = ap.parse_args(argv)
    return sink(a) if a.cmd == "sink" else source(a)


if __name__ == "__main__":
    sys.exit(main())
