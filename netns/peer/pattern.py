"""The byte pattern every traffic generator of the test bed sends and checks.

One pseudo-random block of :data:`PERIOD` bytes (a prime, so a stream shifted by anything
but a multiple of a megabyte never matches itself) is generated once per process. The
stream of a connection, named by ``(seed, direction)`` with direction ``"up"`` (client to
server) or ``"down"``, is that block repeated from a starting offset the name decides:

    byte i of stream (seed, direction) = BLOCK[(start(seed, direction) + i) mod PERIOD]

Distinct names (seed below 2**19) start at distinct offsets, so a byte delivered to the
wrong position of its own stream, or into another connection's stream, is caught by a
position-exact comparison (:meth:`Stream.matches`, a ``memcmp`` on a slice: no copy, no
hash, fast enough for 14 Gbit/s of plain TCP). Senders send slices of the doubled block
(:meth:`Stream.window`), so producing the stream costs nothing either. Hashes of a prefix
(:func:`expected_sha`) serve checks made after the fact.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

__all__ = ["PERIOD", "CHUNK", "Stream", "stream_chunks", "expected_sha"]

PERIOD = 1_048_573          # bytes, prime
CHUNK = 65536               # default chunk of stream_chunks, bytes
_STRIDE = 648_055           # offset step between stream names (about PERIOD / golden ratio)
_BLOCK = random.Random(0x6D707470).randbytes(PERIOD)
_DOUBLE = _BLOCK + _BLOCK   # any window of <= PERIOD bytes at any offset is one slice
_VIEW = memoryview(_DOUBLE)


class Stream:
    """The stream ``(seed, direction)``: ``window`` and ``matches`` address it by byte
    position (0 = the first byte of the connection's stream)."""

    __slots__ = ("seed", "direction", "start")

    def __init__(self, seed: int, direction: str = "up") -> None:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        self.seed = seed
        self.direction = direction
        self.start = (((seed << 1) | (direction == "down")) * _STRIDE) % PERIOD

    def window(self, pos: int, n: int) -> memoryview:
        """Bytes ``[pos, pos + n)`` of the stream (``n <= PERIOD``), without a copy."""
        off = (self.start + pos) % PERIOD
        return _VIEW[off:off + min(n, PERIOD)]

    def matches(self, pos: int, data: bytes | memoryview) -> bool:
        """True if ``data`` (at most ``PERIOD`` bytes) is the stream at ``pos``."""
        return _DOUBLE.startswith(data, (self.start + pos) % PERIOD)

    def first_mismatch(self, pos: int, data: bytes | memoryview) -> int | None:
        """Offset into ``data`` of its first byte that differs from the stream at ``pos``
        (None if all match)."""
        want = self.window(pos, len(data))
        for i in range(len(data)):
            if data[i] != want[i]:
                return i
        return None


def stream_chunks(seed: int, nbytes: int, direction: str = "up",
                  chunk: int = CHUNK) -> Iterator[memoryview]:
    """The first ``nbytes`` of the stream ``(seed, direction)`` in ``chunk``-byte slices
    (the last one shorter)."""
    stream = Stream(seed, direction)
    pos = 0
    while pos < nbytes:
        block = stream.window(pos, min(chunk, nbytes - pos))
        pos += len(block)
        yield block


def expected_sha(seed: int, nbytes: int, direction: str = "up") -> str:
    """Hex SHA-256 of the first ``nbytes`` of the stream ``(seed, direction)``."""
    h = hashlib.sha256()
    for block in stream_chunks(seed, nbytes, direction, chunk=PERIOD):
        h.update(block)
    return h.hexdigest()
