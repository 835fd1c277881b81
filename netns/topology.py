"""Client — router — server test bed in three network namespaces (pyroute2).

Layout (``N = client_links``, ``M = server_links``)::

    client ns  mpx-c-<tag>          router ns  mpx-r-<tag>          server ns  mpx-s-<tag>
      c0  10.0.1.1/24  fd00:1::1  ──  rc0 10.0.1.254 fd00:1::fe
      c1  10.0.2.1/24  fd00:2::1  ──  rc1 10.0.2.254 fd00:2::fe
      ...                              rs0 10.0.101.254 fd00:101::fe ── s0 10.0.101.1/24 fd00:101::1
                                       rs1 10.0.102.254 ...          ── s1 10.0.102.1/24 ...

- The router forwards IPv4 and IPv6.
- Client: main-table default via link 0; for every link ``i`` a table ``100+i`` with a default
  route via ``rc<i>`` and rules ``from <addr_i> lookup 100+i`` (v4 and v6), so a packet whose
  source address is link ``i``'s leaves by link ``i`` (policy routing by source address).
- Server: default via ``s0``; extra server links get the same per-source policy routing.
- Everywhere: ``lo`` up, ``net.mptcp.enabled=1``, ``rp_filter=0`` (``client_rp_filter`` to
  change it on the client), no IPv6 DAD, ``keep_addr_on_down=1`` (so a link taken down and up
  keeps its addresses; :meth:`Topology.apply_routes` puts the routes back).
- Server MPTCP limits: ``subflows 8 add_addr_accepted 8``.

Every process started through :meth:`Topology.popen` is tracked and killed (by PID: SIGTERM,
then SIGKILL) on :meth:`Topology.close`, which also kills any other process still inside the
three namespaces and deletes them. ``close`` runs on ``__exit__``, when :meth:`start` fails
half way, at interpreter exit (``atexit``), and :func:`reap_stale` removes what a killed run
left behind (namespaces whose creating process is gone).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any, Callable, Mapping, Sequence

from pyroute2 import MPTCP, IPRoute
from pyroute2 import netns as pr_netns

__all__ = [
    "Topology",
    "CommandError",
    "reap_stale",
    "ns_pids",
    "REPO_ROOT",
    "python_argv",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
NETNS_DIR = Path("/run/netns")
STATE_DIR = Path("/run/mptcp-proxy-netns")
PREFIX = "mpx"
CLIENT_TABLE_BASE = 100
RULE_PRIO_BASE = 1000
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40

# Sysctls set in every namespace before any link exists, so new links inherit "default".
_COMMON_SYSCTLS = {
    "net.mptcp.enabled": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
    "net.ipv6.conf.all.keep_addr_on_down": 1,
    "net.ipv6.conf.default.keep_addr_on_down": 1,
    "net.ipv6.conf.default.accept_ra": 0,
}
_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
}


class CommandError(subprocess.CalledProcessError):
    """A command run in a namespace failed; ``str()`` includes the end of its stderr."""

    def __str__(self) -> str:
        tail = self.stderr or ""
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        return f"{super().__str__()}: {tail.strip()[-2000:]}"


def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Poll ``pred()`` every ``step`` s until it is truthy or ``timeout`` s passed;
    returns its last value (so a falsy result means: timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def python_argv(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter (the venv's)."""
    return [sys.executable, "-m", module, *map(str, args)]


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Environment for children: the given one (or ours) with the checkout on PYTHONPATH."""
    out = dict(os.environ if env is None else env)
    path = out.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    return out


def _ns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def ns_pids(names: Sequence[str]) -> list[int]:
    """PIDs of every process whose network namespace is one of ``names`` (by nsfs inode)."""
    wanted = {ino for ino in map(_ns_inode, names) if ino is not None}
    if not wanted:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            pids.append(int(entry))
    return pids


def _proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _kill_pids(pids: Sequence[int], timeout: float = 2.0) -> None:
    """SIGKILL each PID and wait (polling /proc) until they are gone or ``timeout`` s passed."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap if it happens to be our child
            except ChildProcessError:
                pass
            state = None
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                pass
            if state is not None and state != "Z":
                alive.append(pid)
        if not alive:
            return
        pids = alive
        time.sleep(0.02)


def _remove_namespaces(names: Sequence[str]) -> None:
    pids = ns_pids(names)
    if pids:
        _kill_pids(pids)
    for name in names:
        if (NETNS_DIR / name).exists():
            try:
                pr_netns.remove(name)
            except OSError:
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def reap_stale() -> list[str]:
    """Delete namespaces left by test beds whose creating process no longer exists.

    Returns the names removed. Beds of live processes (e.g. a parallel test run) are kept.
    """
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for state_file in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state_file.unlink(missing_ok=True)
            continue
        if _proc_start_time(state.get("pid", -1)) == state.get("start"):
            continue
        names = [n for n in state.get("namespaces", []) if (NETNS_DIR / n).exists()]
        _remove_namespaces(names)
        removed.extend(names)
        state_file.unlink(missing_ok=True)
    return removed


_LIVE: dict[int, "Topology"] = {}
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _LIVE_LOCK:
        beds = list(_LIVE.values())
    for bed in beds:
        if bed._owner_pid == os.getpid():  # never from a forked child (pyroute2 forks)
            bed.close()


class Topology:
    """Client/router/server namespaces joined by veth links; a context manager.

    Parameters:
        client_links: number of client links ``c0..c{N-1}`` (1..99).
        server_links: number of server links ``s0..s{M-1}`` (1..99).
        ipv6: also configure the IPv6 addresses, routes and rules (dual stack).
        tag: suffix of the namespace names (random 6 hex digits by default).
        offloads: when False, turn TSO/GSO/GRO off (ethtool) on every veth.
        checksum_offload: when False, turn TX checksum offload off on every veth, so every
            packet on the wire carries its final checksum (else locally sent packets carry a
            partial one; see ``netns.capture``).
        client_rp_filter: ``rp_filter`` for the client namespace (0 off, 1 strict, 2 loose).
        client_policy_routing: when False, the client has no per-link tables and source
            rules: one default route per link in the main table (metric ``100 + i``), as a
            host with DHCP on every link has (the proxy then sets up its own).

    Attributes (after :meth:`start`): ``client``, ``router``, ``server`` (namespace names),
    ``client_ifaces`` (``['c0', 'c1', ...]``), ``router_client_ifaces`` (``['rc0', ...]``),
    ``server_ifaces``, ``router_server_ifaces``, ``client_addrs``/``client_addrs6`` (per link),
    ``client_gateways``/``client_gateways6``, ``server_addr``/``server_addr6`` (link 0),
    ``server_addrs``/``server_addrs6`` (all links).
    """

    def __init__(
        self,
        client_links: int = 2,
        server_links: int = 1,
        ipv6: bool = True,
        tag: str | None = None,
        offloads: bool = True,
        checksum_offload: bool = True,
        client_rp_filter: int = 0,
        client_policy_routing: bool = True,
    ) -> None:
        if not (1 <= client_links <= 99 and 1 <= server_links <= 99):
            raise ValueError("client_links and server_links must be in 1..99")
        self.tag = tag or secrets.token_hex(3)
        self.ipv6 = ipv6
        self.offloads = offloads
        self.checksum_offload = checksum_offload
        self.client_rp_filter = client_rp_filter
        self.client_policy_routing = client_policy_routing
        self.absent_client_links: set[int] = set()  # links removed by remove_client_link
        self.client = f"{PREFIX}-c-{self.tag}"
        self.router = f"{PREFIX}-r-{self.tag}"
        self.server = f"{PREFIX}-s-{self.tag}"
        self.namespaces = (self.client, self.router, self.server)
        self.client_ifaces = [f"c{i}" for i in range(client_links)]
        self.router_client_ifaces = [f"rc{i}" for i in range(client_links)]
        self.server_ifaces = [f"s{j}" for j in range(server_links)]
        self.router_server_ifaces = [f"rs{j}" for j in range(server_links)]
        self.client_addrs = [f"10.0.{i + 1}.1" for i in range(client_links)]
        self.client_gateways = [f"10.0.{i + 1}.254" for i in range(client_links)]
        self.client_addrs6 = [f"fd00:{i + 1}::1" for i in range(client_links)]
        self.client_gateways6 = [f"fd00:{i + 1}::fe" for i in range(client_links)]
        self.server_addrs = [f"10.0.{101 + j}.1" for j in range(server_links)]
        self.server_gateways = [f"10.0.{101 + j}.254" for j in range(server_links)]
        self.server_addrs6 = [f"fd00:{101 + j}::1" for j in range(server_links)]
        self.server_gateways6 = [f"fd00:{101 + j}::fe" for j in range(server_links)]
        self.server_addr = self.server_addrs[0]
        self.server_addr6 = self.server_addrs6[0]
        self._created: list[str] = []  # namespaces this bed made (only those are deleted)
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._owner_pid = os.getpid()
        self._state_file = STATE_DIR / f"{self.tag}.json"

    # ---------------------------------------------------------------- life cycle

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "Topology":
        """Build the namespaces, links, addresses, routes and rules; returns ``self``.

        On any failure everything built so far is removed before the exception propagates.
        """
        if self._started:
            return self
        self._started = True
        self._owner_pid = os.getpid()
        with _LIVE_LOCK:
            _LIVE[id(self)] = self
        try:
            for name in self.namespaces:
                if (NETNS_DIR / name).exists():
                    raise FileExistsError(f"namespace {name} already exists")
                self._created.append(name)
                self._write_state()
                pr_netns.create(name)
            self.sysctls(self.client, {**_COMMON_SYSCTLS, **self._rp(self.client_rp_filter)})
            self.sysctls(self.router, {**_COMMON_SYSCTLS, **_ROUTER_SYSCTLS})
            self.sysctls(self.server, _COMMON_SYSCTLS)
            self._build_links()
            if self.ipv6:
                self._wait_ipv6_ready()
            self.apply_routes()
            self.mptcp_limits(self.server, subflows=8, add_addr_accepted=8)
            if not self.offloads:
                self.set_offloads(False)
            if not self.checksum_offload:
                self.ethtool({"tx": "off"})
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _rp(value: int) -> dict[str, int]:
        return {"net.ipv4.conf.all.rp_filter": value, "net.ipv4.conf.default.rp_filter": value}

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        state = {"pid": pid, "start": _proc_start_time(pid), "namespaces": self._created}
        self._state_file.write_text(json.dumps(state))

    def close(self, timeout: float = 3.0) -> None:
        """Kill tracked processes (SIGTERM, SIGKILL after ``timeout`` s), then any process left
        in the namespaces, then delete the namespaces. Idempotent; never raises."""
        if self._closed or self._owner_pid != os.getpid():
            return
        self._closed = True
        try:
            self.kill_processes(timeout)
        finally:
            try:
                _remove_namespaces(self._created)
            finally:
                if self._started:  # an attached (never started) bed owns no state file
                    self._state_file.unlink(missing_ok=True)
                with _LIVE_LOCK:
                    _LIVE.pop(id(self), None)

    def kill_processes(self, timeout: float = 3.0) -> None:
        """Stop every process started through :meth:`popen`: SIGTERM to its process group,
        SIGKILL to what is left after ``timeout`` seconds."""
        with self._lock:
            procs, self._procs = self._procs, []
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
        for proc in procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        """Signal ``proc``'s own process group if it leads one, else the process only."""
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ---------------------------------------------------------------- building

    def ns(self, role: str) -> str:
        """Namespace name for ``role`` ('client', 'router', 'server'), or ``role`` itself."""
        return {"client": self.client, "router": self.router, "server": self.server}.get(
            role, role
        )

    def iproute(self, ns: str) -> IPRoute:
        """A pyroute2 ``IPRoute`` bound to namespace ``ns`` (close it, or use ``with``)."""
        return IPRoute(netns=self.ns(ns), flags=0)

    def _build_links(self) -> None:
        pairs = [
            (self.client, ifc, ifr, addr, gw, addr6, gw6)
            for ifc, ifr, addr, gw, addr6, gw6 in zip(
                self.client_ifaces, self.router_client_ifaces, self.client_addrs,
                self.client_gateways, self.client_addrs6, self.client_gateways6)
        ] + [
            (self.server, ifs, ifr, addr, gw, addr6, gw6)
            for ifs, ifr, addr, gw, addr6, gw6 in zip(
                self.server_ifaces, self.router_server_ifaces, self.server_addrs,
                self.server_gateways, self.server_addrs6, self.server_gateways6)
        ]
        with self.iproute(self.router) as rtr:
            self._lo_up(rtr)
            for ns in (self.client, self.server):
                with self.iproute(ns) as ipr:
                    self._lo_up(ipr)
                    for k, (owner, ifname, peer, addr, gw, addr6, gw6) in enumerate(pairs):
                        if owner != ns:
                            continue
                        # ifindex 10+k here, while the router's ends count from 2: a veth
                        # whose ifindex equals its peer's (iflink) gets its carrier events
                        # batched by linkwatch (up to 1 s), which leaves IPv6 addresses
                        # tentative (NS unanswered, first SYN lost) for that long.
                        ipr.link("add", ifname=ifname, kind="veth", index=10 + k,
                                 peer={"ifname": peer, "net_ns_fd": self.router})
                        self._addr_up(ipr, ifname, addr, addr6)
                        self._addr_up(rtr, peer, gw, gw6)

    def _lo_up(self, ipr: IPRoute) -> None:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _addr_up(self, ipr: IPRoute, ifname: str, addr: str, addr6: str) -> None:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=24)
        if self.ipv6:
            ipr.addr("add", index=idx, address=addr6, prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=idx, state="up")

    def _wait_ipv6_ready(self, timeout: float = 3.0) -> None:
        """Poll until no IPv6 address of the bed is tentative and every veth has its
        link-local address (normally at once; see the ifindex note in _build_links)."""
        deadline = time.monotonic() + timeout
        for ns in self.namespaces:
            with self.iproute(ns) as ipr:
                veths = {link["index"] for link in ipr.get_links()
                         if link.get_attr("IFLA_IFNAME") != "lo"}
                while True:
                    addrs = ipr.get_addr(family=AF_INET6)
                    ready = not any((a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE
                                    for a in addrs)
                    lladdr = {a["index"] for a in addrs
                              if a.get_attr("IFA_ADDRESS", "").startswith("fe80:")}
                    if ready and veths <= lladdr:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"IPv6 addresses in {ns} still tentative")
                    time.sleep(0.01)

    def apply_routes(self) -> None:
        """(Re)install the default routes, per-link tables and source rules of the client and
        the server. Idempotent: call it after taking a link down and up (which flushes the
        routes through that link)."""
        for ns, ifaces, addrs, gws, addrs6, gws6 in (
            (self.client, self.client_ifaces, self.client_addrs, self.client_gateways,
             self.client_addrs6, self.client_gateways6),
            (self.server, self.server_ifaces, self.server_addrs, self.server_gateways,
             self.server_addrs6, self.server_gateways6),
        ):
            client = ns == self.client
            policy = (client and self.client_policy_routing) or (not client and len(ifaces) > 1)
            with self.iproute(ns) as ipr:
                for i, ifname in enumerate(ifaces):
                    found = ipr.link_lookup(ifname=ifname)
                    if not found or (client and i in self.absent_client_links):
                        continue
                    idx = found[0]
                    if not ipr.get_links(idx)[0]["flags"] & 1:
                        continue  # (down: its routes come back with it)
                    families = [(AF_INET, addrs[i], gws[i], "0.0.0.0/0", 32)]
                    if self.ipv6:
                        families.append((AF_INET6, addrs6[i], gws6[i], "::/0", 128))
                    for family, addr, gw, default, hostlen in families:
                        if client and not self.client_policy_routing:
                            self._route(ipr, family, default, gw, idx, 254, metric=100 + i)
                        elif i == 0:
                            self._route(ipr, family, default, gw, idx, 254)
                        if policy:
                            table = CLIENT_TABLE_BASE + i
                            self._route(ipr, family, default, gw, idx, table)
                            self._rule(ipr, family, addr, hostlen, table)

    @staticmethod
    def _route(ipr: IPRoute, family: int, dst: str, gw: str, oif: int, table: int,
               metric: int | None = None) -> None:
        kw = {} if metric is None else {"priority": metric}
        ipr.route("replace", family=family, dst=dst, gateway=gw, oif=oif, table=table, **kw)

    def remove_client_link(self, i: int) -> None:
        """Delete client link ``i`` (both veth ends: an interface unplugged); its routes and
        rules go with it. :meth:`add_client_link` makes it again."""
        with self.iproute(self.client) as ipr:
            idx = ipr.link_lookup(ifname=self.client_ifaces[i])
            if idx:
                ipr.link("del", index=idx[0])
        self.absent_client_links.add(i)

    def add_client_link(self, i: int, addr: str | None = None) -> None:
        """(Re)create client link ``i`` with its addresses (``addr`` instead of the bed's
        IPv4 address, in the same /24), routes and rules (an interface plugged in)."""
        ifc, ifr = self.client_ifaces[i], self.router_client_ifaces[i]
        with self.iproute(self.client) as ipr, self.iproute(self.router) as rtr:
            if not ipr.link_lookup(ifname=ifc):
                ipr.link("add", ifname=ifc, kind="veth", index=10 + i + 50,
                         peer={"ifname": ifr, "net_ns_fd": self.router})
            self._addr_up(ipr, ifc, addr or self.client_addrs[i], self.client_addrs6[i])
            self._addr_up(rtr, ifr, self.client_gateways[i], self.client_gateways6[i])
        self.absent_client_links.discard(i)
        if self.ipv6:
            self._wait_ipv6_ready()
        self.apply_routes()

    @staticmethod
    def _rule(ipr: IPRoute, family: int, src: str, src_len: int, table: int) -> None:
        prio = RULE_PRIO_BASE + table - CLIENT_TABLE_BASE
        for rule in ipr.get_rules(family=family):
            if rule.get("priority") == prio and rule.get("table") == table:
                return
        ipr.rule("add", family=family, table=table, priority=prio, src=src, src_len=src_len)

    def set_offloads(self, on: bool, ifaces: Sequence[tuple[str, str]] | None = None) -> None:
        """Turn TSO/GSO/GRO on or off on ``ifaces`` ([(ns, ifname)], default all veths)."""
        state = "on" if on else "off"
        self.ethtool({"tso": state, "gso": state, "gro": state}, ifaces)

    def ethtool(self, features: Mapping[str, str],
                ifaces: Sequence[tuple[str, str]] | None = None) -> None:
        """``ethtool -K IF feature on|off ...`` on ``ifaces`` (default all veths of the bed)."""
        args = [x for kv in features.items() for x in kv]
        for ns, ifname in self.all_links() if ifaces is None else ifaces:
            self.run(ns, ["ethtool", "-K", ifname, *args])

    def link_stats(self, ns: str, ifname: str) -> dict[str, int]:
        """Interface counters (IFLA_STATS64: ``rx_packets``, ``tx_packets``, ``rx_bytes``,
        ``tx_bytes``, ``rx_dropped``, ``tx_dropped`` ...) of ``ifname`` in ``ns``."""
        with self.iproute(ns) as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return dict(link.get("IFLA_STATS64"))

    def all_links(self) -> list[tuple[str, str]]:
        """Every veth end of the bed as ``(namespace, ifname)``."""
        return (
            [(self.client, i) for i in self.client_ifaces]
            + [(self.router, i) for i in self.router_client_ifaces + self.router_server_ifaces]
            + [(self.server, i) for i in self.server_ifaces]
        )

    # ---------------------------------------------------------------- MPTCP path manager

    def mptcp_limits(self, ns: str, subflows: int = 8, add_addr_accepted: int = 8) -> None:
        """``ip mptcp limits set subflows S add_addr_accepted A`` in ``ns`` (pyroute2 MPTCP)."""
        with MPTCP(netns=self.ns(ns), flags=0) as mp:
            mp.limits("set", subflows=subflows, add_addr_accepted=add_addr_accepted)

    def mptcp_endpoint(self, ns: str, addr: str, flags: int = 2, id: int | None = None) -> None:
        """Add an in-kernel PM endpoint in ``ns``: flags SIGNAL=1 SUBFLOW=2 BACKUP=4
        FULLMESH=8 (uapi values)."""
        kw: dict[str, Any] = {"flags": flags}
        kw["addr6" if ":" in addr else "addr"] = addr
        if id is not None:
            kw["id"] = id
        with MPTCP(netns=self.ns(ns), flags=0) as mp:
            mp.endpoint("add", **kw)

    # ---------------------------------------------------------------- processes

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` (``ip netns exec``) in a new session.

        The process is tracked and killed by :meth:`close`. ``kw`` goes to ``Popen``; the
        environment gets the checkout on ``PYTHONPATH`` so ``python -m netns.x`` works.
        """
        if self._closed:
            raise RuntimeError("topology is closed")
        kw.setdefault("start_new_session", True)
        kw["env"] = _child_env(kw.get("env"))
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *map(str, argv)], **kw)
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(
        self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 60.0,
        **kw: Any,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``ns`` to completion; output captured as text unless ``kw``
        says otherwise. Raises :class:`CommandError` (with stderr) when ``check`` and the
        exit status is non-zero, ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw["env"] = _child_env(kw.get("env"))
        cmd = ["ip", "netns", "exec", self.ns(ns), *map(str, argv)]
        res = subprocess.run(cmd, timeout=timeout, start_new_session=True, **kw)
        if check and res.returncode != 0:
            raise CommandError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def sysctl(self, ns: str, key: str, value: object) -> None:
        """``sysctl -w key=value`` inside ``ns``."""
        self.sysctls(ns, {key: value})

    def sysctls(self, ns: str, values: Mapping[str, object]) -> None:
        """Set several sysctls inside ``ns`` with one ``sysctl`` call."""
        self.run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])

    def __repr__(self) -> str:
        return (f"Topology(tag={self.tag!r}, client_links={len(self.client_ifaces)}, "
                f"server_links={len(self.server_ifaces)})")
