"""Byte counters of the router's client-side links, sampled in a thread: which link
carried how much, and when the traffic moved from one link to another."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["LinkMeter"]


class LinkMeter:
    """Byte counters of the router's client-side links ``rc<i>`` sampled every ``period`` s
    in a thread: ``tx`` on ``rc<i>`` is download (server -> client) on client link ``i``,
    ``rx`` is upload. ``samples`` = [(monotonic time, {ifname: (tx, rx)})]."""

    def __init__(self, topo: Any, period: float = 0.1) -> None:
        self.topo = topo
        self.period = period
        self.ifaces = list(topo.router_client_ifaces)
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def read(self) -> dict[str, tuple[int, int]]:
        with self.topo.iproute(self.topo.router) as ipr:
            links = ipr.get_links()
        out = {}
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            if name in self.ifaces:
                st = link.get_attr("IFLA_STATS64")
                out[name] = (st["tx_bytes"], st["rx_bytes"])
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = (time.monotonic(), self.read())
            except Exception:  # the bed is going away
                return
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(self.period)

    def __enter__(self) -> "LinkMeter":
        self.samples.append((time.monotonic(), self.read()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def at(self, t: float) -> dict[str, tuple[int, int]]:
        """The last sample taken at or before ``t`` (the first one if none)."""
        with self._lock:
            best = self.samples[0][1]
            for ts, vals in self.samples:
                if ts > t:
                    break
                best = vals
        return best

    def latest(self) -> tuple[float, dict[str, tuple[int, int]]]:
        with self._lock:
            return self.samples[-1]

    def bytes(self, t0: float, t1: float, direction: str = "tx") -> dict[str, int]:
        """Bytes per link in ``[t0, t1]`` (``direction`` "tx" = download, "rx" = upload)."""
        k = 0 if direction == "tx" else 1
        a, b = self.at(t0), self.at(t1)
        return {i: b[i][k] - a[i][k] for i in self.ifaces}

    def total(self, direction: str = "tx") -> int:
        """Bytes on all links since the meter started."""
        k = 0 if direction == "tx" else 1
        first = self.samples[0][1]
        _, last = self.latest()
        return sum(last[i][k] - first[i][k] for i in self.ifaces)

    def wait_total(self, nbytes: int, timeout: float, direction: str = "tx") -> float:
        """Block until ``nbytes`` crossed the links (since the start); returns the time."""
        deadline = time.monotonic() + timeout
        while self.total(direction) < nbytes:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.total(direction)} of {nbytes} bytes "
                                     f"({direction}) crossed the client links in {timeout} s")
            time.sleep(0.05)
        return time.monotonic()

    def moved(self, t_from: float, iface: str, direction: str = "tx", until: float | None = None,
              share: float = 0.8, window: float = 0.5, min_bytes: int = 100_000
              ) -> float | None:
        """Seconds after ``t_from`` at which ``iface`` first carried >= ``share`` of the
        ``direction`` bytes of a ``window``-long interval (with >= ``min_bytes`` in it);
        None if that never happened before ``until``."""
        with self._lock:
            times = [ts for ts, _ in self.samples if ts >= t_from]
        end = until if until is not None else (times[-1] if times else t_from)
        for ts in times:
            if ts + window > end + 1e-9:
                break
            got = self.bytes(ts, ts + window, direction)
            tot = sum(got.values())
            if tot >= min_bytes and got[iface] >= share * tot:
                return round(ts - t_from, 3)
        return None
