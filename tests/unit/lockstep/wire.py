"""TCP/MPTCP constants, the arithmetic the models need (key hashing, ones' sums, DSS
checksums, sequence comparison) and option builders, written independently of the
proxy's codec (RFC 8684 §3.1-§3.3, RFC 793/7323)."""

from __future__ import annotations

import hashlib
import struct

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
MTU = 1500

# MPTCP flags (RFC 8684 §3.1, §3.3), spelled out here on purpose (independent model)
CAP_A, CAP_B, CAP_C, CAP_H = 0x80, 0x40, 0x20, 0x01
DSS_A, DSS_a, DSS_M, DSS_m, DSS_F = 0x01, 0x02, 0x04, 0x08, 0x10


def key_sha(key: int) -> tuple[int, int]:
    """(token, idsn) of a 64-bit key: SHA-256 of the big-endian key; token = first
    4 bytes, IDSN = last 8 bytes (RFC 8684 §3.1-3.3; written here independently)."""
    h = hashlib.sha256(key.to_bytes(8, "big")).digest()
    return int.from_bytes(h[:4], "big"), int.from_bytes(h[24:], "big")


def ones16(data: bytes) -> int:
    """RFC 1071 ones'-complement sum of 16-bit words, folded (plain word loop)."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def dss_csum(dsn64: int, ssn: int, dll: int, payload: bytes) -> int:
    """DSS checksum (RFC 8684 §3.3.1): complement of the sum of the pseudo-header
    DSN(64) SSN(32) DLL(16) zero(16) and the mapped payload."""
    return ~ones16(struct.pack("!QIHH", dsn64 & M64, ssn & M32, dll, 0) + bytes(payload)) & 0xFFFF


def dss_csum_ok(dsn64: int, ssn: int, dll: int, payload: bytes, csum: int) -> bool:
    return ones16(struct.pack("!QIHH", dsn64 & M64, ssn & M32, dll, csum) + bytes(payload)) \
        == 0xFFFF


def sdiff(a: int, b: int) -> int:
    """Signed 32-bit distance a - b."""
    return ((a - b + 0x80000000) & M32) - 0x80000000


def ts_before(a: int, b: int) -> bool:
    return sdiff(a, b) < 0


def opt_mss(v: int) -> bytes:
    return struct.pack("!BBH", 2, 4, v)


def opt_ts(val: int, ecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, val & M32, ecr & M32)


def opt_sack(blocks) -> bytes:
    return b"\x01\x01" + bytes((5, 2 + 8 * len(blocks))) + b"".join(
        struct.pack("!II", lo & M32, hi & M32) for lo, hi in blocks)


def pad4(b: bytes) -> bytes:
    r = len(b) % 4
    return (b"\x01" * (4 - r) + b) if r else b


def mpc_opt(version: int = 1, flags: int = CAP_H, sndr_key=None, rcvr_key=None,
            data_len=None, csum=None) -> bytes:
    body = b"".join(struct.pack("!Q", k) for k in (sndr_key, rcvr_key) if k is not None)
    if data_len is not None:
        body += struct.pack("!H", data_len)
    if csum is not None:
        body += struct.pack("!H", csum)
    return bytes((30, 4 + len(body), version & 0x0F, flags)) + body


def dss_opt(data_ack=None, ack64=False, dsn=None, dsn64=True, ssn=0, dll=0, csum=None,
            fin=False) -> bytes:
    flags = 0
    body = b""
    if data_ack is not None:
        flags |= DSS_A
        if ack64:
            flags |= DSS_a
            body += struct.pack("!Q", data_ack & M64)
        else:
            body += struct.pack("!I", data_ack & M32)
    if dsn is not None:
        flags |= DSS_M
        if dsn64:
            flags |= DSS_m
            body += struct.pack("!Q", dsn & M64)
        else:
            body += struct.pack("!I", dsn & M32)
        body += struct.pack("!IH", ssn & M32, dll)
        if csum is not None:
            body += struct.pack("!H", csum)
    if fin:
        flags |= DSS_F
    return bytes((30, 4 + len(body), 0x20, flags)) + body


def fastclose_opt(key: int) -> bytes:
    return struct.pack("!BBBBQ", 30, 12, 0x70, 0, key)


def tcprst_opt(reason: int = 0, flags: int = 0) -> bytes:
    return bytes((30, 4, 0x80 | flags, reason))
