"""Path policy: which subflows a connection has and which one carries new data — joins at
setup, handover (make-before-break with MP_PRIO, break-before-make with REMOVE_ADDR),
failover when a path goes away, links that go down and come back (paper §2.3, §5.3–5.5;
RFC 8684 §3.2, §3.3.8, §3.4).

:class:`PathManager` is the proxy's one path manager. Without interfaces it is the
single-path policy: the initial subflow only, announcements echoed but never joined. The
daemon gives it the interfaces it may use; the control socket calls its public methods.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import closing, joins, joins_listener, signalling
from .constants import MPTCP_RST_EMPTCP
from .events import EventKind
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


@dataclass
class LocalIface:
    """One interface the proxy may use: its name, the address ID announced for its
    addresses (the primary interface's first address is ID 0 on the initial subflow,
    RFC 8684 §3.2), its addresses (4 or 16 bytes) and whether it is up."""

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

    ``subflows``: ``"backup"`` — join from every other interface at connection setup as
    backup subflows (make-before-break ready; the default); ``"active"`` — join as regular
    subflows (the peer may send on all, paper §5.5); ``"manual"`` — only on command.
    ``rejoin``: re-create subflows on an interface that comes back. ``join_announced``:
    which addresses the peer announces (ADD_ADDR) we join — ``"off"``, ``"global"``
    (only globally routable ones: an authentic but hostile peer must not make the proxy
    open connections into the client's own networks; the default) or ``"any"``.
    ``max_subflows``: per connection.
    ``peer_joins``: ``"accept"`` the peer's MP_JOIN subflows to our addresses (the initial
    subflow's, an announced one, a managed interface's) or ``"refuse"`` them (reset).
    ``announce``: ``(address, port or None)`` pairs announced with ADD_ADDR on every
    connection once established (``--announce``).
    """

    subflows: str = "backup"
    rejoin: bool = True
    join_announced: str = "global"
    max_subflows: int = 8
    peer_joins: str = "accept"
    announce: list = field(default_factory=list)


def _global_unicast(addr: bytes) -> bool:
    """A globally routable unicast address (``ipaddress`` counts multicast as global)."""
    a = ipaddress.ip_address(addr)
    return a.is_global and not a.is_multicast


def _by_preference(sf: Subflow) -> tuple:
    """Sort key of usable subflows: not backup for the peer first, then not ours."""
    return (sf.peer_backup, sf.backup, sf.index)


class PathManager:
    """The subflows of every connection of one :class:`~.proxy.Proxy`."""

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
            sf0.addr_id = 0  # the initial subflow's address is ID 0 (RFC 8684 §3.2)
        for (addr, port), addr_id in self.announced.items():
            if len(addr) == len(sf0.laddr) and addr != sf0.laddr:
                signalling.announce(conn, addr_id, addr, now, port or 0)
        if self.config.subflows == "manual" or conn.role != "client":
            return
        backup = self.config.subflows == "backup"
        for iface in self.ifaces.values():
            if iface.up and iface.name != sf0.iface:
                self.add_subflow(conn, iface, backup=backup, now=now)

    def add_subflow(self, conn: "Connection", iface: LocalIface, backup: bool, now: float,
                    raddr: bytes | None = None, rport: int | None = None,
                    remote_id: int = 0) -> Subflow | None:
        """Open an MP_JOIN subflow from ``iface`` to ``raddr:rport`` (default: the peer's
        address of the initial subflow) (RFC 8684 §3.2). None when not possible: the
        connection is not established or is closing (Linux refuses joins after our
        DATA_FIN), the subflow limit is reached, ``iface`` has no address of the family,
        or the peer asked for no joins to its initial address (MP_CAPABLE C flag)."""
        if conn.state != ConnState.ESTABLISHED:
            return None
        if conn.snd_data_fin is not None:
            conn.counters.inc("MPJoinSkippedClosing")
            return None
        if sum(1 for s in conn.subflows if not s.gone) >= self.config.max_subflows:
            conn.counters.inc("MPJoinLimit")
            return None
        laddr = iface.addr_for(conn.v6)
        if laddr is None:
            return None
        if raddr is None:
            if conn.deny_join0:
                conn.counters.inc("MPJoinDenied")
                return None
            raddr, rport = conn.sf0.raddr, conn.sf0.rport
        self.prune(conn, now)
        addr_id = 0 if iface.name == conn.sf0.iface and laddr == conn.sf0.laddr \
            else iface.addr_id
        sf = conn.new_subflow(laddr, self.alloc_port(laddr), raddr, rport or conn.sf0.rport,
                              self.proxy.random32(), addr_id)
        sf.iface = iface.name
        sf.remote_id = remote_id
        sf.backup = backup
        if conn.pending_signals:
            signalling.cancel_remove(conn, sf.addr_id)
        joins.start_join(conn, sf, now)
        return sf

    def join_established(self, conn: "Connection", sf: Subflow, now: float) -> None:
        """A join completed: if the connection has no usable sending subflow (break before
        make), or a handover waits for it, move new data there; REMOVE_ADDR goes first
        (the peer then reinjects what it lost), MP_PRIO after."""
        switch = False
        pending = conn.pending_handover
        if pending is not None and pending[0] == sf.iface:
            conn.pending_handover = None
            switch = True
        elif not conn.active.alive:
            switch = True
        broken = not conn.active.alive
        if conn.pending_signals:
            signalling.flush_signals(conn, now)
        if switch:
            self.switch(conn, sf, now, signal=True, defer=broken)
        if closing.data_closed(conn):  # it completed after the close: close it too
            closing.check_close(conn, now)

    def subflow_gone(self, conn: "Connection", sf: Subflow, now: float,
                     exclude_iface: str | None = None) -> None:
        """``sf`` ended: its port is free; if it carried new data, fail over (not to
        ``exclude_iface``, an interface just abandoned)."""
        if sf is not conn.sf0 and not sf.passive:  # (a peer's join uses no port of ours)
            self.release_port(sf.laddr, sf.lport)
        if conn.active is sf and conn.state == ConnState.ESTABLISHED:
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
        due = [t for t in (sf.prio_at, sf.rm_probe_at) if t is not None]
        if due:
            sf.timer = min(due)

    # -- which subflow sends -------------------------------------------------------------
    def usable(self, conn: "Connection") -> list[Subflow]:
        """The subflows that can carry new data now (open, and their link up)."""
        return [s for s in conn.subflows if s.can_send and self._iface_up(s)]

    def _iface_up(self, sf: Subflow) -> bool:
        i = self.ifaces.get(sf.iface)
        return i is None or i.up

    def switch(self, conn: "Connection", sf: Subflow, now: float, signal: bool,
               defer: bool = False) -> None:
        """Send new data on ``sf`` and, with ``signal``, tell the peer with MP_PRIO (paper
        §5.3): B=0 on the new subflow, B=1 on the other live ones.

        ``defer`` (break before make): the MP_PRIO goes out a little later, after the
        REMOVE_ADDR. Linux handles MP_PRIO at once but REMOVE_ADDR in its path manager's
        worker; a subflow turned regular first would be filled with new data, and the
        reinjection of what was lost on the dead path (what the receiver waits for) would
        queue behind it. Left as backup, the subflow carries the reinjection first."""
        old = conn.active
        conn.active = sf
        conn.handovers += 1
        conn.handover_at = now
        conn.counters.inc("Handovers")
        self.proxy.emit_event(EventKind.HANDOVER, conn, sf, from_subflow=old.index)
        if not signal:
            return
        if defer:
            sf.prio_at = now + max(0.05, 1.5 * conn.srtt)
            sf.timer = sf.prio_at if sf.timer is None else min(sf.timer, sf.prio_at)
            conn.rearm()
            return
        self._send_prio(conn, sf, now)

    def _send_prio(self, conn: "Connection", sf: Subflow, now: float) -> None:
        sf.prio_at = None
        for other in self.usable(conn):
            want_backup = other is not sf
            if other.backup != want_backup:
                signalling.send_prio(conn, other, want_backup, now)

    def _failover(self, conn: "Connection", now: float, exclude: str | None = None) -> None:
        """The active subflow is gone: switch to the best usable one, else make sure a
        join is under way (not on ``exclude``, the interface just abandoned)."""
        live = self.usable(conn)
        if live:
            live.sort(key=_by_preference)
            self.switch(conn, live[0], now, signal=True, defer=True)
            return
        if any(s.state in (SubflowState.SYN_SENT, SubflowState.PRE_ESTABLISHED)
               for s in conn.subflows):
            return  # a join is coming: join_established switches to it
        for iface in self.ifaces.values():
            if iface.name == exclude or not iface.up:
                continue
            if not any(s.iface == iface.name and not s.gone for s in conn.subflows):
                # joined as backup: until REMOVE_ADDR tells the peer the old path is gone,
                # it keeps its new data for that (regular) path instead of queueing it
                # here ahead of the reinjections we need first; MP_PRIO makes it regular
                # once we switch to it (join_established)
                if self.add_subflow(conn, iface, backup=True, now=now) is not None:
                    return

    def ensure_sender(self, conn: "Connection", now: float) -> bool:
        """Before sending new data: the active subflow can send, or another usable one
        takes over (signalled). False when nothing can carry data now (break before make,
        the new subflow not up yet: the TCP side retransmits once it is)."""
        if conn.active.can_send:
            return True
        live = self.usable(conn)
        if not live:
            return False
        self.switch(conn, live[0], now, signal=True)
        return True

    # -- commands ------------------------------------------------------------------------
    def handover(self, conn: "Connection", iface: LocalIface, now: float,
                 break_: bool = False) -> Subflow | None:
        """Move the connection to ``iface``. Make-before-break uses (or opens) a subflow
        there and switches once it is established; ``break_`` first abandons the current
        active subflow as if its link had died (paper §5.4)."""
        target = next((sf for sf in conn.subflows if sf.iface == iface.name and sf.state in (
            SubflowState.ESTABLISHED, SubflowState.PRE_ESTABLISHED, SubflowState.SYN_SENT)),
            None)
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

    def break_subflow(self, conn: "Connection", sf: Subflow, now: float, reason: str) -> None:
        """The path of ``sf`` is gone (link down, address lost, or on command): stop using
        it, fail over, and tell the peer with REMOVE_ADDR so it reinjects what it had in
        flight there (RFC 8684 §3.4.2)."""
        if sf.gone:
            return
        addr_id = sf.addr_id
        closing.subflow_gone(conn, sf, now, reason, exclude_iface=sf.iface)
        conn.counters.inc("SubflowBroken")
        if not any(not s.gone and s.addr_id == addr_id for s in conn.subflows):
            signalling.remove_addr(conn, addr_id, now)

    def remove_subflow(self, conn: "Connection", sf: Subflow, now: float) -> None:
        """Close ``sf`` cleanly on command: move new data away, then FIN it. Raises
        ``ValueError`` when it is the only usable subflow."""
        if conn.active is sf:
            others = [s for s in self.usable(conn) if s is not sf]
            if not others:
                raise ValueError("cannot remove the only usable subflow")
            others.sort(key=_by_preference)
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
        """The peer announced ``addr`` (HMAC checked, echoed): join it per the policy."""
        if not self.ifaces or len(addr) != len(sf.raddr):
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
                alt.sort(key=lambda s: (s.backup, s.index))
                self.switch(conn, alt[0], now, signal=False)
        elif not backup and conn.active.peer_backup and sf.alive:
            self.switch(conn, sf, now, signal=False)

    # -- links -------------------------------------------------------------------------------
    def link_down(self, name: str, now: float) -> None:
        """An interface went down or lost its address: break its subflows."""
        iface = self.ifaces.get(name)
        if iface is None or not iface.up:
            return
        iface.up = False
        self.proxy.counters.inc("LinkDown")
        for conn in self.proxy.established():
            for sf in list(conn.subflows):
                if sf.iface != name or sf.gone:
                    continue
                if self._can_move(conn, sf):
                    self.break_subflow(conn, sf, now, reason=f"{name} down")
                else:
                    # nowhere to go (no other path, and no join possible, e.g. the peer's
                    # side is closing): keep the subflow, unused while the link is down; its
                    # 4-tuple is valid again when the link comes back with its address
                    conn.counters.inc("SubflowSuspended")
                    self.proxy.emit_event(EventKind.SF_SUSPENDED, conn, sf)

    def _can_move(self, conn: "Connection", sf: Subflow) -> bool:
        """Another path exists for ``conn`` than ``sf``'s: a usable subflow elsewhere, or an
        interface that is up where a join can be made (not once our DATA_FIN is out)."""
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
        """An interface came back (or changed addresses): with ``rejoin``, open subflows
        on it again."""
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
        self.proxy.counters.inc("LinkUp")
        if not self.config.rejoin or self.config.subflows == "manual":
            return
        for conn in self.proxy.established():
            if any(s.iface == name and not s.gone for s in conn.subflows):
                continue
            backup = conn.active.alive and self.config.subflows == "backup"
            self.add_subflow(conn, iface, backup=backup, now=now)

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
