"""Sorted disjoint half-open ranges (:class:`RangeSet`), the models' SACK, reassembly
and hole bookkeeping."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class RangeSet:
    """Sorted disjoint half-open integer ranges ``[lo, hi)`` (two parallel lists)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.lo)

    def __len__(self) -> int:
        return len(self.lo)

    def __iter__(self):
        return iter(zip(self.lo, self.hi))

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"

    def total(self) -> int:
        return sum(h - lo for lo, h in zip(self.lo, self.hi))

    def add(self, a: int, b: int) -> bool:
        """Add ``[a, b)``; True if anything new was covered."""
        if b <= a:
            return False
        lo, hi = self.lo, self.hi
        if lo and a >= lo[-1]:  # fast path: at or after the last range
            if a <= hi[-1]:
                if b > hi[-1]:
                    hi[-1] = b
                    return True
                return False
            lo.append(a)
            hi.append(b)
            return True
        i = bisect_left(hi, a)  # first range ending at or after a
        j = bisect_right(lo, b)  # ranges i..j-1 touch [a, b]
        if i == j:
            lo.insert(i, a)
            hi.insert(i, b)
            return True
        na, nb = min(a, lo[i]), max(b, hi[j - 1])
        new = not (i == j - 1 and lo[i] <= a and b <= hi[i])
        lo[i:j] = [na]
        hi[i:j] = [nb]
        return new

    def remove_below(self, x: int) -> None:
        lo, hi = self.lo, self.hi
        k = bisect_right(hi, x)
        if k:
            del lo[:k]
            del hi[:k]
        if lo and lo[0] < x:
            lo[0] = x

    def remove(self, a: int, b: int) -> None:
        if b <= a or not self.lo:
            return
        out_lo, out_hi = [], []
        for x, y in zip(self.lo, self.hi):
            if y <= a or x >= b:
                out_lo.append(x)
                out_hi.append(y)
                continue
            if x < a:
                out_lo.append(x)
                out_hi.append(a)
            if y > b:
                out_lo.append(b)
                out_hi.append(y)
        self.lo, self.hi = out_lo, out_hi

    def covers(self, a: int, b: int) -> bool:
        """Is ``[a, b)`` entirely inside one range?"""
        if b <= a:
            return True
        i = bisect_right(self.lo, a) - 1
        return i >= 0 and self.hi[i] >= b

    def contig_from(self, x: int) -> int:
        """End of the run covering ``x`` (``x`` itself if ``x`` is not covered)."""
        i = bisect_right(self.lo, x) - 1
        if i >= 0 and self.hi[i] > x:
            return self.hi[i]
        return x

    def missing(self, a: int, b: int) -> list[tuple[int, int]]:
        """Parts of ``[a, b)`` not covered."""
        out = []
        cur = a
        i = bisect_right(self.hi, a)
        while cur < b and i < len(self.lo):
            x, y = self.lo[i], self.hi[i]
            if x >= b:
                break
            if x > cur:
                out.append((cur, x))
            cur = max(cur, y)
            i += 1
        if cur < b:
            out.append((cur, b))
        return out

    def max(self) -> int | None:
        return self.hi[-1] if self.hi else None
