"""Kinds of mobility event beyond a clean handover (issue "mobility as it really
happens"): a path that dies upstream while its link stays up (``blackhole``), the
client's address on the active link replaced mid-transfer (``readdress``), every path
down for N seconds then back (``outage``), and the second interface appearing
mid-transfer (``hotplug``). Registered in :data:`~.kinds.KINDS` on import.

When an event has an end (the blackhole with ``--seconds``, the outage), its kind reports
``t_return`` (monotonic): the report then also measures from that instant (the first byte
delivered after the path returned, the time back to the previous rate).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .kinds import Kind, register

if TYPE_CHECKING:
    from .scenario import Run

__all__ = ["Blackhole", "Readdress", "Outage", "Hotplug"]

NEW_ADDR = "10.0.1.2"  # the lease that replaces 10.0.1.1 on c0 (same /24, same gateway)
NEW_ADDR6 = "fd00:1::2"


def _ip(run: Run, *args: str) -> None:
    run.topo.run(run.topo.client, ["ip", *args])


def _native_endpoints(run: Run, *cmds: str) -> None:
    """``ip mptcp endpoint`` changes in the client (what mptcpd or NetworkManager would do
    for a native MPTCP host when its addresses change)."""
    r = subprocess.run(["ip", "-n", run.topo.client, "-batch", "-"],
                       input="".join(f"mptcp endpoint {c}\n" for c in cmds), text=True,
                       capture_output=True, timeout=10)
    if r.returncode:
        run.warnings.append(f"ip mptcp endpoint: {r.stderr.strip()}")


class Blackhole(Kind):
    name = "blackhole"
    help = "path of c0 dies upstream, link up"
    describe = """\
  blackhole  at --at the router drops every packet of path c0 both ways (the links stay
         up: no event reaches the client); with --seconds N the path comes back after N s.
         mptcp-proxy --subflows backup (a backup subflow on c1 is ready; --proxy-subflows
         manual: none, the proxy must open one). --native: endpoints as for make (the
         kernel's stale-subflow logic); --plain: plain TCP over c0."""

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--seconds", type=float, default=None, metavar="N",
                       help="blackhole, outage: the path (outage: every path) comes back "
                            "after N s (outage default 30; blackhole default: never)")

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        return {"trigger": "router drops path c0", "seconds": a.seconds}

    def act(self, run: Run) -> dict[str, Any]:
        t = time.monotonic()
        run.emu.loss(0, 1.0, "both")
        info: dict[str, Any] = {"path": "c0 blackholed", "t": t}
        if run.a.seconds:
            time.sleep(max(0.0, t + run.a.seconds - time.monotonic()))
            info["t_return"] = time.monotonic()
            run.emu.loss(0, 0.0, "both")
        return info


class Readdress(Kind):
    name = "readdress"
    help = "c0's address replaced (DHCP)"
    describe = f"""\
  readdress  at --at the client's address on c0 is replaced by another of the same
         network ({NEW_ADDR}; IPv6 {NEW_ADDR6}), as a new DHCP lease or SLAAC address:
         --order add-first (the new address appears, the old one goes --readdress-gap s
         later) or remove-first; the default route is put back as a DHCP client does.
         --native: the endpoints follow the addresses (as mptcpd would)."""

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--order", choices=("add-first", "remove-first"), default="add-first",
                       help="readdress: which comes first (default add-first)")
        p.add_argument("--readdress-gap", type=float, default=0.5, metavar="S",
                       help="readdress: seconds between the two address events (default 0.5)")

    def title(self, a: argparse.Namespace) -> str:
        return f"address replaced ({a.order})"

    def setup_bed(self, run: Run) -> None:
        # as systemd sets it everywhere: deleting the primary address keeps the others
        run.topo.sysctl(run.topo.client, "net.ipv4.conf.all.promote_secondaries", 1)
        run.topo.sysctl(run.topo.client, "net.ipv4.conf.c0.promote_secondaries", 1)

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        return {"trigger": f"address replaced, {a.order}", "gap_s": a.readdress_gap}

    def act(self, run: Run) -> dict[str, Any]:
        v6 = run.a.ipv6
        topo = run.topo
        old, new, plen = ((topo.client_addrs6[0], NEW_ADDR6, "64") if v6
                          else (topo.client_addrs[0], NEW_ADDR, "24"))
        gw = topo.client_gateways6[0] if v6 else topo.client_gateways[0]
        fam = "-6" if v6 else "-4"
        route = (fam, "route", "replace", "default", "via", gw, "dev", "c0")
        add = [("addr", "add", f"{new}/{plen}", "dev", "c0", *(["nodad"] if v6 else [])),
               route]
        remove = [("addr", "del", f"{old}/{plen}", "dev", "c0")]
        if run.a.order == "add-first":
            first, second = add, remove + [route]
        else:
            first, second = remove, add
        native = run.client_stack.name == "native"
        t = time.monotonic()
        for cmd in first:
            _ip(run, *cmd)
        if native:
            _native_endpoints(run, *(["add", new, "dev", "c0", "id", "3", "subflow"]
                                     if first is add else ["delete", "id", "1"]))
        t_second = time.monotonic()
        time.sleep(max(0.0, t_second + run.a.readdress_gap - time.monotonic()))
        for cmd in second:
            _ip(run, *cmd)
        if native:
            _native_endpoints(run, *(["delete", "id", "1"] if first is add
                                     else ["add", new, "dev", "c0", "id", "3", "subflow"]))
        return {"address": f"{old} -> {new}", "t": t}


class Outage(Kind):
    name = "outage"
    help = "every path down for --seconds"
    describe = """\
  outage at --at both client links go down (both veth ends: the client sees the links
         go), --seconds N later (default 30) both come back. mptcp-proxy --subflows
         backup; --native: endpoints as for make; --plain: plain TCP."""

    def title(self, a: argparse.Namespace) -> str:
        return f"outage of {a.seconds or 30:g} s"

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        return {"trigger": "links c0 and c1 down", "seconds": a.seconds or 30.0}

    def act(self, run: Run) -> dict[str, Any]:
        seconds = run.a.seconds or 30.0
        t = time.monotonic()
        run.emu.down(1)
        run.emu.down(0)
        time.sleep(max(0.0, t + seconds - time.monotonic()))
        run.emu.up(0)
        t_return = time.monotonic()  # (c0 is up and routed again: the path is back)
        run.emu.up(1)
        return {"links": "c0, c1 down", "t": t, "t_return": t_return}


class Hotplug(Kind):
    name = "hotplug"
    help = "interface c1 appears mid-transfer"
    describe = """\
  hotplug  link c1 does not exist when the transfer starts (the proxy is told to use
         it all the same); at --at it is plugged in (veth created, addressed, routed).
         Reports when the proxy's subflow there was established. --native: an endpoint
         for c1 is added when it appears (as mptcpd would)."""

    capture_ifaces = ("c0",)

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        return {"trigger": "link c1 created"}

    def setup_bed(self, run: Run) -> None:
        run.topo.remove_client_link(1)

    def act(self, run: Run) -> dict[str, Any]:
        t = time.monotonic()
        run.topo.add_client_link(1)
        run.emu.rate(1, run.a.rate_mbit)  # (the new devices have no qdisc yet)
        info: dict[str, Any] = {"link": "c1 created", "t": t}
        if run.client_stack.name == "native":
            _native_endpoints(run, "add", run.topo.client_addrs[1], "dev", "c1", "id", "2",
                              "subflow")
        deadline = t + 10.0
        while time.monotonic() < deadline:
            if run.client_stack.path_ready(run, "c1", run.s_before):
                info["subflow_up_s"] = round(time.monotonic() - t, 4)
                break
            time.sleep(0.02)
        else:
            run.warnings.append("no subflow on c1 within 10 s of its appearance")
        return info


register(Blackhole())
register(Readdress())
register(Outage())
register(Hotplug())
