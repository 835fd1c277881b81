"""Delivery metrics of a handover from the receiving application's read trace.

Pure functions over plain data (no namespaces, no root), so they can be unit tested and
reused on kept traces. Times are ``time.monotonic()`` seconds unless a name says
otherwise; ``rel`` values are relative to the transfer start ``t0``. The trace file is
what ``netns.peer --trace`` writes: interleaved doubles (time, bytes), one pair per read.

Definitions (also in ``tools/handover --help``):

- **gap**: the time between two consecutive ``recv()`` calls of the receiving application
  that returned data. ``max_gap_s`` is the longest gap that ends at or after ``t_h - 1``
  (``t_h`` = handover instant); ``max_gap_overall_s`` the longest of the whole transfer.
- **max_gap_near_s**: the longest gap overlapping ``[t_h - 1 s, t_h + 3 s]`` (what the
  handover itself caused, without later congestion events or bbr's PROBE_RTT).
- **reference rate** ``R``: bytes delivered in ``(t_h - 2 s, t_h]`` divided by 2 s.
- **recovery_s**: ``t - t_h`` for the earliest ``t`` in ``{t_h} ∪ {recv times ≥ t_h}`` such
  that the bytes delivered in ``[t, t + 0.25 s]`` reach 90 % of ``R × 0.25 s``; None if
  that never happens before the end of the trace.
- **recovery_nominal_s**: the same, but the window must carry 80 % of the emulated path
  rate instead of 90 % of ``R`` (robust when the rate before the handover was already
  low, e.g. without SACK).
- **first_byte_after_s**: end of the longest gap that ends after ``t_h``, minus ``t_h``:
  when delivery resumed after the stall (a make-before-break with no stall gives a small
  value: the end of the largest ordinary inter-recv pause).
- **rate_before_mbit** = ``R`` in Mbit/s; **rate_after_mbit**: bytes delivered in the 2 s
  before the sender stopped (clipped to start at ``t_h``) per second.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any, Sequence

__all__ = [
    "REF_WINDOW_S", "RATE_WINDOW_S", "RATE_FRACTION", "GAP_WINDOW_S", "NEAR_AFTER_S",
    "NOMINAL_FRACTION", "write_trace", "read_trace", "trace_metrics", "return_metrics",
]

REF_WINDOW_S = 2.0     # reference rate: the 2 s before the handover
RATE_WINDOW_S = 0.25   # recovery: a 250 ms window ...
RATE_FRACTION = 0.9    # ... must carry 90 % of the reference rate
GAP_WINDOW_S = 1.0     # max_gap_s looks at gaps ending at or after t_h - 1 s
NEAR_AFTER_S = 3.0     # max_gap_near_s: gaps ending within [t_h - 1 s, t_h + 3 s]
NOMINAL_FRACTION = 0.8  # recovery_nominal_s: 80 % of the emulated path rate


def write_trace(path: str, times: array, sizes: array) -> None:
    """Binary trace: ``len`` pairs of doubles (monotonic time, bytes) interleaved."""
    out = array("d")
    for t, n in zip(times, sizes):
        out.append(t)
        out.append(float(n))
    with open(path, "wb") as f:
        out.tofile(f)


def read_trace(path: str) -> tuple[list[float], list[int]]:
    data = array("d")
    with open(path, "rb") as f:
        data.frombytes(f.read())
    return list(data[0::2]), [int(n) for n in data[1::2]]


def _bytes_between(times: Sequence[float], cum: Sequence[int], lo: float, hi: float,
                   lo_closed: bool = True) -> int:
    """Bytes of the recv events with ``lo <= t <= hi`` (``lo < t`` if not lo_closed)."""
    i = (bisect.bisect_left if lo_closed else bisect.bisect_right)(times, lo)
    j = bisect.bisect_right(times, hi)
    return cum[j] - cum[i] if j > i else 0


def _recovery(times: Sequence[float], cum: Sequence[int], t_h: float,
              rate: float) -> float | None:
    """``t - t_h`` for the first ``t`` in {t_h} ∪ {recv times >= t_h} from which the
    bytes delivered in ``[t, t + RATE_WINDOW_S]`` reach ``rate × RATE_WINDOW_S``."""
    if rate <= 0:
        return None
    need = rate * RATE_WINDOW_S
    for c in [t_h] + list(times[bisect.bisect_left(times, t_h):]):
        if _bytes_between(times, cum, c, c + RATE_WINDOW_S) >= need:
            return round(c - t_h, 6)
    return None


def trace_metrics(times: Sequence[float], sizes: Sequence[int], t0: float, t_h: float,
                  t_send_end: float | None = None, t_recv_end: float | None = None,
                  nominal_mbit: float | None = None) -> dict[str, Any]:
    """Delivery metrics of a receiver trace around the handover instant ``t_h``.

    ``t_recv_end``: when the receiver saw EOF or was stopped; the silence from the last
    data to it counts as a gap (a transfer that never resumed has its stall measured)."""
    n = len(times)
    out: dict[str, Any] = {
        "recv_calls": n, "bytes": sum(sizes), "max_gap_s": None, "max_gap_from_s": None,
        "max_gap_overall_s": None, "max_gap_overall_from_s": None, "recovery_s": None,
        "recovery_nominal_s": None, "max_gap_near_s": None, "max_gap_near_from_s": None,
        "first_byte_after_s": None, "rate_before_mbit": None, "rate_after_mbit": None,
        "goodput_mbit": None, "first_byte_s": None, "last_byte_s": None,
    }
    if n == 0:
        return out
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    out["first_byte_s"] = round(times[0] - t0, 6)
    out["last_byte_s"] = round(times[-1] - t0, 6)
    if n > 1 and times[-1] > times[0]:
        out["goodput_mbit"] = round((cum[-1] - sizes[0]) * 8 / (times[-1] - times[0]) / 1e6, 3)
    out.update(_gaps(times, t0, t_h, t_recv_end))
    out.update(_rates(times, cum, t_h, t_send_end, nominal_mbit))
    return out


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 6)


def _gaps(times: Sequence[float], t0: float, t_h: float,
          t_recv_end: float | None) -> dict[str, Any]:
    """The longest gaps: overall, from ``t_h - GAP_WINDOW_S`` on, near the handover, and
    the end of the longest one ending after ``t_h`` (delivery resumed)."""
    n = len(times)
    best = best_win = best_near = (0.0, None)
    best_after: tuple = (0.0, None, None)  # (gap, start, end) among gaps ending after t_h
    ends = list(times)
    if t_recv_end is not None and t_recv_end > times[-1]:
        ends.append(t_recv_end)  # trailing silence: no byte at its end
    for i in range(1, len(ends)):
        g, start, end = ends[i] - ends[i - 1], ends[i - 1], ends[i]
        if g > best[0]:
            best = (g, start)
        if end >= t_h - GAP_WINDOW_S and g > best_win[0]:
            best_win = (g, start)
        if t_h - GAP_WINDOW_S <= end and start <= t_h + NEAR_AFTER_S and g > best_near[0]:
            best_near = (g, start)
        if end > t_h and g > best_after[0]:
            best_after = (g, start, end if i < n else None)
    return {
        "max_gap_overall_s": round(best[0], 6), "max_gap_overall_from_s": _rel(best[1], t0),
        "max_gap_s": round(best_win[0], 6), "max_gap_from_s": _rel(best_win[1], t0),
        "max_gap_near_s": round(best_near[0], 6),
        "max_gap_near_from_s": _rel(best_near[1], t0),
        "first_byte_after_s": None if best_after[2] is None
        else round(max(0.0, best_after[2] - t_h), 6),
    }


def _rates(times: Sequence[float], cum: Sequence[int], t_h: float,
           t_send_end: float | None, nominal_mbit: float | None) -> dict[str, Any]:
    """The reference rate before ``t_h``, the recovery times and the rate at the end."""
    out: dict[str, Any] = {"recovery_nominal_s": None, "rate_after_mbit": None}
    ref = _bytes_between(times, cum, t_h - REF_WINDOW_S, t_h, lo_closed=False) / REF_WINDOW_S
    out["rate_before_mbit"] = round(ref * 8 / 1e6, 3)
    out["recovery_s"] = _recovery(times, cum, t_h, RATE_FRACTION * ref)
    if nominal_mbit:
        out["recovery_nominal_s"] = _recovery(times, cum, t_h,
                                              NOMINAL_FRACTION * nominal_mbit * 1e6 / 8)
    end = t_send_end if t_send_end is not None else times[-1]
    lo = max(t_h, end - REF_WINDOW_S)
    if end > lo:
        after = _bytes_between(times, cum, lo, end, lo_closed=False) / (end - lo)
        out["rate_after_mbit"] = round(after * 8 / 1e6, 3)
    return out


def return_metrics(times: Sequence[float], sizes: Sequence[int], t_h: float, t_ret: float,
                   t_recv_end: float | None = None,
                   nominal_mbit: float | None = None) -> dict[str, Any]:
    """Delivery after a path came back at ``t_ret`` (an event that began at ``t_h``):
    ``first_byte_s``: first data-returning ``recv()`` after ``t_ret``, minus ``t_ret``;
    ``recovery_s``: from ``t_ret`` until a 0.25 s window carries 90 % of the rate of the
    2 s before ``t_h`` (as ``recovery_s`` of :func:`trace_metrics`); ``recovery_nominal_s``
    the same with 80 % of ``nominal_mbit``; ``bytes_during``: delivered in
    ``(t_h, t_ret]``. None where it never happened."""
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    i = bisect.bisect_right(times, t_ret)
    first = times[i] - t_ret if i < len(times) else None
    ref = _bytes_between(times, cum, t_h - REF_WINDOW_S, t_h, lo_closed=False) / REF_WINDOW_S
    out: dict[str, Any] = {
        "first_byte_s": None if first is None else round(first, 6),
        "recovery_s": _recovery(times, cum, t_ret, RATE_FRACTION * ref),
        "recovery_nominal_s": (_recovery(times, cum, t_ret,
                                         NOMINAL_FRACTION * nominal_mbit * 1e6 / 8)
                               if nominal_mbit else None),
        "bytes_during": _bytes_between(times, cum, t_h, t_ret, lo_closed=False),
        "rate_before_mbit": round(ref * 8 / 1e6, 3),
    }
    return out
