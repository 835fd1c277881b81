"""The peer's client: bulk connections in parallel, each one record on stdout; and a probe
that times TCP connects (one round trip each)."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .flow import Registry, SendPlan, Side, Terminated, emit, shutdown
from .pattern import Stream
from .protocol import CLIENT_RESET, HOLD, NO_HASH, REPORT, SERVER_CLOSE, Request, mode_name
from .sockinfo import abort, addr_str, new_socket, socket_facts

__all__ = ["ClientOptions", "client_conn", "run_clients", "probe"]


@dataclass
class ClientOptions:
    """One client run: ``conns`` connections to ``addr``:``port`` in parallel (seeds
    ``seed + i``, started ``stagger`` s apart), each sending ``upload`` and asking for a
    download of at most ``download`` bytes / ``download_s`` s, paced at ``download_rate``
    bytes/s. ``flags``: :mod:`netns.peer.protocol` bits. ``events``: print a ``connected``
    event per connection; ``trace``: path of each connection's read trace (``{conn}``,
    ``{seed}`` filled in); ``progress``: seconds between progress events (0: none)."""

    addr: str
    port: int
    conns: int = 1
    mptcp: bool = False
    bind: str | None = None
    upload: SendPlan = field(default_factory=SendPlan)
    download: int = 0
    download_s: float = 0.0
    download_rate: float = 0.0
    flags: int = 0
    seed: int = 1
    timeout: float = 60.0
    events: bool = False
    trace: str | None = None
    progress: float = 0.0
    stagger: float = 0.0

    def request(self, seed: int) -> Request:
        return Request(seed, self.download, self.download_s, self.download_rate, self.flags)


def client_conn(o: ClientOptions, conn: int, seed: int,
                live: Registry | None = None) -> dict[str, Any]:
    """One bulk connection from start to close; returns its record."""
    live = live or Registry()
    side = Side(Stream(seed, "up"), Stream(seed, "down"), hashing=not o.flags & NO_HASH,
                trace=o.trace is not None)
    sock = new_socket(o.addr, o.mptcp)
    sock.settimeout(o.timeout)
    side.sock = sock
    live.add(side)
    connect_s, local, reply = None, "", None
    try:
        if o.bind:
            sock.bind((o.bind, 0))
        sock.connect((o.addr, o.port))
        connect_s = round(time.monotonic() - side.t0, 6)
        local = addr_str(sock.getsockname())
        if o.events:
            emit({"event": "connected", "conn": conn, "seed": seed, "t": time.monotonic(),
                  "local": local})
        sock.sendall(o.request(seed).pack())
        reply = _transfer(sock, o, side)
    except OSError as exc:
        side.fail(exc)
    finally:
        live.remove(side)
    facts = socket_facts(sock, o.mptcp)
    if o.flags & CLIENT_RESET and side.error is None:
        abort(sock)
    else:
        sock.close()
    if o.trace:
        side.write_trace(o.trace.format(conn=conn, seed=seed))
    rec = side.record("client", conn, facts, local=local, peer=addr_str((o.addr, o.port)),
                      mode=mode_name(o.flags), seed=seed, connect_s=connect_s)
    if o.flags & REPORT:
        rec["server"] = reply
    return rec


def _transfer(sock: socket.socket, o: ClientOptions, side: Side) -> dict | None:
    """The transfer after the request; returns the server's report (``report`` flag)."""
    if o.flags & CLIENT_RESET:
        side.send(sock, o.upload)
        return None
    if o.flags & REPORT:
        side.send(sock, o.upload)
        sock.shutdown(socket.SHUT_WR)
        return _read_report(sock, side)
    def sender() -> None:
        try:
            side.send(sock, o.upload)
            if o.flags & SERVER_CLOSE or (o.flags & HOLD and side.sent == 0):
                side.eof.wait(o.timeout)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            side.fail(exc)
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        side.recv_to_eof(sock)
    except OSError as exc:
        side.fail(exc)
        shutdown(sock)  # the connection failed: the sender stops too
    th.join()
    return None


def _read_report(sock: socket.socket, side: Side) -> dict | None:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    side.eof.set()
    data = b"".join(parts)
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        side.error = side.error or "bad-report"
        return None


def run_clients(o: ClientOptions) -> int:
    """Run ``o.conns`` connections in parallel, printing each record as it ends; 0 if
    none failed (error or a byte off the pattern). SIGTERM ends them (``terminated``)."""
    live = Registry()
    results: list[dict[str, Any]] = []

    def one(i: int) -> None:
        rec = client_conn(o, i, (o.seed + i) & 0xFFFFFFFF, live)
        results.append(rec)
        emit(rec)

    if o.progress:
        live.report_every(o.progress)
    threads = []
    try:
        for i in range(o.conns):
            if i and o.stagger:
                time.sleep(o.stagger)
            th = threading.Thread(target=one, args=(i,), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
    except Terminated:
        live.stop_all()
        for th in threads:
            th.join(2.0)
        return 1
    live.stopping = True
    return 0 if all(r["error"] is None and r["pattern_ok"] for r in results) else 1


def probe(addr: str, port: int, count: int, bind: str | None, interval: float,
          timeout: float) -> int:
    """Time ``count`` TCP connects (SYN -> SYN/ACK: one RTT each); print them as JSON."""
    times: list[float | None] = []
    for _ in range(count):
        sock = new_socket(addr, False)
        sock.settimeout(timeout)
        try:
            if bind:
                sock.bind((bind, 0))
            t0 = time.perf_counter()
            sock.connect((addr, port))
            times.append(round(time.perf_counter() - t0, 6))
        except OSError:
            times.append(None)
        finally:
            sock.close()
        time.sleep(interval)
    emit({"event": "rtt", "connect_s": times})
    return 0 if all(t is not None for t in times) else 1
