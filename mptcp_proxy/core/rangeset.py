"""Sets of half-open sequence ranges: what arrived above a hole, what was forwarded to the
TCP side, what a SACK reports (RFC 2018; paper §3.5).

All values are relative, unwrapped sequence numbers (see :mod:`.seq`), so plain
comparisons are safe. A :class:`RangeSet` holds at most ``limit`` ranges: state built
from the wire is bounded; when a new range would exceed the limit, the highest ranges
are dropped, since the lowest ones are those that move cumulative ACKs forward.
"""

from __future__ import annotations

from typing import Iterable, Iterator

__all__ = ["Range", "RangeSet", "merge_ranges"]

Range = tuple[int, int]  # half-open [start, end)

DEFAULT_LIMIT = 64


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sort and merge overlapping or adjacent half-open ranges (empty ones dropped)."""
    ranges = sorted(r for r in ranges if r[1] > r[0])
    if len(ranges) < 2:
        return ranges
    out = [ranges[0]]
    for lo, hi in ranges[1:]:
        plo, phi = out[-1]
        if lo <= phi:
            if hi > phi:
                out[-1] = (plo, hi)
        else:
            out.append((lo, hi))
    return out


class RangeSet:
    """Sorted, disjoint, non-adjacent ranges ``[lo, hi)``, at most ``limit`` of them."""

    __slots__ = ("_r", "limit")

    def __init__(self, ranges: Iterable[Range] = (), limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._r: list[list[int]] = [list(x) for x in merge_ranges(ranges)][:limit]

    def add(self, lo: int, hi: int) -> None:
        """Include ``[lo, hi)`` (merging with neighbours; the common case, a range that
        extends the highest one, is O(1))."""
        if hi <= lo:
            return
        r = self._r
        if r:
            last = r[-1]
            if last[0] <= lo <= last[1]:
                if hi > last[1]:
                    last[1] = hi
                return
            if lo > last[1]:
                if len(r) < self.limit:
                    r.append([lo, hi])
                return
        else:
            r.append([lo, hi])
            return
        merged = merge_ranges([(a, b) for a, b in r] + [(lo, hi)])
        self._r = [list(x) for x in merged[:self.limit]]

    def discard_below(self, x: int) -> None:
        """Forget everything below ``x`` (the range holding ``x`` is trimmed to start there)."""
        r = self._r
        k = 0
        while k < len(r) and r[k][1] <= x:
            k += 1
        if k:
            del r[:k]
        if r and r[0][0] < x:
            r[0][0] = x

    def clear(self) -> None:
        self._r.clear()

    def first(self) -> Range | None:
        """The lowest range, or None."""
        return (self._r[0][0], self._r[0][1]) if self._r else None

    def ranges(self) -> list[Range]:
        return [(a, b) for a, b in self._r]

    def above(self, x: int) -> list[Range]:
        """The ranges, clipped to start at or above ``x``."""
        return [(max(a, x), b) for a, b in self._r if b > x]

    def __iter__(self) -> Iterator[Range]:
        return iter([(a, b) for a, b in self._r])

    def __len__(self) -> int:
        return len(self._r)

    def __bool__(self) -> bool:
        return bool(self._r)

    def __contains__(self, x: int) -> bool:
        return any(a <= x < b for a, b in self._r)

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()!r})"
