"""A fake network around a :class:`~mptcp_proxy.core.proxy.Proxy` (end-host mode,
one subflow) on a fake clock, for tests/unit/test_connection.py.

Three parties:

- :class:`LocalStack`: a scripted plain TCP client, as the local Linux stack would
  behave (SYN with MSS/SACK_PERM/TS/WS in Linux's order, immediate ACKs with SACK,
  FIN, RST). It checks what the proxy hands it: checksums, no MPTCP option left,
  PAWS, RFC 5961 exact-match RSTs, consistent payload at each sequence number.
- :class:`LinuxPeer`: a scripted native MPTCP v1 server modelled on Linux 6.18's
  ``net/mptcp`` (options.c ``mptcp_parse_option``, subflow.c
  ``get_mapping_status``/``validate_mapping``/``subflow_syn_recv_sock``). It
  parses every option with its *own* strict decoder (not the proxy's codec),
  validates everything exactly as Linux would (docs/protocol.md §1–§5) and records
  each deviation in :attr:`LinuxPeer.violations`; it reassembles the byte
  stream from the DSNs.
- :class:`ProxyPair`: wires the three together through FIFO queues, with a
  wire between proxy and peer where packets can be dropped, duplicated or held
  back (reordered), a fake clock, and logs of every hop.

Nothing here imports the proxy's option codec, checksum or sequence helpers:
the model is an independent implementation, so it can catch their mistakes.
Only :func:`~mptcp_proxy.core.forge.build_segment` (to build packets) and
:func:`~mptcp_proxy.core.crypto.key_sha` (crypto.py has its own vector tests)
are shared.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable

from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.verdict import Verdict

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
MTU = 1500

# MPTCP flags (RFC 8684 §3.1, §3.3), spelled out here on purpose (independent model)
CAP_A, CAP_B, CAP_C, CAP_H = 0x80, 0x40, 0x20, 0x01
DSS_A, DSS_a, DSS_M, DSS_m, DSS_F = 0x01, 0x02, 0x04, 0x08, 0x10


# ----------------------------------------------------------------------------- helpers
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


# ------------------------------------------------------------ independent decoding
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


# --------------------------------------------------------------------- local stack
class LocalStack:
    """A scripted plain TCP client with Linux's habits (the proxy's local side).

    Sequence state is kept relative: byte ``k`` of what the app wrote has
    sequence ``iss + 1 + k``; received byte ``k`` has ``irs + 1 + k``.
    """

    def __init__(self, pair: "ProxyPair", addr: bytes, port: int, raddr: bytes, rport: int,
                 isn: int, mss: int = 1460, wscale: int | None = 7, sack: bool = True,
                 ts: bool = True, ts_base: int = 100000, win: int = 1024, tos: int = 0,
                 ttl: int = 64) -> None:
        self.pair = pair
        self.tos, self.ttl = tos, ttl  # its IP TOS byte / traffic class and TTL
        self.addr, self.port, self.raddr, self.rport = addr, port, raddr, rport
        self.iss = isn & M32
        self.mss, self.ws, self.sack_perm, self.ts_on = mss, wscale, sack, ts
        self.ts_base = ts_base
        self.win = win
        self.state = "CLOSED"
        self.sndbuf = bytearray()
        self.segs: list[tuple[int, int, bool]] = []  # (rel, len, fin) as first sent
        self.snd_nxt = 0
        self.snd_una = 0
        self.fin_queued = False
        self.fin_rel: int | None = None
        self.fin_acked = False
        self.irs = 0
        self.rcv = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.ooo_fin: int | None = None
        self.fin_rcvd = False
        self.peer_mss = None
        self.peer_ws = None
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = None
        self.tsvals_seen: list[int] = []
        self.sacks_seen: list[list[tuple[int, int]]] = []
        self.acks_seen: list[int] = []
        self.violations: list[str] = []
        self.reset = False
        self.challenge_acks = 0
        self.last_tsval = 0
        self.rcv_wup = 0  # the ACK last sent (relative)
        self.gone = False  # the socket vanished silently (answers nothing)

    # -- sequence helpers
    def swire(self, rel: int) -> int:
        return (self.iss + 1 + rel) & M32

    def rwire(self, rel: int) -> int:
        return (self.irs + 1 + rel) & M32

    @property
    def rcv_nxt(self) -> int:
        return len(self.rcv) + (1 if self.fin_rcvd else 0)

    @property
    def eff_mss(self) -> int:
        m = min(self.mss, self.peer_mss or 536)
        return m - (12 if self.ts_ok else 0)

    def tsval(self) -> int:
        v = (self.ts_base + int(self.pair.now * 1000)) & M32
        self.last_tsval = v
        return v

    def _seg(self, flags: int, seq_rel: int, payload: bytes = b"", sack: bool = True,
             ack: bool = True, extra: bytes = b"") -> bytes:
        opts = b""
        if self.ts_ok:
            opts += opt_ts(self.tsval(), self.ts_recent or 0)
        if sack and self.sack_ok and self.ooo:
            room = (40 - len(opts) - 4) // 8
            opts += opt_sack(self._sack_blocks()[:room])
        opts += extra
        if ack:
            self.rcv_wup = self.rcv_nxt  # (Linux tp->rcv_wup: the ACK last sent)
        return bytes(build_segment(self.addr, self.raddr, self.port, self.rport,
                                   self.swire(seq_rel), self.rwire(self.rcv_nxt) if ack else 0,
                                   flags | (ACK if ack else 0), self.win, opts, payload,
                                   ttl=self.ttl, tos=self.tos))

    def _sack_blocks(self) -> list[tuple[int, int]]:
        ranges = []
        for r in sorted(self.ooo):
            e = r + len(self.ooo[r])
            if ranges and r <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], e)
            else:
                ranges.append([r, e])
        ranges.reverse()  # most recent-ish first (RFC 2018 wants the latest first)
        return [(self.rwire(lo), self.rwire(hi)) for lo, hi in ranges]

    # -- actions (each returns the packets the stack emits)
    def syn(self) -> list[bytes]:
        """The SYN in Linux's option order: MSS, SACK_PERM, TS, NOP, WS."""
        opts = opt_mss(self.mss)
        if self.ts_on:
            opts += (b"\x04\x02" if self.sack_perm else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, self.tsval(), 0)
        elif self.sack_perm:
            opts += b"\x01\x01\x04\x02"
        if self.ws is not None:
            opts += b"\x01" + bytes((3, 3, self.ws))
        self.state = "SYN_SENT"
        self.syn_opts = opts
        return [bytes(build_segment(self.addr, self.raddr, self.port, self.rport, self.iss, 0,
                                    SYN, 0xFFFF, opts))]

    def write(self, data: bytes) -> None:
        self.sndbuf += data

    def close(self) -> None:
        self.fin_queued = True

    def push(self, window: int | None = None, fin_with_data: bool = True) -> list[bytes]:
        """Segment new data (and the FIN) while fewer than ``window`` segments are in
        flight."""
        out = []
        if self.state not in ("ESTABLISHED",):
            return out
        mss = self.eff_mss
        while self.snd_nxt < len(self.sndbuf):
            if window is not None and self.snd_nxt - self.snd_una >= window * mss:
                return out
            n = min(mss, len(self.sndbuf) - self.snd_nxt)
            rel = self.snd_nxt
            last = rel + n == len(self.sndbuf)
            fin = self.fin_queued and last and fin_with_data and self.fin_rel is None
            self.segs.append((rel, n, fin))
            self.snd_nxt += n
            if fin:
                self.fin_rel = self.snd_nxt
            out.append(self._seg(PSH | (FIN if fin else 0), rel,
                                 bytes(self.sndbuf[rel:rel + n])))
        if self.fin_queued and self.fin_rel is None:
            self.fin_rel = self.snd_nxt
            self.segs.append((self.snd_nxt, 0, True))
            out.append(self._seg(FIN, self.snd_nxt))
        return out

    def ack_pkt(self) -> bytes:
        return self._seg(0, self.snd_nxt + (1 if self.fin_rel is not None else 0))

    def rst(self) -> list[bytes]:
        """An active reset as Linux sends it (RST|ACK, seq = snd_nxt)."""
        self.state = "CLOSED"
        seq = self.snd_nxt + (1 if self.fin_rel is not None else 0)
        return [self._seg(RST, seq, sack=False)]

    def retransmit(self, only_first: bool = False) -> list[bytes]:
        """Resend what is unacknowledged, with the original segment boundaries."""
        out = []
        for rel, n, fin in self.segs:
            end = rel + n + (1 if fin else 0)
            if end <= self.snd_una:
                continue
            out.append(self._seg((PSH if n else 0) | (FIN if fin else 0), rel,
                                 bytes(self.sndbuf[rel:rel + n])))
            if only_first:
                break
        return out

    @property
    def all_acked(self) -> bool:
        top = self.snd_nxt + (1 if self.fin_rel is not None else 0)
        return self.snd_una >= top and self.snd_nxt >= len(self.sndbuf)

    # -- input
    def receive(self, s: Seg) -> list[bytes]:
        v = self.violations
        if self.gone:  # the socket vanished without a word: nothing answers any more
            return []
        if not s.csum_ok:
            v.append(f"local: bad checksum {s!r}")
            return []
        if any(k == 30 and (len(o) < 3 or o[2] >> 4 != 2) for k, o in s.opts):
            # a DSS left in a segment passed on unchanged is ignored by a plain TCP
            # socket; anything else (a key, signalling) must not reach it
            v.append(f"local: MPTCP option reached the local stack {s!r}")
        if not s.opts_ok:
            v.append(f"local: malformed option list {s!r}")
        if (s.src, s.sport, s.dst, s.dport) != (self.raddr, self.rport, self.addr, self.port):
            v.append(f"local: wrong 4-tuple {s!r}")
            return []
        if self.state == "SYN_SENT":
            if s.rst:
                if s.ackf and s.ack == self.swire(0):
                    self.reset = True
                    self.state = "CLOSED"
                return []
            if s.flags & (SYN | ACK) != SYN | ACK or s.ack != self.swire(0):
                return []
            self.irs = s.seq
            self.peer_mss = s.mss or 536
            self.peer_ws = s.wscale
            self.sack_ok = self.sack_perm and s.option(4) is not None
            self.ts_ok = self.ts_on and s.ts is not None
            if self.ts_ok:
                self.ts_recent = s.ts[0]
                self.tsvals_seen.append(s.ts[0])
            self.synack = s
            self.state = "ESTABLISHED"
            return [self.ack_pkt()]
        if self.state == "CLOSED":
            return []
        r = sdiff(s.seq, self.rwire(0))
        if s.rst:
            # RFC 5961 §3.2 as Linux does it (tcp_validate_incoming, tcp_reset_check)
            if r == self.rcv_nxt or (self.fin_rcvd and r == self.rcv_nxt - 1):
                self.reset = True
                self.state = "CLOSED"
                return []
            self.challenge_acks += 1
            return [self.ack_pkt()]
        if s.syn:
            if s.ackf and s.seq == self.irs:
                if s.mss is not None:
                    self.resyn_mss = s.mss
                return [self.ack_pkt()]  # retransmitted SYN/ACK: ACK it again
            v.append(f"local: unexpected SYN {s!r}")
            return []
        # an old pure ACK (below the ACK last sent: Linux tcp_sequence) is answered with an
        # ACK (a keepalive's answer); unlike Linux, its ACK field is still used: the model's
        # queue can hold the local stack's own ACK back while a later segment overtakes it
        answer = not s.plen and not s.fin and r < self.rcv_wup
        if self.ts_ok:
            if s.ts is None:
                v.append(f"local: segment without timestamps after TS negotiated {s!r}")
            else:
                tv = s.ts[0]
                self.tsvals_seen.append(tv)
                if self.ts_recent is not None and ts_before(tv, self.ts_recent):
                    v.append(f"local: PAWS would drop {s!r} (TSval {tv} < {self.ts_recent})")
                    return [self.ack_pkt()]
                if r <= self.rcv_nxt:
                    self.ts_recent = tv
        if s.ackf:
            a = sdiff(s.ack, self.swire(0))
            top = self.snd_nxt + (1 if self.fin_rel is not None else 0)
            self.acks_seen.append(a)
            if a > top:
                v.append(f"local: ACK of unsent data ({a} > {top}) {s!r}")
            elif a > self.snd_una:
                self.snd_una = a
                if self.fin_rel is not None and a > self.fin_rel:
                    self.fin_acked = True
        if s.sack:
            self.sacks_seen.append([(sdiff(lo, self.swire(0)), sdiff(hi, self.swire(0)))
                                    for lo, hi in s.sack])
        if not s.plen and not s.fin:
            return [self.ack_pkt()] if answer else []
        self._store(r, s.payload, s.fin)
        return [self.ack_pkt()]

    def _store(self, r: int, data: bytes, fin: bool) -> None:
        if fin:
            f = r + len(data)
            if self.ooo_fin is not None and self.ooo_fin != f:
                self.violations.append(f"local: FIN moved from {self.ooo_fin} to {f}")
            self.ooo_fin = f
        if data:
            have = len(self.rcv)
            # compare overlap with what was already received
            lo, hi = max(r, 0), min(r + len(data), have)
            if lo < hi and bytes(self.rcv[lo:hi]) != data[lo - r:hi - r]:
                self.violations.append(f"local: different bytes at offset {lo}")
            if r + len(data) > have:
                if r <= have:
                    if self.fin_rcvd:
                        self.violations.append("local: data after FIN")
                    self.rcv += data[have - r:]
                else:
                    old = self.ooo.get(r)
                    if old is not None and old[:len(data)] != data[:len(old)]:
                        self.violations.append(f"local: different out-of-order bytes at {r}")
                    if old is None or len(data) > len(old):
                        self.ooo[r] = data
        # drain
        changed = True
        while changed:
            changed = False
            for k in sorted(self.ooo):
                d = self.ooo[k]
                if k <= len(self.rcv):
                    del self.ooo[k]
                    if k + len(d) > len(self.rcv):
                        self.rcv += d[len(self.rcv) - k:]
                    changed = True
                    break
        if self.ooo_fin is not None and not self.fin_rcvd and len(self.rcv) == self.ooo_fin:
            self.fin_rcvd = True


# ------------------------------------------------------------------------ Linux peer
@dataclass
class PeerSeg:
    """A data segment of the peer, kept for retransmission (mapping unchanged)."""

    s: int  # relative subflow seq of the first byte
    payload: bytes
    mapping: tuple | None  # (dsn_rel, ssn_wire, dll, fin, csum|None, dsn64)
    fin: bool = False  # subflow FIN


class LinuxPeer:
    """A native MPTCP v1 server modelled on Linux 6.18, validating the proxy's side.

    ``mode``: "mptcp" answers MP_CAPABLE; "plain" is a TCP-only server; or pass
    ``synack_mpc`` bytes to send that exact option in the SYN/ACK (malformed or v0).
    """

    def __init__(self, pair: "ProxyPair", addr: bytes, port: int, key: int, isn: int,
                 checksum: bool = False, mode: str = "mptcp", synack_mpc: bytes | None = None,
                 mss: int = 1460, wscale: int = 7, seg_size: int = 1400, ts_base: int = 7000000,
                 win: int = 1024, force_ack64: bool | None = None) -> None:
        self.pair = pair
        self.addr, self.port = addr, port
        self.key = key
        self.token, self.idsn = key_sha(key)
        self.iss = isn & M32
        self.checksum = checksum
        self.mode = mode
        self.synack_mpc = synack_mpc
        self.mss, self.ws, self.seg_size = mss, wscale, seg_size
        self.ts_base = ts_base
        self.win = win
        self.force_ack64 = force_ack64  # None: Linux's rule (64-bit after a 64-bit mapping)
        self.state = "LISTEN"
        self.mptcp = mode == "mptcp"
        self.violations: list[str] = []
        self.notes: list[str] = []
        # handshake results
        self.syn_seg: Seg | None = None
        self.third_ack: Seg | None = None
        self.syn_count = 0
        self.client_csum = False
        self.csum_enabled = False
        self.remote_key: int | None = None
        self.remote_idsn = 0
        self.ts_ok = False
        self.sack_ok = False
        self.ts_recent = 0
        self.tsvals_sent: list[int] = []
        # subflow send side (relative: 0 = first byte after the SYN)
        self.segs: list[PeerSeg] = []
        self.unsent: list[PeerSeg] = []
        self.s_alloc = 0
        self.snd_nxt = 0
        self.snd_una = 0
        self.fin_s: int | None = None
        self.fin_acked = False
        # subflow receive side
        self.irs = 0
        self.rcv_nxt = 0
        self.ooo: dict[int, tuple] = {}
        self.fin_rcvd = False
        self.rcvd_any = False
        # Linux's current mapping (subflow.c map_*)
        self.map: dict | None = None
        self.pending_map: tuple | None = None
        self.known: list[tuple[int, int, int]] = []  # every (s, r, n) mapping seen
        self.use_64bit_ack = False
        # data level
        self.dsnd = bytearray()
        self.d_nxt = 0  # DSN (relative) of the next new data byte
        self.d_una = 0
        self.dfin: int | None = None
        self.dfin_acked = False
        self.data = bytearray()
        self.data_ooo: dict[int, bytes] = {}
        self.rcv_dfin: int | None = None
        self.dfin_rcvd = False
        # observations
        self.data_acks: list[int] = []
        self.mappings: list[tuple] = []  # (seq_rel, dsn_rel, ssn_wire, dll, fin, csum)
        self.resets: list[Seg] = []
        self.fastclosed = False
        self.rst_reason: int | None = None
        self.challenge_acks = 0
        self.fallback_reason: str | None = None
        self.subflow_fin_rcvd = False
        self.mptcp_opts_in_fallback = 0
        self.sent_mp_fail = False  # (set by a test that has the peer send MP_FAIL)
        self.infinite_rcvd = False
        self.sacks_seen: list[list[tuple[int, int]]] = []
        self.mptcp_syn = False
        self.syn_mpc_flags: int | None = None
        self.ack_mpc_flags: int | None = None

    # -- helpers
    def swire(self, rel: int) -> int:
        return (self.iss + 1 + rel) & M32

    def rwire(self, rel: int) -> int:
        return (self.irs + 1 + rel) & M32

    def tsval(self) -> int:
        v = (self.ts_base + int(self.pair.now * 1000)) & M32
        self.tsvals_sent.append(v)
        return v

    def data_ack_value(self) -> int:
        return len(self.data) + (1 if self.dfin_rcvd else 0)

    def violate(self, msg: str, s: Seg | None = None) -> None:
        self.violations.append(msg + (f" {s!r}" if s is not None else ""))

    def _build(self, flags: int, seq_rel: int, mptcp: bytes = b"", payload: bytes = b"",
               sack: bool = True, ack_rel: int | None = None, ts: bool = True) -> bytes:
        opts = b""
        if self.ts_ok and ts:
            opts += opt_ts(self.tsval(), self.ts_recent)
        opts += pad4(mptcp)
        if sack and self.sack_ok and self.ooo:
            room = (40 - len(opts) - 4) // 8
            if room > 0:
                opts += opt_sack(self._sack_blocks()[:room])
        a = self.rcv_nxt if ack_rel is None else ack_rel
        return bytes(build_segment(self.addr, self.pair.local.addr, self.port,
                                   self.pair.local.port, self.swire(seq_rel), self.rwire(a),
                                   flags | ACK, self.win, opts, payload))

    def _sack_blocks(self):
        rng = []
        for s in sorted(self.ooo):
            e = s + len(self.ooo[s][0].payload) + (1 if self.ooo[s][0].fin else 0)
            if rng and s <= rng[-1][1]:
                rng[-1][1] = max(rng[-1][1], e)
            else:
                rng.append([s, e])
        rng.reverse()
        return [(self.rwire(lo), self.rwire(hi)) for lo, hi in rng]

    @property
    def ack64(self) -> bool:
        return self.use_64bit_ack if self.force_ack64 is None else self.force_ack64

    def dss_ack(self) -> bytes:
        """DSS with only a DATA_ACK, 64-bit if the last mapping received was (Linux)."""
        if not self.mptcp:
            return b""
        v = (self.remote_idsn + 1 + self.data_ack_value()) & M64
        return dss_opt(data_ack=v, ack64=self.ack64)

    def ack_pkt(self) -> bytes:
        return self._build(0, self.snd_nxt + (1 if self.fin_s is not None else 0), self.dss_ack())

    # -- scripted sending
    def write(self, data: bytes, segs_per_map: int = 1, map_mode: str = "first",
              data_fin: bool = False, dsn64: bool = True, seg_size: int | None = None) -> None:
        """Queue ``data`` as segments of ``seg_size`` with one mapping per
        ``segs_per_map`` segments. ``map_mode``: "first" puts the mapping on the first
        segment of the group only (later ones carry a DSS with DATA_ACK only), "every"
        repeats it on each (as GSO copies the header). ``data_fin``: the last mapping
        carries DATA_FIN (DLL = length + 1)."""
        size = seg_size or self.seg_size
        group = size * segs_per_map
        chunks = [data[i:i + group] for i in range(0, len(data), group)] or [b""]
        for gi, g in enumerate(chunks):
            if not g:
                continue
            last = gi == len(chunks) - 1
            fin = data_fin and last
            drel = self.d_nxt
            ssn = self.s_alloc + 1
            dll = len(g) + (1 if fin else 0)
            cs = None
            if self.csum_enabled and self.mptcp:
                cs = dss_csum(self.idsn + 1 + drel, ssn, dll, g)
            m = (drel, ssn, dll, fin, cs, dsn64) if self.mptcp else None
            for i in range(0, len(g), size):
                p = g[i:i + size]
                seg = PeerSeg(self.s_alloc, p, m if (i == 0 or map_mode == "every") else None)
                self.s_alloc += len(p)
                self.segs.append(seg)
                self.unsent.append(seg)
            self.dsnd += g
            self.d_nxt += len(g)
            if fin:
                self.dfin = self.d_nxt
        if data_fin and not data:
            self.dfin = self.d_nxt

    def _emit(self, seg: PeerSeg) -> bytes:
        mp = b""
        if self.mptcp:
            dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
            if seg.mapping is not None:
                drel, ssn, dll, fin, cs, dsn64 = seg.mapping
                dsn = (self.idsn + 1 + drel) & M64
                mp = dss_opt(data_ack=dack, ack64=self.ack64,
                             dsn=dsn if dsn64 else dsn & M32, dsn64=dsn64, ssn=ssn, dll=dll,
                             csum=cs, fin=fin)
            else:
                mp = dss_opt(data_ack=dack, ack64=self.ack64)
        return self._build(PSH | (FIN if seg.fin else 0), seg.s, mp, seg.payload, sack=False)

    def push(self, window: int | None = None) -> list[bytes]:
        out = []
        while self.unsent:
            if window is not None and self.snd_nxt - self.snd_una >= window * self.seg_size:
                break
            seg = self.unsent.pop(0)
            self.snd_nxt = max(self.snd_nxt, seg.s + len(seg.payload))
            out.append(self._emit(seg))
        return out

    def data_fin_alone(self) -> list[bytes]:
        """DATA_FIN on a pure ACK: F, M, DSN = DATA_FIN's DSN, SSN 0, DLL 1 (§3.3.3)."""
        if self.dfin is None:
            self.dfin = self.d_nxt
        dsn = (self.idsn + 1 + self.dfin) & M64
        cs = dss_csum(dsn, 0, 1, b"") if self.csum_enabled else None
        dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
        return [self._build(0, self.snd_nxt, dss_opt(data_ack=dack, ack64=self.ack64,
                                                     dsn=dsn, ssn=0, dll=1, csum=cs, fin=True))]

    def subflow_fin(self) -> list[bytes]:
        self.fin_s = self.snd_nxt
        return [self._build(FIN, self.snd_nxt, self.dss_ack())]

    def rst(self, fastclose: bool = True, key: int | None = None, reason: int | None = 1,
            seq_rel: int | None = None, forged: bool = False) -> list[bytes]:
        """An RST from the peer (``forged``: built by a third party; the peer lives on)."""
        mp = b""
        if fastclose:
            mp += fastclose_opt(self.remote_key if key is None else key)
        if reason is not None:
            mp += tcprst_opt(reason)
        seq = self.snd_nxt + (1 if self.fin_s is not None else 0) if seq_rel is None else seq_rel
        if not forged:
            self.state = "CLOSED"
        return [self._build(RST, seq, mp, sack=False)]

    def retransmit(self, only_first: bool = False) -> list[bytes]:
        out = []
        for seg in self.segs:
            if seg.s + len(seg.payload) <= self.snd_una or seg.s >= self.snd_nxt:
                continue
            out.append(self._emit(seg))
            if only_first:
                break
        if self.fin_s is not None and not self.fin_acked and not only_first:
            out.append(self._build(FIN, self.fin_s, self.dss_ack()))
        return out

    def syn_ack(self) -> bytes:
        s = self.syn_seg
        opts = opt_mss(self.mss)
        if self.ts_ok:
            opts += (b"\x04\x02" if self.sack_ok else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, self.tsval(), self.ts_recent)
        elif self.sack_ok:
            opts += b"\x01\x01\x04\x02"
        if s.wscale is not None:
            opts += b"\x01" + bytes((3, 3, self.ws))
        if self.synack_mpc is not None:
            opts += pad4(self.synack_mpc)
        elif self.mptcp_syn:
            opts += mpc_opt(flags=CAP_H | (CAP_A if self.checksum else 0), sndr_key=self.key)
        return bytes(build_segment(self.addr, s.src, self.port, s.sport, self.iss,
                                   (s.seq + 1) & M32, SYN | ACK, self.win, opts))

    @property
    def all_acked(self) -> bool:
        return self.snd_una >= self.s_alloc and not self.unsent

    # -- input
    def receive(self, s: Seg) -> list[bytes]:
        if not s.csum_ok:
            self.violate("peer: bad IP/TCP checksum", s)
            return []
        if len(s.raw) > MTU:
            self.violate(f"peer: packet of {len(s.raw)} bytes exceeds the MTU", s)
        if not s.opts_ok:
            self.violate("peer: malformed TCP option list", s)
        if (s.dst, s.dport) != (self.addr, self.port):
            self.violate("peer: wrong destination", s)
            return []
        if self.state == "LISTEN" or (self.state == "SYN_RCVD" and s.syn and not s.ackf):
            return self._on_syn(s)
        if self.state == "CLOSED":
            return []
        for x in s.mp:
            if isinstance(x, Ignored):
                if self.mptcp:
                    self.violate(f"peer: Linux ignores this option: {x.reason}", s)
        if self.state == "SYN_RCVD":
            return self._on_third_ack(s)
        return self._on_established(s)

    def _on_syn(self, s: Seg) -> list[bytes]:
        if not s.syn or s.ackf:
            return []
        self.syn_count += 1
        self.syn_seg = s
        self.irs = s.seq
        mpcs = [x for x in s.mp if isinstance(x, Mpc)]
        for x in s.mp:
            if not isinstance(x, Mpc):
                self.violate(f"peer: unexpected MPTCP option on SYN: {x}", s)
        self.mptcp_syn = bool(mpcs) and self.mode == "mptcp"
        if mpcs:
            m = mpcs[0]
            if m.length != 4:
                self.violate(f"peer: MP_CAPABLE on SYN has len {m.length}", s)
            self.client_csum = bool(m.flags & CAP_A)
            self.syn_mpc_flags = m.flags
        self.mptcp = self.mptcp_syn
        self.sack_ok = s.option(4) is not None
        self.ts_ok = s.ts is not None
        if self.ts_ok:
            self.ts_recent = s.ts[0]
        self.state = "SYN_RCVD"
        return [self.syn_ack()]

    def _on_third_ack(self, s: Seg) -> list[bytes]:
        if s.rst:
            self.state = "CLOSED"
            return []
        if not s.ackf or s.ack != (self.iss + 1) & M32:
            self.violate("peer: bad ACK in SYN_RCVD", s)
            return []
        if not self.mptcp:
            self.state = "ESTABLISHED"
            return self._on_established(s)
        m = s.mpc
        # subflow_syn_recv_sock: the packet creating the child must carry MPC ACK/DATA
        if m is None or m.rcvr_key is None:
            self.fallback_reason = "MPCapableFallbackACK"
            self.violate("peer: first ACK without a valid MP_CAPABLE -> Linux falls back", s)
            self.mptcp = False
            self.state = "ESTABLISHED"
            return self._on_established(s)
        self.third_ack = s
        if m.rcvr_key != self.key:
            self.violate(f"peer: MP_CAPABLE rcvr_key {m.rcvr_key:#x} != our key", s)
        self.remote_key = m.sndr_key
        self.remote_idsn = key_sha(m.sndr_key)[1]
        self.ack_mpc_flags = m.flags
        # Linux listener: checksum if its sysctl or the A bit of the 3rd ACK/MPC data
        self.csum_enabled = self.checksum or bool(m.flags & CAP_A)
        self.state = "ESTABLISHED"
        return self._on_established(s)

    def _on_established(self, s: Seg) -> list[bytes]:
        if s.syn:
            self.violate("peer: SYN on an established subflow", s)
            return []
        r = sdiff(s.seq, self.rwire(0))
        if s.rst:
            return self._on_rst(s, r)
        if not self.mptcp:
            if s.has_mptcp:
                self.mptcp_opts_in_fallback += 1
        # PAWS and TSecr
        if self.ts_ok:
            if s.ts is None:
                self.violate("peer: no timestamp option after TS negotiated", s)
            else:
                tv, te = s.ts
                if ts_before(tv, self.ts_recent):
                    self.violate(f"peer: PAWS drop (TSval {tv} < ts_recent {self.ts_recent})", s)
                    return [self.ack_pkt()]
                if self.tsvals_sent and te not in self.tsvals_sent:
                    self.violate(f"peer: TSecr {te} is not a TSval we sent", s)
                if r <= self.rcv_nxt:
                    self.ts_recent = tv
        # subflow ACK
        if s.ackf:
            a = sdiff(s.ack, self.swire(0))
            top = self.snd_nxt + (1 if self.fin_s is not None else 0)
            if a > top:
                self.violate(f"peer: subflow ACK of unsent data ({a} > {top})", s)
            elif a > self.snd_una:
                self.snd_una = a
                if self.fin_s is not None and a > self.fin_s:
                    self.fin_acked = True
        if s.sack:
            self.sacks_seen.append([(sdiff(lo, self.swire(0)), sdiff(hi, self.swire(0)))
                                    for lo, hi in s.sack])
        mpc = s.mpc
        dss = s.dss
        if self.mptcp:
            if sum(isinstance(x, DssOpt) for x in s.mp) > 1:
                self.violate("peer: two DSS options", s)
            if mpc is not None and dss is not None:
                self.violate("peer: MP_CAPABLE and DSS on one segment", s)
            if mpc is not None and (mpc.sndr_key != self.remote_key or mpc.rcvr_key != self.key):
                self.violate("peer: MP_CAPABLE keys differ from the handshake's", s)
            if dss is not None and dss.data_ack is not None:
                self._on_data_ack(dss, s)
        # a pure ACK / DATA_FIN alone
        if not s.plen and not s.fin:
            if self.mptcp and dss is not None and dss.flags & DSS_M:
                had = self.dfin_rcvd
                self._on_dfin_alone(dss, s)
                if self.dfin_rcvd and not had:
                    return [self.ack_pkt()]  # mptcp_check_data_fin -> mptcp_send_ack
            return []
        # a segment with data or a subflow FIN: find its mapping
        mapping = None
        if self.mptcp:
            if mpc is not None and s.plen:
                mapping = (0, 1, mpc.data_len, False, mpc.csum, True)
                if r != 0:
                    self.violate("peer: MP_CAPABLE with data on a segment that is not the "
                                 "first one (implied SSN 1 does not cover it)", s)
                self.use_64bit_ack = True
            elif dss is not None and dss.flags & DSS_M:
                drel = self._expand_dsn(dss)
                mapping = (drel, dss.ssn, dss.dll, dss.fin, dss.csum, dss.dsn64)
                if dss.dll == 0 and not self.sent_mp_fail:
                    self.violate("peer: infinite mapping from the proxy", s)
                elif dss.dll == 0:  # RFC 8684 §3.7: the rest of the subflow, unchecked
                    self.infinite_rcvd = True
                    mapping = (drel, dss.ssn, 1 << 40, False, None, dss.dsn64)
                self.use_64bit_ack = dss.dsn64
            if mapping is not None:
                self.mappings.append((r,) + mapping)
                self._check_known(mapping, s)
                if (mapping[4] is not None) != self.csum_enabled:
                    self.violate("peer: DSS checksum presence differs from negotiation "
                                 "(Linux resets)", s)
        self.rcvd_any = True
        end = r + s.plen + (1 if s.fin else 0)
        if end <= self.rcv_nxt:
            return [self.ack_pkt()]  # duplicate: Linux sends a (D)SACK ACK
        if r > self.rcv_nxt:
            self.ooo[r] = (s, mapping)
            return [self.ack_pkt()]
        self._consume(s, r, mapping)
        while True:
            k = next((k for k in sorted(self.ooo) if k <= self.rcv_nxt), None)
            if k is None:
                break
            seg, mp = self.ooo.pop(k)
            kend = k + seg.plen + (1 if seg.fin else 0)
            if kend > self.rcv_nxt:
                self._consume(seg, k, mp)
        return [self.ack_pkt()]

    def _expand_dsn(self, dss: DssOpt) -> int:
        if dss.dsn64:
            v = (dss.dsn - self.remote_idsn - 1) & M64
        else:
            ref = (self.remote_idsn + 1 + len(self.data)) & M64
            v = (ref + sdiff(dss.dsn, ref & M32) - self.remote_idsn - 1) & M64
        return v - (1 << 64) if v >= 1 << 63 else v

    def _check_known(self, mapping, s: Seg) -> None:
        drel, ssn, dll, fin, cs, _ = mapping
        n = dll - (1 if fin else 0)
        s0 = ssn - 1
        for ks, kr, kn in self.known:
            lo, hi = max(ks, s0), min(ks + kn, s0 + n)
            if lo < hi and kr - ks != drel - s0:
                self.violate(f"peer: mapping s={s0} r={drel} n={n} conflicts with "
                             f"s={ks} r={kr} n={kn} (DSSNotMatching)", s)
                return
        if n > 0:
            self.known.append((s0, drel, n))

    def _on_data_ack(self, dss: DssOpt, s: Seg) -> None:
        if dss.ack64:
            v = (dss.data_ack - self.idsn - 1) & M64
        else:
            ref = (self.idsn + 1 + self.d_una) & M64
            v = (ref + sdiff(dss.data_ack, ref & M32) - self.idsn - 1) & M64
        if v >= 1 << 63:
            v -= 1 << 64
        self.data_acks.append(v)
        top = self.d_nxt + (1 if self.dfin is not None else 0)
        if v > top:
            self.violate(f"peer: DATA_ACK {v} beyond what was sent ({top})", s)
        elif v > self.d_una:
            self.d_una = v
            if self.dfin is not None and v > self.dfin:
                self.dfin_acked = True

    def _on_dfin_alone(self, dss: DssOpt, s: Seg) -> None:
        # mptcp_incoming_options: on a data-less segment only DATA_FIN with DLL 1 counts
        if not dss.fin or dss.dll != 1:
            self.violate("peer: mapping on a data-less segment that is not a DATA_FIN "
                         "with DLL 1 (ignored by Linux)", s)
            return
        if dss.ssn != 0:
            self.violate("peer: DATA_FIN alone must have SSN 0 (RFC 8684 §3.3.3)", s)
        if (dss.csum is not None) != self.csum_enabled:
            self.violate("peer: DATA_FIN checksum presence differs from negotiation", s)
        drel = self._expand_dsn(dss)
        if dss.csum is not None and not dss_csum_ok(self.remote_idsn + 1 + drel, dss.ssn, 1,
                                                    b"", dss.csum):
            self.violate("peer: bad DSS checksum on DATA_FIN", s)
        self._set_rcv_dfin(drel, s)

    def _set_rcv_dfin(self, drel: int, s: Seg) -> None:
        if self.rcv_dfin is not None and self.rcv_dfin != drel:
            self.violate(f"peer: DATA_FIN moved from {self.rcv_dfin} to {drel}", s)
        self.rcv_dfin = drel
        self._check_dfin()

    def _check_dfin(self) -> None:
        if self.rcv_dfin is not None and not self.dfin_rcvd and len(self.data) == self.rcv_dfin:
            self.dfin_rcvd = True

    # Linux get_mapping_status / validate_mapping, one in-order skb at a time
    def _install(self, mapping, pos: int, n: int, s: Seg) -> None:
        drel, ssn, dll, fin, cs, _ = mapping
        plen = dll - (1 if fin else 0)
        cur = self.map
        if cur is not None:
            same = (cur["dsn"], cur["ssn"], cur["dll"], cur["fin"]) == (drel, ssn, dll, fin)
            if same:
                return
            if cur["s"] <= pos and pos + n <= cur["s"] + cur["len"]:
                self.violate("peer: new mapping on a segment fully covered by the current "
                             "one (DSSNoMatch)", s)
                return
            self.pending_map = mapping  # validated once the current one is consumed
            return
        s0 = ssn - 1
        if not (s0 <= pos < s0 + plen):
            self.violate(f"peer: mapping s={s0}..{s0 + plen} does not cover subflow seq {pos} "
                         "(DSSNoMatchTCP)", s)
            return
        self.map = {"dsn": drel, "ssn": ssn, "dll": dll, "fin": fin, "csum": cs,
                    "s": s0, "len": plen, "buf": bytearray()}

    def _consume(self, s: Seg, r: int, mapping) -> None:
        data = s.payload
        pos = r
        if pos < self.rcv_nxt:  # trim what was already received
            data = data[self.rcv_nxt - pos:]
            pos = self.rcv_nxt
        if not self.mptcp:
            self._deliver(pos, data, s)
            self.rcv_nxt = pos + len(data)
        else:
            if mapping is not None:
                self._install(mapping, pos, len(data), s)
            while data:
                m = self.map
                if m is None and self.pending_map is not None:
                    pm, self.pending_map = self.pending_map, None
                    self._install(pm, pos, len(data), s)
                    m = self.map
                if m is None:
                    self.violate(f"peer: data at subflow seq {pos} without a mapping", s)
                    self.rcv_nxt = pos + len(data)
                    data = b""
                    break
                off = pos - m["s"]
                take = min(len(data), m["len"] - off)
                self._deliver(m["dsn"] + off, data[:take], s)
                m["buf"] += data[:take]
                pos += take
                data = data[take:]
                self.rcv_nxt = pos
                if pos >= m["s"] + m["len"]:
                    self._map_done(m, s)
        if s.fin:
            self.rcv_nxt += 1
            self.fin_rcvd = True
            self.subflow_fin_rcvd = True
            if self.mptcp and not self.dfin_rcvd:
                self.violate("peer: subflow FIN before the DATA_FIN", s)

    def _map_done(self, m, s: Seg) -> None:
        self.map = None
        if m["csum"] is not None and self.csum_enabled:
            if not dss_csum_ok(self.remote_idsn + 1 + m["dsn"], m["ssn"], m["dll"],
                               bytes(m["buf"]), m["csum"]):
                self.violate(f"peer: bad DSS checksum on mapping dsn={m['dsn']} "
                             f"len={m['dll']} (DataCsumErr)", s)
        if m["fin"]:
            self._set_rcv_dfin(m["dsn"] + m["len"], s)

    def _deliver(self, r: int, data: bytes, s: Seg) -> None:
        if not data:
            return
        have = len(self.data)
        lo, hi = max(r, 0), min(r + len(data), have)
        if lo < hi and bytes(self.data[lo:hi]) != data[lo - r:hi - r]:
            self.violate(f"peer: different bytes at data offset {lo}", s)
        if self.dfin_rcvd and r + len(data) > have:
            self.violate("peer: data beyond the DATA_FIN", s)
        if r + len(data) > have:
            if r <= have:
                self.data += data[have - r:]
                while True:
                    k = next((k for k in sorted(self.data_ooo) if k <= len(self.data)), None)
                    if k is None:
                        break
                    d = self.data_ooo.pop(k)
                    if k + len(d) > len(self.data):
                        self.data += d[len(self.data) - k:]
            else:
                self.data_ooo[r] = data
        self._check_dfin()

    def _on_rst(self, s: Seg, r: int) -> list[bytes]:
        # tcp_validate_incoming (RFC 5961 §3.2): exact match, else a challenge ACK
        if r != self.rcv_nxt:
            self.challenge_acks += 1
            self.notes.append(f"RST at {r}, rcv_nxt {self.rcv_nxt}: challenge ACK")
            return [self.ack_pkt()]
        self.resets.append(s)
        for x in s.mp:  # tcp_reset -> mptcp_incoming_options
            if isinstance(x, Fastclose):
                if x.key != self.key:
                    self.violate(f"peer: MP_FASTCLOSE carries key {x.key:#x}, not ours", s)
                else:
                    self.fastclosed = True
            elif isinstance(x, TcpRst):
                self.rst_reason = x.reason
        self.state = "CLOSED"
        return []


# -------------------------------------------------------------------------- the pair
@dataclass
class Rule:
    direction: str  # "to_peer" (proxy -> wire -> peer), "from_peer" or "to_local"
    match: Callable[[Seg], bool]
    action: str  # drop | dup | hold
    count: int


@dataclass
class Hop:
    hop: str
    seg: Seg
    now: float


V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2]))
V6 = (bytes.fromhex("fd000000000000000000000000000001"),
      bytes.fromhex("fd000001000000000000000000000002"))


def verdict_output(buf: bytes, v: Verdict, b: bytearray) -> bytes | None:
    """What passes the queue for verdict ``v`` on ``buf``, which the core got as ``b``:
    the original (ACCEPT — and then the core must not have changed a byte of it),
    nothing (DROP) or the rewritten buffer (MANGLE)."""
    assert isinstance(v, Verdict), f"bad verdict {v!r}"
    if v is Verdict.ACCEPT:
        assert bytes(b) == buf[:len(b)], "ACCEPT for a buffer the core changed"
        return buf
    if v is Verdict.DROP:
        return None
    return bytes(b)


def seeded_random_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


class ProxyPair:
    """Local stack ↔ Proxy ↔ wire ↔ Linux peer, on a fake clock.

    Packets travel through FIFO queues; :meth:`pump` runs them until quiet. Logs:
    ``hops`` (every packet with its hop name: "out" = local stack output,
    "to_peer" = what the proxy puts on the wire, "from_peer" = the peer's output,
    "to_local" = what the proxy hands the local stack) and ``verdicts``.
    """

    def __init__(self, checksum: bool = False, peer_checksum: bool = False, v6: bool = False,
                 seed: int = 1, config: ProxyConfig | None = None, peer_mode: str = "mptcp",
                 synack_mpc: bytes | None = None, local_isn: int = 0xFFFFF000,
                 peer_isn: int = 0xFFFFFE00, peer_key: int = 0x29A6C86981AD933C,
                 local_kw: dict | None = None, peer_kw: dict | None = None,
                 random_bytes: Callable[[int], bytes] | None = None) -> None:
        self.now = 0.0
        if config is None:
            config = ProxyConfig(checksum=checksum)
        self.config = config
        self.proxy = Proxy(config, random_bytes or seeded_random_bytes(seed))
        la, ra = V6 if v6 else V4
        self.local = LocalStack(self, la, 40000, ra, 8080, local_isn, **(local_kw or {}))
        self.peer = LinuxPeer(self, ra, 8080, peer_key, peer_isn, checksum=peer_checksum,
                              mode=peer_mode, synack_mpc=synack_mpc, **(peer_kw or {}))
        self.queue: deque[tuple[str, bytes]] = deque()
        self.rules: list[Rule] = []
        self.held: dict[str, list[bytes]] = {"to_peer": [], "from_peer": [], "to_local": []}
        self.hops: list[Hop] = []
        self.verdicts: list[tuple[str, object]] = []
        self.events: list[tuple] = []

    # -- wire manipulation
    def _rule(self, direction, match, action, count):
        assert direction in ("to_peer", "from_peer", "to_local")
        self.rules.append(Rule(direction, match or (lambda s: True), action, count))

    def drop(self, direction: str, match: Callable[[Seg], bool] | None = None,
             count: int = 1) -> None:
        self._rule(direction, match, "drop", count)

    def duplicate(self, direction: str, match=None, count: int = 1) -> None:
        self._rule(direction, match, "dup", count)

    def hold(self, direction: str, match=None, count: int = 1) -> None:
        """Hold matching packets back until :meth:`release` (reordering)."""
        self._rule(direction, match, "hold", count)

    def release(self, direction: str, pump: bool = True) -> None:
        held, self.held[direction] = self.held[direction], []
        dest = {"to_peer": "peer", "from_peer": "proxy_in", "to_local": "local"}[direction]
        for b in held:
            self.queue.append((dest, b))
        if pump:
            self.pump()

    def _wire(self, direction: str, buf: bytes) -> None:
        s = parse_seg(buf)
        self.hops.append(Hop(direction, s, self.now))
        dest = {"to_peer": "peer", "from_peer": "proxy_in", "to_local": "local"}[direction]
        for rule in self.rules:
            if rule.direction == direction and rule.count > 0 and rule.match(s):
                rule.count -= 1
                if rule.action == "drop":
                    return
                if rule.action == "hold":
                    self.held[direction].append(buf)
                    return
                if rule.action == "dup":
                    self.queue.append((dest, buf))
                break
        self.queue.append((dest, buf))

    # -- plumbing
    def _forged(self) -> None:
        for p in self.proxy.packets_to_send():
            assert isinstance(p, (bytes, bytearray)), type(p)
            s = parse_seg(p)
            if s.dst == self.peer.addr:
                self._wire("to_peer", bytes(p))
            elif s.dst == self.local.addr:
                self._wire("to_local", bytes(p))
            else:
                raise AssertionError(f"forged packet to an unknown address: {s!r}")
        self.events.extend(self.proxy.events())

    def _verdict(self, direction: str, buf: bytes, v, b: bytearray) -> bytes | None:
        """What passes for verdict ``v`` on ``buf`` (``b``: the buffer the core got)."""
        self.verdicts.append((direction, v))
        return verdict_output(buf, v, b)

    def emit_local(self, pkts) -> None:
        for p in pkts:
            self.queue.append(("proxy_out", p))

    def emit_peer(self, pkts) -> None:
        for p in pkts:
            self._wire("from_peer", p)

    def pump(self, max_steps: int = 200000) -> None:
        steps = 0
        q = self.queue
        while q:
            steps += 1
            assert steps < max_steps, "packet storm"
            dest, buf = q.popleft()
            if dest == "proxy_out":
                self.hops.append(Hop("out", parse_seg(buf), self.now))
                b = bytearray(buf)
                v = self.proxy.outbound(b, self.now)
                out = self._verdict("out", buf, v, b)
                if out is not None:
                    self._wire("to_peer", out)
                self._forged()
            elif dest == "proxy_in":
                b = bytearray(buf)
                v = self.proxy.inbound(b, self.now)
                out = self._verdict("in", buf, v, b)
                if out is not None:
                    self._wire("to_local", out)
                self._forged()
            elif dest == "peer":
                for r in self.peer.receive(parse_seg(buf)):
                    self._wire("from_peer", r)
            elif dest == "local":
                self.emit_local(self.local.receive(parse_seg(buf)))
        self.events.extend(self.proxy.events())

    def advance(self, dt: float) -> None:
        """Move the clock, firing the proxy's timers at their exact times."""
        end = self.now + dt
        while True:
            t = self.proxy.get_timer()
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            self.proxy.handle_timer(self.now)
            self._forged()
            self.pump()
        self.now = end

    # -- scripted conversations
    def handshake(self) -> None:
        self.emit_local(self.local.syn())
        self.pump()

    def local_send(self, data: bytes, window: int | None = None, close: bool = False) -> None:
        self.local.write(data)
        if close:
            self.local.close()
        self.emit_local(self.local.push(window))
        self.pump()

    def peer_send(self, data: bytes, **kw) -> None:
        self.peer.write(data, **kw)
        self.emit_peer(self.peer.push())
        self.pump()

    def transfer(self, local_data: bytes = b"", peer_data: bytes = b"", window: int = 32,
                 max_rounds: int = 5000, rto: float = 0.2, **peer_kw) -> None:
        """Send both ways with at most ``window`` segments in flight per side; when
        nothing moves, both sides retransmit what is unacknowledged (go-back-N)."""
        self.local.write(local_data)
        self.peer.write(peer_data, **peer_kw)
        for _ in range(max_rounds):
            before = len(self.hops)
            self.emit_local(self.local.push(window))
            self.emit_peer(self.peer.push(window))
            self.pump()
            if self.local.all_acked and self.peer.all_acked:
                return
            if len(self.hops) == before:
                self.advance(rto)
                self.emit_local(self.local.retransmit())
                self.emit_peer(self.peer.retransmit())
                self.pump()
        raise AssertionError("transfer did not complete")

    # -- views
    def segs(self, hop: str) -> list[Seg]:
        return [h.seg for h in self.hops if h.hop == hop]

    def mark(self) -> int:
        return len(self.hops)

    def since(self, mark: int, hop: str) -> list[Seg]:
        return [h.seg for h in self.hops[mark:] if h.hop == hop]

    @property
    def conn(self):
        conns = list(self.proxy.connections.values())
        assert len(conns) == 1, conns
        return conns[0]

    def assert_clean(self) -> None:
        problems = self.peer.violations + self.local.violations
        assert not problems, "\n".join(problems[:20])
