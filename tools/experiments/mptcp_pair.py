"""Both ends of a native MPTCP connection that send and receive at the same time.

    python mptcp_pair.py server --port P [--chunks N] [--gap S]
    python mptcp_pair.py client --to ADDR --port P [--chunks N] [--gap S]

Each side writes ``--chunks`` chunks of 1000 bytes (a counting pattern), ``--gap`` seconds
apart, while a thread reads what the other side sends; then it shuts down its sending side,
reads to EOF and prints one JSON line: bytes sent and received, whether the received bytes
are the other side's pattern, any socket error, and TCP_IS_MPTCP at the end (0 once the
connection has fallen back to TCP).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

IPPROTO_MPTCP = 262
TCP_IS_MPTCP = 43
CHUNK = 1000


def pattern(n: int, off: int) -> bytes:
    return bytes((off + i) % 253 for i in range(n))


def run(sock: socket.socket, chunks: int, gap: float) -> dict:
    got = bytearray()
    err: list[str] = []

    def reader() -> None:
        try:
            while True:
                b = sock.recv(65536)
                if not b:
                    return
                got.extend(b)
        except OSError as e:
            err.append(f"recv: {e.strerror}")

    t = threading.Thread(target=reader)
    t.start()
    sent = 0
    try:
        for _ in range(chunks):
            sock.sendall(pattern(CHUNK, sent))
            sent += CHUNK
            time.sleep(gap)
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        err.append(f"send: {e.strerror}")
    t.join(30)
    try:
        is_mptcp = sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP)
    except OSError:
        is_mptcp = None
    return {"sent": sent, "received": len(got),
            "received_intact": bytes(got) == pattern(len(got), 0), "errors": err,
            "tcp_is_mptcp_at_end": is_mptcp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=("server", "client"))
    ap.add_argument("--to", default="")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--gap", type=float, default=0.1)
    a = ap.parse_args(argv)
    if a.role == "server":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", a.port))
        ls.listen(1)
        print(json.dumps({"event": "listening"}), flush=True)
        s, _ = ls.accept()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((a.to, a.port))
        print(json.dumps({"event": "connected"}), flush=True)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(json.dumps({"event": "done", "role": a.role, **run(s, a.chunks, a.gap)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
