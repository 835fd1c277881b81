"""Policy routing by source address for the managed interfaces, set up by the daemon
(``--no-manage-routes`` leaves routing to the user).

Extra subflows leave by the link of their source address only if the host routes by
source address (docs/platform.md §6: a rewritten segment is routed again by its new
source). For each managed interface ``i`` the daemon keeps a routing table of its own,
``table_base + i``, holding that interface's connected prefixes and a default route via
its gateway, and one rule per address of the interface, ``from ADDR lookup table``
(priority ``pref_base + i``, before the main table). The gateway is the one of the
interface's own default route wherever the user or a DHCP/RA client installed it (any
table but ours); when it changes, or addresses come and go, :meth:`ManagedRoutes.sync`
follows (the link monitor calls it on every link, address and route event).

Everything created is recorded (``self.rules``, ``self.routes``) and removed on exit,
identified by exactly what was created: a rule or route the daemon did not make is
never touched. Driver side (pyroute2); not part of the sans-I/O core.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable

log = logging.getLogger("mptcp_proxy.routing")

FAMILIES = (socket.AF_INET, socket.AF_INET6)
MAIN_TABLE = 254


def _any(fam: int) -> str:
    return "0.0.0.0" if fam == socket.AF_INET else "::"


class ManagedRoutes:
    """The daemon's source routing for interfaces ``names`` (a list that may grow:
    interfaces that appear later get the next index). ``record``: called with a
    description of each change before it is made (a state journal)."""

    def __init__(self, names: list[str], table_base: int, pref_base: int,
                 record: Callable[[str, dict], None] | None = None,
                 ignore_tables: tuple[int, ...] = (), manage: bool = True,
                 last_resort: tuple[int, int] | None = None) -> None:
        self.names = list(names)
        self.ignore_tables = ignore_tables  # (another table of ours: the fallback routes)
        self.manage = manage  # the per-interface source routing (--no-manage-routes: off)
        self.last_resort = last_resort  # (table, priority) of the route out of lo, or None
        self.extra_sources: set[str] = set()  # addresses kept on lo (:mod:`.addresses`)
        self.table_base = table_base
        self.pref_base = pref_base
        self.record = record or (lambda kind, fields: None)
        self.rules: set[tuple] = set()   # (family, src, src_len, table, priority)
        self.routes: dict[tuple, tuple] = {}  # (family, table, dst, dst_len) -> (oif, gw)

    def add_name(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)

    def table(self, name: str) -> int:
        return self.table_base + self.names.index(name)

    def ours(self, table: int) -> bool:
        return (self.table_base <= table < self.table_base + len(self.names)
                or (self.last_resort is not None and table == self.last_resort[0]))

    # ------------------------------------------------------------------ wanted state
    def wanted(self, ipr) -> tuple[set[tuple], dict[tuple, tuple]]:
        """The rules and routes the managed interfaces need now."""
        rules: set[tuple] = set()
        routes: dict[tuple, tuple] = {}
        if self.last_resort is not None:
            self._last_resort(ipr, rules, routes)
        if not self.manage:
            return rules, routes
        for i, name in enumerate(self.names):
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue
            idx = idx[0]
            table, prio = self.table_base + i, self.pref_base + i
            for fam in FAMILIES:
                addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=fam, index=idx)
                         if fam == socket.AF_INET or a["scope"] == 0]
                if not addrs:
                    continue
                gw, have_default = self._gateway(ipr, fam, idx)
                if not have_default:
                    continue  # no default route through it anywhere: nothing to follow
                for r in ipr.get_routes(family=fam, table=MAIN_TABLE):
                    if r.get_attr("RTA_OIF") == idx and r["dst_len"] and \
                            r.get_attr("RTA_GATEWAY") is None and r["type"] == 1:
                        dst = r.get_attr("RTA_DST")
                        routes[(fam, table, dst, r["dst_len"])] = (idx, None)
                routes[(fam, table, _any(fam), 0)] = (idx, gw)
                hostlen = 32 if fam == socket.AF_INET else 128
                for a in addrs:
                    rules.add((fam, a, hostlen, table, prio))
        return rules, routes

    def _last_resort(self, ipr, rules: set, routes: dict) -> None:
        """When every link is down the host has no route at all, and the local stack's
        segments die in routing before the proxy's queue (docs/platform.md §3): a route
        out of lo, for the managed interfaces' addresses only (an unbound socket still
        finds no route and fails at once), keeps them reaching the queue, which consumes
        them (the freeze: docs/mobility.md)."""
        table, prio = self.last_resort
        lo = ipr.link_lookup(ifname="lo")[0]
        sources = set(self.extra_sources)
        for name in self.names:
            idx = ipr.link_lookup(ifname=name)
            if idx:
                sources |= {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0])
                            if a["family"] == socket.AF_INET or a["scope"] == 0}
        for a in sources:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            rules.add((fam, a, 128 if fam == socket.AF_INET6 else 32, table, prio))
            routes[(fam, table, _any(fam), 0)] = (lo, None)

    def _gateway(self, ipr, fam: int, idx: int) -> tuple[str | None, bool]:
        """The gateway of the interface's own default route (main table first, then any
        table not ours); ``(gw, True)`` also when the route has no gateway (a
        point-to-point link)."""
        found = None
        for r in ipr.get_routes(family=fam):
            if r["dst_len"] or r.get_attr("RTA_OIF") != idx:
                continue
            table = r.get_attr("RTA_TABLE") or r["table"]
            if self.ours(table) or table in self.ignore_tables or r["type"] != 1:
                continue
            gw = r.get_attr("RTA_GATEWAY")
            if table == MAIN_TABLE:
                return gw, True
            found = found or (gw,)
        return (found[0], True) if found else (None, False)

    # ------------------------------------------------------------------ applying
    def sync(self) -> None:
        """Make the host's rules and routes match :meth:`wanted` (only ours change)."""
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            rules, routes = self.wanted(ipr)
            for key in sorted(self.rules - rules):
                self._del_rule(ipr, key)
            for key in list(self.routes):
                if routes.get(key) != self.routes[key]:
                    self._del_route(ipr, key)
            for key, val in routes.items():
                if self.routes.get(key) != val:
                    self._add_route(ipr, key, val)
            for key in sorted(rules - self.rules):
                self._add_rule(ipr, key)

    def _add_rule(self, ipr, key: tuple) -> None:
        fam, src, src_len, table, prio = key
        self.record("ip_rule", {"family": fam, "src": src, "src_len": src_len,
                                "table": table, "priority": prio})
        try:
            ipr.rule("add", family=fam, src=src, src_len=src_len, table=table, priority=prio)
            self.rules.add(key)
            log.info("routing: from %s lookup %d (pref %d)", src, table, prio)
        except Exception as e:
            log.warning("routing: rule from %s lookup %d: %s", src, table, e)

    def _del_rule(self, ipr, key: tuple) -> None:
        fam, src, src_len, table, prio = key
        try:
            ipr.rule("del", family=fam, src=src, src_len=src_len, table=table, priority=prio)
        except Exception as e:
            log.debug("routing: removing rule from %s: %s", src, e)
        self.rules.discard(key)

    def _add_route(self, ipr, key: tuple, val: tuple) -> None:
        fam, table, dst, dst_len = key
        oif, gw = val
        self.record("route", {"family": fam, "dst": dst, "dst_len": dst_len, "oif": oif,
                              "table": table, "gateway": gw})
        kw = {"gateway": gw} if gw else {}
        try:
            ipr.route("replace", family=fam, dst=dst, dst_len=dst_len, oif=oif, table=table,
                      **kw)
            self.routes[key] = val
            log.info("routing: table %d: %s/%d%s", table, dst, dst_len,
                     f" via {gw}" if gw else " (connected)")
        except Exception as e:
            log.debug("routing: table %d %s/%d: %s", table, dst, dst_len, e)

    def _del_route(self, ipr, key: tuple) -> None:
        fam, table, dst, dst_len = key
        oif, _gw = self.routes.pop(key)
        try:
            ipr.route("del", family=fam, dst=dst, dst_len=dst_len, oif=oif, table=table)
        except Exception as e:  # (a link that went away took its routes along)
            log.debug("routing: removing %s/%d from table %d: %s", dst, dst_len, table, e)

    def remove(self) -> None:
        """Remove every rule and route this object created."""
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for key in sorted(self.rules):
                self._del_rule(ipr, key)
            for key in list(self.routes):
                self._del_route(ipr, key)

    def describe(self) -> list[str]:
        """The rules and routes in place, as ``ip`` would print them."""
        out = [f"from {src} lookup {table} pref {prio}"
               for _f, src, _l, table, prio in sorted(self.rules)]
        for (fam, table, dst, dst_len), (_oif, gw) in sorted(self.routes.items(), key=str):
            net = ipaddress.ip_network(f"{dst}/{dst_len}", strict=False)
            out.append(f"table {table}: {net}" + (f" via {gw}" if gw else ""))
        return out
