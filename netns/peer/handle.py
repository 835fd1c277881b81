"""Driving peer processes from the orchestrator: start them in a test-bed namespace, read
their JSON lines, wait for what they report.

:class:`PeerProcess` collects a process's stdout lines (``events``: objects with an
``"event"`` key; ``records``: the rest, one per connection) and the tail of its stderr.
:class:`ServerHandle` and :class:`AgentHandle` add what a server and an agent need.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

__all__ = [
    "PeerError", "PeerProcess", "ServerHandle", "AgentHandle", "peer_argv", "start_server",
    "start_agent", "start_client", "run_client", "measure_rtt",
]


class PeerError(RuntimeError):
    """A peer process did not answer in time, or exited."""


class PeerProcess:
    """A running peer (or any process printing JSON lines); see the module docstring."""

    def __init__(self, proc: subprocess.Popen, port: int | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.proc = proc
        self.port = port
        self.on_progress = on_progress  # progress events go here (not kept) if set
        self.objects: list[dict[str, Any]] = []  # every JSON line, in order
        self.events: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._next = 0                            # index of the next object for next()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if proc.stderr is not None:
            threading.Thread(target=self._drain_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if self.on_progress is not None and obj.get("event") == "progress":
                self.on_progress(obj)
                continue
            with self._cond:
                self.objects.append(obj)
                (self.events if "event" in obj else self._records).append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _drain_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-200]

    @property
    def finished(self) -> bool:
        """The process's stdout has ended (it exited or closed it)."""
        return not self._reader.is_alive()

    def _gone(self, what: str) -> PeerError:
        time.sleep(0.1)  # the stderr reader catches up
        return PeerError(f"{what}: peer exited {self.proc.poll()}: "
                         + " | ".join(self.stderr[-8:]))

    def _wait_for(self, pred: Any, timeout: float, what: str) -> Any:
        """Block until ``pred()`` returns something (under the lock); raise PeerError on
        timeout or when the process's output ended without it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = pred()
                if got is not None:
                    return got
                if self.finished:
                    raise self._gone(what)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"{what}: nothing within {timeout:.0f} s")
                self._cond.wait(min(left, 0.2))

    def expect(self, event: str, timeout: float, **match: Any) -> dict[str, Any]:
        """The first event named ``event`` whose fields equal ``match``."""
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == event
                         and all(e.get(k) == v for k, v in match.items())), None)
        return self._wait_for(find, timeout, f"no {event!r} event")

    def record(self, timeout: float, **match: Any) -> dict[str, Any]:
        """The first connection record whose fields equal ``match`` (e.g. ``seed=7``)."""
        def find() -> dict[str, Any] | None:
            return next((r for r in self._records
                         if all(r.get(k) == v for k, v in match.items())), None)
        return self._wait_for(find, timeout, f"no record {match}")

    def next(self, timeout: float) -> dict[str, Any]:
        """The next JSON object in order (each is returned once)."""
        def take() -> dict[str, Any] | None:
            if self._next < len(self.objects):
                self._next += 1
                return self.objects[self._next - 1]
            return None
        return self._wait_for(take, timeout, "no answer")

    def drain(self) -> list[dict[str, Any]]:
        """Every object not yet returned by :meth:`next`."""
        with self._cond:
            out = self.objects[self._next:]
            self._next = len(self.objects)
            return out

    def results(self) -> list[dict[str, Any]]:
        """Connection records received so far."""
        with self._cond:
            return list(self._records)

    def wait(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Records once ``count`` are in (or the process ended / ``timeout`` s passed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._records) < count and not self.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
            return list(self._records)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM (SIGKILL after ``timeout`` s); the peer writes the records of the
        connections it ends."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2.0)

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerHandle(PeerProcess):
    """A running ``netns.peer server`` (or ``netns.httpd``): ``wait_listening`` blocks
    until it listens, ``results``/``wait`` give its connection records."""

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Block until the server printed its ``listening`` line; raise if it died."""
        ev = self.expect("listening", timeout)
        self.port = ev.get("port", self.port)


class AgentHandle(PeerProcess):
    """A running ``netns.peer agent``: :meth:`call` sends one command, returns the reply."""

    def call(self, op: str, wait: float, **kw: Any) -> dict[str, Any]:
        """Raises PeerError if the agent does not answer within ``wait`` s or is gone."""
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise PeerError(f"agent {op}: {exc}") from None
        return self.next(wait)

    def close(self) -> None:
        """Close its stdin (it releases what it holds and exits)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass


def peer_argv(*args: Any) -> list[str]:
    """argv of ``python -m netns.peer ARGS`` with this interpreter."""
    from ..topology import python_argv
    return python_argv("netns.peer", *args)


def _popen(topo: Any, ns: str, argv: list[str], stdin: bool = False) -> subprocess.Popen:
    return topo.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                      stdin=subprocess.PIPE if stdin else None)


def start_server(topo: Any, port: int, mptcp: bool = True, ns: str | None = None,
                 bind: str | None = None, count: int | None = None, timeout: float = 60.0,
                 wrapper: Sequence[str] = (), extra: Sequence[Any] = (),
                 on_progress: Callable[[dict[str, Any]], None] | None = None
                 ) -> ServerHandle:
    """Start ``netns.peer server`` in ``ns`` (default the server namespace) through
    ``topo.popen`` and wait until it listens. ``wrapper`` prefixes the argv (e.g.
    ``["mptcpize", "run"]``); ``count``: exit after that many connections; ``extra``: more
    server options (e.g. ``["--listen", "5002:mptcp"]``); ``on_progress``: receives the
    progress events (``--progress``)."""
    args: list[Any] = ["server", "--port", port, "--timeout", timeout, *extra]
    if mptcp:
        args.append("--mptcp")
    if bind:
        args += ["--bind", bind]
    if count is not None:
        args += ["--count", count]
    handle = ServerHandle(_popen(topo, ns or topo.server, [*wrapper, *peer_argv(*args)]), port,
                          on_progress)
    handle.wait_listening()
    return handle


def start_agent(topo: Any, ns: str | None = None, wait: float = 15.0) -> AgentHandle:
    """Start ``netns.peer agent`` in ``ns`` (default the client namespace); it answered a
    ``ping`` when this returns."""
    agent = AgentHandle(_popen(topo, ns or topo.client, peer_argv("agent"), stdin=True))
    try:
        agent.call("ping", wait)
    except PeerError:
        agent.stop()
        raise
    return agent


def start_client(topo: Any, args: Sequence[Any], ns: str | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None
                 ) -> PeerProcess:
    """Start ``netns.peer client ARGS`` in ``ns`` (default the client namespace) and
    return at once (its records and events arrive on the handle; progress events go to
    ``on_progress`` if given)."""
    return PeerProcess(_popen(topo, ns or topo.client, peer_argv("client", *args)),
                       on_progress=on_progress)


def client_args(addr: str, port: int, upload: int | None = 0, download: int | None = 0,
                conns: int = 1, mode: str = "normal", timeout: float = 60.0,
                mptcp: bool = False, bind: str | None = None, seed: int = 1) -> list[Any]:
    """The ``netns.peer client`` options of a transfer (see :func:`run_client`); a size of
    None is left to the client (unlimited for a timed or until-EOF direction)."""
    args: list[Any] = ["--addr", addr, "--port", port, "--conns", conns, "--mode", mode,
                       "--seed", seed, "--timeout", timeout]
    if upload is not None:
        args += ["--upload", upload]
    if download is not None:
        args += ["--download", download]
    if mptcp:
        args.append("--mptcp")
    if bind:
        args += ["--bind", bind]
    return args


def run_client(topo: Any, addr: str, port: int, upload: int | None = 0,
               download: int | None = 0, conns: int = 1, mode: str = "normal",
               timeout: float = 60.0, mptcp: bool = False, bind: str | None = None,
               seed: int = 1, ns: str | None = None, wrapper: Sequence[str] = (),
               extra: Sequence[Any] = (), run_timeout: float | None = None
               ) -> list[dict[str, Any]]:
    """Run ``netns.peer client`` in ``ns`` (default the client namespace) to completion and
    return its records (one per connection, sorted by ``conn``). Sizes in bytes; ``timeout``
    in seconds per socket operation; the whole run gets ``run_timeout`` s (default
    ``2 * timeout + 10``); ``extra``: more client options (e.g. a paced upload)."""
    args = client_args(addr, port, upload, download, conns, mode, timeout, mptcp, bind, seed)
    res = topo.run(ns or topo.client, [*wrapper, *peer_argv("client", *args, *extra)],
                   check=False, timeout=run_timeout or 2 * timeout + 10)
    records = []
    for line in res.stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" not in obj:
            records.append(obj)
    if len(records) != conns:
        raise RuntimeError(f"peer client printed {len(records)}/{conns} records, "
                           f"exit {res.returncode}: {res.stderr.strip()[-2000:]}")
    return sorted(records, key=lambda r: r["conn"])


def measure_rtt(topo: Any, addr: str, port: int, count: int = 20,
                bind: str | None = None, ns: str | None = None,
                interval: float = 0.01) -> list[float]:
    """Connect times (s) of ``count`` TCP connects from ``ns`` (default the client) to a
    listener at ``addr``:``port``: one round trip each. Raises if any connect failed."""
    args: list[Any] = ["probe", "--addr", addr, "--port", port, "--count", count,
                       "--interval", interval]
    if bind:
        args += ["--bind", bind]
    res = topo.run(ns or topo.client, peer_argv(*args), check=False, timeout=30 + count)
    for line in res.stdout.splitlines():
        obj = json.loads(line)
        if obj.get("event") == "rtt" and None not in obj["connect_s"]:
            return obj["connect_s"]
    raise RuntimeError(f"RTT probe failed: {res.stdout} {res.stderr}")
