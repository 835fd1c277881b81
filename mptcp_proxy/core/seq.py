"""Modular sequence-number arithmetic (RFC 1982 style), as in Linux ``before()``/``before64()``.

TCP sequence numbers (TSN/SSN, and their ACKs) live in 32-bit space; MPTCP data
sequence numbers (DSN/DAN) in 64-bit space (RFC 8684 §3.3). Never compare them
with a raw ``<``.
"""

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
_HALF32 = 0x80000000
_HALF64 = 0x8000000000000000


def diff32(a: int, b: int) -> int:
    """Signed distance ``a - b`` in 32-bit sequence space, in [-2**31, 2**31)."""
    return ((a - b + _HALF32) & MASK32) - _HALF32


def before32(a: int, b: int) -> bool:
    """True if ``a`` comes strictly before ``b`` in 32-bit sequence space."""
    return ((a - b) & MASK32) >= _HALF32


def after32(a: int, b: int) -> bool:
    """True if ``a`` comes strictly after ``b`` in 32-bit sequence space."""
    return ((b - a) & MASK32) >= _HALF32


def max32(a: int, b: int) -> int:
    return a if ((b - a) & MASK32) >= _HALF32 else b


def diff64(a: int, b: int) -> int:
    """Signed distance ``a - b`` in 64-bit sequence space."""
    return ((a - b + _HALF64) & MASK64) - _HALF64


def before64(a: int, b: int) -> bool:
    return ((a - b) & MASK64) >= _HALF64


def after64(a: int, b: int) -> bool:
    return ((b - a) & MASK64) >= _HALF64


def expand_seq(ref64: int, value: int, bits: int) -> int:
    """Widen a ``bits``-bit (32 or 64) DSN or DATA_ACK to the 64-bit value nearest ``ref64``.

    Like Linux ``mptcp_expand_seq()``: a 32-bit value is placed in the 2**32 window
    centred on the reference (the expected sequence number), so a value a little
    behind or ahead of it expands correctly across a 32-bit wrap.
    """
    if bits == 64:
        return value
    return (ref64 + diff32(value, ref64 & MASK32)) & MASK64
