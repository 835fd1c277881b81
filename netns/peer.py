"""Traffic peer for the test bed: deterministic bulk transfer both ways, hashed, one JSON
line per connection.

Command line (run inside a namespace with the venv's python)::

    python -m netns.peer server --port P [--mptcp] [--bind ADDR] [--count K | --once]
                                [--ready-file F] [--timeout S]
    python -m netns.peer client --addr A --port P [--mptcp] [--bind SRC] [--upload M]
                                [--download N] [--conns C] [--mode MODE] [--seed S]
                                [--timeout S]
    python -m netns.peer probe --addr A --port P [--bind SRC] [--count N]   # connect RTTs

Protocol per connection: the client sends a 16-byte header ``!QII`` = (download size N in
bytes, mode flags, seed), then uploads M bytes while it concurrently reads the download.
Upload bytes are the stream of ``(seed, "up")``, download bytes the stream of
``(seed, "down")`` (:func:`stream_chunks`). Each side half-closes (``shutdown(SHUT_WR)``)
after sending and reads to EOF. Modes (flags):

- ``normal`` (0): as above.
- ``server-close`` (1): the server sends N bytes and ``close()``s at once without reading
  the upload (use ``upload=0``: unread data makes the close a reset); the client waits for
  the server's FIN before its own, so the server's FIN comes first.
- ``server-reset`` (2): the server sends N bytes, then closes with ``SO_LINGER`` 0 (RST;
  MP_FASTCLOSE on an MPTCP socket).
- ``client-reset`` (4): the client sends the header and M bytes without reading, then closes
  with ``SO_LINGER`` 0.

Output: one JSON object per connection on stdout (see :func:`_record`), plus the server's
``{"event": "listening", ...}`` line once bound. Fields: ``role``, ``conn``, ``local``,
``peer``, ``mode``, ``seed``, ``sent``/``received`` (bytes), ``sent_sha256``/``recv_sha256``,
``elapsed`` (s, from accept/connect to close), ``connect_s`` (client: s spent in connect),
``recv_s`` (s from the first to the last received byte: ``received * 8 / recv_s`` is the
receive rate; None if nothing arrived), ``max_gap_s`` (longest pause between two reads that
returned data, s: the delivery gap of a handover),
``error`` (None, "reset", "broken-pipe", "timeout", "short-header" or an errno text),
``mptcp_socket`` (SO_PROTOCOL is IPPROTO_MPTCP), ``is_mptcp`` (TCP_IS_MPTCP),
``fallback`` (None for a plain TCP socket of a plain TCP listener/client) and ``mptcp_info``
(decoded MPTCP_INFO read before close, or None).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Iterator, Sequence

__all__ = [
    "MODES",
    "CHUNK",
    "stream_chunks",
    "expected_sha",
    "mptcp_info",
    "socket_facts",
    "start_server",
    "run_client",
    "measure_rtt",
    "ServerHandle",
]

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
TCP_IS_MPTCP = 43
MPTCP_INFO_FLAG_FALLBACK = 1 << 0
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 1 << 1

MODES = {"normal": 0, "server-close": 1, "server-reset": 2, "client-reset": 4}
_MODE_NAMES = {v: k for k, v in MODES.items()}
HEADER = struct.Struct("!QII")  # download bytes, mode flags, seed
CHUNK = 65536
RECV_BUF = 262144

# struct mptcp_info (include/uapi/linux/mptcp.h, 6.10+: 96 bytes), native alignment.
_MPTCP_INFO = struct.Struct("=6B2xIIQQQ3BxIQQQQB3xIII")
_MPTCP_INFO_FIELDS = (
    "subflows", "add_addr_signal", "add_addr_accepted", "subflows_max",
    "add_addr_signal_max", "add_addr_accepted_max", "flags", "token", "write_seq",
    "snd_una", "rcv_nxt", "local_addr_used", "local_addr_max", "csum_enabled",
    "retransmits", "bytes_retrans", "bytes_sent", "bytes_received", "bytes_acked",
    "subflows_total", "last_data_sent", "last_data_recv", "last_ack_recv",
)


# ---------------------------------------------------------------- data streams

def stream_chunks(seed: int, nbytes: int, direction: str = "up") -> Iterator[bytes]:
    """The deterministic byte stream for ``(seed, direction)``, ``nbytes`` long, in chunks of
    :data:`CHUNK` bytes (the last one shorter). ``direction`` is "up" (client to server) or
    "down". ~4 Gbit/s on this machine (``random.Random.randbytes``)."""
    rng = random.Random((seed << 1) | (direction == "down"))
    left = nbytes
    while left > 0:
        block = rng.randbytes(CHUNK)
        if left < CHUNK:
            block = block[:left]
        left -= len(block)
        yield block


def expected_sha(seed: int, nbytes: int, direction: str = "up") -> str:
    """Hex SHA-256 of the first ``nbytes`` of the stream ``(seed, direction)``."""
    h = hashlib.sha256()
    for block in stream_chunks(seed, nbytes, direction):
        h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- socket facts

def mptcp_info(sock: socket.socket) -> dict[str, Any] | None:
    """Decoded ``getsockopt(SOL_MPTCP, MPTCP_INFO)`` (field names without ``mptcpi_``, plus
    ``fallback`` and ``remote_key_received`` from ``flags``), or None when the socket is not
    an MPTCP socket or has fallen back (the kernel then refuses the option)."""
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, _MPTCP_INFO.size)
    except OSError:
        return None
    raw = raw.ljust(_MPTCP_INFO.size, b"\0")
    info = dict(zip(_MPTCP_INFO_FIELDS, _MPTCP_INFO.unpack(raw)))
    info["fallback"] = bool(info["flags"] & MPTCP_INFO_FLAG_FALLBACK)
    info["remote_key_received"] = bool(info["flags"] & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED)
    return info


def socket_facts(sock: socket.socket, mptcp_expected: bool = False) -> dict[str, Any]:
    """``mptcp_socket``, ``is_mptcp``, ``mptcp_info`` and ``fallback`` of ``sock``.

    ``mptcp_expected``: the socket was asked to be MPTCP (MPTCP client, or accepted from an
    MPTCP listener, which hands out a plain TCP socket when the SYN had no MP_CAPABLE).
    ``fallback`` is None for plain TCP that never meant to be MPTCP.
    """
    try:
        mptcp_socket = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_MPTCP
    except OSError:
        mptcp_socket = False
    try:
        is_mptcp = bool(sock.getsockopt(socket.SOL_TCP, TCP_IS_MPTCP))
    except OSError:
        is_mptcp = False
    info = mptcp_info(sock) if mptcp_socket else None
    if info is not None:
        fallback: bool | None = info["fallback"]
    elif mptcp_socket or mptcp_expected:
        fallback = True
    else:
        fallback = None
    return {"mptcp_socket": mptcp_socket, "is_mptcp": is_mptcp, "fallback": fallback,
            "mptcp_info": info}


def error_name(exc: BaseException, detail: bool = False) -> str:
    """Short name of a socket error (``reset``, ``timeout``, an errno name...); other
    exceptions by type name, with their message if ``detail``."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__


def _addr(sa: Sequence[Any]) -> str:
    host = sa[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{sa[1]}" if ":" in host else f"{host}:{sa[1]}"


class _Side:
    """Byte/hash accounting of one connection end; ``error`` keeps the first failure."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.sent_h = hashlib.sha256()
        self.recv_h = hashlib.sha256()
        self.error: str | None = None
        self.eof = threading.Event()
        self.first_rx: float | None = None  # monotonic time of the first received byte
        self.last_rx: float | None = None
        self.max_gap = 0.0  # longest time between two reads that returned data, s

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = error_name(exc)

    def send(self, sock: socket.socket, chunks: Iterator[bytes]) -> None:
        for block in chunks:
            sock.sendall(block)
            self.sent += len(block)
            self.sent_h.update(block)

    def recv_to_eof(self, sock: socket.socket) -> None:
        buf = bytearray(RECV_BUF)
        view = memoryview(buf)
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            now = time.monotonic()
            if self.last_rx is None:
                self.first_rx = now
            elif now - self.last_rx > self.max_gap:
                self.max_gap = now - self.last_rx
            self.last_rx = now
            self.received += n
            self.recv_h.update(view[:n])
        self.eof.set()


def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _record(role: str, conn: int, side: _Side, facts: dict[str, Any], t0: float,
            **extra: Any) -> dict[str, Any]:
    return {
        "role": role, "conn": conn, **extra,
        "sent": side.sent, "received": side.received,
        "sent_sha256": side.sent_h.hexdigest(), "recv_sha256": side.recv_h.hexdigest(),
        "elapsed": round(time.monotonic() - t0, 6), "error": side.error,
        "recv_s": round(side.last_rx - side.first_rx, 6) if side.first_rx is not None else None,
        "max_gap_s": round(side.max_gap, 6), **facts,
    }


_print_lock = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, sort_keys=True)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            break
        data += part
    return data


# ---------------------------------------------------------------- server

def _serve_conn(sock: socket.socket, peer: Any, conn: int, listener_mptcp: bool,
                timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    local = _addr(sock.getsockname())
    side = _Side()
    sock.settimeout(timeout)
    mode, seed = 0, 0
    facts = socket_facts(sock, listener_mptcp)
    try:
        header = _recv_exact(sock, HEADER.size)
        if len(header) < HEADER.size:
            side.error = "short-header"
        else:
            download, mode, seed = HEADER.unpack(header)
            chunks = stream_chunks(seed, download, "down")
            if mode & (MODES["server-close"] | MODES["server-reset"]):
                side.send(sock, chunks)
            else:
                def sender() -> None:
                    try:
                        side.send(sock, chunks)
                        sock.shutdown(socket.SHUT_WR)
                    except OSError as exc:
                        side.fail(exc)
                th = threading.Thread(target=sender, daemon=True)
                th.start()
                try:
                    side.recv_to_eof(sock)
                finally:
                    th.join()
    except OSError as exc:
        side.fail(exc)
    facts = socket_facts(sock, listener_mptcp) if side.error is None else facts
    if mode & MODES["server-reset"]:
        _abort(sock)
    else:
        sock.close()
    return _record("server", conn, side, facts, t0, local=local, peer=_addr(peer),
                   mode=_MODE_NAMES.get(mode, str(mode)), seed=seed)


def serve(port: int, mptcp: bool, bind: str | None, count: int | None,
          ready_file: str | None, timeout: float) -> int:
    """Accept connections (one thread each) until ``count`` are done (forever if None)."""
    family = socket.AF_INET if bind and "." in bind else socket.AF_INET6
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    lsock = socket.socket(family, socket.SOCK_STREAM, proto)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.bind((bind or "::", port))
    lsock.listen(1024)
    listener_mptcp = lsock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == IPPROTO_MPTCP
    _emit({"event": "listening", "port": lsock.getsockname()[1], "mptcp": listener_mptcp,
           "pid": os.getpid()})
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(str(lsock.getsockname()[1]))
    threads = []
    n = 0
    while count is None or n < count:
        sock, peer = lsock.accept()

        def handle(sock: socket.socket = sock, peer: Any = peer, conn: int = n) -> None:
            _emit(_serve_conn(sock, peer, conn, listener_mptcp, timeout))

        th = threading.Thread(target=handle, daemon=True)
        th.start()
        threads.append(th)
        threads = [t for t in threads if t.is_alive()]
        n += 1
    for th in threads:
        th.join()
    lsock.close()
    return 0


# ---------------------------------------------------------------- client

def _client_conn(addr: str, port: int, conn: int, mptcp: bool, bind: str | None, upload: int,
                 download: int, mode: int, seed: int, timeout: float) -> dict[str, Any]:
    side = _Side()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)
    sock.settimeout(timeout)
    t0 = time.monotonic()
    connect_s = None
    facts: dict[str, Any] = {}
    local = ""
    try:
        if bind:
            sock.bind((bind, 0))
        sock.connect((addr, port))
        connect_s = round(time.monotonic() - t0, 6)
        local = _addr(sock.getsockname())
        header = HEADER.pack(download, mode, seed)
        sock.sendall(header)
        chunks = stream_chunks(seed, upload, "up")
        if mode & MODES["client-reset"]:
            side.send(sock, chunks)
        else:
            def sender() -> None:
                try:
                    side.send(sock, chunks)
                    if mode & MODES["server-close"]:
                        side.eof.wait(timeout)
                    sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    side.fail(exc)
            th = threading.Thread(target=sender, daemon=True)
            th.start()
            try:
                side.recv_to_eof(sock)
            except OSError as exc:
                side.fail(exc)
                side.eof.set()
            th.join()
    except OSError as exc:
        side.fail(exc)
    facts = socket_facts(sock, mptcp)
    if mode & MODES["client-reset"] and side.error is None:
        _abort(sock)
    else:
        sock.close()
    return _record("client", conn, side, facts, t0, local=local, peer=_addr((addr, port)),
                   mode=_MODE_NAMES.get(mode, str(mode)), seed=seed, connect_s=connect_s)


def client(addr: str, port: int, conns: int, mptcp: bool, bind: str | None, upload: int,
           download: int, mode: int, seed: int, timeout: float) -> int:
    """Run ``conns`` connections in parallel (seeds ``seed + i``); exit 0 if none failed."""
    results: list[dict[str, Any]] = []

    def one(i: int) -> None:
        rec = _client_conn(addr, port, i, mptcp, bind, upload, download, mode,
                           (seed + i) & 0xFFFFFFFF, timeout)
        results.append(rec)
        _emit(rec)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return 0 if all(r["error"] is None for r in results) else 1


def probe(addr: str, port: int, count: int, bind: str | None, interval: float,
          timeout: float) -> int:
    """Time ``count`` TCP connects (SYN -> SYN/ACK: one RTT each); print them as JSON."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    times: list[float | None] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
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
    _emit({"event": "rtt", "connect_s": times})
    return 0 if all(t is not None for t in times) else 1


# ---------------------------------------------------------------- library API

class ServerHandle:
    """A running ``netns.peer server`` (see :func:`start_server`).

    ``results()`` returns the connection records received so far (parsed JSON lines);
    ``wait(n, timeout)`` blocks until ``n`` records arrived; ``stop()`` ends the process.
    """

    def __init__(self, proc: Any, port: int | None = None) -> None:
        self.proc = proc
        self.port = port
        self.events: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                (self.events if "event" in obj else self._records).append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Block until the server printed its ``listening`` line; raise if it died."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.events:
                if self.proc.poll() is not None and not self._reader.is_alive():
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise RuntimeError(f"peer server exited {self.proc.returncode}: {err}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("peer server did not start listening")
                self._cond.wait(min(left, 0.1))
        self.port = self.events[0].get("port", self.port)

    def results(self) -> list[dict[str, Any]]:
        """Connection records received so far."""
        with self._cond:
            return list(self._records)

    def wait(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Records once ``count`` are in (or the process ended / ``timeout`` s passed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._records) < count and self._reader.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
            return list(self._records)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM the server (SIGKILL after ``timeout`` s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _argv(*args: Any) -> list[str]:
    from .topology import python_argv
    return python_argv("netns.peer", *args)


def start_server(topo: Any, port: int, mptcp: bool = True, ns: str | None = None,
                 bind: str | None = None, count: int | None = None, timeout: float = 60.0,
                 wrapper: Sequence[str] = ()) -> ServerHandle:
    """Start ``netns.peer server`` in ``ns`` (default the server namespace) through
    ``topo.popen`` and wait until it listens. ``wrapper`` prefixes the argv (e.g.
    ``["mptcpize", "run"]``). ``count``: exit after that many connections."""
    import subprocess
    args = ["server", "--port", port, "--timeout", timeout]
    if mptcp:
        args.append("--mptcp")
    if bind:
        args += ["--bind", bind]
    if count is not None:
        args += ["--count", count]
    proc = topo.popen(ns or topo.server, [*wrapper, *_argv(*args)], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    handle = ServerHandle(proc, port)
    handle.wait_listening()
    return handle


def run_client(topo: Any, addr: str, port: int, upload: int = 0, download: int = 0,
               conns: int = 1, mode: str = "normal", timeout: float = 60.0,
               mptcp: bool = False, bind: str | None = None, seed: int = 1,
               ns: str | None = None, wrapper: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run ``netns.peer client`` in ``ns`` (default the client namespace) to completion and
    return its records (one per connection, sorted by ``conn``). Sizes in bytes; ``timeout``
    in seconds per socket operation (the whole run gets ``2 * timeout + 10``)."""
    args = ["client", "--addr", addr, "--port", port, "--upload", upload, "--download",
            download, "--conns", conns, "--mode", mode, "--seed", seed, "--timeout", timeout]
    if mptcp:
        args.append("--mptcp")
    if bind:
        args += ["--bind", bind]
    res = topo.run(ns or topo.client, [*wrapper, *_argv(*args)], check=False,
                   timeout=2 * timeout + 10)
    records = []
    for line in res.stdout.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if len(records) != conns:
        raise RuntimeError(f"peer client printed {len(records)}/{conns} records, "
                           f"exit {res.returncode}: {res.stderr.strip()[-2000:]}")
    return sorted(records, key=lambda r: r["conn"])


def measure_rtt(topo: Any, addr: str, port: int, count: int = 20,
                bind: str | None = None, ns: str | None = None,
                interval: float = 0.01) -> list[float]:
    """Connect times (s) of ``count`` TCP connects from ``ns`` (default the client) to a
    listener at ``addr``:``port``: one round trip each. Raises if any connect failed."""
    args = ["probe", "--addr", addr, "--port", port, "--count", count,
            "--interval", interval]
    if bind:
        args += ["--bind", bind]
    res = topo.run(ns or topo.client, _argv(*args), check=False, timeout=30 + count)
    for line in res.stdout.splitlines():
        obj = json.loads(line)
        if obj.get("event") == "rtt" and None not in obj["connect_s"]:
            return obj["connect_s"]
    raise RuntimeError(f"RTT probe failed: {res.stdout} {res.stderr}")


# ---------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.peer", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("server", help="accept connections and serve downloads")
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--bind", help="listen address (default :: dual stack)")
    sp.add_argument("--mptcp", action="store_true", help="IPPROTO_MPTCP listener")
    sp.add_argument("--count", type=int, help="exit after K connections")
    sp.add_argument("--once", action="store_const", const=1, dest="count")
    sp.add_argument("--ready-file", help="write the port here once listening")
    sp.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s")
    cp = sub.add_parser("client", help="connect, upload and download")
    cp.add_argument("--addr", required=True)
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--bind", help="source address")
    cp.add_argument("--mptcp", action="store_true", help="IPPROTO_MPTCP socket")
    cp.add_argument("--upload", type=int, default=0, help="bytes to upload")
    cp.add_argument("--download", type=int, default=0, help="bytes to download")
    cp.add_argument("--conns", type=int, default=1, help="parallel connections")
    cp.add_argument("--mode", choices=sorted(MODES), default="normal")
    cp.add_argument("--seed", type=int, default=1)
    cp.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s")
    pp = sub.add_parser("probe", help="time TCP connects (RTT)")
    pp.add_argument("--addr", required=True)
    pp.add_argument("--port", type=int, required=True)
    pp.add_argument("--bind", help="source address")
    pp.add_argument("--count", type=int, default=20)
    pp.add_argument("--interval", type=float, default=0.01, help="pause between connects, s")
    pp.add_argument("--timeout", type=float, default=5.0, help="connect timeout, s")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if a.cmd == "probe":
        return probe(a.addr, a.port, a.count, a.bind, a.interval, a.timeout)
    if a.cmd == "server":
        return serve(a.port, a.mptcp, a.bind, a.count, a.ready_file, a.timeout)
    return client(a.addr, a.port, a.conns, a.mptcp, a.bind, a.upload, a.download,
                  MODES[a.mode], a.seed, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
