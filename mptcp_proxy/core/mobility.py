"""Mobility, the half of the path policy that reacts to paths coming and going: the path
timer (silent failures found by :mod:`.liveness`, joins retried with back-off, the
freeze bound), stale paths and paths that return, links and addresses that change
(paper §5.4–5.5; RFC 8684 §3.2, §3.4).

:class:`Mobility` is a part of :class:`~.policy.PathManager` (its base class): it uses
the manager's choice of subflows (``usable``, ``switch``, ``add_subflow``,
``break_subflow``...) and is used through it. See :mod:`.policy` for the whole picture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, freeze, liveness
from .events import EventKind
from .paths import JOIN_RETRY_MAX, JOIN_RETRY_MIN
from .states import ConnState, SubflowState

if TYPE_CHECKING:
    from .connection import Connection
    from .policy import LocalIface
    from .subflow import Subflow

__all__ = ["Mobility", "JOINING"]

JOINING = (SubflowState.SYN_SENT, SubflowState.PRE_ESTABLISHED)


class Mobility:
    """Paths that die, return and change (a base of :class:`~.policy.PathManager`)."""

    # -- the path timer: liveness, join retries, the freeze bound ------------------------
    def watch(self, conn: "Connection", now: float) -> None:
        """Something moves on ``conn`` and its path timer is not armed: look soon (the
        timer then finds its own deadlines)."""
        if conn.paths.timer is None and self.config.detect:
            conn.paths.timer = now + liveness.RTO_MIN / 2
            conn.rearm()

    def path_timer(self, conn: "Connection", now: float) -> None:
        """The connection's path timer is due: the freeze bound, joins to retry, each
        subflow's liveness; then the next deadline."""
        p = conn.paths
        p.timer = None
        if conn.state != ConnState.ESTABLISHED:
            return
        if p.frozen_at is not None and now - p.frozen_at >= self.config.freeze_max - 1e-9:
            conn.counters.inc("FreezeTimeout")
            closing.abort(conn, now)
            return
        due = self._retry_joins(conn, now)
        cfg = self.config
        for sf in list(conn.subflows):
            if sf.state != SubflowState.ESTABLISHED or not self._iface_up(sf) or not cfg.detect:
                continue
            verdict, when = liveness.check(conn, sf, now, cfg.stale_rtos, cfg.stale_min,
                                           cfg.stale_probes)
            if verdict == "alive":
                self.path_back(conn, sf, now)
            elif verdict is not None:
                self.path_stale(conn, sf, now, verdict)
            if sf.stale and not sf.gone:
                when = now + liveness.path_rto(conn, sf) if when is None else when
            if when is not None:
                due.append(when)
        if p.frozen_at is not None:
            due.append(p.frozen_at + cfg.freeze_max)
            tick = freeze.tick(conn, now, cfg.freeze_icmp)
            if tick is not None:
                due.append(tick)
        if conn.state == ConnState.ESTABLISHED and due:
            p.timer = max(min(due), now + 1e-3)

    def _retry_joins(self, conn: "Connection", now: float) -> list[float]:
        """Joins whose back-off ended are tried again where still wanted; returns the
        deadlines of those still waiting."""
        p = conn.paths
        due = []
        for name, when in list((p.retry or {}).items()):
            if when > now + 1e-9:
                due.append(when)
                continue
            del p.retry[name]
            iface = self.ifaces.get(name)
            if iface is None or not iface.up or not self._wants(conn, iface):
                continue
            stale = next((s for s in conn.subflows if s.iface == name and s.stale
                          and not s.gone), None)
            conn.counters.inc("JoinRetry")
            self.add_subflow(conn, iface, backup=self._join_backup(conn), now=now,
                             replace=stale)
        return due

    def _wants(self, conn: "Connection", iface: "LocalIface") -> bool:
        """A join on ``iface`` is wanted: the policy has one on every interface, or the
        connection has no usable path, or the interface is preferred to the one in use;
        and none is there or under way."""
        if any(s.iface == iface.name and not s.gone and not s.stale for s in conn.subflows):
            return False
        if not self.usable(conn):
            return True
        if self.config.subflows != "manual":
            return True
        return False

    def _retry_later(self, conn: "Connection", name: str, now: float) -> None:
        """A join on ``name`` failed (refused, unanswered) or its path is stale: try again
        after a back-off, doubled per failure (reset by a join that comes up)."""
        p = conn.paths
        delay = p.retry_later(name, now, JOIN_RETRY_MIN, JOIN_RETRY_MAX)
        if p.timer is None or p.timer > now + delay:
            p.timer = now + delay
            conn.rearm()

    def _join_backup(self, conn: "Connection") -> bool:
        """The backup flag of a join the policy opens now: as the mode says, and backup
        when it is to take over a connection that has no usable path (REMOVE_ADDR must
        reach the peer first; MP_PRIO then makes it regular, see :meth:`switch`)."""
        return not (self.config.subflows == "active" and self._can_carry(conn.active))

    # -- stale paths and paths that return -----------------------------------------------
    def path_stale(self, conn: "Connection", sf: "Subflow", now: float, why: str) -> None:
        """:mod:`.liveness` found the path of ``sf`` dead: stop sending on it. With another
        path (or an interface to join from) it is abandoned and its interface probed by
        joins; with nowhere to go it is kept, probed in place, and the connection frozen."""
        sf.stale = True
        conn.counters.inc("SubflowStale")
        self.proxy.emit_event(EventKind.SF_STALE, conn, sf, reason=why)
        if self._can_move(conn, sf):
            name = sf.iface
            self.break_subflow(conn, sf, now, reason=f"path stale: {why}")
            if name:
                self._retry_later(conn, name, now)
        elif not self._can_carry(conn.active):
            freeze.freeze(conn, now, f"path stale: {why}")

    def path_back(self, conn: "Connection", sf: "Subflow", now: float) -> None:
        """A stale subflow kept in place answered (or its link returned): replace it by a
        fresh join on its interface; use it as it is if no join can be made."""
        conn.counters.inc("SubflowAlive")
        self.proxy.emit_event(EventKind.SF_ALIVE, conn, sf)
        iface = self.ifaces.get(sf.iface)
        new = None
        if iface is not None and iface.up and self.config.rejoin and not any(
                s.replaces is sf and not s.gone for s in conn.subflows):
            new = self.add_subflow(conn, iface, backup=self._join_backup(conn), now=now,
                                   laddr=sf.laddr if iface.has(sf.laddr) else None,
                                   replace=sf)
        if new is None and not any(s.replaces is sf and not s.gone for s in conn.subflows):
            self._revive(conn, sf, now)

    def _revive(self, conn: "Connection", sf: "Subflow", now: float) -> None:
        """``sf`` carries data again as it is."""
        sf.stale = False
        sf.answer_at = now
        if not self._can_carry(conn.active) or self._better(conn, sf, conn.active):
            self.switch(conn, sf, now, signal=conn.active is not sf)
        freeze.thaw(conn, now, self.config.freeze_icmp)

    # -- links and addresses ---------------------------------------------------------------
    def link_down(self, name: str, now: float) -> None:
        """An interface went down or lost its last address: its subflows are abandoned
        where the connection has somewhere else to go, else kept (stale) with the
        connection frozen until the link returns."""
        iface = self.ifaces.get(name)
        if iface is None or not iface.up:
            return
        iface.up = False
        self.proxy.counters.inc("LinkDown")
        for conn in self.proxy.established():
            for sf in list(conn.subflows):
                if sf.iface == name and not sf.gone:
                    self._path_lost(conn, sf, now, f"{name} down")

    def _path_lost(self, conn: "Connection", sf: "Subflow", now: float, why: str) -> None:
        """The path of ``sf`` is known to be gone (not merely silent)."""
        if sf.state in JOINING or self._can_move(conn, sf):
            self.break_subflow(conn, sf, now, reason=why)
            return
        # nowhere to go (no other path, and no join possible, e.g. the peer's side is
        # closing): keep the subflow, unused, until a path returns
        if not sf.stale:
            sf.stale = True
            conn.counters.inc("SubflowSuspended")
            self.proxy.emit_event(EventKind.SF_SUSPENDED, conn, sf, reason=why)
        if not self._can_carry(conn.active):
            freeze.freeze(conn, now, why)

    def _can_move(self, conn: "Connection", sf: "Subflow") -> bool:
        """Another path exists for ``conn`` than ``sf``'s: a usable subflow elsewhere, or an
        interface that is up with an address (not ``sf``'s) where a join can be made (not
        once our DATA_FIN is out)."""
        for other in conn.subflows:
            if other is not sf and self._can_carry(other) and (
                    other.iface != sf.iface or other.laddr != sf.laddr):
                return True
        if conn.snd_data_fin is not None or conn.rcv_data_fin is not None:
            return False
        for i in self.ifaces.values():
            addr = i.addr_for(conn.v6)
            if i.up and addr is not None and (i.name != sf.iface or addr != sf.laddr):
                return True
        return False

    def link_up(self, name: str, now: float, v4: list[bytes] | None = None,
                v6: list[bytes] | None = None) -> None:
        """An interface came back, or its addresses changed while it stayed up: stale
        subflows there are replaced by fresh joins, subflows whose address went away are
        abandoned, and subflows are opened from new addresses (with ``rejoin``)."""
        iface = self.ifaces.get(name)
        if iface is None:
            return
        old = set(iface.v4) | set(iface.v6)
        if v4 is not None:
            iface.v4 = list(v4)
        if v6 is not None:
            iface.v6 = list(v6)
        new = set(iface.v4) | set(iface.v6)
        was_up = iface.up
        if not new:
            if was_up:
                self.link_down(name, now)
            return
        iface.up = True
        if not was_up:
            self.proxy.counters.inc("LinkUp")
        gone, added = old - new, new - old
        for conn in self.proxy.established():
            for sf in list(conn.subflows):
                if sf.iface == name and not sf.gone and sf.laddr in gone:
                    self._path_lost(conn, sf, now, f"{name} lost its address")
            if self.config.rejoin:
                self._rejoin(conn, iface, now, was_up, added)

    def _rejoin(self, conn: "Connection", iface: "LocalIface", now: float, was_up: bool,
                added: set[bytes]) -> None:
        """Subflows on ``iface`` after it came back or gained an address: a stale one is
        replaced by a fresh join (from its own address if still there); else a join from
        each new address of the connection's family that no subflow uses yet, or from the
        first one after the link came back (per the policy, or when no path is left)."""
        name = iface.name
        mine = list(iface.v6 if conn.v6 else iface.v4)
        if not mine:
            return
        stale = [s for s in conn.subflows if s.iface == name and s.stale and not s.gone]
        if stale:
            if not any(x.replaces is stale[0] and not x.gone for x in conn.subflows):
                self.path_back(conn, stale[0], now)
            return
        fresh = [a for a in mine if a in added]
        if not was_up and not any(s.iface == name and not s.gone for s in conn.subflows):
            fresh = fresh or mine[:1]
        if not self._wants_addr(conn, iface):
            return
        for addr in fresh:
            if not any(s.laddr == addr and not s.gone for s in conn.subflows):
                self.add_subflow(conn, iface, backup=self._join_backup(conn), now=now,
                                 laddr=addr)

    def _wants_addr(self, conn: "Connection", iface: "LocalIface") -> bool:
        """A join from a new address of ``iface`` is wanted: per the policy (not manual),
        or the connection has no usable path."""
        return self.config.subflows != "manual" or not self.usable(conn)
