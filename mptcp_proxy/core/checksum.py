"""The Internet checksum in all the forms the proxy needs: TCP (RFC 9293 §3.1), the IPv4
header (RFC 791), incremental updates (RFC 1624) and the DSS checksum (RFC 8684 §3.3.1).

One identity is used throughout: the ones'-complement sum of the 16-bit words of an
even-length byte string is congruent, modulo 0xFFFF, to the big-endian integer of that
string (2**16 ≡ 1 mod 0xFFFF). So the sum of any block is ``int.from_bytes(block,
"big") % 0xFFFF`` (one C call), and changing a 16-bit-aligned field from ``old`` to
``new`` (of any width) changes the sum by ``new - old`` (mod 0xFFFF). Values called a
*sum* here are folded ones'-complement sums in 1..0xFFFF, or 0 for all-zero data.

Long blocks (a payload, a GSO super-packet of up to 64 KB) are summed by a small C function
(``_csum``, built from csum_build.py by cffi at install time): the integer identity costs
~7 ns per byte in CPython, the C loop ~0.1 (docs/performance.md). Without the compiled
module (no compiler at install time) :func:`ones_sum` is the Python one; both give the same
results (tests/unit/test_checksum_c.py).
"""

from __future__ import annotations

import struct

try:  # the compiled sum (optional: see the module docstring)
    from ._csum import ffi as _ffi
    from ._csum import lib as _lib
except ImportError:  # pragma: no cover - depends on the install
    _ffi = _lib = None

__all__ = [
    "M16", "HAVE_C_SUM", "ones_sum", "ones_sum_py", "ones_add", "fold_checksum",
    "pseudo_header_sum", "tcp_checksum",
    "ipv4_header_checksum", "dss_checksum", "dss_checksum_ok",
]

M16 = 0xFFFF
IPPROTO_TCP = 6
_CSUM_PSEUDO = struct.Struct("!QIHH")  # DSN(64) SSN(32) DLL(16) zero/checksum(16)


HAVE_C_SUM = _lib is not None
C_SUM_MIN = 128  # bytes: below this the Python sum is as fast (no cffi call overhead)


def ones_sum(data: bytes | bytearray | memoryview, odd_start: bool = False) -> int:
    """Folded ones'-complement sum of ``data`` as 16-bit big-endian words (RFC 1071).

    An odd length is padded with a trailing zero byte. ``odd_start``: the first byte sits
    at an odd offset of the summed stream (the low byte of a word), as when a payload is
    cut at an odd place; sums of the pieces then combine with :func:`ones_add`. The
    result is 0 only for all-zero (or empty) data; a nonzero multiple of 0xFFFF gives
    0xFFFF (the exact end-around-carry sum). ``data`` of :data:`C_SUM_MIN` bytes or more
    is summed in C when the compiled module is there (same result as :func:`ones_sum_py`).
    """
    n = len(data)
    if n >= C_SUM_MIN and _lib is not None:
        return _lib.ones_sum(_ffi.from_buffer(data), n, odd_start)
    return ones_sum_py(data, odd_start)


def ones_sum_py(data: bytes | bytearray | memoryview, odd_start: bool = False) -> int:
    """:func:`ones_sum` in Python: the reference (and the fallback without the C module)."""
    total = int.from_bytes(data, "big")  # a leading zero byte (odd_start) changes nothing
    if (len(data) + odd_start) & 1:
        total <<= 8
    if total == 0:
        return 0
    return total % M16 or M16


def ones_add(a: int, b: int) -> int:
    """Ones'-complement addition of two folded sums (end-around carry)."""
    s = a + b
    if s == 0:
        return 0
    return s % M16 or M16


def fold_checksum(total: int) -> int:
    """The checksum field value for a sum given as any non-negative integer congruent to
    it modulo 0xFFFF (not 0 unless the data is all zeros)."""
    r = total % M16
    if r == 0 and total:
        r = M16
    return M16 - r if r else M16


def pseudo_header_sum(src: bytes, dst: bytes, tcp_len: int) -> int:
    """Unfolded sum of the TCP pseudo-header (IPv4 or IPv6 by address length)."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_TCP + tcp_len


def tcp_checksum(src: bytes, dst: bytes, segment: bytes | bytearray | memoryview) -> int:
    """Full TCP checksum of ``segment`` (header with its checksum field zeroed, plus
    payload) for IPv4 or IPv6 addresses; returns the 16-bit field value."""
    return fold_checksum(pseudo_header_sum(src, dst, len(segment)) + ones_sum(segment))


def ipv4_header_checksum(hdr: bytes | bytearray | memoryview) -> int:
    """IPv4 header checksum of ``hdr`` with its checksum field zeroed (RFC 791)."""
    return fold_checksum(ones_sum(hdr))


def dss_checksum(data_seq64: int, subflow_seq: int, data_len: int, payload_sum: int) -> int:
    """DSS checksum to put on the wire (RFC 8684 §3.3.1): the complement of the sum of
    the pseudo-header DSN (always the full 64 bits) ‖ SSN (32) ‖ DLL (16) ‖ zero (16)
    and the mapped payload, whose :func:`ones_sum` is ``payload_sum`` (DLL counts a
    DATA_FIN, which adds no payload bytes)."""
    header = _CSUM_PSEUDO.pack(data_seq64, subflow_seq, data_len, 0)
    return ~ones_add(ones_sum(header), payload_sum) & M16


def dss_checksum_ok(data_seq64: int, subflow_seq: int, data_len: int, payload_sum: int,
                    checksum: int) -> bool:
    """Receiver's check (RFC 8684 §3.3.1): the pseudo-header with ``checksum`` in the
    zero field, plus the payload, sums to ones'-complement zero (0xFFFF)."""
    header = _CSUM_PSEUDO.pack(data_seq64, subflow_seq, data_len, checksum)
    return ones_add(ones_sum(header), payload_sum) == M16
