"""The models' own strict decoding: MPTCP options (:func:`decode_mptcp`, as Linux's
``mptcp_parse_option``) and a parsed packet view (:class:`Seg`, :func:`parse_seg`),
independent of the proxy's codec."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lockstep.wire import (
    ACK,
    CAP_B,
    CAP_H,
    DSS_A,
    DSS_F,
    DSS_M,
    FIN,
    RST,
    SYN,
    DSS_a,
    DSS_m,
    ones16,
)


@dataclass(frozen=True)
class Mpc:
    length: int
    version: int
    flags: int
    sndr_key: int | None = None
    rcvr_key: int | None = None
    data_len: int | None = None
    csum: int | None = None


@dataclass(frozen=True)
class DssOpt:
    length: int
    flags: int
    data_ack: int | None
    ack64: bool
    dsn: int | None
    dsn64: bool
    ssn: int
    dll: int
    csum: int | None

    @property
    def fin(self) -> bool:
        return bool(self.flags & DSS_F)


@dataclass(frozen=True)
class Fastclose:
    key: int


@dataclass(frozen=True)
class TcpRst:
    flags: int
    reason: int


@dataclass(frozen=True)
class OtherMp:
    subtype: int
    raw: bytes


@dataclass(frozen=True)
class Ignored:
    """An option Linux's ``mptcp_parse_option`` would silently skip."""

    subtype: int
    raw: bytes
    reason: str


def decode_mptcp(o: bytes, syn: bool, ackf: bool, rst: bool, has_payload: bool):
    """Decode one MPTCP option exactly as Linux 6.18 ``mptcp_parse_option`` accepts it."""
    n = len(o)
    if n < 3:
        return Ignored(-1, o, "too short")
    sub = o[2] >> 4
    if sub == 0:  # MP_CAPABLE: strict size from the segment's flags and payload
        if not syn:
            expected = 22 if has_payload else 20
        elif ackf:
            expected = 12
        else:
            expected = 4
        if n != expected and not (expected == 22 and n == 24):
            return Ignored(0, o, f"MP_CAPABLE len {n}, Linux expects {expected}")
        version = o[2] & 0x0F
        if (n != 4 and version != 1) or version < 1:
            return Ignored(0, o, f"MP_CAPABLE version {version}")
        flags = o[3]
        if (flags & 0x1F) != CAP_H or flags & CAP_B:
            return Ignored(0, o, f"MP_CAPABLE flags {flags:#x}")
        vals = []
        p = 4
        while p + 8 <= n and len(vals) < 2:
            vals.append(struct.unpack_from("!Q", o, p)[0])
            p += 8
        dl = cs = None
        if n >= 22:
            dl = struct.unpack_from("!H", o, 20)[0]
        if n == 24:
            cs = struct.unpack_from("!H", o, 22)[0]
        return Mpc(n, version, flags, *(vals + [None] * (2 - len(vals))), dl, cs)
    if sub == 2:  # DSS
        if n < 4:
            return Ignored(2, o, "DSS too short")
        flags = o[3] & 0x1F
        expected = 4
        if flags & DSS_A:
            expected += 8 if flags & DSS_a else 4
        if flags & DSS_M:
            expected += 14 if flags & DSS_m else 10
        if n != expected and n != expected + 2:
            return Ignored(2, o, f"DSS len {n} with flags {flags:#x}, expected {expected}(+2)")
        if n == expected + 2 and not flags & DSS_M:
            return Ignored(2, o, "DSS carries 2 checksum bytes without a mapping")
        p = 4
        ack = None
        if flags & DSS_A:
            if flags & DSS_a:
                ack = struct.unpack_from("!Q", o, p)[0]
                p += 8
            else:
                ack = struct.unpack_from("!I", o, p)[0]
                p += 4
        dsn = None
        ssn = dll = 0
        cs = None
        if flags & DSS_M:
            if flags & DSS_m:
                dsn = struct.unpack_from("!Q", o, p)[0]
                p += 8
            else:
                dsn = struct.unpack_from("!I", o, p)[0]
                p += 4
            ssn, dll = struct.unpack_from("!IH", o, p)
            p += 6
            if n == expected + 2:
                cs = struct.unpack_from("!H", o, p)[0]
        return DssOpt(n, flags, ack, bool(flags & DSS_a), dsn, bool(flags & DSS_m), ssn, dll, cs)
    if sub == 7:
        if n != 12:
            return Ignored(7, o, f"MP_FASTCLOSE len {n}")
        return Fastclose(struct.unpack_from("!Q", o, 4)[0])
    if sub == 8:
        if n != 4:
            return Ignored(8, o, f"MP_TCPRST len {n}")
        if not rst:
            return Ignored(8, o, "MP_TCPRST on a segment without RST")
        return TcpRst(o[2] & 0x0F, o[3])
    return OtherMp(sub, o)


# ------------------------------------------------------------------ packet view
@dataclass
class Seg:
    """An independently parsed IPv4/IPv6 TCP packet."""

    raw: bytes
    v6: bool
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    opt_block: bytes
    opts: list  # (kind, whole option bytes)
    payload: bytes
    csum_ok: bool
    opts_ok: bool
    _mp: list | None = None

    @property
    def syn(self):
        return bool(self.flags & SYN)

    @property
    def ackf(self):
        return bool(self.flags & ACK)

    @property
    def fin(self):
        return bool(self.flags & FIN)

    @property
    def rst(self):
        return bool(self.flags & RST)

    @property
    def plen(self):
        return len(self.payload)

    def option(self, kind: int) -> bytes | None:
        for k, o in self.opts:
            if k == kind:
                return o
        return None

    @property
    def ts(self) -> tuple[int, int] | None:
        o = self.option(8)
        if o is None or len(o) != 10:
            return None
        return struct.unpack_from("!II", o, 2)

    @property
    def mss(self) -> int | None:
        o = self.option(2)
        return struct.unpack_from("!H", o, 2)[0] if o is not None and len(o) == 4 else None

    @property
    def wscale(self) -> int | None:
        o = self.option(3)
        return o[2] if o is not None and len(o) == 3 else None

    @property
    def sack(self) -> list[tuple[int, int]]:
        o = self.option(5)
        if o is None or (len(o) - 2) % 8:
            return []
        return [struct.unpack_from("!II", o, 2 + 8 * i) for i in range((len(o) - 2) // 8)]

    @property
    def mp(self) -> list:
        """Every MPTCP option, decoded with Linux's rules for this segment."""
        if self._mp is None:
            self._mp = [decode_mptcp(o, self.syn, self.ackf, self.rst, bool(self.payload))
                        for k, o in self.opts if k == 30]
        return self._mp

    def first(self, cls):
        for x in self.mp:
            if isinstance(x, cls):
                return x
        return None

    @property
    def mpc(self) -> Mpc | None:
        return self.first(Mpc)

    @property
    def dss(self) -> DssOpt | None:
        return self.first(DssOpt)

    @property
    def has_mptcp(self) -> bool:
        return any(k == 30 for k, _ in self.opts)

    def __repr__(self) -> str:
        f = "".join(c for c, b in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if self.flags & b)
        return (f"<Seg {f} seq={self.seq} ack={self.ack} len={self.plen} "
                f"mp={self.mp if self.has_mptcp else ''}>")


def parse_seg(buf) -> Seg:
    """Parse a packet (raises AssertionError on a structurally broken one)."""
    b = bytes(buf)
    ver = b[0] >> 4
    if ver == 4:
        ihl = (b[0] & 0x0F) * 4
        tot = struct.unpack_from("!H", b, 2)[0]
        assert tot == len(b), f"IPv4 total length {tot} != {len(b)}"
        assert b[9] == 6
        ip_ok = ones16(b[:ihl]) == 0xFFFF
        src, dst = b[12:16], b[16:20]
        th = ihl
        pseudo = src + dst + struct.pack("!BBH", 0, 6, tot - ihl)
        v6 = False
    else:
        assert ver == 6, f"IP version {ver}"
        pl = struct.unpack_from("!H", b, 4)[0]
        assert 40 + pl == len(b), f"IPv6 payload length {pl} vs {len(b) - 40}"
        assert b[6] == 6
        ip_ok = True
        src, dst = b[8:24], b[24:40]
        th = 40
        pseudo = src + dst + struct.pack("!IxxxB", pl, 6)
        v6 = True
    sport, dport, seq, ack, doff, flags, win = struct.unpack_from("!HHIIBBH", b, th)
    hl = (doff >> 4) * 4
    assert 20 <= hl <= len(b) - th, f"bad data offset {hl}"
    seg = b[th:]
    tcp_ok = ones16(pseudo + seg) == 0xFFFF
    block = b[th + 20:th + hl]
    opts = []
    ok = True
    i = 0
    while i < len(block):
        k = block[i]
        if k == 1:
            i += 1
            continue
        if k == 0:
            break
        if i + 1 >= len(block) or block[i + 1] < 2 or i + block[i + 1] > len(block):
            ok = False
            break
        opts.append((k, block[i:i + block[i + 1]]))
        i += block[i + 1]
    return Seg(b, v6, src, dst, sport, dport, seq, ack, flags, win, block, opts,
               b[th + hl:], ip_ok and tcp_ok, ok)
