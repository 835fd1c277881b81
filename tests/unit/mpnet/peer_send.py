"""What :class:`~mpnet.peer.MpPeer` sends: signalling, scheduling and retransmission
(mixed into :class:`~mpnet.peer.MpPeer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lockstep.wire import ACK, FIN, M32, M64, PSH, RST, dss_opt

from mpnet.addresses import P0
from mpnet.options import add_addr_hmac8, add_addr_opt, prio_opt, rm_addr_opt
from mpnet.timer import Timer

if TYPE_CHECKING:
    from mpnet.peer import PSub


class PeerSend:
    """Output of :class:`~mpnet.peer.MpPeer`: ADD_ADDR / REMOVE_ADDR / MP_PRIO and
    subflow resets on command, the scheduler (non-backup subflows first), reinjection,
    per-subflow and data-level retransmission timers, DATA_FIN and subflow FINs."""

    # ------------------------------------------------------------- signalling
    def announce(self, addr: bytes, addr_id: int, port: int | None = None,
                 bad_hmac: bool = False) -> None:
        """ADD_ADDR (retransmitted every ``add_addr_timeout`` until echoed)."""
        self.addrs[addr] = addr_id
        h = add_addr_hmac8(self.key, self.remote_key, addr_id, addr, port)
        if bad_hmac:
            h = bytes(b ^ 0xFF for b in h)
        opt = add_addr_opt(addr_id, addr, port, h)
        self.pending_add[addr_id] = [opt, 0]
        t = Timer(self.net, lambda: self._send_add_addr(addr_id))
        self.add_addr_timers[addr_id] = t
        self._send_add_addr(addr_id)

    def _send_add_addr(self, addr_id: int) -> None:
        item = self.pending_add.get(addr_id)
        if item is None:
            return
        if item[1] >= 4:
            del self.pending_add[addr_id]
            return
        sub = next((x for x in self.subs if x.usable and not x.backup), None) or \
            next((x for x in self.subs if x.usable), None)
        if sub is None:
            return
        item[1] += 1
        # Linux sends ADD_ADDR on a pure ACK with the other suboptions dropped
        self.ack(sub, extra=item[0], dss=False)
        self.net.note("peer_add_addr_tx")
        self.add_addr_timers[addr_id].arm(self.net.now + self.add_addr_timeout)

    def remove_addr(self, addr_id: int) -> None:
        """REMOVE_ADDR for our address ``addr_id``, then close our subflows using it."""
        carrier = next((x for x in self.subs if x.usable and x.local_id != addr_id), None)
        if carrier is not None:
            self.ack(carrier, extra=rm_addr_opt([addr_id]))
        for x in self.subs:
            if x.state == "ESTABLISHED" and x.local_id == addr_id:
                self._send_raw(x, RST | ACK, x.tx.nxt, bytes((30, 4, 0x80, 0)), sack=False)
                self._close_sub(x, "our address removed")
        for a, i in list(self.addrs.items()):
            if i == addr_id and a != P0:
                del self.addrs[a]
                self.removed_addrs.add(a)
        self.output()

    def reset_subflow(self, sub: PSub, reason: int = 0) -> None:
        """Reset one subflow (RST + MP_TCPRST) and reinject what it carried."""
        if sub.state == "ESTABLISHED":
            self._send_raw(sub, RST | ACK, sub.tx.nxt, bytes((30, 4, 0x80, reason)), sack=False)
        self._close_sub(sub, "reset by the peer")
        self.output()

    def set_prio(self, sub: PSub, backup: bool) -> None:
        """MP_PRIO on ``sub``: ask the proxy to treat it as (non-)backup."""
        self.ack(sub, extra=prio_opt(backup))
        self.net.note("peer_mp_prio_tx")

    # ------------------------------------------------------------- sending
    def _close_sub(self, sub: PSub, why: str) -> None:
        if sub.state == "CLOSED":
            return
        sub.state = "CLOSED"
        sub.closed_why = why
        sub.rto_timer.arm(None)
        sub.synack_timer.arm(None)
        # reinject what it carried that is not DATA_ACKed (Linux
        # __mptcp_retransmit_pending_data / mptcp_subflow_reset)
        for s0, dsn0, n in sub.groups:
            lo = max(dsn0, self.d_una)
            if lo < dsn0 + n:
                self.reinject.add(lo, dsn0 + n)
                self.reinjected += dsn0 + n - lo
        if sub.cur is not None:
            sub.cur = None
        self.net.note("peer_subflow_closed")

    def _senders(self) -> list[PSub]:
        """Linux mptcp_subflow_get_send: active (non-stale) non-backup subflows; backup
        ones only when no non-backup subflow is active."""
        act = [x for x in self.subs if x.usable and not x.stale]
        nonb = [x for x in act if not x.backup]
        pool = nonb if nonb else act
        if not pool:
            pool = [x for x in self.subs if x.usable]
        return pool

    def _emit(self, sub: PSub, s: int, n: int, rexmit: bool) -> None:
        if sub.fin_s is not None and s >= sub.fin_s:
            self._send_raw(sub, FIN | ACK, sub.fin_s, self._dss_ack(), sack=False)
            sub.tx.on_sent(sub.fin_s, 1, self.net.now, rexmit)
            sub.rto_timer.arm(sub.tx.deadline)
            return
        g = sub.group_at(s)
        if g is None:
            self.violate(f"model: no mapping for subflow {sub.idx} seq {s}")
            return
        s0, dsn0, gn = g
        n = min(n, s0 + gn - s)
        dsn = dsn0 + (s - s0)
        payload = bytes(self.app[dsn:dsn + n])
        dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
        mp = dss_opt(data_ack=dack, ack64=self.use_64bit_ack,
                     dsn=(self.idsn + 1 + dsn0) & M64, dsn64=True, ssn=(s0 + 1) & M32, dll=gn)
        self._send_raw(sub, ACK | PSH, s, mp, payload, sack=False)
        sub.tx.on_sent(s, n, self.net.now, rexmit)
        sub.bytes_sent += n
        sub.rto_timer.arm(sub.tx.deadline)

    def output(self) -> None:
        if self.state != "ESTABLISHED":
            return
        for sub in self.subs:
            if sub.state != "ESTABLISHED" or sub.tx is None:
                continue
            while True:
                r = sub.tx.next_retransmit()
                if r is None:
                    break
                self._emit(sub, r[0], r[1], True)
        while True:
            for sub in self.subs:  # finish groups already mapped to a subflow
                g = sub.cur
                while g is not None and sub.state == "ESTABLISHED" and sub.fin_s is None \
                        and sub.tx.room() > 0:
                    n = min(sub.mss, g[0] + g[2] - g[3])
                    self._emit(sub, g[3], n, False)
                    g[3] += n
                    if g[3] >= g[0] + g[2]:
                        sub.cur = g = None
                        self._fin_if_idle(sub)
            # the next chunk: reinjection first, then new data
            self.reinject.remove_below(self.d_una)
            chunk = None
            if self.reinject:
                a, b = next(iter(self.reinject))
                chunk = (a, b, True)
            elif self.d_nxt < len(self.app) and self.d_nxt < max(self.snd_wnd_edge,
                                                                 self.d_una + 65535):
                chunk = (self.d_nxt, min(len(self.app), max(self.snd_wnd_edge,
                                                              self.d_una + 65535)), False)
            if chunk is None:
                break
            cands = [x for x in self._senders() if x.cur is None and x.tx.room() > 0]
            if not cands:
                break
            sub = min(cands, key=lambda x: (x.tx.backoff, x.tx.pipe() / max(x.tx.cwnd, 1),
                                            x.idx))
            a, b, reinj = chunk
            n = min(b - a, self.map_segs * sub.mss)
            s0 = sub.s_alloc
            sub.groups.append([s0, a, n])
            sub.cur = [s0, a, n, s0]
            sub.s_alloc += n
            if reinj:
                self.reinject.remove(a, a + n)
            else:
                self.d_nxt = a + n
        self._arm_dl_timer()
        if self.dfin_queued and not self.dfin_acked and self.d_nxt >= len(self.app) and \
                self.dfin_timer.deadline is None:
            self._dfin_fire()

    def _rto_fire(self, sub: PSub) -> None:
        tx = sub.tx
        if sub.state != "ESTABLISHED" or tx is None or tx.outstanding <= 0:
            return
        was_stale = sub.stale
        tx.on_rto(self.net.now)
        self.net.note("peer_rto")
        sub.rto_timer.arm(tx.deadline)
        if sub.stale and not was_stale and any(x.usable and not x.stale for x in self.subs):
            # Linux mptcp_pm_subflows_chk_stale: a stale subflow's pending data is pushed
            # on the other subflows (__mptcp_retransmit_pending_data)
            self.net.note("peer_subflow_stale")
            for s0, dsn0, n in sub.groups:
                lo = max(dsn0, self.d_una)
                if lo < dsn0 + n:
                    self.reinject.add(lo, dsn0 + n)
                    self.reinjected += dsn0 + n - lo
        self.output()

    def _arm_dl_timer(self) -> None:
        if self.d_una < self.d_nxt:
            if self.dl_timer.deadline is None:
                srtt = max((x.tx.srtt or 0.2) for x in self.subs if x.tx is not None) \
                    if any(x.tx is not None for x in self.subs) else 0.2
                self.dl_timer.arm(self.net.now + max(self.dl_rto_min, 3 * srtt)
                                  * (2 ** min(self.dl_backoff, 6)))
        else:
            self.dl_timer.arm(None)

    def _dl_rto(self) -> None:
        """MPTCP-level retransmission (Linux __mptcp_retrans): the first unacknowledged
        data goes again on another subflow if the data level made no progress."""
        if self.state != "ESTABLISHED" or self.d_una >= self.d_nxt:
            return
        self.dl_rtx += 1
        self.dl_backoff += 1
        mss = max((x.mss for x in self.subs if x.usable), default=1000)
        self.reinject.add(self.d_una, min(self.d_nxt, self.d_una + 4 * mss))
        self.net.note("peer_dl_retransmit")
        self.output()
        self._arm_dl_timer()

    def _dfin_fire(self) -> None:
        if self.dfin_acked or self.state != "ESTABLISHED":
            return
        sub = next((x for x in self._senders()), None)
        if sub is not None:
            dsn = (self.idsn + 1 + len(self.app)) & M64
            dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
            self._send_raw(sub, ACK, sub.tx.nxt, dss_opt(data_ack=dack, ack64=self.use_64bit_ack,
                                                         dsn=dsn, ssn=0, dll=1, fin=True))
        self.dfin_timer.arm(self.net.now + 0.5)

    def _fin_if_idle(self, sub: PSub) -> None:
        if sub.close_pending and sub.cur is None and sub.fin_s is None \
                and sub.state == "ESTABLISHED":
            sub.fin_s = sub.tx.nxt
            self._emit(sub, sub.fin_s, 1, False)

    def _maybe_close_subflows(self) -> None:
        """Both DATA_FINs done: close every subflow with a FIN (after Linux)."""
        if not (self.dfin_rcvd and (self.dfin_acked or not self.dfin_queued)):
            return
        if not self.dfin_queued:
            return
        for x in self.subs:
            if x.state == "ESTABLISHED" and x.fin_s is None and x.cur is None:
                x.fin_s = x.tx.nxt
                self._emit(x, x.fin_s, 1, False)
