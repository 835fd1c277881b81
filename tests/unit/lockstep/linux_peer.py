"""The scripted native MPTCP v1 server modelled on Linux 6.18 (:class:`LinuxPeer`),
the proxy's wire side in :class:`~lockstep.pair.ProxyPair`: its state, the segments it
sends and retransmits. How it checks what it receives is in
:mod:`lockstep.linux_peer_receive`."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockstep.linux_peer_receive import LinuxPeerReceive
from lockstep.wire import (
    ACK,
    CAP_A,
    CAP_H,
    FIN,
    M32,
    M64,
    PSH,
    RST,
    SYN,
    dss_csum,
    dss_opt,
    fastclose_opt,
    key_sha,
    mpc_opt,
    opt_mss,
    opt_sack,
    opt_ts,
    pad4,
    tcprst_opt,
)
from mptcp_proxy.core.forge import build_segment

if TYPE_CHECKING:
    from lockstep.decode import Seg
    from lockstep.pair import ProxyPair


@dataclass
class PeerSeg:
    """A data segment of the peer, kept for retransmission (mapping unchanged)."""

    s: int  # relative subflow seq of the first byte
    payload: bytes
    mapping: tuple | None  # (dsn_rel, ssn_wire, dll, fin, csum|None, dsn64)
    fin: bool = False  # subflow FIN


class LinuxPeer(LinuxPeerReceive):
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
