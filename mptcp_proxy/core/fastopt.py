"""Hot-path encoders/decoders for the options seen on every data packet.

:mod:`.options` is the complete, strict codec with one dataclass per form; this
module does the few forms the per-packet path touches (DSS, timestamps, SACK)
with precompiled structs and plain tuples, and must agree with :mod:`.options`
byte for byte (tests check it). RFC 8684 §3.3; RFC 7323 §3; RFC 2018 §3.
"""

from __future__ import annotations

import struct

from .constants import (
    MPTCP_DSS_ACK64,
    MPTCP_DSS_DATA_FIN,
    MPTCP_DSS_DSN64,
    MPTCP_DSS_HAS_ACK,
    MPTCP_DSS_HAS_MAP,
    TCPOPT_MPTCP,
    TCPOPT_SACK,
    TCPOPT_TIMESTAMP,
)

_TS = struct.Struct("!BBII")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U16 = struct.Struct("!H")
_II = struct.Struct("!II")
_IH = struct.Struct("!IH")

# DSS with DATA_ACK (32-bit) + 64-bit mapping, with and without checksum: the
# form the proxy sends on data segments (24 / 24+2 bytes before padding).
_DSS_A4_M8 = struct.Struct("!BBBBIQIH")
_DSS_A4_M8_CS = struct.Struct("!BBBBIQIHH")
_DSS_A4 = struct.Struct("!BBBBI")
_DSS_A8 = struct.Struct("!BBBBQ")
_DSS_M8 = struct.Struct("!BBBBQIH")
_DSS_M8_CS = struct.Struct("!BBBBQIHH")

NOP2 = b"\x01\x01"


def dss_len(flags: int, csum: bool) -> int:
    """Wire length of a DSS option with these flags (RFC 8684 §3.3)."""
    n = 4
    if flags & MPTCP_DSS_HAS_ACK:
        n += 8 if flags & MPTCP_DSS_ACK64 else 4
    if flags & MPTCP_DSS_HAS_MAP:
        n += 14 if flags & MPTCP_DSS_DSN64 else 10
        if csum:
            n += 2
    return n


def build_dss_ack(data_ack: int) -> bytes:
    """A DSS carrying only a 32-bit DATA_ACK: exactly 8 bytes, already 4-aligned."""
    return _DSS_A4.pack(TCPOPT_MPTCP, 8, 0x20, MPTCP_DSS_HAS_ACK, data_ack & 0xFFFFFFFF)


def build_dss_map(data_ack: int | None, data_seq: int, ssn: int, dll: int,
                  csum: int | None, data_fin: bool) -> bytes:
    """A DSS with an optional 32-bit DATA_ACK and a 64-bit mapping, padded with
    leading NOPs to a multiple of 4 bytes. ``csum`` is the checksum value or None.
    Sizes: with ACK 22 (+2 NOP) or 24 with checksum; without ACK 18 (+2) / 20."""
    fin = MPTCP_DSS_DATA_FIN if data_fin else 0
    if data_ack is not None:
        flags = MPTCP_DSS_HAS_ACK | MPTCP_DSS_HAS_MAP | MPTCP_DSS_DSN64 | fin
        if csum is None:
            return NOP2 + _DSS_A4_M8.pack(TCPOPT_MPTCP, 22, 0x20, flags, data_ack & 0xFFFFFFFF,
                                          data_seq, ssn & 0xFFFFFFFF, dll)
        return _DSS_A4_M8_CS.pack(TCPOPT_MPTCP, 24, 0x20, flags, data_ack & 0xFFFFFFFF,
                                  data_seq, ssn & 0xFFFFFFFF, dll, csum)
    flags = MPTCP_DSS_HAS_MAP | MPTCP_DSS_DSN64 | fin
    if csum is None:
        return NOP2 + _DSS_M8.pack(TCPOPT_MPTCP, 18, 0x20, flags, data_seq, ssn & 0xFFFFFFFF, dll)
    return _DSS_M8_CS.pack(TCPOPT_MPTCP, 20, 0x20, flags, data_seq, ssn & 0xFFFFFFFF, dll, csum)


def parse_dss(buf, off: int, olen: int):
    """Decode a DSS option at ``buf[off:off+olen]`` (kind byte at ``off``).

    Returns ``(flags, data_ack, ack64, data_seq, dsn64, subflow_seq, data_len,
    checksum)`` with ``None`` for absent fields, or ``None`` if the length does not
    match the flags exactly (Linux ignores such options: ``mptcp_parse_option``).
    """
    if olen < 4:
        return None
    flags = buf[off + 3] & 0x1F
    expected = 4
    if flags & MPTCP_DSS_HAS_ACK:
        expected += 8 if flags & MPTCP_DSS_ACK64 else 4
    if flags & MPTCP_DSS_HAS_MAP:
        expected += 14 if flags & MPTCP_DSS_DSN64 else 10
    if olen != expected and olen != expected + 2:
        return None  # Linux accepts +2 (a checksum) even without M, and ignores it
    p = off + 4
    data_ack = None
    ack64 = bool(flags & MPTCP_DSS_ACK64)
    if flags & MPTCP_DSS_HAS_ACK:
        if ack64:
            data_ack = _U64.unpack_from(buf, p)[0]
            p += 8
        else:
            data_ack = _U32.unpack_from(buf, p)[0]
            p += 4
    data_seq = ssn = dll = csum = None
    dsn64 = bool(flags & MPTCP_DSS_DSN64)
    if flags & MPTCP_DSS_HAS_MAP:
        if dsn64:
            data_seq = _U64.unpack_from(buf, p)[0]
            p += 8
        else:
            data_seq = _U32.unpack_from(buf, p)[0]
            p += 4
        ssn, dll = _IH.unpack_from(buf, p)
        p += 6
        if olen == expected + 2:
            csum = _U16.unpack_from(buf, p)[0]
    return flags, data_ack, ack64, data_seq, dsn64, ssn, dll, csum


def build_ts(tsval: int, tsecr: int) -> bytes:
    """NOP,NOP,TS (12 bytes)."""
    return NOP2 + _TS.pack(TCPOPT_TIMESTAMP, 10, tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def build_sack(blocks: list[tuple[int, int]]) -> bytes:
    """NOP,NOP,SACK with 32-bit wire edges ``(left, right)`` (4+8n bytes)."""
    out = bytearray(NOP2)
    out += bytes((TCPOPT_SACK, 2 + 8 * len(blocks)))
    for left, right in blocks:
        out += _II.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    return bytes(out)


def read_sack(buf, off: int, olen: int) -> list[tuple[int, int]]:
    """SACK blocks of the option at ``off`` as 32-bit wire ``(left, right)`` pairs;
    an option of bad length yields no blocks."""
    n = olen - 2
    if n <= 0 or n % 8:
        return []
    return [_II.unpack_from(buf, off + 2 + 8 * i) for i in range(n // 8)]


def read_ts(buf, off: int) -> tuple[int, int]:
    """``(tsval, tsecr)`` of the timestamp option at ``off``."""
    return _II.unpack_from(buf, off + 2)


__all__ = [
    "dss_len", "build_dss_ack", "build_dss_map", "parse_dss", "build_ts", "build_sack",
    "read_sack", "read_ts", "TCPOPT_TIMESTAMP",
]
