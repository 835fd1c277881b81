"""One proxied connection: its state, and a small dispatcher that hands each segment and
timer to the concept modules (paper §3, Fig. 3–5; RFC 8684 §3).

The connection joins two sides:

- the **TCP side** (attributes ``tcp_*``): the plain TCP connection of the application —
  in the client role the local stack's socket that opens it; in the server role the plain
  listener it reaches (a local one with ``--serve``, a server behind the router in anchor
  mode), while the MPTCP peer opened it. Its sequence numbers are the paper's
  TSN/TAN; the proxy maps its ISN to our IDSN + 1, so its relative TSN *is* our relative
  data sequence number (paper §3.3);
- the **MPTCP side**: our MPTCP endpoint (``local_key``, ``local_token``,
  ``local_idsn``), the peer's (``remote_*``), the data level (``d_*`` our direction,
  ``r_*`` the peer's, relative; see :mod:`.seq`) and the subflows (:mod:`.subflow`).

The 4-tuples (``key``, each subflow's) are oriented as the TCP side sends: ``l`` is the TCP
side's end (its address is the one subflow 0 uses on the wire), ``r`` the peer's, in both
roles. Only the handshake and who may open subflows depend on the role.

Where each question is answered: :mod:`.handshake` (MP_CAPABLE, client role),
:mod:`.handshake_server` (MP_CAPABLE, server role), :mod:`.receive` (a peer
segment, in stages), :mod:`.transmit` (a TCP side segment), :mod:`.projection` (ACKs and
SACKs between the spaces), :mod:`.scheduling` (which subflow and mapping carry bytes),
:mod:`.emission` (our option blocks and forged segments), :mod:`.closing` (DATA_FIN,
FIN, resets, fallback), :mod:`.joins` (our MP_JOIN subflows), :mod:`.joins_listener` (the
peer's), :mod:`.signalling` (ADD_ADDR,
REMOVE_ADDR, MP_PRIO...), :mod:`.policy` (which subflows, handover, failover).

The proxy never buffers payload: the TCP side is the only flow and congestion control.
Nothing raises out of here on bad input: it is counted and handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import (
    closing,
    crypto,
    fallback,
    handshake,
    handshake_server,
    joins,
    joins_listener,
    receive,
    transmit,
)
from .constants import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .forge import build_segment
from .paths import ConnPaths
from .rangeset import RangeSet
from .seq import MASK32
from .states import ConnInput, ConnState, SubflowState, conn_next
from .subflow import Subflow
from .tcp import CSUM_UNVERIFIED, TcpPacket, build_ts, ip_tos_ttl
from .verdict import ACCEPT, DROP

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["Connection"]

EPS = 1e-9  # timer comparisons (seconds)
_HALF_OPEN = (ConnState.SYN_SENT, ConnState.SYN_RCVD)  # counted in Proxy.syn_sent


class Connection:
    """State of one proxied TCP connection. Created by :class:`~.proxy.Proxy` on the TCP
    side's SYN (``role`` "client") or on the peer's MP_CAPABLE SYN (``role`` "server";
    ``anchor``: for a server behind the router, which may turn out to speak MPTCP)."""

    # slotted: ~1 KB less per connection than a __dict__ (bench memory figure)
    __slots__ = (
        "proxy", "counters", "id", "key", "v6", "role", "anchor", "state", "created",
        "last_activity", "closed_at", "closed_by_reset", "timer", "tcp_seen", "idle_probes",
        # MPTCP endpoints
        "local_key", "local_token", "local_idsn", "remote_key", "remote_token",
        "remote_idsn", "csum_requested", "csum", "deny_join0", "fully_established",
        "syn_count", "syn_mpc", "syn_time", "srtt", "fast", "infinite_pending",
        # data level (relative)
        "d_nxt", "d_una", "snd_data_fin", "data_fin_acked", "r_ack", "r_high",
        "rcv_data_fin", "r_fwd",
        # the TCP side
        "tcp_snd_isn", "tcp_snd_base", "tcp_rcv_isn", "tcp_rcv_base", "tcp_mss",
        "tcp_wscale", "tcp_sack", "tcp_ts_ok", "tcp_tsval", "tcp_win", "peer_wscale0",
        "ip_tos", "ip_ttl",
        "shown_tsval", "shown_win", "shown_sacks",
        # subflows and paths
        "sf0", "subflows", "active", "last_rx_sf", "next_sf_index", "pending_handover",
        "pending_signals", "remote_addrs", "handovers", "handover_at", "joins_opened",
        "paths",
    )

    def __init__(self, proxy: "Proxy", pkt: TcpPacket, now: float, local_key: int,
                 role: str = "client", anchor: bool = False) -> None:
        self.proxy = proxy
        self.counters = proxy.counters
        self.id = proxy.next_conn_id()
        client = role == "client"
        # the TCP side's 4-tuple, as it sends (its SYN in the client role, the peer's SYN
        # turned around in the server role)
        self.key = (pkt.src, pkt.sport, pkt.dst, pkt.dport) if client else \
            (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        self.v6 = pkt.v6
        self.role = role
        self.anchor = anchor
        self.state = ConnState.SYN_SENT if client else ConnState.SYN_RCVD
        self.created = self.last_activity = self.syn_time = self.tcp_seen = now
        self.idle_probes = 0  # probes of a silent TCP side sent (reset by its next segment)
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
        self.infinite_pending = False  # our next data goes under an infinite mapping (§3.7)
        self.d_nxt = self.d_una = 0
        self.snd_data_fin: int | None = None
        self.data_fin_acked = False
        self.r_ack = self.r_high = 0
        self.rcv_data_fin: int | None = None
        self.r_fwd = RangeSet()  # the peer's data forwarded to the TCP side, above r_ack
        self.tcp_snd_isn = pkt.seq if client else 0  # (server role: its SYN/ACK's)
        self.tcp_snd_base = (self.tcp_snd_isn + 1) & MASK32
        self.tcp_rcv_isn = self.tcp_rcv_base = 0
        self.tcp_mss = 0
        self.tcp_wscale = -1  # -1: no window scaling
        self.tcp_sack = False
        self.tcp_ts_ok = False
        self.tcp_tsval = 0  # the latest TSval the TCP side sent (echoed on our segments)
        self.tcp_win = 0xFFFF  # its latest raw window field
        self.peer_wscale0 = 0
        self.ip_tos, self.ip_ttl = ip_tos_ttl(pkt)  # the TCP side's, for what we forge
        self.shown_tsval: int | None = None  # what the TCP side was shown last
        self.shown_win = -1
        self.shown_sacks: list | None = []
        self.sf0 = Subflow(0, *self.key, self.tcp_snd_isn)
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
        if client:
            handshake.read_tcp_syn(self, pkt)
        else:
            handshake_server.read_peer_syn(self, pkt)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.name} token={self.remote_token:#x}>"

    # -- state ---------------------------------------------------------------------------
    def transition(self, event: ConnInput) -> None:
        """Move the state machine (:data:`~.states.CONN_TRANSITIONS`)."""
        old = self.state
        self.state = conn_next(old, event)
        if old in _HALF_OPEN and self.state != old:
            self.proxy.syn_sent -= 1

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
        """A segment of the TCP side (OUTPUT hook). Returns the verdict. An anchor's TCP
        side is a server across a link: its segments may come unverified, and one whose
        checksum fails changes nothing (dropped: the server retransmits)."""
        if pkt.csum_mode == CSUM_UNVERIFIED and not pkt.checksum_ok():
            self.counters.inc("PktBadChecksum")
            return DROP
        self.last_activity = self.tcp_seen = now
        self.idle_probes = 0
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        if st == ConnState.SYN_SENT:
            if flags & TCP_SYN and not flags & TCP_ACK:
                if flags & (TCP_FIN | TCP_RST):  # no TCP stack sends these with a SYN
                    self.counters.inc("PktMalformed")
                    return DROP
                return handshake.send_syn(self, pkt, now)
            if flags & TCP_RST:
                closing.close(self, now, reset=True)
            return ACCEPT
        if st == ConnState.SYN_RCVD:
            return handshake_server.tcp_side_segment(self, pkt, now)
        if st != ConnState.ESTABLISHED:
            return DROP
        if flags & TCP_SYN:
            if flags & TCP_ACK and self.role != "client":
                # the TCP side did not get the peer's third ACK: MP_CAPABLE again
                return handshake_server.synack_again(self, pkt)
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
        st = self.state
        if st == ConnState.FALLBACK:
            return ACCEPT
        flags = pkt.flags
        sst = sf.state
        if (st != ConnState.ESTABLISHED or sst != SubflowState.ESTABLISHED) \
                and not pkt.checksum_ok():
            # handshakes and closed states act on every segment: none with a bad checksum
            # (the established stages check it themselves, receive.acceptable)
            self.counters.inc("PktBadChecksum")
            return DROP
        if st == ConnState.SYN_SENT:
            return self._syn_sent_inbound(pkt, sf, now)
        if st == ConnState.SYN_RCVD:
            return handshake_server.peer_segment(self, pkt, now)
        if st != ConnState.ESTABLISHED:
            return closing.closed_segment(self, pkt, sf, now)
        if sst == SubflowState.SYN_SENT or sst == SubflowState.PRE_ESTABLISHED:
            v = (joins_listener if sf.passive else joins).join_segment(self, sf, pkt, now)
            if v is not None:
                return v
        elif sf.join_echo:
            v = joins_listener.after_join(self, sf, pkt, now)
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
        if sf is self.sf0 and pkt.seq == sf.rcv_base and pkt.plen and self.role != "client":
            handshake_server.first_data(self, pkt)  # its MP_CAPABLE becomes a DSS mapping
        return receive.receive(self, sf, pkt, now)

    def _syn_sent_inbound(self, pkt: TcpPacket, sf: Subflow, now: float):
        """The peer's answer to our SYN: a SYN/ACK (the handshake decides), an RST that
        acknowledges our SYN (RFC 9293 §3.10.7.3, RFC 5961 §3: any other RST is not
        taken), or a SYN of its own (a simultaneous open: left to the TCP side as plain
        TCP, RFC 8684 §3.1 has no MPTCP for it)."""
        flags = pkt.flags
        syn_acked = flags & TCP_ACK and pkt.ack == self.tcp_snd_base
        if flags & TCP_RST:
            if not syn_acked:
                self.counters.inc("PktAckUnacceptable")
                return DROP
            closing.close(self, now, reset=True)
            return ACCEPT
        if sf is self.sf0 and flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
            if flags & TCP_FIN:  # no TCP stack answers a SYN with a FIN
                self.counters.inc("PktMalformed")
                return DROP
            return handshake.receive_synack(self, pkt, now)
        if flags & TCP_SYN and not flags & TCP_ACK:
            self.counters.inc("SimultaneousOpen")
            fallback.fallback(self, now)
        return ACCEPT

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
        """The connection's timer at its earliest due subflow timer, path timer or idle
        check."""
        due = [sf.timer for sf in self.subflows if sf.timer is not None]
        if self.paths.timer is not None:
            due.append(self.paths.timer)
        idle = self._idle_due()
        if idle is not None:
            due.append(idle)
        when = min(due) if due else None
        if when is not None and (self.timer is None or when < self.timer
                                 or self.state == ConnState.ESTABLISHED):
            self.set_timer(when)

    def _idle_due(self) -> float | None:
        """When the TCP side is next to be probed (None: never)."""
        cfg = self.proxy.config
        if not cfg.idle_timeout or self.state != ConnState.ESTABLISHED:
            return None
        return self.tcp_seen + cfg.idle_timeout + self.idle_probes * cfg.idle_interval

    def _idle_probe(self, now: float) -> None:
        """The TCP side was silent for ``idle_timeout``: an ACK one byte below its window
        (a live socket answers with an ACK, RFC 9293 §3.10.7.4, which resets the count);
        after ``idle_probes`` unanswered ones the connection is reset on both sides."""
        if self.idle_probes >= self.proxy.config.idle_probes:
            self.counters.inc("IdleAbort")
            closing.abort(self, now)
            return
        self.idle_probes += 1
        self.counters.inc("IdleProbe")
        la, lp, ra, rp = self.key
        opts = build_ts(self.shown_tsval or 0, self.tcp_tsval) if self.tcp_ts_ok else b""
        self.proxy.send(build_segment(ra, la, rp, lp, (self.tcp_rcv_base + self.r_ack - 1),
                                      (self.tcp_snd_base + self.d_una), TCP_ACK, 0xFFFF, opts))

    def on_timer(self, now: float) -> bool:
        """Handle due timers; True when the connection can be forgotten."""
        st = self.state
        if st == ConnState.CLOSED or st == ConnState.FALLBACK:
            if self.closed_at is not None and now >= self.closed_at + \
                    self.proxy.config.linger - EPS:
                self.transition(ConnInput.EXPIRED)
                return True
            return False
        if st == ConnState.SYN_SENT or st == ConnState.SYN_RCVD:
            if now >= self.created + self.proxy.config.syn_timeout - EPS:
                self.counters.inc("ConnTimeout")
                self.transition(ConnInput.EXPIRED)
                return True
            return False
        idle = self._idle_due()
        if idle is not None and now >= idle - EPS:
            self._idle_probe(now)
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
