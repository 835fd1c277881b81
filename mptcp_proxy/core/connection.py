"""One proxied connection: its state, and a small dispatcher that hands each segment and
timer to the concept modules (paper §3, Fig. 3–5; RFC 8684 §3).

The connection joins two sides:

- the **TCP side** (attributes ``tcp_*``): the plain TCP connection of the application —
  in the client role the local stack's socket. Its sequence numbers are the paper's
  TSN/TAN; the proxy maps its ISN to our IDSN + 1, so its relative TSN *is* our relative
  data sequence number (paper §3.3);
- the **MPTCP side**: our MPTCP endpoint (``local_key``, ``local_token``,
  ``local_idsn``), the peer's (``remote_*``), the data level (``d_*`` our direction,
  ``r_*`` the peer's, relative; see :mod:`.seq`) and the subflows (:mod:`.subflow`).

Where each question is answered: :mod:`.handshake` (MP_CAPABLE), :mod:`.receive` (a peer
segment, in stages), :mod:`.transmit` (a TCP side segment), :mod:`.projection` (ACKs and
SACKs between the spaces), :mod:`.scheduling` (which subflow and mapping carry bytes),
:mod:`.emission` (our option blocks and forged segments), :mod:`.closing` (DATA_FIN,
FIN, resets, fallback), :mod:`.joins` (MP_JOIN), :mod:`.signalling` (ADD_ADDR,
REMOVE_ADDR, MP_PRIO...), :mod:`.policy` (which subflows, handover, failover).

The proxy never buffers payload: the TCP side is the only flow and congestion control.
Nothing raises out of here on bad input: it is counted and handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, crypto, handshake, joins, receive, transmit
from .paths import ConnPaths
from .constants import TCP_ACK, TCP_RST, TCP_SYN
from .rangeset import RangeSet
from .seq import MASK32
from .states import ConnInput, ConnState, SubflowState, conn_next
from .subflow import Subflow
from .tcp import TcpPacket
from .verdict import ACCEPT, DROP

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["Connection"]

EPS = 1e-9  # timer comparisons (seconds)


class Connection:
    """State of one proxied TCP connection. Created by :class:`~.proxy.Proxy` on the TCP
    side's SYN (client role)."""

    # slotted: ~1 KB less per connection than a __dict__ (bench memory figure)
    __slots__ = (
        "proxy", "counters", "id", "key", "v6", "role", "state", "created", "last_activity",
        "closed_at", "closed_by_reset", "timer",
        # MPTCP endpoints
        "local_key", "local_token", "local_idsn", "remote_key", "remote_token",
        "remote_idsn", "csum_requested", "csum", "deny_join0", "fully_established",
        "syn_count", "syn_mpc", "syn_time", "srtt", "fast",
        # data level (relative)
        "d_nxt", "d_una", "snd_data_fin", "data_fin_acked", "r_ack", "r_high",
        "rcv_data_fin", "r_fwd",
        # the TCP side
        "tcp_snd_isn", "tcp_snd_base", "tcp_rcv_isn", "tcp_rcv_base", "tcp_mss",
        "tcp_wscale", "tcp_sack", "tcp_ts_ok", "tcp_tsval", "tcp_win", "peer_wscale0",
        "shown_tsval", "shown_win", "shown_sacks",
        # subflows and paths
        "sf0", "subflows", "active", "last_rx_sf", "next_sf_index", "pending_handover",
        "pending_signals", "remote_addrs", "handovers", "handover_at", "joins_opened",
        "paths",
    )

    def __init__(self, proxy: "Proxy", pkt: TcpPacket, now: float, local_key: int) -> None:
        self.proxy = proxy
        self.counters = proxy.counters
        self.id = proxy.next_conn_id()
        self.key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)  # the TCP side's 4-tuple
        self.v6 = pkt.v6
        self.role = "client"
        self.state = ConnState.SYN_SENT
        self.created = self.last_activity = self.syn_time = now
        self.closed_at: float | None = None
        self.closed_by_reset = False
        self.timer: float | None = None
        self.local_key = local_key
        self.local_token, self.local_idsn = crypto.key_sha(local_key)
        self.remote_key = self.remote_token = self.remote_idsn = 0
        self.csum_requested = proxy.config.checksum
        self.csum = False  # DSS checksums in use (RFC 8684 §3.3.1)
        self.deny_join0 = False  # the peer's MP_CAPABLE C flag
        self.fully_established = False
        self.syn_count = 0
        self.syn_mpc = True
        self.srtt = 0.0
        self.fast = False  # the steady-state parsers may be tried
        self.d_nxt = self.d_una = 0
        self.snd_data_fin: int | None = None
        self.data_fin_acked = False
        self.r_ack = self.r_high = 0
        self.rcv_data_fin: int | None = None
        self.r_fwd = RangeSet()  # the peer's data forwarded to the TCP side, above r_ack
        self.tcp_snd_isn = pkt.seq
        self.tcp_snd_base = (pkt.seq + 1) & MASK32
        self.tcp_rcv_isn = self.tcp_rcv_base = 0
        self.tcp_mss = 0
        self.tcp_wscale = -1  # -1: no window scaling
        self.tcp_sack = False
        self.tcp_ts_ok = False
        self.tcp_tsval = 0  # the latest TSval the TCP side sent (echoed on our segments)
        self.tcp_win = 0xFFFF  # its latest raw window field
        self.peer_wscale0 = 0
        self.shown_tsval: int | None = None  # what the TCP side was shown last
        self.shown_win = -1
        self.shown_sacks: list | None = []
        self.sf0 = Subflow(0, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.seq)
        self.subflows = [self.sf0]
        self.active = self.last_rx_sf = self.sf0
        self.next_sf_index = 0
        self.pending_handover = None
        self.pending_signals: list = []
        self.remote_addrs: dict[int, tuple] = {}
        self.handovers = 0
        self.handover_at: float | None = None  # until data flows again (RESUMED)
        self.joins_opened = False
        self.paths = ConnPaths()  # the path policy's state (:mod:`.paths`)
        handshake.read_tcp_syn(self, pkt)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.name} token={self.remote_token:#x}>"

    # -- state ---------------------------------------------------------------------------
    def transition(self, event: ConnInput) -> None:
        """Move the state machine (:data:`~.states.CONN_TRANSITIONS`)."""
        self.state = conn_next(self.state, event)

    def state_closed(self) -> bool:
        return self.state != ConnState.ESTABLISHED

    def set_remote_key(self, key: int) -> None:
        self.remote_key = key
        self.remote_token, self.remote_idsn = crypto.key_sha(key)

    def new_subflow(self, laddr: bytes, lport: int, raddr: bytes, rport: int, isn: int,
                    addr_id: int) -> Subflow:
        """A subflow of our own (registered, in SYN_SENT; the joins module runs it)."""
        self.next_sf_index += 1
        sf = Subflow(self.next_sf_index, laddr, lport, raddr, rport, isn, addr_id)
        self.subflows.append(sf)
        self.fast = False  # more than one subflow: the general stages only
        self.proxy.register_subflow(self, sf)
        return sf

    # -- dispatch ----------------------------------------------------------------------------
    def on_outbound(self, pkt: TcpPacket, now: float):
        """A segment of the TCP side (OUTPUT hook). Returns the verdict."""
        self.last_activity = now
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        if st == ConnState.SYN_SENT:
            if flags & TCP_SYN and not flags & TCP_ACK:
                return handshake.send_syn(self, pkt, now)
            if flags & TCP_RST:
                closing.close(self, now, reset=True)
            return ACCEPT
        if st != ConnState.ESTABLISHED:
            return DROP
        if flags & TCP_SYN:
            return DROP  # a SYN on an established 4-tuple: stale, never to the wire
        if flags & TCP_RST:
            if closing.data_closed(self):
                # closed gracefully at the data level: this RST answers a late segment,
                # not an abort (no MP_FASTCLOSE)
                self.counters.inc("LateRstDropped")
                return DROP
            return closing.local_reset(self, pkt, now)
        active = self.active
        if (active.state != SubflowState.ESTABLISHED or active.stale) and \
                not self.proxy.pm.ensure_sender(self, now):
            if closing.data_closed(self):
                return DROP
            self.counters.inc("NoUsableSubflow")
            return self.proxy.pm.frozen_segment(self, pkt, now)
        return transmit.transmit(self, pkt, now)

    def on_inbound(self, pkt: TcpPacket, sf: Subflow, now: float):
        """A segment from the peer on subflow ``sf`` (PREROUTING). Returns the verdict."""
        self.last_activity = now
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        if st == ConnState.SYN_SENT:
            if sf is self.sf0 and flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
                return handshake.receive_synack(self, pkt, now)
            if flags & TCP_RST:
                closing.close(self, now, reset=True)
            return ACCEPT
        if st != ConnState.ESTABLISHED:
            return closing.closed_segment(self, pkt, sf, now)
        sst = sf.state
        if sst == SubflowState.SYN_SENT or sst == SubflowState.PRE_ESTABLISHED:
            v = joins.join_segment(self, sf, pkt, now)
            if v is not None:
                return v
        elif sst == SubflowState.CLOSED and (not sf.est_once or flags & (TCP_RST | TCP_SYN)):
            # a subflow we abandoned (break) may still deliver: its data and DATA_ACKs are
            # real and spare the peer reinjections; never answer on it
            self.counters.inc("PktDeadSubflow")
            return DROP
        if flags & TCP_SYN:
            if sf is self.sf0 and flags & TCP_ACK and pkt.seq == self.tcp_rcv_isn:
                return handshake.strip_mptcp(self, pkt)  # our third ACK was lost
            return DROP
        return receive.receive(self, sf, pkt, now)

    # -- joins and timers ----------------------------------------------------------------
    def open_joins(self, now: float) -> None:
        """The connection is fully established (the peer's first DATA_ACK: before it, the
        peer may not know our token, and Linux refuses such joins,
        ``MPJoinNoTokenFound``): the path manager may open subflows (once)."""
        if not self.joins_opened:
            self.joins_opened = True
            self.proxy.pm.on_established(self, now)

    def set_timer(self, when: float | None) -> None:
        self.timer = when
        if when is not None:
            self.proxy.schedule(self, when)

    def rearm(self) -> None:
        """The connection's timer at its earliest due subflow timer or path timer."""
        due = [sf.timer for sf in self.subflows if sf.timer is not None]
        if self.paths.timer is not None:
            due.append(self.paths.timer)
        when = min(due) if due else None
        if when is not None and (self.timer is None or when < self.timer
                                 or self.state == ConnState.ESTABLISHED):
            self.set_timer(when)

    def on_timer(self, now: float) -> bool:
        """Handle due timers; True when the connection can be forgotten."""
        st = self.state
        if st == ConnState.CLOSED or st == ConnState.FALLBACK:
            if self.closed_at is not None and now >= self.closed_at + \
                    self.proxy.config.linger - EPS:
                self.transition(ConnInput.EXPIRED)
                return True
            return False
        if st == ConnState.SYN_SENT:
            if now >= self.created + self.proxy.config.syn_timeout - EPS:
                self.counters.inc("ConnTimeout")
                self.transition(ConnInput.EXPIRED)
                return True
            return False
        for sf in list(self.subflows):
            if sf.timer is not None and sf.timer <= now:
                sf.timer = None
                if sf.state == SubflowState.CLOSING and sf.fin_sent is not None \
                        and not sf.fin_acked:
                    closing.retransmit_fin(self, sf, now)
                else:
                    self.proxy.pm.subflow_timer(self, sf, now)
        closing.maybe_finished(self, now)
        pt = self.paths.timer
        if pt is not None and pt <= now + EPS and self.state == ConnState.ESTABLISHED:
            self.proxy.pm.path_timer(self, now)
        if self.state == ConnState.ESTABLISHED:
            if len(self.subflows) > 1:
                self.proxy.pm.prune(self, now)
            self.rearm()
        return False
