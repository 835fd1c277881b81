"""Sets of half-open sequence ranges: what arrived above a hole, what was forwarded to the
TCP side, what a SACK reports (RFC 2018; paper §3.5).

All values are relative, unwrapped sequence numbers (see :mod:`.seq`), so plain
comparisons are safe. A :class:`RangeSet` holds at most ``limit`` ranges: state built
from the wire is bounded; when a new range would exceed the limit, the highest ranges
are dropped, since the lowest ones are those that move cumulative ACKs forward.
"""

from __future__ import annotations

from typing import Iterable

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


class RangeSet(list):
    """Sorted, disjoint, non-adjacent ranges ``[lo, hi]`` (half-open, as 2-item lists), at
    most ``limit`` of them. A list, so that an empty set is falsy at C speed on the
    per-packet path; change it only through the methods."""

    __slots__ = ("limit",)

    def __init__(self, ranges: Iterable[Range] = (), limit: int = DEFAULT_LIMIT) -> None:
        super().__init__([list(x) for x in merge_ranges(ranges)][:limit])
        self.limit = limit

    def add(self, lo: int, hi: int) -> None:
        """Include ``[lo, hi)`` (merging with neighbours; the common case, a range that
        extends the highest one, is O(1))."""
        if hi <= lo:
            return
        if self:
            last = self[-1]
            if last[0] <= lo <= last[1]:
                if hi > last[1]:
                    last[1] = hi
                return
            if lo > last[1]:
                if len(self) < self.limit:
                    self.append([lo, hi])
                return
        else:
            self.append([lo, hi])
            return
        merged = merge_ranges([(a, b) for a, b in self] + [(lo, hi)])
        self[:] = [list(x) for x in merged[:self.limit]]

    def discard_below(self, x: int) -> None:
        """Forget everything below ``x`` (the range holding ``x`` is trimmed to start there)."""
        k = 0
        n = len(self)
        while k < n and self[k][1] <= x:
            k += 1
        if k:
            del self[:k]
        if self and self[0][0] < x:
            self[0][0] = x

    def first(self) -> Range | None:
        """The lowest range, or None."""
        return (self[0][0], self[0][1]) if self else None

    def ranges(self) -> list[Range]:
        """The ranges as tuples."""
        return [(a, b) for a, b in self]

    def above(self, x: int) -> list[Range]:
        """The ranges, clipped to start at or above ``x``."""
        return [(max(a, x), b) for a, b in self if b > x]

    def __contains__(self, x: object) -> bool:
        return any(a <= x < b for a, b in self)

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()!r})"
