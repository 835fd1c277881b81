"""What the core decides for each queued packet.

The driver hands the core a packet as a ``bytearray``; the core rewrites it in place when
it must. One contract (checked by :class:`~.proxy.Proxy` for every packet): a buffer that
was changed is never reported unchanged — :attr:`Verdict.ACCEPT` means the original
bytes pass, :attr:`Verdict.MANGLE` means the buffer as rewritten (checksums completed)
replaces them.
"""

from enum import IntEnum

__all__ = ["Verdict", "ACCEPT", "DROP", "MANGLE"]


class Verdict(IntEnum):
    """The verdict on one queued packet."""

    ACCEPT = 0  # pass the packet exactly as it came
    DROP = 1  # consume it (the proxy handled it, or it must not pass)
    MANGLE = 2  # pass the rewritten buffer instead


ACCEPT = Verdict.ACCEPT
DROP = Verdict.DROP
MANGLE = Verdict.MANGLE
