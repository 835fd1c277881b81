"""Path policy: which subflows a connection has and which one carries new data — joins at
setup, handover (make-before-break with MP_PRIO, break-before-make with REMOVE_ADDR),
failover when a path goes away or dies silently, paths that return (back to the
preferred interface), addresses that change, and the freeze when no path is left
(paper §2.3, §5.3–5.5; RFC 8684 §3.2, §3.3.8, §3.4).

:class:`PathManager` is the proxy's one path manager. Without interfaces it is the
single-path policy: the initial subflow only, announcements echoed but never joined. The
daemon gives it the interfaces it may use and tells it about links and addresses; the
control socket calls its public methods; the connections call it on their events.

A path is *stale* when :mod:`.liveness` finds it carries nothing (or its link or address
went away): its subflow carries no new data. With somewhere else to go it is abandoned
(REMOVE_ADDR: the peer reinjects what it had in flight there) and the path is probed by
joins with back-off; with nowhere to go it is kept and probed in place, and the
connection is frozen (:mod:`.freeze`). A path that returns gets a fresh subflow (a new
address ID, so that the REMOVE_ADDR of the old one cannot take it along), which replaces
the stale one: the peer then resends at once what it lost, instead of waiting out its
own retransmission back-off on the old subflow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import closing, freeze, joins, joins_listener, signalling
from .constants import MPTCP_RST_EMPTCP
from .events import EventKind
from .mobility import JOINING, Mobility
from .states import ConnState, SubflowState
from .subflow import Subflow
from .verdict import ACCEPT, Verdict

if TYPE_CHECKING:
    from .connection import Connection
    from .proxy import Proxy
    from .tcp import TcpPacket

__all__ = ["LocalIface", "PmConfig", "PathManager"]

PORT_BASE = 40000  # our own subflows' source ports without a driver's allocator
PORT_SPAN = 20000
PRIO_DEFER = 0.05  # seconds between a REMOVE_ADDR and the MP_PRIO of a break (see switch)


@dataclass
class LocalIface:
    """One interface the proxy may use: its name, the address ID announced for its
    addresses (the primary interface's first address is ID 0 on the initial subflow,
    RFC 8684 §3.2), its addresses (4 or 16 bytes, the ones to join from first) and
    whether it is up (link up with an address)."""

    name: str
    addr_id: int
    v4: list[bytes] = field(default_factory=list)
    v6: list[bytes] = field(default_factory=list)
    up: bool = True

    def addr_for(self, v6: bool) -> bytes | None:
        lst = self.v6 if v6 else self.v4
        return lst[0] if lst else None

    def has(self, addr: bytes) -> bool:
        return addr in (self.v6 if len(addr) == 16 else self.v4)


@dataclass
class PmConfig:
    """Path-manager policy.

    ``subflows``: ``"backup"`` — join from every other interface at connection setup as
    backup subflows (make-before-break ready; the default); ``"active"`` — join as regular
    subflows (the peer may send on all, paper §5.5); ``"manual"`` — only on command (and
    when no path is left). ``rejoin``: re-create subflows on an interface that comes back.
    ``join_announced``: which addresses the peer announces (ADD_ADDR) we join — ``"off"``,
    ``"global"`` (only globally routable ones: an authentic but hostile peer must not make
    the proxy open connections into the client's own networks; the default) or ``"any"``.
    ``max_subflows``: per connection. ``peer_joins``: ``"accept"`` the peer's MP_JOIN
    subflows to our addresses (the initial subflow's, an announced one, a managed
    interface's) or ``"refuse"`` them (reset). ``announce``: ``(address, port or None)``
    pairs announced with ADD_ADDR on every connection once established (``--announce``).
    ``prefer``: interface names, most preferred first (default: the order they were given
    in); ``return_to_preferred``: move back to a more preferred
    interface when its path returns. ``detect``: find silent path failures
    (:mod:`.liveness`): ``stale_rtos`` RTOs (at least ``stale_min`` s) without an ACK for
    data in flight, or ``stale_probes`` unanswered probes after the peer's data stopped.
    ``freeze_max``: seconds a connection may stay frozen (no path) before it is reset;
    ``freeze_icmp``: answer a frozen TCP side's retransmissions with ICMP unreachables
    (RFC 6069; its RTO back-off is reverted).
    """

    subflows: str = "backup"
    rejoin: bool = True
    join_announced: str = "global"
    max_subflows: int = 8
    peer_joins: str = "accept"
    announce: list = field(default_factory=list)
    prefer: tuple[str, ...] = ()
    return_to_preferred: bool = True
    detect: bool = True
    stale_rtos: float = 2.0
    stale_min: float = 0.3
    stale_probes: int = 2
    freeze_max: float = 900.0
    freeze_icmp: bool = True


def _global_unicast(addr: bytes) -> bool:
    """A globally routable unicast address (``ipaddress`` counts multicast as global)."""
    a = ipaddress.ip_address(addr)
    return a.is_global and not a.is_multicast


class PathManager(Mobility):
    """The subflows of every connection of one :class:`~.proxy.Proxy` (paths that die,
    return and change: :class:`~.mobility.Mobility`)."""

    def __init__(self, ifaces: list[LocalIface] | tuple = (), config: PmConfig | None = None,
                 alloc_port: Callable[[bytes], int] | None = None,
                 release_port: Callable[[bytes, int], None] | None = None) -> None:
        self.ifaces = {i.name: i for i in ifaces}
        self.config = config or PmConfig()
        self.alloc_port = alloc_port or self._next_port
        self.release_port = release_port or (lambda addr, port: None)
        self._port = PORT_BASE
        self.proxy: "Proxy | None" = None
        # announced endpoints -> address ID: an interface's own ID, else IDs after theirs
        self.announced: dict[tuple[bytes, int | None], int] = {}
        for addr, port in self.config.announce:
            self.announced[(addr, port)] = self._announce_id(addr)

    def attach(self, proxy: "Proxy") -> None:
        """Serve ``proxy`` (called by the proxy it is given to)."""
        self.proxy = proxy

    def _next_port(self, addr: bytes) -> int:
        self._port = PORT_BASE + (self._port - PORT_BASE + 1) % PORT_SPAN
        return self._port

    def iface_of_addr(self, addr: bytes) -> LocalIface | None:
        for i in self.ifaces.values():
            if addr in i.v4 or addr in i.v6:
                return i
        return None

    def add_iface(self, iface: LocalIface) -> None:
        """An interface the daemon may now use (one that appeared after the start)."""
        self.ifaces.setdefault(iface.name, iface)

    def rank(self, conn: "Connection", name: str) -> int:
        """Preference of interface ``name`` for ``conn`` (lower is better): the one a
        handover command pinned, then ``prefer``, then the order given."""
        if name and name == conn.paths.pinned:
            return -1
        order = list(self.config.prefer) + [n for n in self.ifaces
                                              if n not in self.config.prefer]
        return order.index(name) if name in order else len(order)

    def _order(self, conn: "Connection") -> Callable[[Subflow], tuple]:
        """Sort key of usable subflows: not backup for the peer first, then not ours, then
        by interface preference."""
        return lambda sf: (sf.peer_backup, sf.backup, self.rank(conn, sf.iface), sf.index)

    # -- life cycle --------------------------------------------------------------------
    def on_established(self, conn: "Connection", now: float) -> None:
        """The connection is fully established: tag the initial subflow with its interface,
        announce the configured addresses, and (client role) open the policy's joins. In
        the server role the peer opens the subflows (RFC 8684 §3.2: a client behind NAT
        cannot be joined)."""
        sf0 = conn.sf0
        i = self.iface_of_addr(sf0.laddr)
        if i is not None:
            sf0.iface = i.name
        sf0.addr_id = conn.paths.addr_id(sf0.laddr, 0, initial=True)
        for (addr, port), addr_id in self.announced.items():
            if len(addr) == len(sf0.laddr) and addr != sf0.laddr:
                signalling.announce(conn, addr_id, addr, now, port or 0)
        for addr_id, (addr, port) in list(conn.remote_addrs.items()):
            # announced before we were fully established: joined now
            self.peer_announced(conn, sf0, addr_id, addr, port, now)
        if self.config.subflows == "manual" or conn.role != "client":
            return
        backup = self.config.subflows == "backup"
        for iface in self.ifaces.values():
            if iface.up and iface.name != sf0.iface:
                self.add_subflow(conn, iface, backup=backup, now=now)

    def add_subflow(self, conn: "Connection", iface: LocalIface, backup: bool, now: float,
                    raddr: bytes | None = None, rport: int | None = None,
                    remote_id: int = 0, laddr: bytes | None = None,
                    replace: Subflow | None = None) -> Subflow | None:
        """Open an MP_JOIN subflow from ``iface`` (its first address of the family, or
        ``laddr``) to ``raddr:rport`` (default: the peer's address of the initial subflow)
        (RFC 8684 §3.2); ``replace``: a stale subflow it takes over from once up. None when
        not possible: the connection is not established or is closing (Linux refuses joins
        after our DATA_FIN) or not fully established yet (the peer may not know our token),
        the subflow limit is reached, ``iface`` has no address of the
        family, or the peer asked for no joins to its initial address (MP_CAPABLE C
        flag); in the server role, always but toward an address the peer announced (the
        client opens the subflows, RFC 8684 §3.2: it may be behind a NAT)."""
        if conn.state != ConnState.ESTABLISHED:
            return None
        if conn.role != "client" and raddr is None:
            return None
        if not conn.fully_established:
            conn.counters.inc("MPJoinTooEarly")
            return None
        if conn.snd_data_fin is not None or conn.rcv_data_fin is not None:
            conn.counters.inc("MPJoinSkippedClosing")
            return None
        if sum(1 for s in conn.subflows if not s.gone) >= self.config.max_subflows:
            conn.counters.inc("MPJoinLimit")
            return None
        laddr = laddr or iface.addr_for(conn.v6)
        if laddr is None or len(laddr) != len(conn.sf0.laddr):
            return None
        if raddr is None:
            if conn.deny_join0:
                conn.counters.inc("MPJoinDenied")
                return None
            raddr, rport = conn.sf0.raddr, conn.sf0.rport
        self.prune(conn, now)
        paths = conn.paths
        if not paths.used:
            paths.addr_id(conn.sf0.laddr, 0, initial=True)
        if replace is not None:  # (its ID is to be removed: the new subflow needs another)
            paths.forget_id(replace.addr_id)
        addr_id = paths.addr_id(laddr, iface.addr_id, initial=False)
        sf = conn.new_subflow(laddr, self.alloc_port(laddr), raddr, rport or conn.sf0.rport,
                              self.proxy.random32(), addr_id)
        sf.iface = iface.name
        sf.remote_id = remote_id
        sf.backup = backup
        sf.replaces = replace
        if paths.retry is not None:
            paths.retry.pop(iface.name, None)
        if conn.pending_signals:
            signalling.cancel_remove(conn, sf.addr_id)
        joins.start_join(conn, sf, now)
        return sf

    def join_established(self, conn: "Connection", sf: Subflow, now: float) -> None:
        """A join completed. The stale subflow it replaces is abandoned (REMOVE_ADDR: the
        peer resends what was lost there); new data moves here if nothing else can carry
        it (break before make, REMOVE_ADDR first and MP_PRIO after), if a handover waits
        for it, or if its interface is preferred to the current one's (it returned)."""
        if conn.paths.backoff is not None:
            conn.paths.backoff.pop(sf.iface, None)
        old = sf.replaces
        sf.replaces = None
        if old is not None and not old.gone:
            conn.counters.inc("SubflowReplaced")
            self.break_subflow(conn, old, now, reason="replaced: its path returned",
                               failover=False)
        pending = conn.pending_handover
        switch = False
        if pending is not None and pending[0] == sf.iface:
            conn.pending_handover = None
            switch = True
        broken = not self._can_carry(conn.active)
        if conn.pending_signals:
            signalling.flush_signals(conn, now)
        if switch or broken:
            self.switch(conn, sf, now, signal=True, defer=broken)
        elif self._better(conn, sf, conn.active):
            conn.counters.inc("PreferredReturn")
            self.switch(conn, sf, now, signal=True)
        if closing.data_closed(conn):  # it completed after the close: close it too
            closing.check_close(conn, now)

    def _better(self, conn: "Connection", sf: Subflow, than: Subflow) -> bool:
        """``sf`` is on a preferred interface that a connection on ``than`` should go back
        to (never in manual mode, never onto a subflow the peer treats as backup)."""
        return (self.config.return_to_preferred and self.config.subflows != "manual"
                and sf is not than and not sf.peer_backup
                and self.rank(conn, sf.iface) < self.rank(conn, than.iface))

    def subflow_gone(self, conn: "Connection", sf: Subflow, now: float,
                     exclude_iface: str | None = None) -> None:
        """``sf`` ended: its port is free; a join that never came up is tried again later
        (back-off); if it carried new data, fail over (not to ``exclude_iface``, an
        interface just abandoned)."""
        if sf is not conn.sf0 and not sf.passive:  # (a peer's join uses no port of ours)
            self.release_port(sf.laddr, sf.lport)
        if conn.state != ConnState.ESTABLISHED:
            return
        if not sf.est_once and sf.iface and not sf.passive:
            self._retry_later(conn, sf.iface, now)
            old = sf.replaces
            if old is not None and not old.gone and old.probes == 0 and old.probe_at is None \
                    and self._iface_up(old):
                self._revive(conn, old, now)  # its path answered: use it as it is
        if conn.active is sf:
            self._failover(conn, now, exclude_iface)

    def prune(self, conn: "Connection", now: float) -> None:
        """Forget our own subflows closed for longer than ``linger`` (late segments are
        absorbed until then), so link flaps cannot grow a connection without bound."""
        linger = self.proxy.config.linger
        keep = [conn.sf0]
        for sf in conn.subflows[1:]:
            if sf.gone:
                if sf.closed_at is None:
                    sf.closed_at = now
                if now - sf.closed_at >= linger:
                    self.proxy.unregister_subflow(conn, sf)
                    continue
            keep.append(sf)
        conn.subflows = keep

    def subflow_timer(self, conn: "Connection", sf: Subflow, now: float) -> None:
        """A subflow's timer: its handshake's retransmissions, a deferred MP_PRIO, the
        repeats of pending signals."""
        if joins.join_timer(conn, sf, now) or sf.state != SubflowState.ESTABLISHED:
            return
        if signalling.probe_expired(conn, sf, now):
            return
        if sf.prio_at is not None and now >= sf.prio_at - 1e-9:
            if conn.active is sf:
                self._send_prio(conn, sf, now)
            else:
                sf.prio_at = None
        if conn.pending_signals:
            signalling.flush_signals(conn, now)
        due = [t for t in (sf.timer, sf.prio_at, sf.rm_probe_at) if t is not None]
        if due:
            sf.timer = min(due)

    # -- which subflow sends -------------------------------------------------------------
    def usable(self, conn: "Connection") -> list[Subflow]:
        """The subflows that can carry new data now (open, path not stale, link up)."""
        return [s for s in conn.subflows if s.usable and self._iface_up(s)]

    def senders(self, conn: "Connection") -> list[Subflow]:
        """The subflows that take new data now: with ``--subflows active`` every usable one
        that neither side marked backup (paper §5.5), else the active one."""
        if self.config.subflows != "active" or len(conn.subflows) < 2:
            return [conn.active]
        out = [s for s in self.usable(conn) if not s.backup and not s.peer_backup]
        return out or [conn.active]

    def _iface_up(self, sf: Subflow) -> bool:
        i = self.ifaces.get(sf.iface)
        return i is None or i.up

    def _can_carry(self, sf: Subflow) -> bool:
        return sf.usable and self._iface_up(sf)

    def switch(self, conn: "Connection", sf: Subflow, now: float, signal: bool,
               defer: bool = False) -> None:
        """Send new data on ``sf`` and, with ``signal``, tell the peer with MP_PRIO (paper
        §5.3): B=0 on the new subflow, B=1 on the other live ones (in ``active`` mode the
        others stay regular).

        ``defer`` (break before make): the MP_PRIO goes out a little later, after the
        REMOVE_ADDR. Linux handles MP_PRIO at once but REMOVE_ADDR in its path manager's
        worker; a subflow turned regular first would be filled with new data, and the
        reinjection of what was lost on the dead path (what the receiver waits for) would
        queue behind it. Left as backup, the subflow carries the reinjection first."""
        old = conn.active
        conn.active = sf
        if old is not sf:
            conn.handovers += 1
            conn.handover_at = now
            conn.counters.inc("Handovers")
            self.proxy.emit_event(EventKind.HANDOVER, conn, sf, from_subflow=old.index)
        if self._can_carry(sf):
            freeze.thaw(conn, now, self.config.freeze_icmp)
        if not signal:
            return
        if defer:
            sf.prio_at = now + PRIO_DEFER
            sf.timer = sf.prio_at if sf.timer is None else min(sf.timer, sf.prio_at)
            conn.rearm()
            return
        self._send_prio(conn, sf, now)

    def _send_prio(self, conn: "Connection", sf: Subflow, now: float) -> None:
        sf.prio_at = None
        active_mode = self.config.subflows == "active"
        for other in self.usable(conn):
            want_backup = other is not sf and not active_mode
            if other.backup != want_backup:
                signalling.send_prio(conn, other, want_backup, now)

    def _failover(self, conn: "Connection", now: float, exclude: str | None = None) -> None:
        """The active subflow is gone: switch to the best usable one, else make sure a
        join is under way (not on ``exclude``, the interface just abandoned) and freeze the
        connection until one is up. Not once both DATA_FINs are out: nothing new can come
        from either side (the subflows are closing one after the other)."""
        if conn.snd_data_fin is not None and conn.rcv_data_fin is not None:
            return
        live = self.usable(conn)
        if live:
            live.sort(key=self._order(conn))
            self.switch(conn, live[0], now, signal=True, defer=True)
            return
        freeze.freeze(conn, now, "no usable path")
        if any(s.state in JOINING for s in conn.subflows):
            return  # a join is coming: join_established switches to it
        order = sorted(self.ifaces.values(), key=lambda i: self.rank(conn, i.name))
        for iface in order:
            if iface.name == exclude or not iface.up:
                continue
            if not any(s.iface == iface.name and not s.gone and not s.stale
                       for s in conn.subflows):
                # joined as backup: until REMOVE_ADDR tells the peer the old path is gone,
                # it keeps its new data for that (regular) path instead of queueing it
                # here ahead of the reinjections we need first; MP_PRIO makes it regular
                # once we switch to it (join_established)
                stale = next((s for s in conn.subflows if s.iface == iface.name
                              and s.stale and not s.gone), None)
                if self.add_subflow(conn, iface, backup=True, now=now,
                                    replace=stale) is not None:
                    return

    def ensure_sender(self, conn: "Connection", now: float) -> bool:
        """Before sending new data: the active subflow can send, or another usable one
        takes over (signalled). False when nothing can carry data now (break before make,
        the new subflow not up yet; every path stale): the connection is frozen."""
        if self._can_carry(conn.active):
            return True
        live = self.usable(conn)
        if not live:
            if not freeze.is_frozen(conn):
                self._failover(conn, now)
            return False
        live.sort(key=self._order(conn))
        self.switch(conn, live[0], now, signal=True)
        return True

    def frozen_segment(self, conn: "Connection", pkt: "TcpPacket", now: float) -> Verdict:
        """A segment of the TCP side while no path can carry it (:mod:`.freeze`)."""
        return freeze.frozen_segment(conn, pkt, now, self.config.freeze_icmp)

    # -- commands ------------------------------------------------------------------------
    def handover(self, conn: "Connection", iface: LocalIface, now: float,
                 break_: bool = False) -> Subflow | None:
        """Move the connection to ``iface`` (pinned there: it is preferred from now on).
        Make-before-break uses (or opens) a subflow there and switches once it is
        established; ``break_`` first abandons the current active subflow as if its link
        had died (paper §5.4)."""
        conn.paths.pinned = iface.name
        target = next((sf for sf in conn.subflows if sf.iface == iface.name and not sf.stale
                       and sf.state in (SubflowState.ESTABLISHED, *JOINING)), None)
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
                self.switch(conn, target, now, signal=True, defer=break_)
        else:
            conn.pending_handover = (iface.name, break_)
        return target

    def break_subflow(self, conn: "Connection", sf: Subflow, now: float, reason: str,
                      failover: bool = True) -> None:
        """The path of ``sf`` is gone (link down, address lost, stale, replaced, or on
        command): stop using it, fail over, and tell the peer with REMOVE_ADDR so it
        reinjects what it had in flight there (RFC 8684 §3.4.2); its address ID is not
        used again."""
        if sf.gone:
            return
        addr_id = sf.addr_id
        closing.subflow_gone(conn, sf, now, reason,
                             exclude_iface=sf.iface if failover else None)
        conn.counters.inc("SubflowBroken")
        if not any(not s.gone and s.addr_id == addr_id for s in conn.subflows):
            conn.paths.forget_id(addr_id)
            signalling.remove_addr(conn, addr_id, now)

    def remove_subflow(self, conn: "Connection", sf: Subflow, now: float) -> None:
        """Close ``sf`` cleanly on command: move new data away, then FIN it. Raises
        ``ValueError`` when it is the only usable subflow."""
        if conn.active is sf:
            others = [s for s in self.usable(conn) if s is not sf]
            if not others:
                raise ValueError("cannot remove the only usable subflow")
            others.sort(key=self._order(conn))
            self.switch(conn, others[0], now, signal=True)
        if sf.state == SubflowState.ESTABLISHED:
            closing.close_subflow(conn, sf, now)
            conn.counters.inc("RmSubflowTx")
            self.proxy.emit_event(EventKind.SF_CLOSING, conn, sf)

    def set_prio(self, conn: "Connection", sf: Subflow, backup: bool, now: float) -> None:
        """Our backup flag for ``sf``, told to the peer with MP_PRIO."""
        signalling.send_prio(conn, sf, backup, now)

    def announce(self, conn: "Connection", iface: LocalIface, now: float) -> None:
        """ADD_ADDR for ``iface``'s address, retransmitted until echoed."""
        addr = iface.addr_for(conn.v6)
        if addr is not None:
            signalling.announce(conn, iface.addr_id, addr, now)

    # -- the peer's signals ----------------------------------------------------------------
    def peer_announced(self, conn: "Connection", sf: Subflow, addr_id: int, addr: bytes,
                       port: int | None, now: float) -> None:
        """The peer announced ``addr`` (HMAC checked, echoed): join it per the policy (once
        fully established: :meth:`on_established` joins what was announced before)."""
        if not conn.fully_established or not self.ifaces or len(addr) != len(sf.raddr):
            return
        policy = self.config.join_announced
        if policy == "off" or (policy == "global" and not _global_unicast(addr)):
            conn.counters.inc("AddAddrNotJoined")
            return
        iface = self.ifaces.get(sf.iface) or next(iter(self.ifaces.values()))
        backup = self.config.subflows == "backup" or sf is not conn.active
        self.add_subflow(conn, iface, backup=backup and self.config.subflows != "active",
                         now=now, raddr=addr, rport=port or conn.sf0.rport, remote_id=addr_id)

    def peer_priority(self, conn: "Connection", sf: Subflow, backup: bool, now: float) -> None:
        """The peer's MP_PRIO for ``sf``: follow it with our sending (no signal back)."""
        if backup and conn.active is sf:
            alt = [s for s in self.usable(conn) if s is not sf and not s.peer_backup]
            if alt:
                alt.sort(key=lambda s: (s.backup, self.rank(conn, s.iface), s.index))
                self.switch(conn, alt[0], now, signal=False)
        elif not backup and conn.active.peer_backup and self._can_carry(sf):
            self.switch(conn, sf, now, signal=False)

    def unknown_inbound(self, pkt: "TcpPacket", now: float) -> Verdict:
        """A segment for no known 4-tuple: not ours to judge; pass it on."""
        return ACCEPT

    # -- the peer's joins and our announcements ------------------------------------------
    def _announce_id(self, addr: bytes) -> int:
        i = self.iface_of_addr(addr)
        if i is not None:
            return i.addr_id
        used = {x.addr_id for x in self.ifaces.values()} | set(self.announced.values())
        return next(n for n in range(1, 256) if n not in used)

    def accept_join(self, conn: "Connection", laddr: bytes, lport: int, join,
                    now: float) -> bool:
        """Whether the peer may open a subflow to ``laddr:lport`` on ``conn`` (its MP_JOIN
        SYN ``join`` carried our token); a refused join is reset (MP_TCPRST
        "administratively prohibited"). Refused:
        ``peer_joins = "refuse"``, a closing connection (Linux refuses joins after a
        DATA_FIN), the subflow limit, or an address that is not ours to use (the initial
        subflow's, an announced endpoint, a managed interface that is up)."""
        if self.config.peer_joins != "accept" or conn.snd_data_fin is not None \
                or conn.rcv_data_fin is not None:
            return False
        if sum(1 for s in conn.subflows if not s.gone) >= self.config.max_subflows:
            return False
        return self._ours(conn, laddr, lport)

    def _ours(self, conn: "Connection", laddr: bytes, lport: int) -> bool:
        sf0 = conn.sf0
        i = self.iface_of_addr(laddr)
        if i is not None and not i.up:
            return False
        if laddr == sf0.laddr:
            return lport == sf0.lport
        if (laddr, lport) in self.announced:
            return True
        if (laddr, None) in self.announced:
            return lport == sf0.lport  # (an ADD_ADDR without port: the initial subflow's)
        return i is not None and lport == sf0.lport

    def unknown_join(self, pkt: "TcpPacket", now: float) -> Verdict:
        """An MP_JOIN SYN for a token that is none of ours: it may be a native MPTCP
        endpoint's (the server behind an anchor, a native app on this host), so it passes
        on untouched; only at an endpoint an anchor announced, where nobody else listens,
        is it reset (MP_TCPRST reason 1, as Linux answers an unknown token)."""
        anchor = self.proxy.config.anchor
        if anchor and ((pkt.dst, pkt.dport) in self.announced
                       or (pkt.dst, None) in self.announced):
            self.proxy.counters.inc("MPJoinNoTokenFound")
            return joins_listener.refuse(self.proxy, pkt, MPTCP_RST_EMPTCP)
        self.proxy.counters.inc("MPJoinPassed")
        return ACCEPT

    def local_addr_id(self, conn: "Connection", addr: bytes) -> int:
        """Our address ID for ``addr`` on ``conn`` (0: the initial subflow's address)."""
        if addr == conn.sf0.laddr:
            return 0
        for (a, _port), addr_id in self.announced.items():
            if a == addr:
                return addr_id
        i = self.iface_of_addr(addr)
        return i.addr_id if i is not None else 0

    def iface_name(self, addr: bytes) -> str:
        """The managed interface holding ``addr`` ("" for none)."""
        i = self.iface_of_addr(addr)
        return i.name if i is not None else ""

    def announce_addr(self, conn: "Connection", addr: bytes, port: int | None,
                      now: float) -> int:
        """ADD_ADDR for ``addr`` (and ``port``) on ``conn``, retransmitted until echoed;
        the endpoint is remembered, so the peer's joins there are accepted. Returns its
        address ID; raises ``ValueError`` for an address of the other family."""
        if len(addr) != len(conn.sf0.laddr):
            raise ValueError("the address is not of the connection's family")
        addr_id = self.announced.get((addr, port))
        if addr_id is None:
            addr_id = self.announced[(addr, port)] = self._announce_id(addr)
        signalling.announce(conn, addr_id, addr, now, port or 0)
        return addr_id
