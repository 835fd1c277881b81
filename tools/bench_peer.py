#!/usr/bin/env python3
"""In-namespace helpers of ``tools/bench``: a server and a client agent.

Both are started by the bench inside its own test-bed namespaces (``Topology.popen``)::

    python tools/bench_peer.py server --plain-port P --mptcp-port Q
    python tools/bench_peer.py agent          # JSON commands on stdin, JSON replies on stdout

The **server** listens on ``P`` (plain TCP) and ``Q`` (``IPPROTO_MPTCP``) and serves every
connection by the first byte the client sends:

- ``U`` + ``!Qd`` (max bytes, max seconds): upload. The server reads to EOF, checking every
  byte against the pattern (:data:`PATTERN`), then answers one JSON line (bytes received,
  pattern ok, receive rate, MPTCP facts of the socket) and closes.
- ``D`` + ``!Qd``: download. The server sends the pattern until the byte or time limit,
  half-closes, reads the client's 8-byte count of what arrived and prints one JSON line
  ``{"event": "download", "sent": .., "got": .., "facts": ..}`` on its stdout (the bench
  compares ``sent`` and ``got``); a failed bulk connection prints ``{"event": "error"}``.
- ``R``: request/response (setup latency, connection rate, idle connections): the server
  answers one byte ``r`` and keeps the connection until the client closes it.

Bulk connections get a thread each; ``R`` connections live in one selector loop, so 10,000
idle connections cost no thread.

The **agent** runs in the client namespace and keeps its state (held idle connections)
between commands. One JSON object per line in, one per line out. Operations: ``bulk``,
``rr`` (sequential request/response latencies), ``cps`` (connections per second with N
threads), ``hold`` (open N idle connections, keep them), ``release`` (close them), ``ping``.

No hashing on the data path: the pattern is a fixed pseudo-random block of a prime length,
compared with ``memcmp`` speed, so even 14 Gbit/s plain TCP is not slowed down and any
corruption, loss, duplication or reordering inside the stream is caught.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns.peer import error_name  # noqa: E402

IPPROTO_MPTCP = 262
PATTERN_LEN = 1_048_573  # prime: a shifted stream never matches by accident
PATTERN = random.Random(20240601).randbytes(PATTERN_LEN)
PATTERN2 = PATTERN + PATTERN  # any window <= PATTERN_LEN is contiguous
PATTERN2_VIEW = memoryview(PATTERN2)
CHUNK = 256 * 1024
BULK_HDR = struct.Struct("!Qd")  # max bytes, max seconds


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (and the hard limit to 1M when root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        return want
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def _facts(sock: socket.socket, mptcp_expected: bool = False) -> dict[str, Any]:
    """Is ``sock`` a real MPTCP connection? (``fallback`` True: asked for MPTCP, got TCP.)"""
    try:
        from netns.peer import socket_facts
        f = socket_facts(sock, mptcp_expected)
    except Exception as exc:  # facts are diagnostics only
        return {"error": repr(exc)}
    info = f.get("mptcp_info") or {}
    return {"mptcp_socket": f["mptcp_socket"], "fallback": f["fallback"],
            "subflows": info.get("subflows"), "subflows_total": info.get("subflows_total")}


class Receiver:
    """Reads a stream to EOF and checks it against the pattern."""

    def __init__(self) -> None:
        self.received = 0
        self.ok = True
        self.bad_at: int | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None

    def run(self, sock: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        p2 = PATTERN2
        plen = PATTERN_LEN
        off = 0
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            now = time.perf_counter()
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
            if self.ok and not p2.startswith(view[:n], off):  # memcmp, no copy
                self.ok = False
                self.bad_at = self.received
            self.received += n
            off = (off + n) % plen

    def mbps(self) -> float | None:
        if self.t_first is None or self.t_last is None or self.t_last <= self.t_first:
            return None
        return self.received * 8 / (self.t_last - self.t_first) / 1e6


def send_pattern(sock: socket.socket, max_bytes: int, seconds: float) -> int:
    """Send the pattern until ``max_bytes`` or ``seconds`` passed; returns bytes sent."""
    p2 = PATTERN2_VIEW
    plen = PATTERN_LEN
    sent = 0
    off = 0
    deadline = time.perf_counter() + seconds
    while sent < max_bytes:
        n = sock.send(p2[off:off + min(CHUNK, max_bytes - sent)])
        sent += n
        off = (off + n) % plen
        if time.perf_counter() >= deadline:
            break
    return sent


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("short read")
        data += chunk
    return data


def _recv_all(sock: socket.socket) -> bytes:
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


# ------------------------------------------------------------------ server

_OUT_LOCK = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _OUT_LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def serve_bulk(sock: socket.socket, kind: bytes, timeout: float, mptcp: bool) -> None:
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        max_bytes, seconds = BULK_HDR.unpack(_recv_exact(sock, BULK_HDR.size))
        if kind == b"U":
            rx = Receiver()
            rx.run(sock)
            res = {"received": rx.received, "ok": rx.ok, "bad_at": rx.bad_at,
                   "mbps": rx.mbps(), "facts": _facts(sock, mptcp)}
            sock.sendall(json.dumps(res).encode() + b"\n")
        else:
            sent = send_pattern(sock, max_bytes, seconds)
            sock.shutdown(socket.SHUT_WR)
            (got,) = struct.unpack("!Q", _recv_exact(sock, 8))
            emit({"event": "download", "sent": sent, "got": got, "facts": _facts(sock, mptcp)})
    except Exception as exc:
        emit({"event": "error", "kind": kind.decode(), "error": error_name(exc, detail=True)})
    finally:
        sock.close()


def server(plain_port: int, mptcp_port: int, timeout: float) -> int:
    raise_nofile()
    sel = selectors.DefaultSelector()
    for port, proto in ((plain_port, 0), (mptcp_port, IPPROTO_MPTCP)):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(65535)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, ("listen", bool(proto)))
    emit({"event": "listening", "pid": os.getpid()})
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data[0] == "listen":
                while True:
                    try:
                        c, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, ("new", key.data[1]))
                continue
            try:
                data = sock.recv(4096 if key.data[0] == "idle" else 1)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
            elif key.data[0] == "new":
                if data in (b"U", b"D"):
                    sel.unregister(sock)
                    threading.Thread(target=serve_bulk, args=(sock, data, timeout, key.data[1]),
                                     daemon=True).start()
                else:
                    try:
                        sock.send(b"r")
                    except OSError:
                        sel.unregister(sock)
                        sock.close()
                        continue
                    sel.modify(sock, selectors.EVENT_READ, ("idle", key.data[1]))


# ------------------------------------------------------------------ agent

def _sock(mptcp: bool) -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)


def op_bulk(addr: str, port: int, mptcp: bool, direction: str, max_bytes: int,
            seconds: float, timeout: float = 15.0, **_: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"error": None}
    s = _sock(mptcp)
    s.settimeout(timeout)
    t0 = time.perf_counter()
    try:
        s.connect((addr, port))
        out["client_facts"] = _facts(s, mptcp)
        if direction == "up":
            s.sendall(b"U" + BULK_HDR.pack(max_bytes, seconds))
            sent = send_pattern(s, max_bytes, seconds)
            s.shutdown(socket.SHUT_WR)
            reply = _recv_all(s)
            out["elapsed"] = time.perf_counter() - t0
            res = json.loads(reply) if reply else None
            out["sent"] = sent
            if res is None:
                out["error"] = "no result from the server (connection closed)"
            else:
                out.update(received=res["received"], mbps=res["mbps"], facts=res["facts"])
                if not res["ok"]:
                    out["error"] = f"data mismatch at byte {res['bad_at']}"
                elif res["received"] != sent:
                    out["error"] = f"received {res['received']} of {sent} bytes"
        else:
            s.sendall(b"D" + BULK_HDR.pack(max_bytes, seconds))
            rx = Receiver()
            rx.run(s)
            s.sendall(struct.pack("!Q", rx.received))  # the server checks it (its stdout)
            out["elapsed"] = time.perf_counter() - t0
            out.update(received=rx.received, mbps=rx.mbps())
            if not rx.ok:
                out["error"] = f"data mismatch at byte {rx.bad_at}"
    except Exception as exc:
        out["error"] = error_name(exc, detail=True)
    finally:
        s.close()
    if out["error"] is None and not out.get("mbps"):
        out["error"] = "nothing transferred"
    return out


def _exchange(addr: str, port: int, mptcp: bool, timeout: float) -> float:
    """connect, send 1 byte, read 1 byte, close; returns seconds connect->first byte."""
    s = _sock(mptcp)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.connect((addr, port))
        s.send(b"R")
        if s.recv(1) != b"r":
            raise ConnectionError("no answer")
        return time.perf_counter() - t0
    finally:
        s.close()


def op_rr(addr: str, port: int, mptcp: bool, count: int, timeout: float = 5.0,
          **_: Any) -> dict[str, Any]:
    times, errors = [], {}
    for _ in range(count):
        try:
            times.append(_exchange(addr, port, mptcp, timeout) * 1e3)
        except Exception as exc:
            e = error_name(exc, detail=True)
            errors[e] = errors.get(e, 0) + 1
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
                e = error_name(exc, detail=True)
                errs[i][e] = errs[i].get(e, 0) + 1
                if e in ("eaddrnotavail",):
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


def op_hold(addr: str, port: int, mptcp: bool, n: int, window: int = 128,
            timeout: float = 120.0, **_: Any) -> dict[str, Any]:
    """Open ``n`` more connections (``window`` handshakes in flight), do the 1-byte
    exchange on each and keep them open in :data:`HELD`."""
    sel = selectors.DefaultSelector()
    started = opened = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    deadline = t0 + timeout
    inflight = 0

    def fail(s: socket.socket, e: str) -> None:
        errors[e] = errors.get(e, 0) + 1
        s.close()

    while opened + sum(errors.values()) < n and time.perf_counter() < deadline:
        while started < n and inflight < window:
            s = _sock(mptcp)
            s.setblocking(False)
            rc = s.connect_ex((addr, port))
            started += 1
            if rc not in (0, errno.EINPROGRESS):
                fail(s, errno.errorcode.get(rc, str(rc)).lower())
                continue
            sel.register(s, selectors.EVENT_WRITE, "connecting")
            inflight += 1
        for key, _ in sel.select(1.0):
            s = key.fileobj
            if key.data == "connecting":
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    sel.unregister(s)
                    inflight -= 1
                    fail(s, errno.errorcode.get(rc, str(rc)).lower())
                    continue
                try:
                    s.send(b"R")
                except OSError as exc:
                    sel.unregister(s)
                    inflight -= 1
                    fail(s, error_name(exc, detail=True))
                    continue
                sel.modify(s, selectors.EVENT_READ, "waiting")
            else:
                sel.unregister(s)
                inflight -= 1
                try:
                    ok = s.recv(1) == b"r"
                except OSError as exc:
                    fail(s, error_name(exc, detail=True))
                    continue
                if ok:
                    opened += 1
                    HELD.append(s)
                else:
                    fail(s, "no-answer")
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        fail(key.fileobj, "timeout")
    sel.close()
    return {"opened": opened, "held": len(HELD), "errors": errors,
            "elapsed": time.perf_counter() - t0}


def op_release(**_: Any) -> dict[str, Any]:
    n = len(HELD)
    for s in HELD:
        s.close()
    HELD.clear()
    return {"closed": n}


OPS = {"bulk": op_bulk, "rr": op_rr, "cps": op_cps, "hold": op_hold, "release": op_release,
       "ping": lambda **_: {"pid": os.getpid()}}


def agent() -> int:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("server")
    sp.add_argument("--plain-port", type=int, required=True)
    sp.add_argument("--mptcp-port", type=int, required=True)
    sp.add_argument("--timeout", type=float, default=20.0)
    sub.add_parser("agent")
    a = ap.parse_args(argv)
    if a.cmd == "server":
        return server(a.plain_port, a.mptcp_port, a.timeout)
    return agent()


if __name__ == "__main__":
    sys.exit(main())
