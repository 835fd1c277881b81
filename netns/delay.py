"""One-way delay stage on an NFQUEUE (this kernel has no netem).

    python -m netns.delay --queue Q --delay-ms D [--max-len N]

Binds NFQUEUE ``Q`` (run it in the namespace whose iptables rules feed the queue, e.g. the
router's ``-t mangle -A FORWARD -i rc0 -j NFQUEUE --queue-num Q``), holds every packet and
gives it its ACCEPT verdict ``D`` ms after it was read, in arrival order (FIFO: the delay is
constant, so order is kept). Packets are queued in copy-meta mode (no payload crosses to
userspace). One thread: ``select`` on the queue socket with the next release time as the
timeout, so releases are late by the wake-up latency only (~0.1 ms idle; see
:func:`netns.emulation` tests for measurements).

stdout: ``{"event": "ready", "queue": Q, "delay_ms": D}`` once bound; on SIGTERM/SIGINT it
releases every held packet at once, unbinds and prints ``{"event": "stats", "packets": n,
"late_ms": {"mean", "p50", "p99", "max"}}`` (lateness = release time - due time).
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import signal
import sys
import time
from typing import Any, Sequence

__all__ = ["DelayStage", "main"]


class DelayStage:
    """Hold packets of one NFQUEUE for ``delay_s`` seconds each (FIFO)."""

    def __init__(self, queue: int, delay_s: float, max_len: int = 20000) -> None:
        from netfilterqueue import COPY_META, NetfilterQueue

        self.delay_s = delay_s
        self.held: collections.deque[tuple[float, Any]] = collections.deque()
        self.late: list[float] = []
        self.packets = 0
        self.stopping = False
        # Wake-up compensation: release this much before the due time, the running mean
        # (EWMA) of how late a release was without it (select/timer slack, ~0.1-0.2 ms).
        self.early = 0.0
        self._nfq = NetfilterQueue()
        # max_len bounds the packets held in the kernel awaiting a verdict: at 1 Gbit/s a
        # 30 ms delay holds ~2500 full-size packets per direction.
        self._nfq.bind(queue, self._on_packet, max_len=max_len, mode=COPY_META,
                       sock_len=8 << 20)
        self._fd = self._nfq.get_fd()

    def _on_packet(self, pkt: Any) -> None:
        self.held.append((time.monotonic() + self.delay_s, pkt))
        self.packets += 1

    def _release_due(self) -> None:
        now = time.monotonic()
        held, late = self.held, self.late
        horizon = now + self.early
        while held and held[0][0] <= horizon:
            due, pkt = held.popleft()
            pkt.accept()
            lateness = now - due
            late.append(lateness)
            slack = lateness + self.early  # how late it would have been uncompensated
            self.early = min(0.001, max(0.0, self.early + (slack - self.early) / 16))
            if len(late) > 200000:
                del late[:100000]

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from a signal handler)."""
        while not self.stopping:
            timeout = 0.2
            if self.held:
                timeout = max(0.0, self.held[0][0] - self.early - time.monotonic())
            try:
                ready, _, _ = select.select([self._fd], [], [], timeout)
            except InterruptedError:
                continue
            if ready:
                self._nfq.run(block=False)
            self._release_due()
        self.flush()

    def stop(self) -> None:
        self.stopping = True

    def flush(self) -> None:
        """Accept every held packet now and unbind the queue."""
        while self.held:
            self.held.popleft()[1].accept()
        self._nfq.unbind()

    def stats(self) -> dict[str, Any]:
        """``packets`` seen and release lateness in ms (mean, p50, p99, max)."""
        late = sorted(self.late)
        if not late:
            return {"packets": self.packets, "late_ms": None}

        def pct(p: float) -> float:
            return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 3)

        return {"packets": self.packets,
                "late_ms": {"mean": round(sum(late) / len(late) * 1000, 3), "p50": pct(0.5),
                            "p99": pct(0.99), "max": round(late[-1] * 1000, 3)}}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.delay", description=__doc__.split("\n")[0])
    ap.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay, ms")
    ap.add_argument("--max-len", type=int, default=20000, help="packets held at most")
    a = ap.parse_args(argv)
    stage = DelayStage(a.queue, a.delay_ms / 1000.0, a.max_len)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stage.stop())
    _emit({"event": "ready", "queue": a.queue, "delay_ms": a.delay_ms})
    stage.run()
    _emit({"event": "stats", **stage.stats()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
