"""The peer's agent: a long-lived client that takes JSON commands on stdin and answers one
JSON line each on stdout, keeping state (held idle connections) between commands.

Operations (keyword arguments of the ``op_*`` functions):

- ``bulk``: one bulk transfer, ``direction`` "up" or "down", at most ``max_bytes`` /
  ``seconds``; every byte checked against the pattern, no hashing. An upload asks for the
  server's report (``report`` flag): the server's receive rate and facts come back in
  band. A download holds the client's direction open until it ended (``hold``); the
  server prints its record (``sent``, facts) on its stdout, matched by ``seed``.
- ``rr``: ``count`` sequential request/response exchanges (connect, ``R``, ``r``, close):
  the latencies in ms.
- ``cps``: connections per second with ``threads`` client threads for ``seconds``.
- ``hold``: open ``n`` more connections (``window`` handshakes in flight), do the 1-byte
  exchange on each and keep them; ``release`` closes them all; ``ping``: the agent's PID.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import sys
import threading
import time
from typing import Any, Callable

from .client import ClientOptions, client_conn
from .flow import SendPlan
from .protocol import HOLD, KIND_RR, NO_HASH, REPORT
from .sockinfo import brief_facts, error_name, new_socket, raise_nofile

__all__ = ["OPS", "agent", "mbps"]


def mbps(rec: dict[str, Any] | None) -> float | None:
    """Receive rate of a peer record, Mbit/s (first to last byte); None if unknown."""
    if not rec or not rec.get("recv_s"):
        return None
    return rec["received"] * 8 / rec["recv_s"] / 1e6


def op_bulk(addr: str, port: int, mptcp: bool, direction: str, max_bytes: int,
            seconds: float, timeout: float = 15.0, seed: int = 1,
            **_: Any) -> dict[str, Any]:
    up = direction == "up"
    o = ClientOptions(addr, port, mptcp=mptcp, seed=seed, timeout=timeout,
                      flags=NO_HASH | (REPORT if up else HOLD))
    if up:
        o.upload = SendPlan(max_bytes, seconds)
    else:
        o.download, o.download_s = max_bytes, seconds
    rec = client_conn(o, 0, seed)
    out: dict[str, Any] = {"error": rec["error"], "client_facts": brief_facts(rec),
                           "elapsed": rec["elapsed"], "seed": seed}
    if up:
        _upload_verdict(out, rec)
    else:
        out.update(received=rec["received"], mbps=mbps(rec))
        if not rec["pattern_ok"]:
            out["error"] = f"data mismatch at byte {rec['bad_at']}"
    if out["error"] is None and not out.get("mbps"):
        out["error"] = "nothing transferred"
    return out


def _upload_verdict(out: dict[str, Any], rec: dict[str, Any]) -> None:
    reply = rec.get("server")
    out["sent"] = rec["sent"]
    if reply is None:
        out["error"] = out["error"] or "no result from the server (connection closed)"
        return
    out.update(received=reply["received"], mbps=mbps(reply), facts=brief_facts(reply))
    if not reply["pattern_ok"]:
        out["error"] = f"data mismatch at byte {reply['bad_at']}"
    elif reply["received"] != rec["sent"]:
        out["error"] = f"received {reply['received']} of {rec['sent']} bytes"


def _exchange(addr: str, port: int, mptcp: bool, timeout: float) -> float:
    """connect, send ``R``, read ``r``, close; returns seconds connect->first byte."""
    s = new_socket(addr, mptcp)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.connect((addr, port))
        s.send(KIND_RR)
        if s.recv(1) != b"r":
            raise ConnectionError("no answer")
        return time.perf_counter() - t0
    finally:
        s.close()


def _count(errors: dict[str, int], exc: BaseException) -> str:
    e = error_name(exc, detail=True)
    errors[e] = errors.get(e, 0) + 1
    return e


def op_rr(addr: str, port: int, mptcp: bool, count: int, timeout: float = 5.0,
          **_: Any) -> dict[str, Any]:
    times: list[float] = []
    errors: dict[str, int] = {}
    for _ in range(count):
        try:
            times.append(_exchange(addr, port, mptcp, timeout) * 1e3)
        except Exception as exc:
            _count(errors, exc)
    return {"ms": times, "errors": errors}


def op_cps(addr: str, port: int, mptcp: bool, threads: int, seconds: float,
           timeout: float = 5.0, **_: Any) -> dict[str, Any]:
    done = [0] * threads
    errs: list[dict[str, int]] = [{} for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            try:
                _exchange(addr, port, mptcp, timeout)
                done[i] += 1
            except Exception as exc:
                if _count(errs[i], exc) == "eaddrnotavail":
                    time.sleep(0.01)

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ths:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in ths:
        t.join(seconds + timeout + 5)
    elapsed = time.perf_counter() - t0
    errors: dict[str, int] = {}
    for d in errs:
        for k, v in d.items():
            errors[k] = errors.get(k, 0) + v
    return {"completed": sum(done), "elapsed": elapsed, "cps": sum(done) / elapsed,
            "errors": errors}


HELD: list[socket.socket] = []


class _Opener:
    """Opens connections with at most ``window`` handshakes in flight (``op_hold``)."""

    def __init__(self, addr: str, port: int, mptcp: bool, window: int) -> None:
        self.addr, self.port, self.mptcp, self.window = addr, port, mptcp, window
        self.sel = selectors.DefaultSelector()
        self.started = self.opened = self.inflight = 0
        self.errors: dict[str, int] = {}

    def fail(self, s: socket.socket, e: str, registered: bool = True) -> None:
        if registered:
            self.sel.unregister(s)
            self.inflight -= 1
        self.errors[e] = self.errors.get(e, 0) + 1
        s.close()

    def start(self, n: int) -> None:
        while self.started < n and self.inflight < self.window:
            s = new_socket(self.addr, self.mptcp)
            s.setblocking(False)
            rc = s.connect_ex((self.addr, self.port))
            self.started += 1
            if rc not in (0, errno.EINPROGRESS):
                self.fail(s, errno.errorcode.get(rc, str(rc)).lower(), registered=False)
                continue
            self.sel.register(s, selectors.EVENT_WRITE, "connecting")
            self.inflight += 1

    def step(self) -> None:
        for key, _ in self.sel.select(1.0):
            s = key.fileobj
            if key.data == "connecting":
                self._connected(s)
            else:
                self._answered(s)

    def _connected(self, s: socket.socket) -> None:
        rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if rc:
            self.fail(s, errno.errorcode.get(rc, str(rc)).lower())
            return
        try:
            s.send(KIND_RR)
        except OSError as exc:
            self.fail(s, error_name(exc, detail=True))
            return
        self.sel.modify(s, selectors.EVENT_READ, "waiting")

    def _answered(self, s: socket.socket) -> None:
        try:
            ok = s.recv(1) == b"r"
        except OSError as exc:
            self.fail(s, error_name(exc, detail=True))
            return
        if not ok:
            self.fail(s, "no-answer")
            return
        self.sel.unregister(s)
        self.inflight -= 1
        self.opened += 1
        HELD.append(s)

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.fail(key.fileobj, "timeout")
        self.sel.close()


def op_hold(addr: str, port: int, mptcp: bool, n: int, window: int = 128,
            timeout: float = 120.0, **_: Any) -> dict[str, Any]:
    """Open ``n`` more connections (``window`` handshakes in flight), do the 1-byte
    exchange on each and keep them open in :data:`HELD`."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    op = _Opener(addr, port, mptcp, window)
    while op.opened + sum(op.errors.values()) < n and time.perf_counter() < deadline:
        op.start(n)
        op.step()
    op.close()
    return {"opened": op.opened, "held": len(HELD), "errors": op.errors,
            "elapsed": time.perf_counter() - t0}


def op_release(**_: Any) -> dict[str, Any]:
    n = len(HELD)
    for s in HELD:
        s.close()
    HELD.clear()
    return {"closed": n}


OPS: dict[str, Callable[..., dict[str, Any]]] = {
    "bulk": op_bulk, "rr": op_rr, "cps": op_cps, "hold": op_hold, "release": op_release,
    "ping": lambda **_: {"pid": os.getpid()},
}


def agent() -> int:
    """Serve commands from stdin until it closes."""
    raise_nofile()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            res = OPS[req.pop("op")](**req)
        except Exception as exc:
            res = {"error": f"agent: {type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    op_release()
    return 0
