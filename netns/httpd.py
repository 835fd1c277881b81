"""Tiny threaded HTTP/1.1 server on plain TCP sockets (MPTCP under ``mptcpize run``).

    python -m netns.httpd --port 8080 [--bind ADDR]

- ``GET /blob?size=N&seed=S`` answers N bytes of the deterministic stream ``(S, "down")`` of
  :mod:`netns.peer` (so ``peer.expected_sha(S, N, "down")`` is its hash).
- ``PUT /upload`` (``curl -T file``; Content-Length or chunked body) reads the body and answers
  JSON ``{"bytes": n, "sha256": hex}``.

stdout: ``{"event": "listening", "port": P}`` once bound, then one JSON line per request:
``method``, ``path``, ``status``, ``bytes`` (body bytes sent or received), ``sha256`` (of that
body), ``elapsed`` (s), ``peer``, and the accepted socket's ``mptcp_socket``, ``is_mptcp``,
``fallback`` and ``mptcp_info`` (see :func:`netns.peer.socket_facts`), read while the
request is handled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

from .peer import socket_facts, stream_chunks

__all__ = ["Handler", "Server", "DualStackServer", "main"]

_lock = threading.Lock()
READ_CHUNK = 262144


def _emit(obj: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def _host(addr: str) -> str:
    """``::ffff:10.0.1.1`` -> ``10.0.1.1`` (v4-mapped peers of the dual-stack socket)."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer for an IPv4 address; ``mptcp_listener`` set after bind."""

    daemon_threads = True
    request_queue_size = 128
    mptcp_listener = False


class DualStackServer(Server):
    """Server on an AF_INET6 socket that also accepts IPv4 (v4-mapped)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    """GET /blob and PUT /upload; one JSON log line per request on stdout."""

    protocol_version = "HTTP/1.1"
    server_version = "mpx-httpd/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: JSON lines only
        pass

    def _log(self, t0: float, status: int, nbytes: int, sha: str) -> None:
        facts = socket_facts(self.connection, getattr(self.server, "mptcp_listener", False))
        _emit({"method": self.command, "path": self.path, "status": status, "bytes": nbytes,
               "sha256": sha, "elapsed": round(time.monotonic() - t0, 6),
               "peer": _host(self.client_address[0]), **facts})

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        t0 = time.monotonic()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/blob":
            self._reply(404, b'{"error": "not found"}\n')
            self._log(t0, 404, 0, "")
            return
        try:
            size = int(query.get("size", ["0"])[0])
            seed = int(query.get("seed", ["1"])[0])
        except ValueError:
            self._reply(400, b'{"error": "bad size or seed"}\n')
            self._log(t0, 400, 0, "")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        h = hashlib.sha256()
        sent = 0
        for block in stream_chunks(seed, size, "down"):
            self.wfile.write(block)
            h.update(block)
            sent += len(block)
        self._log(t0, 200, sent, h.hexdigest())

    def _body_chunks(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, READ_CHUNK))
                    if not data:
                        return
                    left -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            data = self.rfile.read(min(left, READ_CHUNK))
            if not data:
                return
            left -= len(data)
            yield data

    def do_PUT(self) -> None:
        t0 = time.monotonic()
        if urlsplit(self.path).path != "/upload":
            self._reply(404, b'{"error": "not found"}\n')
            self._log(t0, 404, 0, "")
            return
        h = hashlib.sha256()
        n = 0
        for data in self._body_chunks():
            h.update(data)
            n += len(data)
        self._log(t0, 200, n, h.hexdigest())
        self._reply(200, json.dumps({"bytes": n, "sha256": h.hexdigest()}).encode() + b"\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.httpd", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--bind", default="::", help="listen address (default :: dual stack)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = (Server if "." in a.bind else DualStackServer)((a.bind, a.port), Handler)
    proto = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    server.mptcp_listener = proto == 262
    _emit({"event": "listening", "port": server.server_address[1],
           "mptcp": server.mptcp_listener, "pid": os.getpid()})
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
