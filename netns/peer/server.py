"""The peer's server: listeners, the request/response loop, one thread per bulk connection.

Every listener (plain TCP or ``IPPROTO_MPTCP``) feeds one selector loop that reads the
first byte of each new connection: ``R`` connections stay in the loop (one byte answered,
then held until the client closes: thousands of idle connections cost no thread), ``B``
connections get a thread that reads the rest of the request and runs the transfer. Every
bulk connection ends with one JSON record on stdout (:meth:`Side.record`).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from .flow import Registry, SendPlan, Side, emit, recv_exact, shutdown
from .pattern import Stream
from .protocol import (
    HOLD,
    KIND_BULK,
    KIND_RR,
    NO_HASH,
    REPORT,
    REQUEST,
    SERVER_CLOSE,
    SERVER_RESET,
    Request,
    mode_name,
)
from .sockinfo import IPPROTO_MPTCP, abort, addr_str, raise_nofile, socket_facts

__all__ = ["ServerOptions", "serve"]


@dataclass
class ServerOptions:
    """``listen``: (port, mptcp) pairs; ``bind``: listen address (None: ``::`` dual
    stack); ``count``: exit after that many bulk connections; ``timeout``: socket timeout,
    s; ``trace``: path of each connection's read trace (``{conn}`` and ``{seed}`` are
    filled in); ``progress``: seconds between progress events (0: none)."""

    listen: list[tuple[int, bool]] = field(default_factory=list)
    bind: str | None = None
    count: int | None = None
    ready_file: str | None = None
    timeout: float = 60.0
    trace: str | None = None
    progress: float = 0.0


def _listener(bind: str | None, port: int, mptcp: bool) -> socket.socket:
    family = socket.AF_INET if bind and "." in bind else socket.AF_INET6
    ls = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind((bind or "::", port))
    ls.listen(65535)
    ls.setblocking(False)
    return ls


class Server:
    def __init__(self, opts: ServerOptions) -> None:
        self.opts = opts
        self.live = Registry()
        self.sel = selectors.DefaultSelector()
        self.threads: list[threading.Thread] = []
        self.bulk = 0        # bulk connections accepted
        self.done = 0        # bulk connections finished
        self._done_cv = threading.Condition()

    # ------------------------------------------------------------------ set-up
    def open(self) -> None:
        ports = []
        for port, mptcp in self.opts.listen:
            ls = _listener(self.opts.bind, port, mptcp)
            is_mptcp = ls.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_MPTCP
            self.sel.register(ls, selectors.EVENT_READ, ("listen", is_mptcp))
            ports.append((ls.getsockname()[1], is_mptcp))
        emit({"event": "listening", "port": ports[0][0], "mptcp": ports[0][1],
              "ports": ports, "pid": os.getpid()})
        if self.opts.ready_file:
            with open(self.opts.ready_file, "w") as f:
                f.write(str(ports[0][0]))
        if self.opts.progress:
            self.live.report_every(self.opts.progress)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        while self.opts.count is None or self.bulk < self.opts.count:
            for key, _ in self.sel.select():
                kind, mptcp = key.data
                if kind == "listen":
                    self._accept(key.fileobj, mptcp)
                else:
                    self._readable(key.fileobj, kind, mptcp)
        with self._done_cv:
            self._done_cv.wait_for(lambda: self.done >= self.bulk)

    def _accept(self, ls: socket.socket, mptcp: bool) -> None:
        while True:
            try:
                sock, _ = ls.accept()
            except OSError:  # BlockingIOError: nothing more; other errors: try later
                return
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, ("new", mptcp))

    def _readable(self, sock: socket.socket, kind: str, mptcp: bool) -> None:
        try:
            data = sock.recv(4096 if kind == "idle" else 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(sock)
            sock.close()
        elif kind == "new" and data == KIND_BULK:
            self.sel.unregister(sock)
            self._start_bulk(sock, mptcp)
        elif kind == "new":
            self._answer(sock, data, mptcp)

    def _answer(self, sock: socket.socket, data: bytes, mptcp: bool) -> None:
        """A request/response connection: ``r`` back, then hold it."""
        try:
            if data != KIND_RR:
                raise ConnectionError("unknown request")
            sock.send(b"r")
        except OSError:
            self.sel.unregister(sock)
            sock.close()
            return
        self.sel.modify(sock, selectors.EVENT_READ, ("idle", mptcp))

    def _start_bulk(self, sock: socket.socket, mptcp: bool) -> None:
        conn = self.bulk
        self.bulk += 1
        th = threading.Thread(target=self._bulk, args=(sock, conn, mptcp), daemon=True)
        th.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [th]

    def _bulk(self, sock: socket.socket, conn: int, mptcp: bool) -> None:
        try:
            emit(serve_bulk(sock, conn, mptcp, self.opts, self.live))
        finally:
            with self._done_cv:
                self.done += 1
                self._done_cv.notify_all()

    def stop(self, grace: float = 2.0) -> None:
        """End every connection in progress; their records are written."""
        self.live.stop_all()
        for th in list(self.threads):
            th.join(grace)


# ---------------------------------------------------------------------- one bulk connection

def serve_bulk(sock: socket.socket, conn: int, listener_mptcp: bool, opts: ServerOptions,
               live: Registry) -> dict[str, Any]:
    """Read the rest of the request, run the transfer, close; returns the record."""
    sock.setblocking(True)
    sock.settimeout(opts.timeout)
    local, peer = addr_str(sock.getsockname()), _peer(sock)
    req, side = Request(seed=0), Side(Stream(0, "down"), Stream(0, "up"))
    facts = socket_facts(sock, listener_mptcp)
    try:
        rest = recv_exact(sock, REQUEST.size - 1)
        req = Request.unpack(KIND_BULK + rest)
    except ValueError:
        side.error = "short-header"
    except OSError as exc:
        side.fail(exc)
    else:
        side = Side(Stream(req.seed, "down"), Stream(req.seed, "up"),
                    hashing=not req.flags & NO_HASH, trace=opts.trace is not None)
        side.sock = sock
        live.add(side)
        try:
            facts = _transfer(sock, req, side, listener_mptcp)
        finally:
            live.remove(side)
    if req.flags & SERVER_RESET:
        abort(sock)
    else:
        sock.close()
    if opts.trace:
        side.write_trace(opts.trace.format(conn=conn, seed=req.seed))
    return side.record("server", conn, facts, local=local, peer=peer,
                       mode=mode_name(req.flags), seed=req.seed)


def _peer(sock: socket.socket) -> str:
    try:
        return addr_str(sock.getpeername())
    except OSError:
        return ""


def _transfer(sock: socket.socket, req: Request, side: Side, mptcp: bool) -> dict[str, Any]:
    """The transfer of one bulk request; returns the socket's facts (read before the
    close, or at the failure)."""
    plan = SendPlan(req.download, req.download_s, req.rate)
    try:
        if req.flags & (SERVER_CLOSE | SERVER_RESET):
            side.send(sock, plan)
        elif req.flags & REPORT:
            side.recv_to_eof(sock)
            facts = socket_facts(sock, mptcp)
            reply = side.record("server", 0, facts, seed=req.seed)
            sock.sendall(json.dumps(reply).encode() + b"\n")
            return facts
        else:
            _both_ways(sock, side, plan, hold=bool(req.flags & HOLD))
    except OSError as exc:
        side.fail(exc)
    return socket_facts(sock, mptcp)


def _both_ways(sock: socket.socket, side: Side, plan: SendPlan, hold: bool) -> None:
    """Send (then half-close) in a thread while reading to the end of the upload."""
    def sender() -> None:
        try:
            side.send(sock, plan)
            if hold and side.sent == 0:
                side.eof.wait()
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            side.fail(exc)
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        side.recv_to_eof(sock)
    except OSError:
        shutdown(sock)  # the connection failed: the sender stops too
        raise
    finally:
        th.join()


def serve(opts: ServerOptions) -> int:
    """Run the server until ``opts.count`` bulk connections are done (forever if None) or
    SIGTERM (then the connections in progress end with error ``terminated``)."""
    from .flow import Terminated
    raise_nofile()
    server = Server(opts)
    server.open()
    try:
        server.run()
    except Terminated:
        server.stop()
    return 0
