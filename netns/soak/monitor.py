"""What the soak watches while it runs: the peers' progress (is every connection still
receiving?), the daemon's memory, and the handovers it commands."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..proxyd import ProxyError, ProxyHandle

__all__ = ["Progress", "RssSampler", "Handovers"]


class Progress:
    """The progress events of one peer (``netns.peer --progress``): per connection the
    time since it last received a byte. Keeps the longest such silence, the connections
    that were silent longer than ``limit`` s (each with its worst silence and when it
    was first seen), and those whose bytes left the pattern."""

    def __init__(self, direction: str, limit: float) -> None:
        self.direction = direction  # what this peer receives: "down" (client), "up" (server)
        self.limit = limit
        self.max_idle = 0.0
        self.max_idle_seed: int | None = None
        self.stalled: dict[int, dict[str, float]] = {}
        self.bad: set[int] = set()
        self.events = 0
        self.received = 0     # bytes received by the live connections, last event
        self.new_stalls: list[int] = []  # seeds that just crossed the limit (consumed)
        self._lock = threading.Lock()

    def __call__(self, ev: dict[str, Any]) -> None:
        with self._lock:
            self.events += 1
            self.received = 0
            for seed, _sent, received, idle, ok in ev["conns"]:
                self.received += received
                if idle > self.max_idle:
                    self.max_idle, self.max_idle_seed = idle, seed
                if idle > self.limit:
                    if seed not in self.stalled:
                        self.new_stalls.append(seed)
                    st = self.stalled.setdefault(seed, {"first_t": ev["t"], "idle_s": 0.0})
                    st["idle_s"] = max(st["idle_s"], idle)
                if not ok:
                    self.bad.add(seed)

    def take_new_stalls(self) -> list[int]:
        with self._lock:
            out, self.new_stalls = self.new_stalls, []
            return out

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"events": self.events, "max_idle_s": round(self.max_idle, 3),
                    "max_idle_seed": self.max_idle_seed,
                    "stalled": {str(k): v for k, v in sorted(self.stalled.items())},
                    "off_pattern": sorted(self.bad)}


class _Loop:
    """A daemon thread calling :meth:`step` every ``period`` s (on a fixed schedule: a
    slow step does not shift the next ones) until :meth:`stop`."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "_Loop":
        self._thread.start()
        return self

    def _run(self) -> None:
        due = time.monotonic() + self.period
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.step()
            due = max(due + self.period, time.monotonic())

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.period + 15)


class RssSampler(_Loop):
    """The daemon's RSS (KiB) and connection count every ``period`` s: ``samples`` =
    ``[monotonic time, rss_kb, connections]``."""

    def __init__(self, px: ProxyHandle, pid: int, period: float) -> None:
        super().__init__(period)
        self.px, self.pid = px, pid
        self.samples: list[list[float]] = []
        self.errors = 0

    def step(self) -> None:
        try:
            conns = int(self.px.query("status")["connections"])
            self.samples.append([time.monotonic(), self.px.rss_kb(self.pid), conns])
        except Exception:  # the daemon died: the run notices it
            self.errors += 1


class Handovers(_Loop):
    """Every ``period`` s until ``until`` (monotonic), ``mptcpctl handover --all --to
    IF``, alternating ``ifaces`` (the first move goes to the second interface); the
    transfers end after ``until``, and a closing connection is not handed over.
    ``log`` has one entry per command:
    time, target, seconds it took, connections moved, per-connection errors, and the
    command's failure if it failed."""

    def __init__(self, px: ProxyHandle, ifaces: list[str], period: float,
                 until: float) -> None:
        super().__init__(period)
        self.px, self.ifaces, self.until = px, ifaces, until
        self.log: list[dict[str, Any]] = []
        self._next = 1

    def step(self) -> None:
        if time.monotonic() > self.until:  # the transfers end: no more handovers
            return
        to = self.ifaces[self._next % len(self.ifaces)]
        self._next += 1
        t = time.monotonic()
        entry: dict[str, Any] = {"t": t, "to": to}
        try:
            moves = self.px.ctl("handover", "--all", "--to", to, timeout=30)
            entry.update(moved=len(moves), errors=[m for m in moves if m.get("error")])
        except (ProxyError, OSError, ValueError) as exc:
            entry["failed"] = str(exc)[-300:]
        except Exception as exc:  # (subprocess timeout...)
            entry["failed"] = f"{type(exc).__name__}: {exc}"[-300:]
        entry["took_s"] = round(time.monotonic() - t, 3)
        self.log.append(entry)

    def summary(self) -> dict[str, Any]:
        took = sorted(e["took_s"] for e in self.log)
        return {
            "commands": len(self.log),
            "failed_commands": [e for e in self.log if "failed" in e][:20],
            "connection_errors": sum(len(e.get("errors", ())) for e in self.log),
            "connection_error_examples": [x for e in self.log for x in e.get("errors", ())][:20],
            "moves": sum(e.get("moved", 0) for e in self.log),
            "took_s": {"median": took[len(took) // 2] if took else None,
                       "max": took[-1] if took else None},
        }
