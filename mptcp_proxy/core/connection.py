"""One proxied connection: the local stack's plain TCP on one side, MPTCP v1 on
the wire on the other (paper §3, Fig. 3–5; RFC 8684 §3.1, §3.3, §3.5).

Rules for this module (after h11's ``_state.py``):

1. The local stack is the only flow- and congestion-control: the proxy never
   buffers payload. It rewrites headers, adds or removes options, and forges
   only control segments (ACKs, FINs, RSTs, handshakes of its own subflows).
2. Sequence numbers are handled as relative, unwrapped integers (``d`` for our
   direction, ``r`` for the peer's, ``s`` per subflow; see :mod:`.mapping`).
   Because the local stack's ISN is mapped to IDSN+1, its relative TSN *is* the
   relative DSN: TSN→DSN is the constant offset of paper §3.3.
3. The cumulative ACK shown to the local stack is the peer's DATA_ACK; subflow
   ACKs and SACKs become SACK blocks (paper §3.5, projection).
4. Nothing raises out of here on bad input: it is counted and handled.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from . import crypto
from .constants import (
    MPTCP_CAP_CHECKSUM_REQD,
    MPTCP_CAP_DENY_JOIN_ID0,
    MPTCP_CAP_HMAC_SHA256,
    MPTCP_DSS_DATA_FIN,
    MPTCP_DSS_HAS_MAP,
    MPTCP_RST_EMIDDLEBOX,
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_DSS,
    MPTCPOPT_MP_CAPABLE,
    MPTCPOPT_MP_FASTCLOSE,
    MPTCPOPT_RST,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .fastopt import build_dss_ack, build_dss_map, build_sack, build_ts, parse_dss, read_sack
from .mapping import merge_ranges
from .options import (
    MpCapable,
    MpFastclose,
    MpTcpRst,
    dss_checksum,
    dss_checksum_ok,
    ones_sum,
    pull_option,
    push_option,
)
from .seq import MASK32, MASK64, diff32, expand_seq
from .subflow import Subflow, SubflowState, unwrap
from .tcp import TcpPacket, pad_options

if TYPE_CHECKING:
    from .proxy import Proxy

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


def _ts_after(a: int, b: int) -> bool:
    return ((b - a) & MASK32) >= 0x80000000


class Connection:
    """State of one proxied TCP connection (end-host mode, the local stack is the
    MPTCP client). Created by :class:`~.proxy.Proxy` on the local SYN."""

    # slotted: ~1 KB less per connection than a __dict__ (tools/bench memory figure)
    __slots__ = (
        "active", "closed_at", "closed_by_reset", "counters", "created", "csum",
        "csum_wanted", "d_nxt", "d_una", "data_fin_acked", "deny_join0",
        "fully_established", "handovers", "id", "idsn_local", "idsn_remote", "join_at",
        "joins_opened", "key", "last_activity", "last_rx_sf", "local_key", "local_mss",
        "local_sack", "local_token", "local_ts", "local_wscale", "next_sf_index",
        "peer_wscale0", "pending_handover", "pending_signals", "proxy", "r_ack", "r_fwd",
        "r_high", "rcv_data_fin", "remote_addrs", "remote_key", "remote_token",
        "sacks_shown", "sf0", "snd_data_fin", "srtt", "state", "subflows", "syn_count",
        "syn_mpc", "syn_time", "tcp_rcv_base", "tcp_rcv_isn", "tcp_snd_base",
        "tcp_snd_isn", "timer", "ts_local", "ts_local_time", "ts_shown", "v6", "win_local",
        "win_shown",
    )

    def __init__(self, proxy: "Proxy", pkt: TcpPacket, now: float, local_key: int) -> None:
        self.proxy = proxy
        self.counters = proxy.counters
        self.v6 = pkt.v6
        self.key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        self.id = proxy.next_conn_id()
        self.state = ConnState.SYN_SENT
        self.created = now
        self.last_activity = now
        self.closed_at: float | None = None
        self.tcp_snd_isn = pkt.seq
        self.tcp_snd_base = (pkt.seq + 1) & MASK32
        self.tcp_rcv_isn = 0
        self.tcp_rcv_base = 0
        self.local_key = local_key
        self.local_token, self.idsn_local = crypto.key_sha(local_key)
        self.remote_key = 0
        self.remote_token = 0
        self.idsn_remote = 0
        self.csum_wanted = proxy.config.checksum
        self.csum = False
        self.deny_join0 = False
        self.fully_established = False
        self.syn_count = 0
        self.syn_mpc = True
        # data-level state (relative)
        self.d_nxt = 0
        self.d_una = 0
        self.r_ack = 0
        self.r_high = 0
        self.snd_data_fin: int | None = None
        self.rcv_data_fin: int | None = None
        self.data_fin_acked = False
        # local stack's negotiated TCP options
        self.local_mss = 0
        self.local_wscale = -1
        self.local_sack = False
        self.local_ts = False
        self.peer_wscale0 = 0
        self.ts_local = 0  # last TSval the local stack sent
        self.ts_local_time = now
        self.ts_shown = None  # last TSval shown to the local stack
        self.win_local = 0xFFFF  # last raw window field of the local stack
        self.win_shown = -1
        self.sacks_shown: list = []
        sf = Subflow(0, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.seq)
        self.sf0 = sf
        self.subflows = [sf]
        self.active = sf
        self.last_rx_sf = sf
        self.timer: float | None = None
        self.r_fwd: list[list[int]] = []  # data ranges forwarded to the local stack, > r_ack
        # multipath (used by the path manager, core/pm.py)
        self.pending_handover = None
        self.pending_signals: list = []
        self.remote_addrs: dict[int, tuple] = {}
        self.handovers = 0
        self.joins_opened = False
        self.closed_by_reset = False
        self.next_sf_index = 0
        self.join_at: float | None = None
        self.syn_time = now
        self.srtt = 0.0
        self._parse_local_syn(pkt)

    # ------------------------------------------------------------------ utils
    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.name} token={self.remote_token:#x}>"

    def ts_now(self, now: float) -> int:
        """A TSval for forged segments: the local stack's latest one. Never an estimate
        ahead of its clock, or the peer's PAWS check (RFC 7323 §5) would drop the local
        stack's next segments on that subflow."""
        return self.ts_local

    def _dsn_l(self, d: int) -> int:
        return (self.idsn_local + 1 + d) & MASK64

    def _dan(self) -> int:
        """Our DATA_ACK (64-bit wire value) from what the local stack acknowledged."""
        r = self.r_ack
        if self.rcv_data_fin is not None and r > self.rcv_data_fin + 1:
            r = self.rcv_data_fin + 1
        return (self.idsn_remote + 1 + r) & MASK64

    def _set_timer(self, when: float | None) -> None:
        self.timer = when
        if when is not None:
            self.proxy.schedule(self, when)

    # ------------------------------------------------------------ handshake
    def _parse_local_syn(self, pkt: TcpPacket) -> None:
        b = pkt.buf
        for kind, off, olen in pkt.options() or ():
            if kind == TCPOPT_MSS and olen == 4:
                self.local_mss = (b[off + 2] << 8) | b[off + 3]
            elif kind == TCPOPT_WINDOW and olen == 3:
                self.local_wscale = b[off + 2]
            elif kind == TCPOPT_SACK_PERM and olen == 2:
                self.local_sack = True
            elif kind == TCPOPT_TIMESTAMP and olen == 10:
                self.local_ts = True
                self.ts_local = int.from_bytes(b[off + 2:off + 6], "big")
        sf = self.sf0
        sf.snd_wscale = max(self.local_wscale, 0)
        sf.ts_ok = self.local_ts
        sf.mss = self.local_mss

    def out_syn(self, pkt: TcpPacket, now: float):
        """The local SYN (first or retransmitted): add MP_CAPABLE (RFC 8684 §3.1)."""
        self.syn_count += 1
        self.syn_time = now
        if self.syn_count > self.proxy.config.syn_mpc_retries + 1 and self.syn_mpc:
            # like Linux: a SYN with MP_CAPABLE retransmitted twice goes out without
            # it (middleboxes dropping unknown options); the answer decides.
            self.syn_mpc = False
            self.counters.inc("MPCapableSYNTXDrop")
        if not self.syn_mpc:
            return ACCEPT
        flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if self.csum_wanted else 0)
        mpc = push_option(MpCapable(flags=flags))
        old = _used_options(pkt)
        if len(old) + len(mpc) > 40:
            self.syn_mpc = False
            self.counters.inc("MPCapableSYNTXDrop")
            return ACCEPT
        pkt.set_options(pad_options(old + mpc))
        self.counters.inc("MPCapableSYNTX")
        return pkt.finish()

    def in_synack(self, pkt: TcpPacket, now: float):
        """The peer's SYN/ACK on the initial subflow: take its key, strip it, clamp MSS."""
        if pkt.ack != self.tcp_snd_base:
            return ACCEPT  # not for this SYN; the local stack will answer it
        b = pkt.buf
        opts = pkt.options()
        mpc = None
        keep = bytearray()
        mss_off = -1
        wscale = 0
        sack = ts = False
        for kind, off, olen in opts or ():
            raw = bytes(b[off:off + olen])
            if kind == TCPOPT_MPTCP:
                o = pull_option(raw, syn=True)
                if isinstance(o, MpCapable) and o.sndr_key is not None and o.rcvr_key is None:
                    mpc = o
                elif olen < 3 or (raw[2] >> 4) == MPTCPOPT_MP_CAPABLE:
                    self.counters.inc("OptMalformed")
                continue
            if kind == TCPOPT_MSS and olen == 4:
                mss_off = len(keep)
            elif kind == TCPOPT_WINDOW and olen == 3:
                wscale = raw[2]
            elif kind == TCPOPT_SACK_PERM:
                sack = True
            elif kind == TCPOPT_TIMESTAMP and olen == 10:
                ts = True
                self.sf0.ts_recent = int.from_bytes(raw[2:6], "big")
            keep += raw
        if mpc is None or not self.syn_mpc or mpc.version != 1:
            self.counters.inc("MPCapableFallbackSYNACK")
            self._fallback(now)
            return ACCEPT
        self.remote_key = mpc.sndr_key
        self.remote_token, self.idsn_remote = crypto.key_sha(mpc.sndr_key)
        self.csum = self.csum_wanted or bool(mpc.flags & MPTCP_CAP_CHECKSUM_REQD)
        self.deny_join0 = bool(mpc.flags & MPTCP_CAP_DENY_JOIN_ID0)
        self.tcp_rcv_isn = pkt.seq
        self.tcp_rcv_base = (pkt.seq + 1) & MASK32
        sf = self.sf0
        sf.set_rcv_isn(pkt.seq)
        sf.rcv_wscale = wscale if self.local_wscale >= 0 else 0
        self.peer_wscale0 = sf.rcv_wscale
        sf.sack_ok = sack and self.local_sack
        sf.ts_ok = ts and self.local_ts
        if sf.ts_ok:
            self.ts_shown = sf.ts_recent  # the local stack's ts_recent from now on
        sf.state = SubflowState.ESTABLISHED
        sf.est_once = True
        sf.last_rx = now
        self.local_sack = sf.sack_ok
        self.local_ts = sf.ts_ok
        if mss_off >= 0:
            mss = (keep[mss_off + 2] << 8) | keep[mss_off + 3]
            clamped = max(mss - self.proxy.config.mss_overhead, 536)
            if clamped < mss:
                keep[mss_off + 2:mss_off + 4] = clamped.to_bytes(2, "big")
                self.counters.inc("MssClamped")
            sf.mss = clamped
        self.state = ConnState.ESTABLISHED
        self.srtt = max(now - self.syn_time, 0.0)
        self.counters.inc("MPCapableSYNACKRX")
        self.proxy.emit_event("established", self)
        pkt.set_options(pad_options(bytes(keep)))
        return pkt.finish()

    # --------------------------------------------------------------- outbound
    def on_outbound(self, pkt: TcpPacket, now: float):
        """A segment of the local stack (OUTPUT hook). Returns a verdict."""
        self.last_activity = now
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        if st == ConnState.SYN_SENT:
            if flags & TCP_SYN and not flags & TCP_ACK:
                return self.out_syn(pkt, now)
            if flags & TCP_RST:
                self._close(now)
            return ACCEPT
        if st == ConnState.CLOSED:
            return DROP
        if flags & TCP_SYN:
            return DROP  # a SYN on an established 4-tuple: stale, never to the wire
        if flags & TCP_RST:
            return self._local_reset(pkt, now)
        if not self.active.can_send:
            pm = self.proxy.pm
            live = pm.usable(self) if pm is not None else []
            if not live:
                # break before make, the new subflow not up yet: nowhere to send; the
                # local stack retransmits once it is (never map data onto a dead path)
                if not self.data_closed():
                    self.counters.inc("NoUsableSubflow")
                return DROP
            pm._switch(self, live[0], now, signal=True)
        return self._out_established(pkt, now)

    def _out_established(self, pkt: TcpPacket, now: float):
        b = pkt.buf
        opts = pkt.options()
        if opts is None:
            self.counters.inc("PktMalformed")
            return DROP
        ts = None
        sack_wire = None
        extra = b""
        for kind, off, olen in opts:
            if kind == TCPOPT_TIMESTAMP and olen == 10:
                ts = int.from_bytes(b[off + 2:off + 6], "big")
            elif kind == TCPOPT_SACK:
                sack_wire = read_sack(b, off, olen)
            elif kind != TCPOPT_MPTCP:
                extra += bytes(b[off:off + olen])
        if ts is not None:
            self.ts_local = ts
            self.ts_local_time = now
        self.win_local = pkt.win
        flags = pkt.flags
        # -- what the local stack acknowledges (peer -> local direction)
        if flags & TCP_ACK:
            r = unwrap(pkt.ack, self.tcp_rcv_base, self.r_ack)
            if r > self.r_ack:
                limit = self.r_high + (1 if self.rcv_data_fin is not None else 0)
                self.r_ack = min(r, max(limit, self.r_ack))
        r_sacks = None
        if sack_wire:
            base = self.tcp_rcv_base
            r_sacks = [(unwrap(lft, base, self.r_ack), unwrap(rgt, base, self.r_ack))
                       for lft, rgt in sack_wire]
        # -- what the local stack sends
        plen = pkt.plen
        fin = flags & TCP_FIN
        d = unwrap(pkt.seq, self.tcp_snd_base, self.d_nxt)
        if fin:
            dfin = d + plen
            if self.snd_data_fin is None:
                self.snd_data_fin = dfin
                self.counters.inc("DataFinTx")
                self.proxy.emit_event("data_fin_sent", self)
        if plen:
            pieces = self._assign(d, plen)
            if len(pieces) == 1 and len(pkt.buf) + 28 <= 0xFFFF:
                sf, pd, ps, n = pieces[0]
                self._ack_other_subflows(sf, r_sacks, ts, now, dupack=False)
                return self._rewrite_out(pkt, sf, pd, ps, n, bool(fin), ts, r_sacks, extra, now)
            payload = pkt.payload
            for i, (sf, pd, ps, n) in enumerate(pieces):
                last = i == len(pieces) - 1
                part = payload[pd - d:pd - d + n]
                self._forge_data(sf, pd, ps, part, bool(fin) and last, ts, r_sacks, now)
            self._ack_other_subflows(None, r_sacks, ts, now, dupack=False)
            return DROP
        # pure ACK or FIN-only
        sf, dupack = self._pick_ack_subflow(r_sacks)
        self._ack_other_subflows(sf, r_sacks, ts, now, dupack=dupack)
        verdict = self._rewrite_out(pkt, sf, d, sf.seq_nxt, 0, bool(fin), ts, r_sacks, extra, now)
        if not self.joins_opened and self.join_at is None and self.proxy.pm is not None:
            # joins wait until the peer has surely processed our third ACK, else the
            # token is unknown to it (MPJoinNoTokenFound); the first DATA_ACK also
            # triggers them
            self.join_at = now + max(0.02, 1.5 * self.srtt)
            self._rearm()
        if self.snd_data_fin is not None and self.rcv_data_fin is not None:
            self._check_close(now)
        return verdict

    def _held(self, r_sacks) -> list:
        """Data ranges above the local stack's ACK that it holds: what the proxy
        forwarded to it, plus what it SACKs (merged, sorted)."""
        fwd = self.r_fwd
        r_ack = self.r_ack
        while fwd and fwd[0][1] <= r_ack:
            del fwd[0]
        # data contiguous with the local stack's ACK is left to that ACK (following
        # it keeps subflow ACKs from running ahead and turning the local stack's next
        # ACKs into duplicates); only data held above a data-level hole counts here,
        # so subflows that delivered it are not starved into timeouts (paper §5.5)
        start = 1 if fwd and fwd[0][0] <= r_ack else 0
        if not r_sacks:
            return [(lo, hi) for lo, hi in fwd[start:]]
        return merge_ranges([(lo, hi) for lo, hi in fwd[start:]]
                            + [x for x in r_sacks if x[1] > r_ack])

    def _fwd_add(self, lo: int, hi: int) -> None:
        fwd = self.r_fwd
        if hi <= self.r_ack:
            return
        if fwd and fwd[-1][0] <= lo <= fwd[-1][1]:
            if hi > fwd[-1][1]:
                fwd[-1][1] = hi
            return
        fwd.append([lo, hi])
        if len(fwd) > 1:
            merged = merge_ranges([tuple(x) for x in fwd if x[1] > self.r_ack])
            # bounded: keep the lowest ranges, the ones that move subflow ACKs forward
            self.r_fwd = [list(x) for x in merged[:64]]

    def _assign(self, d: int, n: int) -> list[tuple[Subflow, int, int, int]]:
        """Choose subflow and subflow sequence for data bytes ``[d, d+n)`` (paper §3.3):
        new data goes to the active subflow, contiguous in its sequence space (a gap
        is reserved, so late packets keep a monotonic mapping); a retransmission goes
        where the original went while that subflow lives, else to the active one."""
        pieces = []
        cur = d
        end = d + n
        while cur < end:
            if cur >= self.d_nxt:
                sf = self.active
                s0 = sf.snd_nxt
                sf.send_map.add(s0, self.d_nxt, end - self.d_nxt)
                s = s0 + (cur - self.d_nxt)
                sf.snd_nxt = s0 + (end - self.d_nxt)
                self.d_nxt = end
                pieces.append((sf, cur, s, end - cur))
                break
            lim = min(end, self.d_nxt) - cur
            hit = None
            for sf in self.subflows:
                if sf.state == SubflowState.ESTABLISHED or sf.state == SubflowState.CLOSING:
                    f = sf.find_sent(cur, lim)
                    if f is not None:
                        hit = (sf, f[0], f[1])
                        break
            if hit is None:
                sf = self.active
                s0 = sf.snd_nxt
                sf.send_map.add(s0, cur, lim)
                sf.snd_nxt = s0 + lim
                hit = (sf, s0, lim)
            sf, s, k = hit
            if pieces and pieces[-1][0] is sf and pieces[-1][2] + pieces[-1][3] == s:
                p = pieces[-1]
                pieces[-1] = (sf, p[1], p[2], p[3] + k)
            else:
                pieces.append((sf, cur, s, k))
            cur += k
        return pieces

    def _mptcp_out_option(self, sf: Subflow, d: int, s: int, n: int, data_fin: bool,
                          payload) -> bytes:
        """The MPTCP option for a segment of ours on ``sf`` carrying data bytes
        ``[d, d+n)`` at relative subflow sequence ``s`` (RFC 8684 §3.1, §3.3)."""
        if not self.fully_established and sf is self.sf0 and d == 0 and s == 0 \
                and not data_fin:
            flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if self.csum else 0)
            if n == 0:
                self.counters.inc("MPCapableACKTX")
                return pad_options(push_option(MpCapable(
                    flags=flags, sndr_key=self.local_key, rcvr_key=self.remote_key)))
            self.counters.inc("MPCapableDataTX")
            csum = None
            if self.csum:
                csum = dss_checksum(self._dsn_l(0), 1, n, ones_sum(payload))
            return pad_options(push_option(MpCapable(
                flags=flags, sndr_key=self.local_key, rcvr_key=self.remote_key,
                data_len=n, checksum=csum)))
        dan = self._dan()
        self.counters.inc("DataAckTx")
        if n == 0 and not data_fin:
            return build_dss_ack(dan)
        if n == 0:  # DATA_FIN alone: SSN 0, DLL 1 (RFC 8684 §3.3.3)
            dsn = self._dsn_l(self.snd_data_fin)
            ssn = 0
            dll = 1
        else:
            dsn = self._dsn_l(d)
            ssn = (s + 1) & MASK32
            dll = n + (1 if data_fin else 0)
            self.counters.inc("DSSTx")
        csum = None
        if self.csum:
            csum = dss_checksum(dsn, ssn, dll, ones_sum(payload) if n else 0)
            self.counters.inc("DSSChecksumTx")
        return build_dss_map(dan, dsn, ssn, dll, csum, data_fin)

    def _out_options(self, sf: Subflow, d: int, s: int, n: int, data_fin: bool, ts,
                     r_sacks, extra: bytes, payload, now: float) -> tuple[bytes, int]:
        """Full option block and subflow ACK (relative) for a segment on ``sf``."""
        parts = []
        if sf.ts_ok:
            tsval = ts if ts is not None else self.ts_now(now)
            parts.append(build_ts(tsval, sf.ts_recent))
        parts.append(self._mptcp_out_option(sf, d, s, n, data_fin, payload))
        san, s_sacks = sf.project_ack(self.r_ack, self._held(r_sacks))
        used = sum(len(p) for p in parts)
        if s_sacks and sf.sack_ok:
            room = (40 - used - 4) // 8
            if room > 0:
                blocks = s_sacks[-room:] if len(s_sacks) > room else s_sacks
                parts.append(build_sack([(sf.rcv_wire(lo), sf.rcv_wire(hi)) for lo, hi in
                                         reversed(blocks)]))
                if len(s_sacks) > room:
                    self.counters.inc("SackBlocksDropped", len(s_sacks) - room)
            else:
                self.counters.inc("SackBlocksDropped", len(s_sacks))
            used = sum(len(p) for p in parts)
        if extra and used + len(extra) <= 40:
            parts.append(pad_options(extra))
        return b"".join(parts), san

    def _rewrite_out(self, pkt: TcpPacket, sf: Subflow, d: int, s: int, n: int,
                     data_fin: bool, ts, r_sacks, extra: bytes, now: float):
        payload = pkt.payload if (n and self.csum) else b""
        opts, san = self._out_options(sf, d, s, n, data_fin, ts, r_sacks, extra, payload, now)
        pkt.set_seq(sf.snd_wire(s))
        if pkt.flags & TCP_ACK:
            pkt.set_ack(sf.rcv_wire(san))
            sf.rcv_acked = san
        if data_fin:
            pkt.set_flags(pkt.flags & ~TCP_FIN)
        if sf is not self.sf0:
            pkt.set_src(sf.laddr)
            pkt.set_dst(sf.raddr)
            pkt.set_sport(sf.lport)
            pkt.set_dport(sf.rport)
        pkt.set_options(opts)
        sf.last_tx = now
        sf.rcv_map.prune_below_key(san)
        return pkt.finish()

    def _forge_data(self, sf: Subflow, d: int, s: int, payload: bytes, data_fin: bool, ts,
                    r_sacks, now: float) -> None:
        """Send data bytes ``[d, d+len)`` on ``sf`` at ``s`` in segments of our own
        (a raw socket sends no GSO super-packet: cut it to the path's segment size)."""
        step = self._seg_size(sf)
        total = len(payload)
        for off in range(0, total, step):
            part = payload[off:off + step]
            n = len(part)
            fin = data_fin and off + n >= total
            opts, san = self._out_options(sf, d + off, s + off, n, fin, ts, r_sacks, b"",
                                          part, now)
            sf.rcv_acked = san
            self.proxy.send(self._segment(sf, sf.snd_wire(s + off), TCP_ACK, opts, part))

    def _seg_size(self, sf: Subflow) -> int:
        """Payload bytes per forged segment: the MSS of the path (already lowered by
        our option overhead) minus the timestamps option."""
        mss = sf.mss or self.sf0.mss or 1200
        return max(mss - (12 if sf.ts_ok else 0), 500)

    def _segment(self, sf: Subflow, seq_wire: int, flags: int, opts: bytes,
                 payload: bytes = b""):
        from .forge import build_segment
        sf.last_tx = self.proxy.now
        return build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, seq_wire,
                             sf.rcv_wire(sf.rcv_acked), flags, self.win_local, opts, payload)

    def _pick_ack_subflow(self, r_sacks) -> tuple[Subflow, bool]:
        """Subflow for a pure ACK of the local stack: where the ACK advances most,
        else where the peer has a hole (a real duplicate ACK), else where the peer
        sent last (paper §3.4)."""
        if len(self.subflows) == 1:
            return self.sf0, False
        best = None
        best_adv = 0
        for sf in self.subflows:
            if sf.state != SubflowState.ESTABLISHED:
                continue
            san, _ = sf.project_ack(self.r_ack, self._held(r_sacks))
            adv = san - sf.rcv_acked
            if adv > best_adv:
                best, best_adv = sf, adv
        if best is not None:
            return best, False
        for sf in self.subflows:
            if sf.state == SubflowState.ESTABLISHED and sf.rcv_high > sf.rcv_acked:
                return sf, True
        sf = self.last_rx_sf
        if sf.state != SubflowState.ESTABLISHED:
            sf = self.active
        return sf, False

    def _ack_other_subflows(self, carrier: Subflow | None, r_sacks, ts, now: float,
                            dupack: bool) -> None:
        """Forge subflow ACKs on subflows that contributed to the local stack's ACK
        but do not carry this segment (paper §3.4)."""
        if len(self.subflows) == 1:
            return
        for sf in self.subflows:
            if sf is carrier or sf.state not in (SubflowState.ESTABLISHED, SubflowState.CLOSING):
                continue
            san, sacks = sf.project_ack(self.r_ack, self._held(r_sacks))
            if san > sf.rcv_acked or (dupack and sf.rcv_high > san):
                self.send_ack(sf, now, r_sacks)

    def send_ack(self, sf: Subflow, now: float, r_sacks=None, flags: int = TCP_ACK,
                 extra: bytes = b"") -> None:
        """Forge a pure ACK (with DATA_ACK) on ``sf``; ``extra`` adds options."""
        opts, san = self._out_options(sf, self.d_nxt, sf.snd_nxt, 0, False, None,
                                      r_sacks, b"", b"", now)
        if extra:
            if len(opts) + len(extra) > 40:
                # signalling wins over the DATA_ACK (Linux drops other suboptions too)
                ts_part = build_ts(self.ts_now(now), sf.ts_recent) if sf.ts_ok else b""
                opts = ts_part
            opts += pad_options(extra)
        sf.rcv_acked = san
        self.proxy.send(self._segment(sf, sf.snd_wire(sf.seq_nxt), flags, opts))

    # --------------------------------------------------------------- resets
    def _local_reset(self, pkt: TcpPacket, now: float):
        """The local stack resets: MP_FASTCLOSE on RST on every subflow (RFC 8684 §3.5)."""
        opt = pad_options(push_option(MpFastclose(self.remote_key))
                          + push_option(MpTcpRst(0, MPTCP_RST_EUNSPEC)))
        verdict = DROP
        for sf in self.subflows:
            if sf.state in (SubflowState.CLOSED,):
                continue
            self.counters.inc("MPFastcloseTx")
            if sf is self.sf0:
                pkt.set_seq(sf.snd_wire(sf.seq_nxt))
                pkt.set_options(opt)
                verdict = pkt.finish()
            else:
                self.proxy.send(self._segment(sf, sf.snd_wire(sf.seq_nxt), TCP_RST | TCP_ACK,
                                              opt))
        self._close(now, reset=True)
        return verdict

    def reset_local(self, now: float) -> None:
        """Forge an RST to the local stack (the connection is gone on the wire)."""
        from .forge import build_segment
        la, lp, ra, rp = self.key
        for r in sorted({self.r_ack, self.r_high}):
            seq = (self.tcp_rcv_base + r) & MASK32
            self.proxy.send(build_segment(ra, la, rp, lp, seq, 0, TCP_RST, 0))
        self.counters.inc("RstTx")

    def reset_peer(self, now: float, reason: int = MPTCP_RST_EUNSPEC) -> None:
        """Reset every subflow towards the peer with MP_FASTCLOSE + MP_TCPRST."""
        opt = push_option(MpFastclose(self.remote_key)) + push_option(MpTcpRst(0, reason))
        for sf in self.subflows:
            if sf.state == SubflowState.CLOSED:
                continue
            self.counters.inc("MPFastcloseTx")
            self.counters.inc("MPRstTx")
            self.proxy.send(self._segment(sf, sf.snd_wire(sf.snd_nxt), TCP_RST | TCP_ACK,
                                          pad_options(opt)))

    def abort(self, now: float, reason: int = MPTCP_RST_EUNSPEC) -> None:
        """Reset both sides and forget the connection (daemon exit, fatal errors)."""
        if self.state == ConnState.ESTABLISHED:
            self.reset_peer(now, reason)
            self.reset_local(now)
        self._close(now, reset=True)

    def _fallback(self, now: float) -> None:
        """Plain TCP from now on, untouched (RFC 8684 §3.7). The proxy keeps nothing for
        it: the entry stays visible for ``linger`` seconds, then packets of the 4-tuple
        simply pass as unknown, and a new SYN on it starts a new connection."""
        self.state = ConnState.FALLBACK
        self.counters.inc("FallbackConnections")
        self.proxy.emit_event("fallback", self)
        self.closed_at = now
        pm = self.proxy.pm
        for sf in self.subflows[1:]:
            if sf.state != SubflowState.CLOSED and pm is not None:
                pm.reset_subflow(self, sf, now, MPTCP_RST_EMPTCP)
        self._set_timer(now + self.proxy.config.linger)

    def _close(self, now: float, reset: bool = False) -> None:
        if reset:
            self.closed_by_reset = True
        if self.state != ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self.closed_at = now
            for sf in self.subflows:
                sf.state = SubflowState.CLOSED
            self.proxy.emit_event("closed", self)
            self._set_timer(now + self.proxy.config.linger)

    # ---------------------------------------------------------------- inbound
    def on_inbound(self, pkt: TcpPacket, sf: Subflow, now: float):
        """A segment from the peer on subflow ``sf`` (PREROUTING). Returns a verdict."""
        self.last_activity = now
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        if st == ConnState.SYN_SENT:
            if sf is self.sf0 and flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
                return self.in_synack(pkt, now)
            if flags & TCP_RST:
                self._close(now)
            return ACCEPT
        if st == ConnState.CLOSED:
            return self._closed_ack(pkt, sf, now)
        sst = sf.state
        if sst != SubflowState.ESTABLISHED and sst != SubflowState.CLOSING:
            if sst == SubflowState.CLOSED:
                # a subflow we abandoned (break) may still deliver: its data and
                # DATA_ACKs are real and spare the peer reinjections; never answer on it
                if not sf.est_once or flags & (TCP_RST | TCP_SYN):
                    self.counters.inc("PktDeadSubflow")
                    return DROP
                return self._in_established(pkt, sf, now)
            return self.proxy.pm.handle_join_packet(self, sf, pkt, now)
        if flags & TCP_SYN:
            if sf is self.sf0 and flags & TCP_ACK and pkt.seq == self.tcp_rcv_isn:
                # retransmitted SYN/ACK: our third ACK was lost; let the local stack
                # answer (its ACK gets MP_CAPABLE again) with the key stripped
                return self._strip_mptcp(pkt)
            return DROP
        return self._in_established(pkt, sf, now)

    def _strip_mptcp(self, pkt: TcpPacket):
        b = pkt.buf
        keep = bytearray()
        for kind, off, olen in pkt.options() or ():
            raw = bytes(b[off:off + olen])
            if kind == TCPOPT_MSS and olen == 4:
                mss = int.from_bytes(raw[2:4], "big")
                raw = bytes(raw[:2]) + max(mss - self.proxy.config.mss_overhead, 536).to_bytes(
                    2, "big")
            if kind != TCPOPT_MPTCP:
                keep += raw
        pkt.set_options(pad_options(bytes(keep)))
        return pkt.finish()

    def _in_established(self, pkt: TcpPacket, sf: Subflow, now: float):
        b = pkt.buf
        opts = pkt.options()
        if opts is None:
            self.counters.inc("PktMalformed")
            return DROP
        counters = self.counters
        ts_off = -1
        tsval = 0
        peer_sacks = None
        dss = None
        others = None
        for kind, off, olen in opts:
            if kind == TCPOPT_MPTCP:
                if olen < 3:
                    counters.inc("OptMalformed")
                    continue
                sub = b[off + 2] >> 4
                if sub == MPTCPOPT_DSS:
                    dss = parse_dss(b, off, olen)
                    if dss is None:
                        counters.inc("OptMalformed")
                else:
                    if others is None:
                        others = []
                    others.append((sub, off, olen))
            elif kind == TCPOPT_TIMESTAMP and olen == 10:
                ts_off = off
                tsval = int.from_bytes(b[off + 2:off + 6], "big")
            elif kind == TCPOPT_SACK:
                peer_sacks = read_sack(b, off, olen)
        flags = pkt.flags
        plen = pkt.plen
        # RFC 9293 §3.10.7.4: only an acceptable segment may change state. The window
        # is judged against what this subflow has seen; checksums are verified (in
        # full, so only when) a segment is about to change state, since the proxy acts
        # before the local stack's own checks (RFC 1624 updates keep a bad sum bad).
        s_pkt = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
        win = self._rcv_window()
        if not (sf.rcv_acked - win <= s_pkt <= sf.rcv_high + win):
            counters.inc("PktOutOfWindow")
            return DROP
        verified = False
        if flags & (TCP_RST | TCP_FIN) or others:
            if not pkt.checksum_ok():
                counters.inc("PktBadChecksum")
                return DROP
            verified = True
        if flags & TCP_RST:
            return self._peer_reset(pkt, sf, others, now)
        sf.last_rx = now
        self.last_rx_sf = sf
        if ts_off >= 0 and sf.ts_ok:
            if sf.ts_off is None or not _ts_after(sf.ts_recent, tsval):
                sf.ts_recent = tsval
        signalling = False
        if others:
            signalling = self.proxy.handle_mptcp_options(self, sf, pkt, others, now)
        # -- subflow-level ACK of our data
        san_moved = False
        san_old = sf.snd_una
        if flags & TCP_ACK:
            san = unwrap(pkt.ack, sf.snd_base, sf.snd_una)
            top = sf.snd_nxt + (1 if sf.fin_sent is not None else 0)
            if sf.snd_una < san <= top:
                sf.snd_una = san
                san_moved = True
                if sf.fin_sent is not None and san > sf.fin_sent:
                    sf.fin_acked = True
        # -- DSS: DATA_ACK and mapping
        d_una_old = self.d_una
        dfin_only = False
        if dss is not None:
            counters.inc("DSSRx")
            dflags, data_ack, ack64, data_seq, dsn64, ssn, dll, csum = dss
            if data_ack is not None:
                ref = (self.idsn_local + 1 + self.d_una) & MASK64
                dack = (expand_seq(ref, data_ack, 64 if ack64 else 32)
                        - self.idsn_local - 1) & MASK64
                if dack >= 1 << 63:
                    dack -= 1 << 64
                top = self.d_nxt + (1 if self.snd_data_fin is not None else 0)
                if self.d_una < dack <= top:
                    if not verified:
                        if not pkt.checksum_ok():
                            counters.inc("PktBadChecksum")
                            return DROP
                        verified = True
                    self.d_una = dack
                    self._prune_sent()
                    if self.snd_data_fin is not None and dack > self.snd_data_fin:
                        self.data_fin_acked = True
                if not self.fully_established:
                    self.fully_established = True
                    counters.inc("MPFullyEstablished")
                    if not self.joins_opened and self.proxy.pm is not None:
                        self.joins_opened = True
                        self.proxy.pm.on_established(self, now)
            if data_seq is not None:
                if (csum is not None) != self.csum:
                    counters.inc("DataCsumMissing")
                    return self._subflow_protocol_error(sf, now, MPTCP_RST_EMPTCP)
                if dll == 0:
                    return self._infinite_mapping(pkt, sf, now)
                ref = (self.idsn_remote + 1 + self.r_high) & MASK64
                r = (expand_seq(ref, data_seq, 64 if dsn64 else 32)
                     - self.idsn_remote - 1) & MASK64
                if r >= 1 << 63:
                    r -= 1 << 64
                nbytes = dll
                s_map = unwrap(ssn, 1, sf.rcv_high)
                if nbytes > (1 if dflags & MPTCP_DSS_DATA_FIN else 0):
                    # Linux validate_mapping: a mapping is taken only from a segment
                    # whose own data it covers
                    if not plen or s_map >= s_pkt + plen or s_map + nbytes <= s_pkt:
                        counters.inc("DSSNoMatchTCP")
                        nbytes = -1
                if nbytes >= 0 and not verified:
                    e = sf.rcv_map.lookup(s_map) if nbytes > 1 else None
                    known = e is not None and e[1] - e[0] == r - s_map
                    if not known or dflags & MPTCP_DSS_DATA_FIN:
                        if not pkt.checksum_ok():
                            counters.inc("PktBadChecksum")
                            return DROP
                        verified = True
                if nbytes >= 0 and dflags & MPTCP_DSS_DATA_FIN:
                    nbytes -= 1
                    fin_r = r + nbytes
                    if self.rcv_data_fin is None:
                        counters.inc("DataFinRx")
                        self.rcv_data_fin = fin_r
                        self.proxy.emit_event("data_fin_received", self)
                    elif self.rcv_data_fin != fin_r:
                        counters.inc("DataFinMismatch")
                    if ssn == 0 and nbytes == 0 and self.rcv_data_fin == fin_r:
                        dfin_only = True
                if nbytes > 0:
                    if not sf.rcv_map.add(s_map, r, nbytes):
                        counters.inc("DSSNotMatching")
                        return self._subflow_protocol_error(sf, now, MPTCP_RST_EMPTCP)
                    if csum is not None and plen:
                        if not self._check_csum(pkt, sf, s_map, r, ssn, dll, nbytes, csum):
                            counters.inc("DataCsumErr")
                            return self._subflow_protocol_error(sf, now, MPTCP_RST_EMIDDLEBOX)
        elif plen and not self.fully_established and sf is self.sf0:
            # RFC 8684 §3.1 / Linux check_fully_established: the peer fell back
            counters.inc("MPCapableDataFallback")
            self._fallback(now)
            return ACCEPT
        # -- the segment's own sequence space
        local_fin = False
        if plen:
            s = s_pkt
            e = sf.rcv_map.lookup(s)
            if e is None:
                counters.inc("DSSNoMapping")
                return DROP
            r = e[1] + (s - e[0])
            avail = e[0] + e[2] - s
            if avail < plen:
                counters.inc("DSSPartialMapping")
                _truncate_payload(pkt, avail)
                plen = avail
            if s + plen > sf.rcv_high:
                sf.rcv_high = s + plen
            sf.rcv_add(s, s + plen)
            if r + plen > self.r_high:
                self.r_high = r + plen
            self._fwd_add(r, r + plen)
            tsn = self.tcp_rcv_base + r
            if self.rcv_data_fin is not None and self.rcv_data_fin == r + plen:
                local_fin = True
        elif dfin_only:
            tsn = self.tcp_rcv_base + self.rcv_data_fin
            local_fin = True
        else:
            tsn = self.tcp_rcv_base + max(self.r_ack, 0)
        if flags & TCP_FIN and sf.state != SubflowState.CLOSED:
            s_fin = s_pkt + plen
            if sf.peer_fin is None:
                sf.peer_fin = s_fin
                counters.inc("SubflowFinRx")
            if s_fin >= sf.rcv_high:
                sf.rcv_high = s_fin
            if sf.rcv_contig == s_fin:
                sf.rcv_contig = s_fin  # (the FIN itself is acknowledged by project_ack)
            self.proxy.subflow_fin_received(self, sf, now)
        # -- ACK and SACK for the local stack
        d_adv = self.d_una > d_una_old
        d_sacks = None
        if self.local_sack and (peer_sacks or (san_moved and self._subflow_ahead(sf))):
            d_sacks = self._project_peer_sacks(sf, peer_sacks)
        win = pkt.win
        if sf.rcv_wscale != self.peer_wscale0:
            win = min(0xFFFF, (win << sf.rcv_wscale) >> self.peer_wscale0)
        if peer_sacks and not san_moved and sf.snd_una < sf.snd_nxt:
            # the peer holds data above a hole in this subflow (duplicate ACK with SACK)
            self._fill_acked_hole(sf, now)
        if not plen and not local_fin:
            dup = (not san_moved and not d_adv and sf.snd_nxt > sf.snd_una
                   and not signalling and not (flags & TCP_FIN))
            if not (d_adv or win != self.win_shown or d_sacks != self.sacks_shown or dup):
                counters.inc("AcksConsumed")
                if sf.fin_sent is not None:
                    self._maybe_finished(now)
                return DROP
        self.win_shown = win
        self.sacks_shown = d_sacks
        tsv = self._ts_to_local(sf, tsval) if ts_off >= 0 and self.local_ts else tsval
        tan = (self.tcp_snd_base + self.d_una) & MASK32
        if (sf is self.sf0 and tsn & MASK32 == pkt.seq and tan == pkt.ack and tsv == tsval
                and win == pkt.win and not peer_sacks and not d_sacks and not local_fin
                and not others
                and not flags & TCP_FIN and (ts_off >= 0) == self.local_ts):
            # nothing changes for the local stack (the initial subflow still maps one to
            # one): pass the segment as it came; its DSS option is ignored by a plain TCP
            # socket, and an untouched packet keeps its checksum offload state
            if self.snd_data_fin is not None and self.rcv_data_fin is not None:
                self._check_close(now)
            return ACCEPT
        # -- rewrite for the local stack
        pkt.set_seq(tsn)
        pkt.set_ack(tan)
        if win != pkt.win:
            pkt.set_win(win)
        newflags = flags & ~TCP_FIN
        if local_fin:
            newflags |= TCP_FIN
        if newflags != flags:
            pkt.set_flags(newflags)
        if sf is not self.sf0:
            la, lp, ra, rp = self.key
            pkt.set_src(ra)
            pkt.set_dst(la)
            pkt.set_sport(rp)
            pkt.set_dport(lp)
        parts = []
        if ts_off >= 0 and self.local_ts:
            parts.append(build_ts(tsv, int.from_bytes(b[ts_off + 6:ts_off + 10], "big")))
        if d_sacks:
            room = (40 - (12 if parts else 0) - 4) // 8
            if peer_sacks:
                lft, rgt = peer_sacks[0]
                newest = (unwrap(lft, sf.snd_base, sf.snd_una),
                          unwrap(rgt, sf.snd_base, sf.snd_una))
            else:
                newest = (san_old, sf.snd_una) if san_moved else None
            blocks = self._order_sacks(sf, d_sacks, newest, room)
            parts.append(build_sack([((self.tcp_snd_base + lo) & MASK32,
                                      (self.tcp_snd_base + hi) & MASK32)
                                     for lo, hi in blocks]))
        pkt.set_options(b"".join(parts))
        if self.snd_data_fin is not None and self.rcv_data_fin is not None:
            self._check_close(now)
        return pkt.finish()

    def _order_sacks(self, sf: Subflow, d_sacks: list, newest, room: int) -> list:
        """At most ``room`` SACK blocks for the local stack: the one holding the most
        recently received data first (RFC 2018 §4), then the lowest ones — the holes
        closest to the cumulative ACK are the ones its recovery must see. ``newest``
        is a relative subflow range ``(lo, hi)`` or None."""
        first = None
        if newest is not None and newest[1] > newest[0]:
            proj = sf.send_map.project([newest])
            if proj:
                p0 = proj[-1][0]
                for blk in d_sacks:
                    if blk[0] <= p0 < blk[1]:
                        first = blk
                        break
        out = [first] if first is not None else []
        out += [blk for blk in d_sacks if blk is not first]
        return out[:room]

    def _fill_acked_hole(self, sf: Subflow, now: float) -> None:
        """A hole in our subflow sequence that the local stack will never fill: its
        data reached the peer by another copy (the DATA_ACK covers it), so the local
        stack does not retransmit it, yet the peer's subflow waits for those bytes.
        Fill it with zeros under the original mapping: the peer's subflow moves on and
        its MPTCP level drops the bytes as old data (DSN below its ack_seq)."""
        e = sf.send_map.lookup(sf.snd_una)
        if e is None or not sf.can_send:
            return
        d = e[1] + (sf.snd_una - e[0])
        if d >= self.d_una or now - sf.fill_time < max(0.02, self.srtt):
            return
        sf.fill_time = now
        n = min(e[0] + e[2] - sf.snd_una, self.d_una - d, 8 * 1200)
        s = sf.snd_una
        while n > 0:
            k = min(n, 1200)
            payload = bytes(k)
            opts, san = self._out_options(sf, d, s, k, False, None, None, b"", payload, now)
            sf.rcv_acked = san
            self.proxy.send(self._segment(sf, sf.snd_wire(s), TCP_ACK, opts, payload))
            self.counters.inc("HoleFill")
            s += k
            d += k
            n -= k

    def _rcv_window(self) -> int:
        """Bytes of sequence space a peer segment may lie away from what this
        subflow has seen and still be acceptable: twice the local stack's window."""
        w = self.win_local << max(self.local_wscale, 0)
        return 2 * max(w, 65535)

    def _ts_to_local(self, sf: Subflow, tsval: int) -> int:
        """Map the peer's TSval on ``sf`` into one monotonic series for the local
        stack, so its PAWS check (RFC 7323 §5) never drops a segment after the peer's
        sending moves between subflows with unrelated timestamp clocks."""
        if sf.ts_off is None:
            sf.ts_off = 0 if (sf is self.sf0 or self.ts_shown is None) else \
                (self.ts_shown - tsval) & MASK32
        v = (tsval + sf.ts_off) & MASK32
        if self.ts_shown is not None and _ts_after(self.ts_shown, v):
            v = self.ts_shown
        self.ts_shown = v
        return v

    def _subflow_ahead(self, sf: Subflow) -> bool:
        """Whether the peer's subflow ACK on ``sf`` may cover data its DATA_ACK does
        not (then it is worth projecting as SACK blocks). Cheap answer for the usual
        single linear mapping: is the last subflow-acked byte above the DATA_ACK."""
        ents = sf.send_map.entries
        if len(ents) != 1:
            return True
        sa, da, n = ents[0]
        s = sf.snd_una - 1
        if s < sa or s >= sa + n:
            return True
        return da + (s - sa) >= self.d_una

    def _project_peer_sacks(self, sf: Subflow, peer_sacks) -> list:
        """The peer's subflow SACK blocks, and what its subflow ACK covers beyond
        the DATA_ACK, projected into the data space as SACK blocks for the local
        stack (paper §3.5, Fig. 5b)."""
        s_ranges = []
        if peer_sacks:
            base = sf.snd_base
            for lft, rgt in peer_sacks:
                lo = unwrap(lft, base, sf.snd_una)
                hi = unwrap(rgt, base, sf.snd_una)
                if hi > lo:
                    s_ranges.append((lo, hi))
        if sf.snd_una > 0:
            s_ranges.append((max(0, sf.snd_una - (1 << 30)), sf.snd_una))
        if not s_ranges:
            return None
        out = []
        for lo, hi in sf.send_map.project(s_ranges):
            if hi > self.d_una:
                out.append((max(lo, self.d_una), hi))
        out = merge_ranges(out)
        return out or None

    def _prune_sent(self) -> None:
        d_una = self.d_una
        for sf in self.subflows:
            ents = sf.send_map.entries
            while len(ents) > 1 and ents[0][1] + ents[0][2] <= d_una:
                del ents[0]
            if len(ents) > 8:
                sf.send_map.prune_below_value(d_una)

    def _check_csum(self, pkt: TcpPacket, sf: Subflow, s_map: int, r: int, ssn: int,
                    dll: int, nbytes: int, csum: int) -> bool:
        """Verify the DSS checksum when the mapping is carried whole by this segment;
        mappings spanning segments are not buffered (the proxy keeps no payload)."""
        s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
        if s != s_map or pkt.plen != nbytes:
            return True
        dsn = (self.idsn_remote + 1 + r) & MASK64
        return dss_checksum_ok(dsn, ssn, dll, ones_sum(pkt.payload), csum)

    def _subflow_protocol_error(self, sf: Subflow, now: float, reason: int):
        """RFC 8684 §3.3: a mapping that breaks the negotiated rules resets the
        subflow (MP_TCPRST); with no other subflow, the connection."""
        others = [x for x in self.subflows if x is not sf and x.alive]
        if others:
            self.proxy.reset_subflow(self, sf, now, reason)
            return DROP
        self.reset_peer(now, reason)
        self.reset_local(now)
        self._close(now, reset=True)
        return DROP

    def _infinite_mapping(self, pkt: TcpPacket, sf: Subflow, now: float):
        """DLL 0 (RFC 8684 §3.7): the peer falls back. Possible without corrupting the
        stream only while the initial subflow still maps one-to-one."""
        self.counters.inc("InfiniteMapRx")
        e = sf.rcv_map.entries
        identity = (sf is self.sf0 and len(self.subflows) == 1
                    and all(x[0] == x[1] for x in e)
                    and all(x[0] == x[1] for x in sf.send_map.entries))
        if identity:
            self._fallback(now)
            return ACCEPT
        return self._subflow_protocol_error(sf, now, MPTCP_RST_EMIDDLEBOX)

    def _peer_reset(self, pkt: TcpPacket, sf: Subflow, others, now: float):
        """RST from the peer on ``sf``: MP_FASTCLOSE with our key resets the connection
        (RFC 8684 §3.5); a plain subflow reset ends only that subflow unless it was
        the last one."""
        self.counters.inc("RstRx")
        fastclose = False
        b = pkt.buf
        for sub, off, olen in others or ():
            o = pull_option(bytes(b[off:off + olen]))
            if isinstance(o, MpFastclose):
                if o.rcvr_key == self.local_key:
                    fastclose = True
                    self.counters.inc("MPFastcloseRx")
            elif sub == MPTCPOPT_RST:
                self.counters.inc("MPRstRx")
        # RFC 5961 §3.2: an RST is accepted only at exactly the next expected sequence;
        # in the window it earns a challenge ACK (the peer answers it with an exact RST)
        s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
        exact = s == sf.rcv_high or (sf.peer_fin is not None and s == sf.peer_fin + 1)
        if not exact:
            self.counters.inc("RstChallenged")
            self.send_ack(sf, now)
            return DROP
        sf.state = SubflowState.CLOSED
        alive = [x for x in self.subflows if x.alive]
        if fastclose or not alive:
            if sf is self.sf0:
                r = self.r_high
                pkt.set_seq((self.tcp_rcv_base + r) & MASK32)
                pkt.set_options(b"")
                self._close(now, reset=True)
                if self.r_ack != self.r_high:
                    self.reset_local(now)
                return pkt.finish()
            self.reset_local(now)
            self._close(now, reset=True)
            return DROP
        self.proxy.subflow_lost(self, sf, now)
        return DROP

    # --------------------------------------------------------------- closing
    def data_closed(self) -> bool:
        """Both DATA_FINs sent and acknowledged (RFC 8684 §3.3.3)."""
        return (self.data_fin_acked and self.rcv_data_fin is not None
                and self.r_ack > self.rcv_data_fin)

    def _check_close(self, now: float) -> None:
        """Once the data level is closed, close every subflow with a FIN."""
        if not self.data_closed():
            return
        for sf in self.subflows:
            if sf.state in (SubflowState.ESTABLISHED, SubflowState.CLOSING) \
                    and sf.fin_sent is None:
                self._send_fin(sf, now)
        self._maybe_finished(now)

    def _send_fin(self, sf: Subflow, now: float) -> None:
        sf.fin_sent = sf.snd_nxt
        sf.state = SubflowState.CLOSING
        sf.retries = 0
        sf.rto = self.proxy.config.fin_rto
        sf.timer = now + sf.rto
        self._emit_fin(sf, now)
        self._rearm()

    def _emit_fin(self, sf: Subflow, now: float) -> None:
        opts, san = self._out_options(sf, self.d_nxt, sf.snd_nxt, 0, False, None, None, b"",
                                      b"", now)
        sf.rcv_acked = san
        self.counters.inc("SubflowFinTx")
        self.proxy.send(self._segment(sf, sf.snd_wire(sf.fin_sent), TCP_FIN | TCP_ACK, opts))

    def on_subflow_fin(self, sf: Subflow, now: float) -> None:
        """The peer closed subflow ``sf``: acknowledge its FIN (once the local stack
        has all the data before it), and answer with ours when the data level is
        closed."""
        if sf.state == SubflowState.ESTABLISHED:
            sf.state = SubflowState.CLOSING
        if self.data_closed() and sf.fin_sent is None:
            self._send_fin(sf, now)
        else:
            san, _ = sf.project_ack(self.r_ack, self._held(None))
            if san > sf.rcv_acked:
                self.send_ack(sf, now)
        self._maybe_finished(now)

    def _maybe_finished(self, now: float) -> None:
        for sf in self.subflows:
            if (sf.state == SubflowState.CLOSING and sf.fin_acked
                    and sf.peer_fin is not None and sf.rcv_acked > sf.peer_fin):
                sf.state = SubflowState.CLOSED
                sf.timer = None
        if self.data_closed() and all(sf.state == SubflowState.CLOSED for sf in self.subflows):
            self._close(now)

    def _rearm(self) -> None:
        due = [sf.timer for sf in self.subflows if sf.timer is not None]
        if self.join_at is not None and not self.joins_opened:
            due.append(self.join_at)
        when = min(due) if due else None
        if when is not None and (self.timer is None or when < self.timer
                                 or self.state == ConnState.ESTABLISHED):
            self._set_timer(when)

    def _closed_ack(self, pkt: TcpPacket, sf: Subflow, now: float):
        """A segment on a closed connection. After a reset, answer anything but an RST
        with an RST at the sequence the peer expects (what a closed socket does), so
        a challenge ACK to our reset ends the peer's side too; after a normal close,
        acknowledge a late FIN."""
        from .forge import build_segment
        if self.closed_by_reset:
            if not pkt.flags & TCP_RST and pkt.flags & TCP_ACK and self.remote_key:
                opt = pad_options(push_option(MpFastclose(self.remote_key))
                                  + push_option(MpTcpRst(0, MPTCP_RST_EUNSPEC)))
                self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                              pkt.ack, 0, TCP_RST, 0, opt))
                self.counters.inc("RstTx")
            return DROP
        if pkt.flags & TCP_FIN and not pkt.flags & TCP_RST and sf.rcv_base:
            s_fin = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high) + pkt.plen
            opts = build_ts(self.ts_now(now), sf.ts_recent) if sf.ts_ok else b""
            self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                          sf.snd_wire(sf.seq_nxt), sf.rcv_wire(s_fin + 1),
                                          TCP_ACK, self.win_local, opts))
        return DROP

    # ---------------------------------------------------------------- timers
    def on_timer(self, now: float) -> bool:
        """Handle due timers; returns True when the connection can be forgotten."""
        st = self.state
        if st == ConnState.CLOSED or st == ConnState.FALLBACK:
            return self.closed_at is not None and now >= self.closed_at + \
                self.proxy.config.linger - 1e-9
        if st == ConnState.SYN_SENT:
            if now >= self.created + self.proxy.config.syn_timeout - 1e-9:
                self.counters.inc("ConnTimeout")
                return True
            return False
        if self.join_at is not None and not self.joins_opened and now >= self.join_at - 1e-9:
            self.joins_opened = True
            if self.proxy.pm is not None:
                self.proxy.pm.on_established(self, now)
        for sf in list(self.subflows):
            if sf.timer is not None and sf.timer <= now:
                sf.timer = None
                if sf.state == SubflowState.CLOSING and sf.fin_sent is not None \
                        and not sf.fin_acked:
                    sf.retries += 1
                    if sf.retries > self.proxy.config.fin_retries:
                        sf.state = SubflowState.CLOSED
                        continue
                    self.counters.inc("Retransmits")
                    self._emit_fin(sf, now)
                    sf.rto *= 2
                    sf.timer = now + sf.rto
                elif self.proxy.pm is not None:
                    self.proxy.pm.subflow_timer(self, sf, now)
        self._maybe_finished(now)
        if self.state == ConnState.ESTABLISHED:
            if self.proxy.pm is not None and len(self.subflows) > 1:
                self.proxy.pm.prune(self, now)
            self._rearm()
        return False


def _used_options(pkt: TcpPacket) -> bytes:
    """The option bytes up to the end of the last real option (no EOL/padding), so
    more options can be appended; NOPs between options are kept."""
    opts = pkt.options()
    if not opts:
        return b""
    _kind, off, olen = opts[-1]
    return bytes(pkt.buf[pkt.th + 20:off + olen])


def _truncate_payload(pkt: TcpPacket, n: int) -> None:
    """Cut the payload to ``n`` bytes (a segment running past its mapping)."""
    b = pkt.buf
    end = pkt.th + pkt.hl + n
    removed = pkt.plen - n
    old = bytes(b[end:])
    del b[end:]
    # checksum: the removed bytes leave the sum, and the pseudo-header length shrinks
    pkt._delta -= _payload_sum_at(old, (end - pkt.th) & 1) + removed
    pkt.plen = n
    if pkt.v6:
        pl = int.from_bytes(b[4:6], "big") - removed
        b[4:6] = pl.to_bytes(2, "big")
    else:
        tot = int.from_bytes(b[2:4], "big") - removed
        b[2:4] = tot.to_bytes(2, "big")
        pkt._ipdelta -= removed


def _payload_sum_at(data: bytes, odd: int) -> int:
    """Ones'-sum contribution of ``data`` placed at an even (odd=0) or odd offset."""
    v = int.from_bytes(data, "big")
    if (len(data) + odd) & 1:
        v <<= 8
    return v
