"""Verdicts and connection states shared by the parts of :class:`.connection.Connection`."""

from enum import IntEnum

ACCEPT = None
"""Verdict: let the packet through unchanged."""
DROP = False
"""Verdict: drop (consume) the packet."""


class ConnState(IntEnum):
    """Connection life cycle (paper Fig. 4a)."""

    SYN_SENT = 1  # local SYN seen, MP_CAPABLE added
    ESTABLISHED = 2  # MP_CAPABLE answered; MPTCP in use
    FALLBACK = 3  # the peer answered without MP_CAPABLE: plain TCP, untouched
    CLOSED = 4  # both DATA_FINs acknowledged, or reset; remembered for a while


def ts_after(a: int, b: int) -> bool:
    """TSval ``a`` is after ``b`` (32-bit, RFC 7323)."""
    return ((b - a) & 0xFFFFFFFF) >= 0x80000000
