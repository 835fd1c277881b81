"""MPTCP v1 suboption codec (RFC 8684 §3; Linux ``net/mptcp/options.c``).

One frozen slotted dataclass per suboption form, with the kernel's field names
(``struct mptcp_options_received``). ``push_option`` writes one option; ``pull_option``
reads one.

Rules:

1. ``pull_option`` never raises. Anything Linux's ``mptcp_parse_option`` would
   ``break`` out of (wrong length for the subtype and flags, bad MP_CAPABLE
   version or flags, unknown subtype) comes back as a :class:`Malformed` value.
   The caller counts it and ignores the option, as Linux does.
2. ``push_option`` raises ``ValueError`` for an impossible field combination or
   a value that does not fit its wire field. That is a local programming error.
3. Reserved bits (DSS 0xE0, the unused low-nibble bits of MP_JOIN, ADD_ADDR and
   MP_PRIO, byte 3 of MP_JOIN ACK, MP_FAIL and MP_FASTCLOSE) are written as 0 and
   ignored on receipt, like Linux. The MP_CAPABLE flags are checked (§3.1).
4. The caller walks the TCP option list and passes exactly one whole option,
   starting at kind 30. Checks that need the segment are left to the caller:
   which MP_CAPABLE length fits the SYN/ACK/data flags, and that MP_TCPRST only
   counts on a segment with RST set.

All integers are unsigned and big-endian on the wire. Keys, DSNs, DATA_ACKs and
HMACs are Python ints of the stated width, except ``MpJoinAck.hmac`` (20 bytes).
"""

import struct
from dataclasses import dataclass
from typing import NamedTuple

from .constants import (
    MPTCP_ADDR_ECHO,
    MPTCP_CAP_EXTENSIBILITY,
    MPTCP_CAP_FLAG_MASK,
    MPTCP_CAP_HMAC_SHA256,
    MPTCP_DSS_ACK64,
    MPTCP_DSS_DATA_FIN,
    MPTCP_DSS_DSN64,
    MPTCP_DSS_FLAG_MASK,
    MPTCP_DSS_HAS_ACK,
    MPTCP_DSS_HAS_MAP,
    MPTCP_VERSION,
    MPTCPOPT_ADD_ADDR,
    MPTCPOPT_BACKUP,
    MPTCPOPT_DSS,
    MPTCPOPT_HMAC_LEN,
    MPTCPOPT_MP_CAPABLE,
    MPTCPOPT_MP_FAIL,
    MPTCPOPT_MP_FASTCLOSE,
    MPTCPOPT_MP_JOIN,
    MPTCPOPT_MP_PRIO,
    MPTCPOPT_RM_ADDR,
    MPTCPOPT_RST,
    TCPOLEN_MPTCP_ADD_ADDR,
    TCPOLEN_MPTCP_ADD_ADDR6,
    TCPOLEN_MPTCP_ADD_ADDR6_BASE,
    TCPOLEN_MPTCP_ADD_ADDR6_BASE_PORT,
    TCPOLEN_MPTCP_ADD_ADDR6_PORT,
    TCPOLEN_MPTCP_ADD_ADDR_BASE,
    TCPOLEN_MPTCP_ADD_ADDR_BASE_PORT,
    TCPOLEN_MPTCP_ADD_ADDR_PORT,
    TCPOLEN_MPTCP_DSS_ACK32,
    TCPOLEN_MPTCP_DSS_ACK64,
    TCPOLEN_MPTCP_DSS_BASE,
    TCPOLEN_MPTCP_DSS_CHECKSUM,
    TCPOLEN_MPTCP_DSS_MAP32,
    TCPOLEN_MPTCP_DSS_MAP64,
    TCPOLEN_MPTCP_FAIL,
    TCPOLEN_MPTCP_FASTCLOSE,
    TCPOLEN_MPTCP_MPC_ACK,
    TCPOLEN_MPTCP_MPC_ACK_DATA,
    TCPOLEN_MPTCP_MPC_ACK_DATA_CSUM,
    TCPOLEN_MPTCP_MPC_SYN,
    TCPOLEN_MPTCP_MPC_SYNACK,
    TCPOLEN_MPTCP_MPJ_ACK,
    TCPOLEN_MPTCP_MPJ_SYN,
    TCPOLEN_MPTCP_MPJ_SYNACK,
    TCPOLEN_MPTCP_PRIO,
    TCPOLEN_MPTCP_RM_ADDR_BASE,
    TCPOLEN_MPTCP_RST,
    TCPOPT_MPTCP,
)

__all__ = [
    "MpCapable", "MpJoinSyn", "MpJoinSynAck", "MpJoinAck", "Dss", "AddAddr", "RemoveAddr",
    "MpPrio", "MpFail", "MpFastclose", "MpTcpRst", "Malformed", "MptcpOption", "Pulled",
    "push_option", "pull_option", "option_length", "parse_dss", "pack_dss",
]

MPTCP_VERSION_MASK = 0x0F  # low nibble of byte 2 of MP_CAPABLE (protocol.h)
MPTCP_RM_IDS_MAX = 8  # REMOVE_ADDR ids Linux accepts and sends (protocol.h)
_MPTCP_RST_FLAGS_MASK = 0x0F  # U, V, W, T bits of MP_TCPRST byte 2 (§3.6)
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


# --- Option types ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MpCapable:
    """MP_CAPABLE (RFC 8684 §3.1, Fig. 4). The wire length follows from the fields:
    4 (SYN: no keys), 12 (SYN/ACK: sndr_key), 20 (third ACK: both keys),
    22 (first data: + data_len), 24 (first data with checksums: + checksum).
    """

    version: int = MPTCP_VERSION
    """4 bits. Always 1 except a len-4 SYN, which may carry any version >= 1."""
    flags: int = MPTCP_CAP_HMAC_SHA256
    """8 bits A..H: 0x80 A checksum required, 0x40 B extensibility (must be 0),
    0x20 C deny join to this address/port, 0x1E D-G (must be 0), 0x01 H HMAC-SHA256 (must be 1)."""
    sndr_key: int | None = None
    """64 bits: the key of the host sending this option."""
    rcvr_key: int | None = None
    """64 bits: the key of the host receiving this option (echoed from its SYN/ACK)."""
    data_len: int | None = None
    """16 bits: Data-Level Length of the implied mapping DSN=IDSN+1, SSN=1 (§3.1)."""
    checksum: int | None = None
    """16 bits: DSS checksum of that implied mapping (§3.3)."""


@dataclass(frozen=True, slots=True)
class MpJoinSyn:
    """MP_JOIN on a SYN, len 12 (RFC 8684 §3.2, Fig. 5)."""

    backup: bool
    """B bit: the sender wants this subflow as a backup path."""
    join_id: int
    """8 bits: the sender's address ID of the subflow's source address."""
    token: int
    """32 bits: the receiver's token (most significant 32 bits of SHA-256(key))."""
    nonce: int
    """32 bits: R_A, the initiator's random number."""


@dataclass(frozen=True, slots=True)
class MpJoinSynAck:
    """MP_JOIN on a SYN/ACK, len 16 (RFC 8684 §3.2, Fig. 6)."""

    backup: bool
    """B bit: the sender wants this subflow as a backup path."""
    join_id: int
    """8 bits: the listener's address ID."""
    thmac: int
    """64 bits: leftmost 64 bits of HMAC-SHA256(KeyB‖KeyA, R_B‖R_A)."""
    nonce: int
    """32 bits: R_B, the listener's random number."""


@dataclass(frozen=True, slots=True)
class MpJoinAck:
    """MP_JOIN on the third ACK, len 24 (RFC 8684 §3.2, Fig. 7). Bytes 2-3 are 0x10 0x00."""

    hmac: bytes
    """20 bytes: leftmost 160 bits of HMAC-SHA256(KeyA‖KeyB, R_A‖R_B)."""


class Dss(NamedTuple):
    """Data Sequence Signal (RFC 8684 §3.3, Fig. 9).

    Flags are derived from the fields: A = ``data_ack is not None``, a = ``ack64``,
    M = ``data_seq is not None``, m = ``dsn64``, F = ``data_fin``. The a and m bits are
    kept as given even without A or M (they then only occupy a flag bit).
    The mapping fields ``subflow_seq``, ``data_len`` and ``checksum`` exist on the wire
    only when M is set. Length = 4 + {0, 4, 8} + {0, 10, 14} + {0, 2 for checksum}.
    A named tuple rather than a frozen dataclass: it is decoded for every data segment.
    """

    data_ack: int | None = None
    """32 or 64 bits (per ``ack64``): the next DSN expected by the sender of the option."""
    ack64: bool = False
    """a bit: ``data_ack`` takes 8 bytes instead of 4."""
    data_seq: int | None = None
    """32 or 64 bits (per ``dsn64``): DSN of the first mapped byte; None = no mapping."""
    dsn64: bool = False
    """m bit: ``data_seq`` takes 8 bytes instead of 4."""
    subflow_seq: int = 0
    """32 bits: subflow sequence number relative to the subflow ISN (first byte = 1)."""
    data_len: int = 0
    """16 bits: Data-Level Length in bytes (counts a DATA_FIN; 0 = infinite mapping)."""
    checksum: int | None = None
    """16 bits: DSS checksum (§3.3.1), present only if negotiated."""
    data_fin: bool = False
    """F bit: DATA_FIN; it occupies the last DSN of the mapping (§3.3.3)."""


@dataclass(frozen=True, slots=True)
class AddAddr:
    """ADD_ADDR (RFC 8684 §3.4.1, Fig. 12).

    ======= ============ ============
    addr    E=0 (hmac)   E=1 (echo)
    ======= ============ ============
    IPv4    16 / 18      8 / 10
    IPv6    28 / 30      20 / 22
    ======= ============ ============

    (without / with port). Byte 2 is 0x30 | E.
    """

    echo: bool
    """E bit: this is the echo of a received ADD_ADDR; it carries no HMAC."""
    addr_id: int
    """8 bits: address ID."""
    addr: bytes
    """4 bytes (IPv4) or 16 bytes (IPv6), network order."""
    port: int | None = None
    """16 bits, or None when absent."""
    hmac: int | None = None
    """64 bits: rightmost 64 bits of HMAC-SHA256(Key_sender‖Key_receiver,
    AddrID‖Addr‖Port); present iff not ``echo``."""


@dataclass(frozen=True, slots=True)
class RemoveAddr:
    """REMOVE_ADDR (RFC 8684 §3.4.2, Fig. 13), len 3 + n with n = 1..8."""

    addr_ids: tuple[int, ...]
    """1 to 8 address IDs, 8 bits each."""


@dataclass(frozen=True, slots=True)
class MpPrio:
    """MP_PRIO (RFC 8684 §3.3.8, Fig. 11), len 3; applies to the subflow it arrives on."""

    backup: bool
    """B bit: the sender wants this subflow used as a backup path."""


@dataclass(frozen=True, slots=True)
class MpFail:
    """MP_FAIL (RFC 8684 §3.7, Fig. 16), len 12; byte 3 is reserved (0)."""

    fail_seq: int
    """64 bits: DSN at the start of the mapping whose checksum failed."""


@dataclass(frozen=True, slots=True)
class MpFastclose:
    """MP_FASTCLOSE (RFC 8684 §3.5, Fig. 14), len 12; byte 3 is reserved (0)."""

    rcvr_key: int
    """64 bits: the key of the host receiving this option."""


@dataclass(frozen=True, slots=True)
class MpTcpRst:
    """MP_TCPRST (RFC 8684 §3.6, Fig. 15), len 4. Only valid on a segment with RST set."""

    flags: int
    """4 bits U V W T; 0x01 T = transient error (the peer may retry later)."""
    reason: int
    """8 bits: MPTCP_RST_* reason code (0 unspecified ... 6 middlebox interference)."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """An MPTCP option that Linux would ignore. ``pull_option`` returns it; it never raises."""

    subtype: int
    """Subtype nibble (0..15), or -1 when the option is too short to hold one."""
    length: int
    """``len(data)``, the number of bytes handed to ``pull_option``."""
    reason: str
    """Short human-readable cause, e.g. "bad length", "unknown subtype"."""


MptcpOption = (MpCapable | MpJoinSyn | MpJoinSynAck | MpJoinAck | Dss | AddAddr | RemoveAddr
               | MpPrio | MpFail | MpFastclose | MpTcpRst)
Pulled = MptcpOption | Malformed
Buffer = bytes | bytearray | memoryview


# --- Precompiled layouts: kind, length, subtype|x, byte 3, then the body ---------------------

_HDR3 = struct.Struct("!BBB")
_HDR4 = struct.Struct("!BBBB")
_MPC = {
    TCPOLEN_MPTCP_MPC_SYN: _HDR4,
    TCPOLEN_MPTCP_MPC_SYNACK: struct.Struct("!BBBBQ"),
    TCPOLEN_MPTCP_MPC_ACK: struct.Struct("!BBBBQQ"),
    TCPOLEN_MPTCP_MPC_ACK_DATA: struct.Struct("!BBBBQQH"),
    TCPOLEN_MPTCP_MPC_ACK_DATA_CSUM: struct.Struct("!BBBBQQHH"),
}
_MPC_LENS = tuple(_MPC)  # indexed by the number of present fields after the flags
_MPJ_SYN = struct.Struct("!BBBBII")
_MPJ_SYNACK = struct.Struct("!BBBBQI")
_MPJ_ACK = struct.Struct(f"!BBBB{MPTCPOPT_HMAC_LEN}s")
_U64_OPT = struct.Struct("!BBBBQ")  # MP_FAIL, MP_FASTCLOSE


def _dss_layout(flags: int, csum: bool) -> struct.Struct:
    """Struct for DSS flags A a M m (low 4 bits) with or without the 2 checksum bytes.

    Fields after the 4-byte header: [data_ack] [data_seq subflow_seq data_len] [checksum].
    Without M, the 2 extra bytes Linux tolerates are skipped (``2x``).
    """
    fmt = "!BBBB"
    if flags & MPTCP_DSS_HAS_ACK:
        fmt += "Q" if flags & MPTCP_DSS_ACK64 else "I"
    if flags & MPTCP_DSS_HAS_MAP:
        fmt += ("Q" if flags & MPTCP_DSS_DSN64 else "I") + "IH"
        if csum:
            fmt += "H"
    elif csum:
        fmt += "2x"
    return struct.Struct(fmt)


# Index: (flags & 0x0F) | (0x10 if checksum bytes present).
_DSS = tuple(_dss_layout(i & 0x0F, bool(i & 0x10)) for i in range(32))
_A4_M8_FLAGS = MPTCP_DSS_HAS_ACK | MPTCP_DSS_HAS_MAP | MPTCP_DSS_DSN64
_DSS_A4_M8 = _DSS[_A4_M8_FLAGS]
_DSS_A4 = _DSS[MPTCP_DSS_HAS_ACK]

# ADD_ADDR: length -> (echo, addr bytes, has port, struct).
_ADD_ADDR = {}
for _echo, _alen, _port, _len in (
    (False, 4, False, TCPOLEN_MPTCP_ADD_ADDR),
    (False, 4, True, TCPOLEN_MPTCP_ADD_ADDR_PORT),
    (True, 4, False, TCPOLEN_MPTCP_ADD_ADDR_BASE),
    (True, 4, True, TCPOLEN_MPTCP_ADD_ADDR_BASE_PORT),
    (False, 16, False, TCPOLEN_MPTCP_ADD_ADDR6),
    (False, 16, True, TCPOLEN_MPTCP_ADD_ADDR6_PORT),
    (True, 16, False, TCPOLEN_MPTCP_ADD_ADDR6_BASE),
    (True, 16, True, TCPOLEN_MPTCP_ADD_ADDR6_BASE_PORT),
):
    _fmt = f"!BBBB{_alen}s" + ("H" if _port else "") + ("" if _echo else "Q")
    _ADD_ADDR[_len] = (_echo, _alen, _port, struct.Struct(_fmt))
_ADD_ADDR_LEN = {(e, a, p): n for n, (e, a, p, _s) in _ADD_ADDR.items()}
del _echo, _alen, _port, _len, _fmt


# --- Lengths ---------------------------------------------------------------------------------

def _mpc_len(o: MpCapable) -> int:
    present = [v is not None for v in (o.sndr_key, o.rcvr_key, o.data_len, o.checksum)]
    k = present.index(False) if False in present else len(present)
    if any(present[k:]):
        raise ValueError("MP_CAPABLE: rcvr_key needs sndr_key, data_len needs both keys, "
                         "checksum needs data_len")
    return _MPC_LENS[k]


def _dss_flags(o: Dss) -> int:
    flags = 0
    if o.data_ack is not None:
        flags |= MPTCP_DSS_HAS_ACK
    if o.ack64:
        flags |= MPTCP_DSS_ACK64
    if o.data_seq is not None:
        flags |= MPTCP_DSS_HAS_MAP
    if o.dsn64:
        flags |= MPTCP_DSS_DSN64
    if o.data_fin:
        flags |= MPTCP_DSS_DATA_FIN
    return flags


def _dss_len(o: Dss) -> int:
    n = TCPOLEN_MPTCP_DSS_BASE
    if o.data_ack is not None:
        n += TCPOLEN_MPTCP_DSS_ACK64 if o.ack64 else TCPOLEN_MPTCP_DSS_ACK32
    if o.data_seq is not None:
        n += TCPOLEN_MPTCP_DSS_MAP64 if o.dsn64 else TCPOLEN_MPTCP_DSS_MAP32
        if o.checksum is not None:
            n += TCPOLEN_MPTCP_DSS_CHECKSUM
    elif o.checksum is not None or o.subflow_seq or o.data_len:
        raise ValueError("DSS: subflow_seq/data_len/checksum need data_seq (M flag)")
    return n


def _add_addr_len(o: AddAddr) -> int:
    if (o.hmac is None) != o.echo:
        raise ValueError("ADD_ADDR: hmac must be present iff echo is False")
    n = _ADD_ADDR_LEN.get((o.echo, len(o.addr), o.port is not None))
    if n is None:
        raise ValueError("ADD_ADDR: addr must be 4 (IPv4) or 16 (IPv6) bytes")
    return n


def _rm_addr_len(o: RemoveAddr) -> int:
    if not 1 <= len(o.addr_ids) <= MPTCP_RM_IDS_MAX:
        raise ValueError("REMOVE_ADDR: 1 to 8 address IDs")
    return TCPOLEN_MPTCP_RM_ADDR_BASE + len(o.addr_ids)


_FIXED_LEN = {
    MpJoinSyn: TCPOLEN_MPTCP_MPJ_SYN, MpJoinSynAck: TCPOLEN_MPTCP_MPJ_SYNACK,
    MpJoinAck: TCPOLEN_MPTCP_MPJ_ACK, MpPrio: TCPOLEN_MPTCP_PRIO, MpFail: TCPOLEN_MPTCP_FAIL,
    MpFastclose: TCPOLEN_MPTCP_FASTCLOSE, MpTcpRst: TCPOLEN_MPTCP_RST,
}
_VAR_LEN = {MpCapable: _mpc_len, Dss: _dss_len, AddAddr: _add_addr_len, RemoveAddr: _rm_addr_len}


def option_length(opt: MptcpOption) -> int:
    """Wire length of ``opt`` in bytes (the option's length byte; no NOP padding).

    Computed from the fields without encoding; raises ``ValueError`` for the
    impossible combinations ``push_option`` rejects, ``TypeError`` for a non-option.
    """
    n = _FIXED_LEN.get(type(opt))
    if n is not None:
        return n
    fn = _VAR_LEN.get(type(opt))
    if fn is None:
        raise TypeError(f"not an MPTCP option: {type(opt).__name__}")
    return fn(opt)


# --- push ------------------------------------------------------------------------------------

def _push_mpc(o: MpCapable) -> bytes:
    n = _mpc_len(o)
    if not 0 <= o.version <= MPTCP_VERSION_MASK:
        raise ValueError("MP_CAPABLE: version is 4 bits")
    body = [v for v in (o.sndr_key, o.rcvr_key, o.data_len, o.checksum) if v is not None]
    return _MPC[n].pack(TCPOPT_MPTCP, n, (MPTCPOPT_MP_CAPABLE << 4) | o.version, o.flags, *body)


def _push_mpj_syn(o: MpJoinSyn) -> bytes:
    return _MPJ_SYN.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_MPJ_SYN,
                         (MPTCPOPT_MP_JOIN << 4) | (MPTCPOPT_BACKUP if o.backup else 0),
                         o.join_id, o.token, o.nonce)


def _push_mpj_synack(o: MpJoinSynAck) -> bytes:
    return _MPJ_SYNACK.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_MPJ_SYNACK,
                            (MPTCPOPT_MP_JOIN << 4) | (MPTCPOPT_BACKUP if o.backup else 0),
                            o.join_id, o.thmac, o.nonce)


def _push_mpj_ack(o: MpJoinAck) -> bytes:
    if len(o.hmac) != MPTCPOPT_HMAC_LEN:
        raise ValueError("MP_JOIN ACK: hmac must be 20 bytes")
    return _MPJ_ACK.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_MPJ_ACK, MPTCPOPT_MP_JOIN << 4, 0,
                         bytes(o.hmac))


def pack_dss(data_ack: int | None, data_seq: int | None, subflow_seq: int = 0,
             data_len: int = 0, checksum: int | None = None, data_fin: bool = False,
             ack64: bool = False, dsn64: bool = True) -> bytes:
    """Encode a DSS option (RFC 8684 §3.3, no NOP padding): the one DSS encoder.

    ``data_ack``/``data_seq``: None leaves the A/M part out; values are truncated to
    their 32- or 64-bit field (``ack64``/``dsn64``). ``subflow_seq``: 32-bit relative
    SSN (first byte 1); ``data_len``: 16 bits, counting a DATA_FIN; ``checksum``: the
    16-bit DSS checksum, present only with a mapping. Raises ``struct.error`` for a
    ``data_len``/``checksum`` that does not fit 16 bits."""
    if data_seq is not None and data_ack is not None and checksum is None and dsn64 \
            and not ack64:  # the form of every data segment we send: one pack
        return _DSS_A4_M8.pack(TCPOPT_MPTCP, 22, MPTCPOPT_DSS << 4,
                               _A4_M8_FLAGS | (MPTCP_DSS_DATA_FIN if data_fin else 0),
                               data_ack & _M32, data_seq & _M64, subflow_seq & _M32, data_len)
    if data_seq is None and data_ack is not None and not ack64 and not dsn64 and not data_fin:
        return _DSS_A4.pack(TCPOPT_MPTCP, 8, MPTCPOPT_DSS << 4, MPTCP_DSS_HAS_ACK,
                            data_ack & _M32)  # a pure ACK's
    flags = ((MPTCP_DSS_HAS_ACK if data_ack is not None else 0)
             | (MPTCP_DSS_ACK64 if ack64 else 0)
             | (MPTCP_DSS_HAS_MAP if data_seq is not None else 0)
             | (MPTCP_DSS_DSN64 if dsn64 else 0)
             | (MPTCP_DSS_DATA_FIN if data_fin else 0))
    csum = checksum is not None and data_seq is not None
    layout = _DSS[(flags & 0x0F) | (0x10 if csum else 0)]
    values = [TCPOPT_MPTCP, layout.size, MPTCPOPT_DSS << 4, flags]
    if data_ack is not None:
        values.append(data_ack & (_M64 if ack64 else _M32))
    if data_seq is not None:
        values += (data_seq & (_M64 if dsn64 else _M32), subflow_seq & _M32, data_len)
        if csum:
            values.append(checksum)
    return layout.pack(*values)


def _push_dss(o: Dss) -> bytes:
    _dss_len(o)  # (validates the field combination)
    for value, wide in ((o.data_ack, o.ack64), (o.data_seq, o.dsn64)):
        if value is not None and not 0 <= value <= (_M64 if wide else _M32):
            raise ValueError("DSS: data_ack/data_seq out of range for its width")
    return pack_dss(o.data_ack, o.data_seq, o.subflow_seq, o.data_len, o.checksum,
                    o.data_fin, o.ack64, o.dsn64)


def _push_add_addr(o: AddAddr) -> bytes:
    n = _add_addr_len(o)
    values = [TCPOPT_MPTCP, n, (MPTCPOPT_ADD_ADDR << 4) | (MPTCP_ADDR_ECHO if o.echo else 0),
              o.addr_id, bytes(o.addr)]
    if o.port is not None:
        values.append(o.port)
    if o.hmac is not None:
        values.append(o.hmac)
    return _ADD_ADDR[n][3].pack(*values)


def _push_rm_addr(o: RemoveAddr) -> bytes:
    n = _rm_addr_len(o)
    return _HDR3.pack(TCPOPT_MPTCP, n, MPTCPOPT_RM_ADDR << 4) + bytes(o.addr_ids)


def _push_prio(o: MpPrio) -> bytes:
    return _HDR3.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_PRIO,
                      (MPTCPOPT_MP_PRIO << 4) | (MPTCPOPT_BACKUP if o.backup else 0))


def _push_fail(o: MpFail) -> bytes:
    return _U64_OPT.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_FAIL, MPTCPOPT_MP_FAIL << 4, 0, o.fail_seq)


def _push_fastclose(o: MpFastclose) -> bytes:
    return _U64_OPT.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_FASTCLOSE, MPTCPOPT_MP_FASTCLOSE << 4, 0,
                         o.rcvr_key)


def _push_rst(o: MpTcpRst) -> bytes:
    if not 0 <= o.flags <= _MPTCP_RST_FLAGS_MASK:
        raise ValueError("MP_TCPRST: flags is 4 bits")
    return _HDR4.pack(TCPOPT_MPTCP, TCPOLEN_MPTCP_RST, (MPTCPOPT_RST << 4) | o.flags, o.reason)


_PUSH = {
    MpCapable: _push_mpc,
    MpJoinSyn: _push_mpj_syn,
    MpJoinSynAck: _push_mpj_synack,
    MpJoinAck: _push_mpj_ack,
    Dss: _push_dss,
    AddAddr: _push_add_addr,
    RemoveAddr: _push_rm_addr,
    MpPrio: _push_prio,
    MpFail: _push_fail,
    MpFastclose: _push_fastclose,
    MpTcpRst: _push_rst,
}


def push_option(opt: MptcpOption) -> bytes:
    """Encode one MPTCP option: kind 30, length, subtype... with no NOP padding.

    Raises ``ValueError`` for an impossible field combination or a value too wide
    for its field (a local programming error), ``TypeError`` for a non-option.
    """
    fn = _PUSH.get(type(opt))
    if fn is None:
        raise TypeError(f"not an MPTCP option: {type(opt).__name__}")
    try:
        return fn(opt)
    except struct.error as exc:
        raise ValueError(f"{type(opt).__name__}: field out of range: {exc}") from exc


# --- pull ------------------------------------------------------------------------------------

def _pull_mpc(data: Buffer, n: int, syn: bool) -> Pulled:
    layout = _MPC.get(n)
    if layout is None:
        return Malformed(MPTCPOPT_MP_CAPABLE, n, "bad length")
    f = layout.unpack_from(data)
    version = f[2] & MPTCP_VERSION_MASK
    # "try to be gentle vs future versions on the initial syn" (options.c)
    if version < MPTCP_VERSION or (version != MPTCP_VERSION
                                   and not (syn and n == TCPOLEN_MPTCP_MPC_SYN)):
        return Malformed(MPTCPOPT_MP_CAPABLE, n, "bad version")
    flags = f[3]
    # §3.1: B "MUST be 0"; H is the only crypto algorithm (mptcp_cap_flag_sha256)
    if flags & MPTCP_CAP_EXTENSIBILITY or (flags & MPTCP_CAP_FLAG_MASK) != MPTCP_CAP_HMAC_SHA256:
        return Malformed(MPTCPOPT_MP_CAPABLE, n, "bad flags")
    return MpCapable(version, flags, *f[4:])


def _pull_mpj(data: Buffer, n: int, syn: bool) -> Pulled:
    if n == TCPOLEN_MPTCP_MPJ_SYN:
        _k, _l, b2, join_id, token, nonce = _MPJ_SYN.unpack_from(data)
        return MpJoinSyn(bool(b2 & MPTCPOPT_BACKUP), join_id, token, nonce)
    if n == TCPOLEN_MPTCP_MPJ_SYNACK:
        _k, _l, b2, join_id, thmac, nonce = _MPJ_SYNACK.unpack_from(data)
        return MpJoinSynAck(bool(b2 & MPTCPOPT_BACKUP), join_id, thmac, nonce)
    if n == TCPOLEN_MPTCP_MPJ_ACK:
        return MpJoinAck(_MPJ_ACK.unpack_from(data)[4])
    return Malformed(MPTCPOPT_MP_JOIN, n, "bad length")


def parse_dss(buf: Buffer, off: int, n: int) -> Dss | None:
    """Decode the DSS option of length ``n`` at ``buf[off]`` (kind byte there), or None
    when the length does not match its flags exactly (Linux ignores such options,
    ``mptcp_parse_option``). The one DSS decoder: the receive path calls it directly.

    Linux accepts the 2 checksum bytes (§3.3.1) with either checksum negotiation (the
    §3.3 presence rule is the caller's), and even without M, reading nothing from them.
    Flag bits 0xE0 are ignored, like Linux."""
    if n < 4:
        return None
    flags = buf[off + 3] & MPTCP_DSS_FLAG_MASK
    idx = flags & 0x0F
    layout = _DSS[idx]
    if n == layout.size:
        f = layout.unpack_from(buf, off)
    elif n == layout.size + TCPOLEN_MPTCP_DSS_CHECKSUM:
        f = _DSS[idx | 0x10].unpack_from(buf, off)
    else:
        return None
    ack64 = bool(flags & MPTCP_DSS_ACK64)
    dsn64 = bool(flags & MPTCP_DSS_DSN64)
    fin = bool(flags & MPTCP_DSS_DATA_FIN)
    if flags & MPTCP_DSS_HAS_ACK:
        if flags & MPTCP_DSS_HAS_MAP:
            return Dss(f[4], ack64, f[5], dsn64, f[6], f[7], f[8] if len(f) > 8 else None, fin)
        return Dss(f[4], ack64, None, dsn64, 0, 0, None, fin)
    if flags & MPTCP_DSS_HAS_MAP:
        return Dss(None, ack64, f[4], dsn64, f[5], f[6], f[7] if len(f) > 7 else None, fin)
    return Dss(None, ack64, None, dsn64, 0, 0, None, fin)


def _pull_dss(data: Buffer, n: int, syn: bool) -> Pulled:
    o = parse_dss(data, 0, n)
    return Malformed(MPTCPOPT_DSS, n, "bad length") if o is None else o


def _pull_add_addr(data: Buffer, n: int, syn: bool) -> Pulled:
    form = _ADD_ADDR.get(n)
    echo = bool(data[2] & MPTCP_ADDR_ECHO)
    if form is None or form[0] != echo:
        return Malformed(MPTCPOPT_ADD_ADDR, n, "bad length")
    _echo, _alen, has_port, layout = form
    f = layout.unpack_from(data)
    port = f[5] if has_port else None
    hmac = None if echo else f[-1]
    return AddAddr(echo, f[3], f[4], port, hmac)


def _pull_rm_addr(data: Buffer, n: int, syn: bool) -> Pulled:
    if not TCPOLEN_MPTCP_RM_ADDR_BASE + 1 <= n <= TCPOLEN_MPTCP_RM_ADDR_BASE + MPTCP_RM_IDS_MAX:
        return Malformed(MPTCPOPT_RM_ADDR, n, "bad length")
    return RemoveAddr(tuple(data[TCPOLEN_MPTCP_RM_ADDR_BASE:n]))


def _pull_prio(data: Buffer, n: int, syn: bool) -> Pulled:
    if n != TCPOLEN_MPTCP_PRIO:  # the RFC 6824 len-4 form (with AddrID) is ignored too
        return Malformed(MPTCPOPT_MP_PRIO, n, "bad length")
    return MpPrio(bool(data[2] & MPTCPOPT_BACKUP))


def _pull_fail(data: Buffer, n: int, syn: bool) -> Pulled:
    if n != TCPOLEN_MPTCP_FAIL:
        return Malformed(MPTCPOPT_MP_FAIL, n, "bad length")
    return MpFail(_U64_OPT.unpack_from(data)[4])


def _pull_fastclose(data: Buffer, n: int, syn: bool) -> Pulled:
    if n != TCPOLEN_MPTCP_FASTCLOSE:
        return Malformed(MPTCPOPT_MP_FASTCLOSE, n, "bad length")
    return MpFastclose(_U64_OPT.unpack_from(data)[4])


def _pull_rst(data: Buffer, n: int, syn: bool) -> Pulled:
    if n != TCPOLEN_MPTCP_RST:
        return Malformed(MPTCPOPT_RST, n, "bad length")
    return MpTcpRst(data[2] & _MPTCP_RST_FLAGS_MASK, data[3])


_PULL = {
    MPTCPOPT_MP_CAPABLE: _pull_mpc,
    MPTCPOPT_MP_JOIN: _pull_mpj,
    MPTCPOPT_DSS: _pull_dss,
    MPTCPOPT_ADD_ADDR: _pull_add_addr,
    MPTCPOPT_RM_ADDR: _pull_rm_addr,
    MPTCPOPT_MP_PRIO: _pull_prio,
    MPTCPOPT_MP_FAIL: _pull_fail,
    MPTCPOPT_MP_FASTCLOSE: _pull_fastclose,
    MPTCPOPT_RST: _pull_rst,
}


def pull_option(data: Buffer, syn: bool = False) -> Pulled:
    """Decode one whole MPTCP option; never raises.

    ``data`` holds exactly one option starting at the kind byte (30), so
    ``len(data) == data[1]``. ``syn`` tells whether the segment has SYN set: only
    then may a len-4 MP_CAPABLE carry a version above 1 (which is reported as
    received; the answer must still be v1). Every other MP_CAPABLE needs version 1.

    Returns the option's dataclass, or :class:`Malformed` for anything Linux's
    ``mptcp_parse_option`` would ignore (RFC 8684 §3: lengths are strict).
    """
    n = len(data)
    if n < 3:
        return Malformed(-1, n, "truncated")
    subtype = data[2] >> 4
    if data[0] != TCPOPT_MPTCP:
        return Malformed(subtype, n, "not MPTCP")
    if data[1] != n:
        return Malformed(subtype, n, "length mismatch")
    fn = _PULL.get(subtype)
    if fn is None:
        return Malformed(subtype, n, "unknown subtype")
    # Every accepted form has at least 4 bytes except REMOVE_ADDR and MP_PRIO, which
    # only read byte 2 before their own length check.
    if n < 4 and subtype not in (MPTCPOPT_RM_ADDR, MPTCPOPT_MP_PRIO):
        return Malformed(subtype, n, "bad length")
    return fn(data, n, syn)
