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


def unwrap(wire: int, base: int, ref: int) -> int:
    """Relative, unwrapped value of a 32-bit wire sequence number (TSN or SSN).

    ``base`` is the wire value of relative 0 (ISN + 1); ``ref`` a relative value near the
    expected result. Result: the integer ≡ ``wire - base`` (mod 2**32) nearest ``ref``.
    """
    return ref + diff32((wire - base) & MASK32, ref & MASK32)


def data_rel(idsn: int, ref: int, value: int, bits: int) -> int:
    """Relative data sequence number (0 = the first data byte, DSN ``idsn + 1``) of a
    wire DSN or DATA_ACK of ``bits`` bits (32 or 64) sent in the space of the key whose
    IDSN is ``idsn``; a 32-bit value is widened next to ``ref`` (a relative value near
    the expected one), like Linux ``mptcp_expand_seq`` (RFC 8684 §3.3.1). The one
    DSN/DATA_ACK expansion of the proxy; the result may be negative for a value below
    the first byte (an old or forged one)."""
    base = (idsn + 1) & MASK64
    v = (expand_seq((base + ref) & MASK64, value, bits) - base) & MASK64
    return v - (1 << 64) if v >= _HALF64 else v


def data_wire(idsn: int, rel: int) -> int:
    """The 64-bit wire DSN (or DATA_ACK) of relative data sequence ``rel``."""
    return (idsn + 1 + rel) & MASK64
