"""Path management: the proxy's own MP_JOIN subflows, handover, and the
signalling options (ADD_ADDR, REMOVE_ADDR, MP_PRIO, MP_FASTCLOSE on ACK).

Paper §2.3, §3.2, §5.3–5.5; RFC 8684 §3.2 (MP_JOIN), §3.3.8 (MP_PRIO), §3.4
(ADD_ADDR/REMOVE_ADDR), §3.6 (MP_TCPRST). Extra subflows have no local socket:
the proxy forges their handshake, ACKs, FIN and RST, and consumes every segment
addressed to them that carries nothing for the local stack (DESIGN.md §3.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import crypto
from .events import EventKind
from .connection import ACCEPT, DROP, Connection, ConnState
from .constants import (
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_ADD_ADDR,
    MPTCPOPT_MP_FAIL,
    MPTCPOPT_MP_FASTCLOSE,
    MPTCPOPT_MP_JOIN,
    MPTCPOPT_MP_PRIO,
    MPTCPOPT_RM_ADDR,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TCPOPT_MPTCP,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .fastopt import build_ts
from .options import (
    AddAddr,
    Malformed,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    pull_option,
    push_option,
)
from .subflow import Subflow, SubflowState
from .tcp import TcpPacket, pad_options

if TYPE_CHECKING:
    from .proxy import Proxy

JOIN_SYN_RTO = 1.0  # seconds, doubled per retry (RFC 6298 initial RTO)
JOIN_SYN_RETRIES = 3
JOIN_ACK_RTO = 0.2  # third-ACK retransmission until the fourth ACK (packetdrill 3rdack_rtx)
JOIN_ACK_RETRIES = 5


@dataclass
class LocalIface:
    """One interface the proxy may use: its name, the address ID announced for its
    addresses (the primary interface's first address is ID 0, RFC 8684 §3.2), and
    whether it is up."""

    name: str
    addr_id: int
    v4: list[bytes] = field(default_factory=list)
    v6: list[bytes] = field(default_factory=list)
    up: bool = True

    def addr_for(self, v6: bool) -> bytes | None:
        lst = self.v6 if v6 else self.v4
        return lst[0] if lst else None


@dataclass
class PmConfig:
    """Path-manager policy.

    ``subflows``: ``"backup"`` — join from every other interface at connection
    setup as backup subflows (make-before-break ready; the default);
    ``"active"`` — join as non-backup (the peer may use all paths, paper §5.5);
    ``"manual"`` — only on command. ``rejoin``: re-create subflows on an interface
    that comes back. ``join_announced``: join addresses the peer announces.
    """

    subflows: str = "backup"
    rejoin: bool = True
    join_announced: bool = True
    max_subflows: int = 8


class PathManager:
    """Owns the extra subflows of every connection of one :class:`Proxy`."""

    def __init__(self, proxy: "Proxy", ifaces: list[LocalIface], config: PmConfig | None = None,
                 alloc_port: Callable[[bytes], int] | None = None) -> None:
        self.proxy = proxy
        self.counters = proxy.counters
        self.ifaces = {i.name: i for i in ifaces}
        self.config = config or PmConfig()
        self.alloc_port = alloc_port or self._default_port
        self._port = 40000
        self.release_port: Callable[[bytes, int], None] = lambda addr, port: None
        proxy.pm = self

    # ------------------------------------------------------------ helpers
    def _default_port(self, addr: bytes) -> int:
        self._port = 40000 + (self._port - 39999) % 20000
        return self._port

    def iface_of_addr(self, addr: bytes) -> LocalIface | None:
        for i in self.ifaces.values():
            if addr in i.v4 or addr in i.v6:
                return i
        return None

    def _rand32(self) -> int:
        return int.from_bytes(self.proxy.random_bytes(4), "big")

    # --------------------------------------------------------- life cycle
    def on_established(self, conn: Connection, now: float) -> None:
        """MP_CAPABLE answered: tag the initial subflow, open the policy's joins."""
        sf0 = conn.sf0
        i = self.iface_of_addr(sf0.laddr)
        if i is not None:
            sf0.iface = i.name
            sf0.addr_id = 0  # the initial subflow's address is ID 0 (RFC 8684 §3.2)
        if self.config.subflows == "manual":
            return
        backup = self.config.subflows == "backup"
        for iface in self.ifaces.values():
            if iface.up and iface.name != sf0.iface:
                self.add_subflow(conn, iface, backup=backup, now=now)

    def add_subflow(self, conn: Connection, iface: LocalIface, backup: bool, now: float,
                    raddr: bytes | None = None, rport: int | None = None,
                    remote_id: int = 0) -> Subflow | None:
        """Open an MP_JOIN subflow from ``iface`` (RFC 8684 §3.2): forge the SYN with
        the peer's token and our nonce; the handshake runs on timers and replies."""
        if conn.state != ConnState.ESTABLISHED:
            return None
        if conn.snd_data_fin is not None:
            # after our DATA_FIN the peer's connection is closing (CLOSE_WAIT): Linux
            # refuses joins then (MPJoinRejected)
            self.counters.inc("MPJoinSkippedClosing")
            return None
        live = [s for s in conn.subflows if s.state != SubflowState.CLOSED]
        if len(live) >= self.config.max_subflows:
            self.counters.inc("MPJoinLimit")
            return None
        laddr = iface.addr_for(conn.v6)
        if laddr is None:
            return None
        if raddr is None:
            if conn.deny_join0:
                self.counters.inc("MPJoinDenied")
                return None
            raddr, rport = conn.sf0.raddr, conn.sf0.rport
        self.prune(conn, now)
        lport = self.alloc_port(laddr)
        isn = self._rand32()
        conn.next_sf_index += 1
        sf = Subflow(conn.next_sf_index, laddr, lport, raddr, rport or conn.sf0.rport, isn,
                     addr_id=0 if iface.name == conn.sf0.iface and laddr == conn.sf0.laddr
                     else iface.addr_id)
        sf.iface = iface.name
        sf.remote_id = remote_id
        if conn.pending_signals:
            # the address is back: a queued REMOVE_ADDR for its ID would kill this join
            rm = push_option(RemoveAddr((sf.addr_id,)))
            conn.pending_signals = [p for p in conn.pending_signals if p[0] != rm]
        sf.backup = backup
        sf.nonce = self._rand32()
        sf.snd_wscale = max(conn.local_wscale, 0)
        sf.mss = 0  # the peer's, from its SYN/ACK
        sf.state = SubflowState.SYN_SENT
        conn.subflows.append(sf)
        conn.fast = False  # more than one subflow: the general paths from now on
        self.proxy.register_subflow(conn, sf)
        sf.retries = 0
        sf.rto = JOIN_SYN_RTO
        self._send_join_syn(conn, sf, now)
        self.counters.inc("MPJoinSynTx")
        self.proxy.emit_event(EventKind.SF_OPENING, conn, sf)
        return sf

    def _send_join_syn(self, conn: Connection, sf: Subflow, now: float) -> None:
        from .forge import build_segment
        opts = bytearray()
        if conn.local_mss:
            opts += bytes((2, 4)) + conn.local_mss.to_bytes(2, "big")
        opts += bytes((TCPOPT_SACK_PERM, 2))
        if conn.local_ts:
            opts += bytes((TCPOPT_TIMESTAMP, 10)) + conn.ts_now(now).to_bytes(4, "big") + \
                bytes(4)
        if conn.local_wscale >= 0:
            opts += bytes((1, TCPOPT_WINDOW, 3, conn.local_wscale))
        opts += push_option(MpJoinSyn(backup=sf.backup, join_id=sf.addr_id,
                                      token=conn.remote_token, nonce=sf.nonce))
        sf.timer = now + sf.rto
        conn._rearm()
        self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_isn, 0,
                                      TCP_SYN, 0xFFFF, pad_options(bytes(opts))))

    def _send_join_ack(self, conn: Connection, sf: Subflow, now: float) -> None:
        from .forge import build_segment
        opts = b""
        if sf.ts_ok:
            opts = build_ts(conn.ts_now(now), sf.ts_recent)
        opts += push_option(MpJoinAck(sf.join_hmac))
        sf.timer = now + sf.rto
        conn._rearm()
        self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                      sf.snd_wire(0), sf.rcv_wire(0), TCP_ACK, conn.win_local,
                                      pad_options(opts)))

    def handle_join_packet(self, conn: Connection, sf: Subflow, pkt: TcpPacket, now: float):
        """Segments on a subflow still in its MP_JOIN handshake."""
        flags = pkt.flags
        if flags & TCP_RST:
            self.counters.inc("MPJoinRstRx")
            self._dead(conn, sf, now, "reset by peer during join")
            return DROP
        if sf.state == SubflowState.SYN_SENT:
            if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK or \
                    pkt.ack != sf.snd_wire(0):
                return DROP
            return self._join_synack(conn, sf, pkt, now)
        # PRE_ESTABLISHED: waiting for the fourth ACK (any ACK of our third ACK)
        if flags & TCP_SYN:
            # SYN/ACK retransmitted: our third ACK was lost
            self._send_join_ack(conn, sf, now)
            return DROP
        if flags & TCP_ACK and pkt.ack == sf.snd_wire(0):
            sf.state = SubflowState.ESTABLISHED
            sf.est_once = True
            sf.timer = None
            sf.last_rx = now
            self.counters.inc("MPJoinEstab")
            self.proxy.emit_event(EventKind.SF_ESTABLISHED, conn, sf)
            self._after_join(conn, sf, now)
            return conn._in_established(pkt, sf, now)
        return DROP

    def _join_synack(self, conn: Connection, sf: Subflow, pkt: TcpPacket, now: float):
        b = pkt.buf
        join = None
        wscale = 0
        sack = ts = False
        for kind, off, olen in pkt.options() or ():
            if kind == TCPOPT_MPTCP:
                o = pull_option(bytes(b[off:off + olen]), syn=True)
                if isinstance(o, MpJoinSynAck):
                    join = o
            elif kind == TCPOPT_WINDOW and olen == 3:
                wscale = b[off + 2]
            elif kind == TCPOPT_SACK_PERM:
                sack = True
            elif kind == TCPOPT_TIMESTAMP and olen == 10:
                ts = True
                sf.ts_recent = int.from_bytes(b[off + 2:off + 6], "big")
            elif kind == 2 and olen == 4:  # MSS: what we may send on this subflow
                sf.mss = max(((b[off + 2] << 8) | b[off + 3])
                             - self.proxy.config.mss_overhead, 536)
        sf.set_rcv_isn(pkt.seq)
        if join is None:
            self.counters.inc("MPJoinSynAckNoMPJoin")
            self._reset_join(conn, sf, now, MPTCP_RST_EMPTCP)
            return DROP
        expect = crypto.join_synack_thmac(conn.remote_key, conn.local_key, join.nonce, sf.nonce)
        if join.thmac != expect:
            self.counters.inc("MPJoinSynAckHMacFailure")
            self._reset_join(conn, sf, now, MPTCP_RST_EMPTCP)
            return DROP
        self.counters.inc("MPJoinSynAckRx")
        sf.remote_nonce = join.nonce
        sf.peer_backup = join.backup
        sf.rcv_wscale = wscale if conn.local_wscale >= 0 else 0
        sf.sack_ok = sack
        sf.ts_ok = ts and conn.local_ts
        sf.join_hmac = crypto.join_ack_hmac(conn.local_key, conn.remote_key, sf.nonce,
                                            join.nonce)
        sf.state = SubflowState.PRE_ESTABLISHED
        sf.retries = 0
        sf.rto = JOIN_ACK_RTO
        sf.last_rx = now
        self._send_join_ack(conn, sf, now)
        self.counters.inc("MPJoinAckTx")
        return DROP

    def _after_join(self, conn: Connection, sf: Subflow, now: float) -> None:
        """A join completed: if the connection has no usable sending subflow (break
        before make), or a handover waits for it, move new data there."""
        # REMOVE_ADDR first (the peer then reinjects what it lost), MP_PRIO after
        switch = False
        pending = conn.pending_handover
        if pending is not None and pending[0] == sf.iface:
            conn.pending_handover = None
            switch = True
        elif not conn.active.alive:
            switch = True
        broken = not conn.active.alive
        if conn.pending_signals:
            self.flush_signals(conn, now)
        if switch:
            self._switch(conn, sf, now, signal=True, defer=broken)

    def _reset_join(self, conn: Connection, sf: Subflow, now: float, reason: int) -> None:
        from .forge import build_segment
        opt = pad_options(push_option(MpTcpRst(0, reason)))
        self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_wire(0),
                                      0, TCP_RST, 0, opt))
        self.counters.inc("MPRstTx")
        self._dead(conn, sf, now, "join failed")

    def prune(self, conn: Connection, now: float) -> None:
        """Forget the proxy's own subflows closed for longer than ``linger`` seconds
        (late segments are absorbed until then), so link flaps cannot make a
        connection's state grow without bound."""
        linger = self.proxy.config.linger
        keep = [conn.sf0]
        for sf in conn.subflows[1:]:
            if sf.state == SubflowState.CLOSED:
                if sf.closed_at is None:
                    sf.closed_at = now
                if now - sf.closed_at >= linger:
                    cur = self.proxy.conns.get(sf.key)
                    if cur is not None and cur[1] is sf:
                        del self.proxy.conns[sf.key]
                    continue
            keep.append(sf)
        conn.subflows = keep

    def _dead(self, conn: Connection, sf: Subflow, now: float, why: str,
              exclude: str | None = None) -> None:
        if sf.state == SubflowState.CLOSED:
            return
        sf.state = SubflowState.CLOSED
        sf.closed_at = now
        sf.timer = None
        if sf is not conn.sf0:
            self.release_port(sf.laddr, sf.lport)
        self.proxy.emit_event(EventKind.SF_CLOSED, conn, sf, reason=why)
        if conn.active is sf:
            self._failover(conn, now, exclude)

    # ------------------------------------------------------------ timers
    def subflow_timer(self, conn: Connection, sf: Subflow, now: float) -> None:
        if sf.state == SubflowState.SYN_SENT:
            sf.retries += 1
            if sf.retries > JOIN_SYN_RETRIES:
                self.counters.inc("MPJoinTimeout")
                self._dead(conn, sf, now, "join SYN unanswered")
                return
            sf.rto *= 2
            self.counters.inc("Retransmits")
            self._send_join_syn(conn, sf, now)
        elif sf.state == SubflowState.PRE_ESTABLISHED:
            sf.retries += 1
            if sf.retries > JOIN_ACK_RETRIES:
                self.counters.inc("MPJoinTimeout")
                self._reset_join(conn, sf, now, MPTCP_RST_EUNSPEC)
                return
            sf.rto *= 2
            self.counters.inc("Retransmits")
            self._send_join_ack(conn, sf, now)
        elif sf.state == SubflowState.ESTABLISHED:
            if sf.prio_at is not None and now >= sf.prio_at - 1e-9:
                if conn.active is sf:
                    self._send_prio(conn, sf, now)
                else:
                    sf.prio_at = None
            if conn.pending_signals:
                self.flush_signals(conn, now)
            if sf.prio_at is not None:
                sf.timer = sf.prio_at

    # ----------------------------------------------------------- handover
    def usable(self, conn: Connection) -> list[Subflow]:
        return [s for s in conn.subflows if s.can_send and self._iface_up(s)]

    def _iface_up(self, sf: Subflow) -> bool:
        i = self.ifaces.get(sf.iface)
        return i is None or i.up

    def _switch(self, conn: Connection, sf: Subflow, now: float, signal: bool,
                defer: bool = False) -> None:
        """Send new data on ``sf`` and tell the peer with MP_PRIO (paper §5.3): B=0 on
        the new subflow, B=1 on the other live ones.

        ``defer`` (break before make): the MP_PRIO goes out a little later, after the
        REMOVE_ADDR. Linux handles MP_PRIO at once but REMOVE_ADDR in its path
        manager's worker; a subflow turned regular first would be filled with new
        data, and the reinjection of what was lost on the dead path (what the
        receiver waits for) would queue behind it. Left as backup, the subflow
        carries the reinjection first, being the only path."""
        old = conn.active
        conn.active = sf
        conn.handovers += 1
        conn.handover_at = now
        self.counters.inc("Handovers")
        self.proxy.emit_event(EventKind.HANDOVER, conn, sf, from_subflow=old.index)
        if not signal:
            return
        if defer:
            sf.prio_at = now + max(0.05, 1.5 * conn.srtt)
            sf.timer = sf.prio_at if sf.timer is None else min(sf.timer, sf.prio_at)
            conn._rearm()
            return
        self._send_prio(conn, sf, now)

    def _send_prio(self, conn: Connection, sf: Subflow, now: float) -> None:
        sf.prio_at = None
        for other in self.usable(conn):
            want_backup = other is not sf
            if other.backup != want_backup:
                other.backup = want_backup
                self.send_signal(conn, other, push_option(MpPrio(backup=want_backup)), now)
                self.counters.inc("MPPrioTx")
                self.proxy.emit_event(EventKind.SF_PRIO, conn, other, reason="ours")

    def handover(self, conn: Connection, iface: LocalIface, now: float,
                 break_: bool = False) -> Subflow | None:
        """Move the connection to ``iface``. Make-before-break uses (or opens) a subflow
        there and switches once it is established; ``break_`` first abandons the
        current active subflow as if its link had died (paper §5.4)."""
        target = None
        for sf in conn.subflows:
            if sf.iface == iface.name and sf.state in (SubflowState.ESTABLISHED,
                                                       SubflowState.PRE_ESTABLISHED,
                                                       SubflowState.SYN_SENT):
                target = sf
                break
        if target is None:
            target = self.add_subflow(conn, iface, backup=break_, now=now)
            if target is None:
                return None
        if break_:
            old = conn.active
            if old.iface != iface.name:
                self.break_subflow(conn, old, now, reason="handover --break")
        if target.alive:
            if conn.active is not target or not break_:
                self._switch(conn, target, now, signal=True, defer=break_)
        else:
            conn.pending_handover = (iface.name, break_)
        return target

    def break_subflow(self, conn: Connection, sf: Subflow, now: float, reason: str) -> None:
        """The path of ``sf`` is gone (link down, address lost, or on command): stop
        using it, fail over, and tell the peer with REMOVE_ADDR so it reinjects what it
        had in flight there (RFC 8684 §3.4.2)."""
        if sf.state == SubflowState.CLOSED:
            return
        addr_id = sf.addr_id
        self._dead(conn, sf, now, reason, exclude=sf.iface)
        self.counters.inc("SubflowBroken")
        still = [s for s in conn.subflows if s.state != SubflowState.CLOSED
                 and s.addr_id == addr_id]
        if not still:
            self.queue_signal(conn, push_option(RemoveAddr((addr_id,))), now, "RmAddrTx")

    def _failover(self, conn: Connection, now: float, exclude: str | None = None) -> None:
        """The active subflow is gone: switch to the best usable one, else make sure a
        join is under way (not on ``exclude``, the interface just abandoned)."""
        live = self.usable(conn)
        if live:
            # prefer a subflow the peer does not treat as backup
            live.sort(key=lambda s: (s.peer_backup, s.backup, s.index))
            self._switch(conn, live[0], now, signal=True, defer=True)
            return
        if any(s.state in (SubflowState.SYN_SENT, SubflowState.PRE_ESTABLISHED)
               for s in conn.subflows):
            return  # a join is coming: _after_join switches to it
        for iface in self.ifaces.values():
            if iface.name == exclude:
                continue
            if iface.up and not any(s.iface == iface.name and s.state != SubflowState.CLOSED
                                    for s in conn.subflows):
                # joined as backup: until REMOVE_ADDR tells the peer the old path is
                # gone, it keeps its new data for that (non-backup) path instead of
                # queueing it here ahead of the reinjections we need first; MP_PRIO
                # makes it regular once we switch to it (_after_join)
                sf = self.add_subflow(conn, iface, backup=True, now=now)
                if sf is not None:
                    return

    def remove_subflow(self, conn: Connection, sf: Subflow, now: float) -> None:
        """Close ``sf`` cleanly on command: move data away, then FIN it."""
        if conn.active is sf:
            others = [s for s in self.usable(conn) if s is not sf]
            if not others:
                raise ValueError("cannot remove the only usable subflow")
            others.sort(key=lambda s: (s.peer_backup, s.backup, s.index))
            self._switch(conn, others[0], now, signal=True)
        if sf.state == SubflowState.ESTABLISHED:
            conn._send_fin(sf, now)
            self.counters.inc("RmSubflowTx")
            self.proxy.emit_event(EventKind.SF_CLOSING, conn, sf)

    def set_prio(self, conn: Connection, sf: Subflow, backup: bool, now: float) -> None:
        sf.backup = backup
        self.send_signal(conn, sf, push_option(MpPrio(backup=backup)), now)
        self.counters.inc("MPPrioTx")
        self.proxy.emit_event(EventKind.SF_PRIO, conn, sf, reason="ours")

    # ---------------------------------------------------------- signalling
    def send_signal(self, conn: Connection, sf: Subflow, option: bytes, now: float) -> None:
        """Forge a duplicate ACK carrying ``option`` on ``sf`` (paper §3.1)."""
        conn.send_ack(sf, now, extra=option)

    def queue_signal(self, conn: Connection, option: bytes, now: float, counter: str) -> None:
        """Send a connection-level signal (REMOVE_ADDR, ADD_ADDR) on a usable subflow,
        or keep it until one exists; it is sent twice, an RTO apart, since it is not
        acknowledged (RFC 8684 §3.4.2)."""
        conn.pending_signals.append([option, counter, 2])
        self.flush_signals(conn, now)

    def flush_signals(self, conn: Connection, now: float) -> None:
        live = self.usable(conn)
        if not live:
            return
        sf = conn.active if conn.active in live else live[0]
        keep = []
        for item in conn.pending_signals:
            option, counter, left = item
            self.send_signal(conn, sf, option, now)
            self.counters.inc(counter)
            item[2] = left - 1
            if item[2] > 0:
                keep.append(item)
        conn.pending_signals = keep
        if keep:
            sf.timer = now + max(0.2, sf.rto)
            conn._rearm()

    def handle_options(self, conn: Connection, sf: Subflow, pkt: TcpPacket, others: list,
                       now: float) -> bool:
        """ADD_ADDR, REMOVE_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE from the peer. Returns
        True when the segment carried only signalling (consumed, paper §3.1)."""
        b = pkt.buf
        signal = False
        for sub, off, olen in others:
            o = pull_option(bytes(b[off:off + olen]))
            if isinstance(o, Malformed):
                self.counters.inc("OptMalformed")
                continue
            if sub == MPTCPOPT_ADD_ADDR:
                signal = True
                self._add_addr(conn, sf, o, now)
            elif sub == MPTCPOPT_RM_ADDR:
                signal = True
                self.counters.inc("RmAddrRx")
                for rid in o.addr_ids:
                    self.proxy.emit_event(EventKind.REMOVED, conn, remid=rid)
                for s in conn.subflows:
                    if s.state != SubflowState.CLOSED and s.remote_id in o.addr_ids:
                        self._dead(conn, s, now, "peer removed its address")
                conn.remote_addrs = {k: v for k, v in conn.remote_addrs.items()
                                     if k not in o.addr_ids}
            elif sub == MPTCPOPT_MP_PRIO:
                signal = True
                self.counters.inc("MPPrioRx")
                sf.peer_backup = o.backup
                self.proxy.emit_event(EventKind.SF_PRIO, conn, sf,
                                      reason="peer backup" if o.backup else "peer regular")
                if o.backup and conn.active is sf:
                    alt = [s for s in self.usable(conn) if s is not sf and not s.peer_backup]
                    if alt:
                        alt.sort(key=lambda s: (s.backup, s.index))
                        self._switch(conn, alt[0], now, signal=False)
                elif not o.backup and conn.active.peer_backup and sf.alive:
                    self._switch(conn, sf, now, signal=False)
            elif sub == MPTCPOPT_MP_FASTCLOSE:
                signal = True
                if o.rcvr_key == conn.local_key:
                    # RFC 8684 §3.5: answer with RST on every subflow
                    self.counters.inc("MPFastcloseRx")
                    conn.reset_peer(now, MPTCP_RST_EUNSPEC)
                    conn.reset_local(now)
                    conn._close(now)
            elif sub == MPTCPOPT_MP_FAIL:
                self.counters.inc("MPFailRx")
                conn._subflow_protocol_error(sf, now, MPTCP_RST_EUNSPEC)
                signal = True
            elif sub == MPTCPOPT_MP_JOIN:
                self.counters.inc("OptUnexpected")
            else:
                self.counters.inc("OptUnexpected")
        return signal and not pkt.plen

    def _add_addr(self, conn: Connection, sf: Subflow, o: AddAddr, now: float) -> None:
        if o.echo:
            self.counters.inc("EchoAddRx")
            conn.pending_signals = [p for p in conn.pending_signals
                                    if not p[1].startswith("AddAddr")]
            return
        expect = crypto.add_addr_hmac(conn.remote_key, conn.local_key, o.addr_id, o.addr,
                                      o.port or 0)
        if o.hmac != expect:
            # RFC 8684 §3.4.1: an invalid HMAC is ignored (Linux: silently)
            self.counters.inc("AddAddrHMacFailure")
            return
        self.counters.inc("AddAddrRx")
        echo = push_option(AddAddr(echo=True, addr_id=o.addr_id, addr=o.addr, port=o.port))
        self.send_signal(conn, sf, echo, now)
        self.counters.inc("EchoAddTx")
        known = conn.remote_addrs.get(o.addr_id)
        conn.remote_addrs[o.addr_id] = (o.addr, o.port)
        self.proxy.emit_event(EventKind.ANNOUNCED, conn, remid=o.addr_id)
        if known == (o.addr, o.port) or not self.config.join_announced:
            return
        if len(o.addr) != len(conn.sf0.raddr):
            return
        iface = self.ifaces.get(sf.iface) or next(iter(self.ifaces.values()))
        backup = self.config.subflows == "backup" or sf is not conn.active
        self.add_subflow(conn, iface, backup=backup and self.config.subflows != "active",
                         now=now, raddr=o.addr, rport=o.port or conn.sf0.rport,
                         remote_id=o.addr_id)

    def announce(self, conn: Connection, iface: LocalIface, now: float) -> None:
        """ADD_ADDR for ``iface``'s address, retransmitted until echoed."""
        addr = iface.addr_for(conn.v6)
        if addr is None:
            return
        h = crypto.add_addr_hmac(conn.local_key, conn.remote_key, iface.addr_id, addr, 0)
        opt = push_option(AddAddr(echo=False, addr_id=iface.addr_id, addr=addr, hmac=h))
        self.queue_signal(conn, opt, now, "AddAddrTx")

    # ---------------------------------------------- peer resets, link events
    def subflow_lost(self, conn: Connection, sf: Subflow, now: float) -> None:
        """The peer reset one subflow of several."""
        self._dead(conn, sf, now, "reset by peer")

    def reset_subflow(self, conn: Connection, sf: Subflow, now: float, reason: int) -> None:
        from .forge import build_segment
        opt = pad_options(push_option(MpTcpRst(0, reason)))
        self.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                      sf.snd_wire(sf.seq_nxt), sf.rcv_wire(sf.rcv_acked),
                                      TCP_RST | TCP_ACK, 0, opt))
        self.counters.inc("MPRstTx")
        self._dead(conn, sf, now, "protocol error")

    def link_down(self, name: str, now: float) -> None:
        """An interface went down or lost its address: break its subflows."""
        iface = self.ifaces.get(name)
        if iface is None or not iface.up:
            return
        iface.up = False
        self.counters.inc("LinkDown")
        for conn in list(self.proxy.connections.values()):
            if conn.state != ConnState.ESTABLISHED:
                continue
            for sf in list(conn.subflows):
                if sf.iface == name and sf.state != SubflowState.CLOSED:
                    if self._can_move(conn, sf):
                        self.break_subflow(conn, sf, now, reason=f"{name} down")
                    else:
                        # nowhere to go (no other path, and no join possible, e.g. the
                        # peer's side is closing): keep the subflow as it is, unused
                        # while the link is down; its 4-tuple is valid again when the
                        # link comes back with the same address
                        self.counters.inc("SubflowSuspended")
                        self.proxy.emit_event(EventKind.SF_SUSPENDED, conn, sf)

    def _can_move(self, conn: Connection, sf: Subflow) -> bool:
        """Another path exists for ``conn`` than ``sf``'s: a usable subflow elsewhere,
        or an interface that is up where a join can be made (not once our DATA_FIN is
        out: Linux refuses joins on a closing connection)."""
        for other in conn.subflows:
            if other is not sf and other.can_send and self._iface_up(other) \
                    and other.iface != sf.iface:
                return True
        if conn.snd_data_fin is not None:
            return False
        return any(i.up and i.name != sf.iface and i.addr_for(conn.v6) is not None
                   for i in self.ifaces.values())

    def link_up(self, name: str, now: float, v4: list[bytes] | None = None,
                v6: list[bytes] | None = None) -> None:
        """An interface came back: with ``rejoin``, open subflows on it again."""
        iface = self.ifaces.get(name)
        if iface is None:
            return
        if v4 is not None:
            iface.v4 = v4
        if v6 is not None:
            iface.v6 = v6
        if iface.up:
            return
        iface.up = True
        self.counters.inc("LinkUp")
        if not self.config.rejoin or self.config.subflows == "manual":
            return
        for conn in list(self.proxy.connections.values()):
            if conn.state != ConnState.ESTABLISHED:
                continue
            if any(s.iface == name and s.state != SubflowState.CLOSED for s in conn.subflows):
                continue
            has_active = conn.active.alive
            self.add_subflow(conn, iface, backup=has_active and self.config.subflows == "backup",
                             now=now)

    def unknown_inbound(self, pkt: TcpPacket, now: float):
        """A segment for no known 4-tuple: not ours to judge; pass it on."""
        return ACCEPT

