"""Closing and resetting a connection: DATA_FIN ↔ FIN, subflow FINs, RST ↔
MP_FASTCLOSE, fallback, linger and timers (RFC 8684 §3.3.3, §3.5–3.7; paper Fig. 4)."""

from __future__ import annotations

from .events import EventKind
from .constants import (
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_RST,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
)
from .fastopt import build_ts
from .options import (
    MpFastclose,
    MpTcpRst,
    pull_option,
    push_option,
)
from .seq import MASK32
from .state import DROP, ConnState
from .subflow import Subflow, SubflowState, unwrap
from .tcp import TcpPacket, pad_options


class ClosingPath:
    """Methods of :class:`~.connection.Connection` (a mixin; all state lives there)."""

    __slots__ = ()

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
        self.proxy.emit_event(EventKind.FALLBACK, self)
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
            self.proxy.emit_event(EventKind.CLOSED, self,
                                  reason="reset" if self.closed_by_reset else "fin")
            self._set_timer(now + self.proxy.config.linger)

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
                if not self.data_closed():  # one subflow closed alone (remove-subflow)
                    sf.closed_at = now
                    self.proxy.emit_event(EventKind.SF_CLOSED, self, sf, reason="fin")
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
