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

from typing import TYPE_CHECKING

from . import crypto
from .events import EventKind
from .constants import (
    MPTCP_CAP_CHECKSUM_REQD,
    MPTCP_CAP_DENY_JOIN_ID0,
    MPTCP_CAP_HMAC_SHA256,
    MPTCPOPT_MP_CAPABLE,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .options import (
    MpCapable,
    pull_option,
    push_option,
)
from .seq import MASK32, MASK64
from .subflow import Subflow, SubflowState
from .tcp import TcpPacket, pad_options

if TYPE_CHECKING:
    from .proxy import Proxy
from .closing import ClosingPath
from .inbound import InboundPath, in_fast
from .outbound import OutboundPath, out_fast
from .state import ACCEPT, DROP, ConnState

__all__ = ["Connection", "ConnState", "ACCEPT", "DROP"]


class Connection(OutboundPath, InboundPath, ClosingPath):
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
        "win_shown", "fast", "handover_at",
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
        self.fast = False
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
        self.handover_at: float | None = None  # until data flows again (RESUMED event)
        self.joins_opened = False
        self.closed_by_reset = False
        self.next_sf_index = 0
        self.join_at: float | None = None
        self.syn_time = now
        self.srtt = 0.0
        self._parse_local_syn(pkt)

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
        # the steady-state fast path (outbound.out_fast) while nothing special is on
        self.fast = not self.csum and sf.ts_ok
        self.srtt = max(now - self.syn_time, 0.0)
        self.counters.inc("MPCapableSYNACKRX")
        self.proxy.emit_event(EventKind.ESTABLISHED, self, elapsed=self.srtt)
        pkt.set_options(pad_options(bytes(keep)))
        return pkt.finish()

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
            if self.data_closed():
                # the connection already closed gracefully at the data level: this RST
                # answers a late segment, not an abort (no MP_FASTCLOSE)
                self.counters.inc("LateRstDropped")
                return DROP
            return self._local_reset(pkt, now)
        if self.fast and self.fully_established:
            v = out_fast(self, pkt, now)
            if v is not None:
                return v
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
        if self.fast and sf is self.sf0 and self.fully_established:
            if in_fast(self, pkt, now):
                return ACCEPT
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


def _used_options(pkt: TcpPacket) -> bytes:
    """The option bytes up to the end of the last real option (no EOL/padding), so
    more options can be appended; NOPs between options are kept."""
    opts = pkt.options()
    if not opts:
        return b""
    _kind, off, olen = opts[-1]
    return bytes(pkt.buf[pkt.th + 20:off + olen])
