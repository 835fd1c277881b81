"""SEND and RECV mapping tables, and the range projection between sequence spaces.

Paper §3.3–3.5 (Fig. 5); RFC 8684 §3.3.1. Every sequence number here is a
*relative, unwrapped* integer (0 = first data byte), so plain comparisons are
safe:

- ``d``: relative data sequence of our sending direction (= relative TSN of the
  local stack's sending direction = DSN - (IDSN_local + 1)).
- ``r``: relative data sequence of the peer's sending direction (= relative TSN
  of the local stack's receiving direction = DSN - (IDSN_peer + 1)).
- ``s``: relative subflow sequence on one subflow (0 = first data byte; the
  RFC's wire SSN is ``s + 1``).

A table is a list of entries ``[a, b, n]``: ``n`` bytes at ``a..a+n`` in the
table's key space map to ``b..b+n`` in the other space. Entries are kept sorted
by key and merged when contiguous in both spaces, so between handovers a table
holds one entry.
"""

from __future__ import annotations

from bisect import bisect_right

from .rangeset import Range, merge_ranges


class MapTable:
    """Sorted, merged list of ``[key_start, value_start, length]`` entries."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, a: int, b: int, n: int) -> bool:
        """Record that key range ``[a, a+n)`` maps to ``[b, b+n)``.

        Returns ``False`` (and changes nothing) if the range overlaps an existing
        entry with a *different* mapping — a conflicting mapping (RFC 8684 §3.3.1;
        Linux ``DSSNotMatching``). Overlaps with the same mapping are absorbed.
        Invariant: entries are sorted, disjoint, and no two same-offset entries touch.
        """
        if n <= 0:
            return True
        ents = self.entries
        off = b - a
        end = a + n
        if not ents:
            ents.append([a, b, n])
            return True
        last = ents[-1]
        la, lb, ln = last
        lend = la + ln
        if a >= la:  # fast path: at or after the start of the last entry
            same = lb - la == off
            if a < lend and not same:
                return False
            if same and a <= lend:
                if end > lend:
                    last[2] = end - la
                return True
            if a >= lend:
                ents.append([a, b, n])
                return True
        for e in ents:
            if e[0] < end and e[0] + e[2] > a and e[1] - e[0] != off:
                return False
        lo, hi = a, end
        keep = []
        for e in ents:
            if e[1] - e[0] == off and e[0] <= hi and e[0] + e[2] >= lo:
                lo = min(lo, e[0])
                hi = max(hi, e[0] + e[2])
            else:
                keep.append(e)
        keep.insert(bisect_right(keep, [lo, float("inf")]), [lo, lo + off, hi - lo])
        self.entries = keep
        return True

    def lookup(self, a: int) -> list[int] | None:
        """The entry containing key ``a``, or ``None``."""
        ents = self.entries
        if ents:
            last = ents[-1]
            if last[0] <= a < last[0] + last[2]:
                return last
        i = bisect_right(ents, [a, float("inf")]) - 1
        if i >= 0:
            e = ents[i]
            if a < e[0] + e[2]:
                return e
        return None

    def map_range(self, a: int, n: int) -> list[tuple[int, int, int]]:
        """Pieces ``(key_start, value_start, length)`` of ``[a, a+n)`` covered by entries
        (gaps are left out)."""
        out = []
        end = a + n
        ents = self.entries
        i = max(0, bisect_right(ents, [a, float("inf")]) - 1)
        while i < len(ents):
            ea, eb, en = ents[i]
            if ea >= end:
                break
            lo = max(a, ea)
            hi = min(end, ea + en)
            if lo < hi:
                out.append((lo, eb + (lo - ea), hi - lo))
            i += 1
        return out

    def project(self, ranges: list[Range]) -> list[Range]:
        """Project key-space ranges into value space (paper §3.5, Fig. 5b):
        each covered piece maps to its value range; results sorted and merged."""
        out: list[Range] = []
        for lo, hi in ranges:
            if hi > lo:
                for _a, b, n in self.map_range(lo, hi - lo):
                    out.append((b, b + n))
        return merge_ranges(out)

    def prune_below_key(self, a: int) -> None:
        """Drop entries entirely below key ``a`` (trimming none)."""
        ents = self.entries
        k = 0
        while k < len(ents) and ents[k][0] + ents[k][2] <= a:
            k += 1
        if k:
            del ents[:k]

    def prune_below_value(self, b: int) -> None:
        """Drop entries whose value range lies entirely below ``b``."""
        ents = self.entries
        if ents and all(e[1] + e[2] > b for e in ents):
            return
        self.entries = [e for e in ents if e[1] + e[2] > b]
