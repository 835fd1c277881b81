"""Interfaces, addresses and link events (pyroute2), and local ports for the
proxy's own subflows. Driver side: the core only hears "link down/up".
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("mptcp_proxy.links")

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40


def _usable_addrs(ipr, index: int) -> tuple[list[bytes], list[bytes]]:
    """The interface's IPv4 addresses and global IPv6 addresses, those to join from
    first: IPv6 tentative or failed (DAD) ones left out, stable ones before temporary
    (privacy) ones, deprecated ones last."""
    v4, v6 = [], []
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_ADDRESS")
        flags = a.get_attr("IFA_FLAGS") or a["flags"]
        if a["family"] == socket.AF_INET:
            v4.append((0, packed(addr)))
        elif a["family"] == socket.AF_INET6 and a["scope"] == 0:
            if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            rank = 2 if flags & IFA_F_DEPRECATED else 1 if flags & IFA_F_TEMPORARY else 0
            v6.append((rank, packed(addr)))
    return [a for _r, a in sorted(v4, key=lambda x: x[0])], \
        [a for _r, a in sorted(v6, key=lambda x: x[0])]


def is_pattern(name: str) -> bool:
    """An interface pattern (``wl*``) rather than a name."""
    return any(c in name for c in "*?[")


def read_ifaces(names: list[str], allow_missing: bool = False) -> dict[str, dict]:
    """Interface name → ``{"index", "up", "v4": [bytes], "v6": [bytes]}`` (global
    addresses only, in the order to join from); raises ValueError for unknown names
    (unless ``allow_missing``: they are reported with ``"missing": True``, down) or
    ``lo``."""
    from pyroute2 import IPRoute
    out: dict[str, dict] = {}
    with IPRoute() as ipr:
        for name in names:
            if name == "lo":
                raise ValueError("the loopback interface is never proxied")
            if name in out:
                raise ValueError(f"interface given twice: {name}")
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                if not allow_missing:
                    raise ValueError(f"unknown interface: {name}")
                out[name] = {"index": None, "up": False, "v4": [], "v6": [], "missing": True}
                continue
            link = ipr.get_links(idx[0])[0]
            v4, v6 = _usable_addrs(ipr, idx[0])
            out[name] = {"index": idx[0], "up": bool(link["flags"] & 1) and
                         link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN"), "v4": v4,
                         "v6": v6}
    return out


def matching_ifaces(patterns: list[str]) -> list[str]:
    """Names of the existing interfaces (not ``lo``) that match one of ``patterns``."""
    import fnmatch

    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n != "lo" and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class LinkMonitor:
    """Watches rtnetlink for link, address and route changes of the given interfaces (and
    of new ones matching ``patterns``) and calls ``on_change(name, up, v4, v6)`` in the
    asyncio loop with an interface's new state. The netlink socket is read in a thread
    (pyroute2's synchronous API cannot run inside the daemon's event loop), where
    ``on_new(name)`` is called first for an interface that appeared and matches a
    pattern, ``in_thread(name, up)`` for each change, and ``after(changes)`` once per
    batch of events (``changes``: name → (old state, new state), possibly empty: a route
    changed), so that host state (routes, kept addresses) follows before the core
    hears of it."""

    def __init__(self, names: list[str], on_change: Callable[[str, bool, list, list], None],
                 in_thread: Callable[[str, bool], None] | None = None,
                 patterns: list[str] | None = None,
                 on_new: Callable[[str], None] | None = None,
                 after: Callable[[dict], None] | None = None):
        self.names = set(names)
        self.patterns = list(patterns or [])
        self.on_change = on_change
        self.in_thread = in_thread  # called in the watcher thread first (may use pyroute2)
        self.on_new = on_new
        self.after = after
        self.loop = None
        self.state: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ipr = None

    def start(self, loop) -> None:
        self.loop = loop
        self._thread = threading.Thread(target=self._run, name="linkmon", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from pyroute2 import IPRoute
        try:
            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                     | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        except Exception as e:
            log.error("cannot watch links: %s", e)
            return
        self._ipr = ipr
        self.refresh(initial=True)
        while not self._stop.is_set():
            try:
                msgs = ipr.get()
            except Exception:
                if self._stop.is_set():
                    break
                time.sleep(0.1)
                continue
            events = {m.get("event") for m in msgs}
            if events & {"RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR",
                         "RTM_NEWROUTE", "RTM_DELROUTE"}:
                self.refresh()

    def _discover(self) -> None:
        """Interfaces that appeared and match a pattern join the watched set."""
        if not self.patterns:
            return
        try:
            found = matching_ifaces(self.patterns)
        except Exception:
            return
        for name in found:
            if name not in self.names:
                self.names.add(name)
                log.info("%s appeared (matches %s): managed from now on", name,
                         " ".join(self.patterns))
                if self.on_new is not None:
                    try:
                        self.on_new(name)
                    except Exception:
                        log.exception("handling the new interface %s failed", name)

    def refresh(self, initial: bool = False) -> None:
        """Re-read every watched interface and report the ones that changed."""
        self._discover()
        now: dict[str, dict] = {}
        for name in sorted(self.names):
            try:
                now.update(read_ifaces([name]))
            except Exception:
                now[name] = {"up": False, "v4": [], "v6": []}
        changes = {}
        for name, info in now.items():
            up = info["up"] and bool(info["v4"] or info["v6"])
            st = (up, info["v4"], info["v6"])
            old = self.state.get(name)
            if old != st:
                self.state[name] = st
                if initial and old is None:
                    continue
                changes[name] = (old, st)
                log.info("%s: %s v4=%s v6=%s", name, "up" if up else "down",
                         [str(ipaddress.ip_address(a)) for a in info["v4"]],
                         [str(ipaddress.ip_address(a)) for a in info["v6"]])
                if self.in_thread is not None:
                    try:
                        self.in_thread(name, up)
                    except Exception:
                        log.exception("link change handling failed")
        if self.after is not None and not initial:
            try:
                self.after(changes)
            except Exception:
                log.exception("host state update failed")
        for name, (_old, (up, v4, v6)) in changes.items():
            self.loop.call_soon_threadsafe(self.on_change, name, up, v4, v6)

    def stop(self) -> None:
        self._stop.set()
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class PortReservations:
    """Local ports for the proxy's subflows, reserved by binding a TCP socket to
    ``(addr, 0)`` so the local stack never hands the same port out."""

    def __init__(self, owns: Callable[[int], bool] | None = None) -> None:
        self.socks: dict[tuple[bytes, int], socket.socket] = {}
        self.owns = owns  # --workers: only ports whose packets reach this worker

    def alloc(self, addr: bytes) -> int:
        """A port reserved on ``addr`` (``owns(port)`` true: tried up to 64 binds, the
        refused ones held meanwhile so the stack hands out another each time). Raises
        ``OSError`` when none can be had."""
        refused = []
        try:
            for _ in range(64):
                s = self._bind(addr)
                port = s.getsockname()[1]
                if self.owns is None or self.owns(port):
                    self.socks[(addr, port)] = s
                    return port
                refused.append(s)
        finally:
            for s in refused:
                s.close()
        raise OSError(errno.EADDRINUSE, "no local port for this worker")

    @staticmethod
    def _bind(addr: bytes) -> socket.socket:
        fam = socket.AF_INET6 if len(addr) == 16 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((str(ipaddress.ip_address(addr)), 0))
        except OSError:
            s.close()
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
        return s

    def release(self, addr: bytes, port: int) -> None:
        s = self.socks.pop((addr, port), None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()



class FallbackRoutes:
    """Keep every managed interface's address routable while its own link is down.

    The local socket of a proxied connection stays bound to the address it started
    with. When that interface goes down, the kernel flushes the routes through it,
    and the socket's segments fail their route lookup *before* the OUTPUT hook: the
    proxy never sees them and cannot move them to another link (the connection would
    hang). So the daemon installs, in a table of its own consulted after every other
    rule (``ip rule add pref PREF lookup TABLE``), a default route via each managed
    interface's gateway. A segment from a dead interface's address then finds a
    route, reaches the proxy, and leaves — rewritten to a live subflow's addresses —
    by the link of its new source (docs/platform.md §6). The kernel drops the route of a
    link that goes down; :meth:`refresh` puts it back when the link returns.
    Limit: this keeps routes, not addresses; if the address itself is removed, the
    local socket cannot send at all.
    """

    def __init__(self, names: list[str], table: int, pref: int, journal=None) -> None:
        self.names = list(names)
        self.table = table
        self.pref = pref
        self.journal = journal  # recovery.Journal: every rule and route recorded first
        self.gateways: dict[tuple[str, int], str | None] = {}  # (iface, family) -> gw
        self.installed_rules: list[int] = []

    def _record(self, kind: str, **fields) -> None:
        if self.journal is not None:
            self.journal.record(kind, **fields)

    def _rule_entry(self, fam: int) -> dict:
        return {"kind": "ip_rule", "family": fam, "table": self.table, "priority": self.pref}

    def discover(self) -> None:
        """Learn each interface's default gateway from the routing tables (any table)."""
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for name in self.names:
                idx = ipr.link_lookup(ifname=name)
                if not idx:
                    continue
                for fam in (socket.AF_INET, socket.AF_INET6):
                    for r in ipr.get_routes(family=fam):
                        if r["dst_len"] == 0 and r.get_attr("RTA_OIF") == idx[0] \
                                and r.get_attr("RTA_TABLE") != self.table:
                            self.gateways[(name, fam)] = r.get_attr("RTA_GATEWAY")
                            break

    def install(self) -> None:
        from pyroute2 import IPRoute
        self.discover()
        self.refresh()
        from .recovery import undo
        with IPRoute() as ipr:
            for fam in (socket.AF_INET, socket.AF_INET6):
                if not any(f == fam for (_n, f) in self.gateways):
                    continue
                entry = self._rule_entry(fam)
                # exactly our rule (this preference, our table), left by a daemon that
                # did not exit cleanly and had no journal: it would make "add" fail
                undo(entry)
                self._record(**entry)
                try:
                    ipr.rule("add", family=fam, table=self.table, priority=self.pref)
                    self.installed_rules.append(fam)
                except Exception as e:
                    log.warning("fallback rule (family %d): %s", fam, e)

    def refresh(self) -> None:
        """(Re)install the fallback default route of every interface that is up."""
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for i, name in enumerate(self.names):
                idx = ipr.link_lookup(ifname=name)
                if not idx:
                    continue
                for fam in (socket.AF_INET, socket.AF_INET6):
                    if (name, fam) not in self.gateways:
                        continue
                    gw = self.gateways[(name, fam)]
                    dst = "0.0.0.0" if fam == socket.AF_INET else "::"
                    kw = {"gateway": gw} if gw else {}
                    self._record("route", family=fam, dst=dst, dst_len=0, oif=idx[0],
                                 table=self.table, priority=100 + i, gateway=gw)
                    try:
                        ipr.route("replace", family=fam, dst=f"{dst}/0", oif=idx[0],
                                  table=self.table, priority=100 + i, **kw)
                    except Exception as e:  # link down: no route through it for now
                        log.debug("fallback route via %s: %s", name, e)

    def remove(self) -> None:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for fam in self.installed_rules:
                try:
                    ipr.rule("del", family=fam, table=self.table, priority=self.pref)
                    if self.journal is not None:
                        self.journal.done(self._rule_entry(fam))
                except Exception as e:
                    log.warning("removing fallback rule: %s", e)
            self.installed_rules = []
            for fam in (socket.AF_INET, socket.AF_INET6):
                try:
                    for r in ipr.get_routes(family=fam, table=self.table):
                        ipr.route("del", family=fam, dst=r.get_attr("RTA_DST") or (
                            "0.0.0.0" if fam == socket.AF_INET else "::"),
                            dst_len=r["dst_len"], table=self.table,
                            oif=r.get_attr("RTA_OIF"), priority=r.get_attr("RTA_PRIORITY"))
                except Exception as e:
                    log.warning("removing fallback routes: %s", e)
        if self.journal is not None:  # every route of our table is gone, or failed above
            for e in [e for e in self.journal.entries if e["kind"] == "route"
                      and e["table"] == self.table]:
                from .recovery import undo
                if undo(e):
                    self.journal.done(e)


class RpFilter:
    """Switch interfaces to loose reverse-path filtering (``rp_filter=2``) where the
    effective value is strict (the inbound queue sits in raw PREROUTING, before the
    route lookup that strict filtering does for a multihomed host), and restore them.
    With a ``journal``, each change is recorded (old and new value) before it is made."""

    def __init__(self, ifaces: list[str], journal=None,
                 root: Path = Path("/proc/sys/net/ipv4/conf")) -> None:
        self.ifaces = ifaces
        self.journal = journal
        self.root = root
        self.saved: dict[str, str] = {}

    def _path(self, name: str) -> Path:
        return self.root / name / "rp_filter"

    def _entry(self, name: str) -> dict:
        return {"kind": "sysctl", "path": str(self._path(name)), "old": self.saved[name],
                "new": "2"}

    def apply(self) -> None:
        try:
            all_v = int(self._path("all").read_text())
        except OSError:
            return
        for name in self.ifaces:
            p = self._path(name)
            try:
                v = int(p.read_text())
            except OSError:
                continue
            if max(all_v, v) == 1:
                self.saved[name] = str(v)
                if self.journal is not None:
                    self.journal.record(**self._entry(name))
                p.write_text("2")
                log.info("%s: rp_filter %d -> 2 (loose) while the proxy runs", name, v)

    def restore(self) -> None:
        """Put back every value we changed, unless someone changed it since."""
        from .recovery import undo
        for name in list(self.saved):
            entry = self._entry(name)
            if undo(entry) and self.journal is not None:
                self.journal.done(entry)
            del self.saved[name]
