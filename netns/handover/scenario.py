"""One handover measurement on a bed of its own: the bed, the peers, the captures, the
handover at ``--at``, and what was observed (the report is :mod:`.report`'s work).

The bed: client links c0, c1 — router — server, each path ``--delay-ms`` one way and
``--rate-mbit`` both ways; the access router validates source addresses (rp_filter=1,
BCP 38). The transfer: one ``netns.peer`` connection from the client namespace to a native
MPTCP server, streaming ``--duration`` s in ``--direction``; the receiving side records
the time and size of every ``recv()`` (its read trace).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from typing import Any

from ..capture import capture
from ..emulation import Emulation
from ..nstat import read_counters
from ..peer import PeerError, PeerProcess, start_client, start_server
from ..topology import Topology
from .kinds import KINDS
from .stacks import STACKS, stack_name

__all__ = ["PORT", "Run", "clock_offset"]

PORT = 5201
PEER_TIMEOUT = 120.0  # socket timeout of the transfer's peers, s


def clock_offset() -> float:
    """Wall clock minus monotonic clock (pcap timestamps are wall clock)."""
    best = None
    for _ in range(5):
        a = time.monotonic()
        w = time.time()
        b = time.monotonic()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    return best[1]


def _sysctl(topo: Topology, ns: str, key: str) -> str:
    return topo.run(ns, ["sysctl", "-n", key], check=False).stdout.strip()


class Run:
    """One measurement: :meth:`execute` builds, measures and tears down; the attributes
    hold what was observed."""

    def __init__(self, a: argparse.Namespace, workdir: str, pcap_dir: str) -> None:
        self.a = a
        self.kind = KINDS[a.kind]
        self.client_stack = STACKS[stack_name(a)]
        self.subflows = a.proxy_subflows or self.kind.proxy_subflows(a)
        self.warnings: list[str] = []
        self.traces = {role: os.path.join(workdir, f"{role}.trace")
                       for role in ("server", "client")}
        self.pcaps = {i: os.path.join(pcap_dir, f"{i}.pcap")
                      for i in getattr(self.kind, "capture_ifaces", ("c0", "c1"))}
        self.offset = clock_offset()
        self.stack = contextlib.ExitStack()
        self.topo: Topology | Any = None
        self.emu: Emulation | Any = None
        self.px: Any = None
        self.cid: int | None = None
        self.proxy_before: dict[str, int] = {}
        self.proxy_stats: dict[str, int] | None = None
        self.proxy_connections: list | None = None
        self.cc: dict[str, str] = {}
        self.t0 = self.t_h = 0.0
        self.handover: dict[str, Any] = {}
        self.c_before = self.s_before = self.c_after = self.s_after = {}
        self.server_rec: dict[str, Any] = {}
        self.client_rec: dict[str, Any] = {}

    # ------------------------------------------------------------------ the run
    def execute(self) -> None:
        with self.stack:
            self._bed()
            self.kind.setup_bed(self)
            self.client_stack.prepare(self)
            srv = start_server(self.topo, PORT, mptcp=True,
                               bind="::" if self.a.ipv6 else "0.0.0.0", count=1,
                               timeout=PEER_TIMEOUT,
                               extra=["--trace", self.traces["server"]])
            self.stack.callback(srv.stop)
            for iface, path in self.pcaps.items():
                self.stack.enter_context(capture(self.topo, self.topo.client, iface, path,
                                                 filter=f"tcp port {PORT}", snaplen=200))
            self.client_stack.start(self)
            self.c_before = read_counters(self.topo.client)
            self.s_before = read_counters(self.topo.server)
            cli = start_client(self.topo, self._client_args())
            self.stack.callback(cli.stop)
            self._transfer(srv, cli)
        self.client_stack.stop(self)

    def _client_args(self) -> list[Any]:
        a = self.a
        server = self.topo.server_addr6 if a.ipv6 else self.topo.server_addr
        args: list[Any] = ["--addr", server, "--port", PORT, "--seed", 1,
                           "--timeout", PEER_TIMEOUT, "--events", "--hold",
                           "--trace", self.traces["client"]]
        args += (["--download-seconds", a.duration] if a.direction == "down"
                 else ["--upload-seconds", a.duration])
        if self.client_stack.mptcp_client:
            args.append("--mptcp")
        return args

    def _transfer(self, srv: PeerProcess, cli: PeerProcess) -> None:
        self.t0 = cli.expect("connected", 20)["t"]
        self.client_stack.connected(self)
        self.kind.prepare(self)
        delay = self.t0 + self.a.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        act = self.kind.act(self)
        self.t_h = act.pop("t")
        self.handover = {"at_s": round(self.t_h - self.t0, 4), **act,
                         "action_s": round(time.monotonic() - self.t_h, 4)}
        limit = self.t0 + self.a.duration + self.a.grace
        self.client_rec = self._record("client", cli, limit)
        self.server_rec = self._record("server", srv, limit)
        self.c_after = read_counters(self.topo.client)
        self.s_after = read_counters(self.topo.server)
        self.client_stack.finish(self)

    def _record(self, role: str, peer: PeerProcess, limit: float) -> dict[str, Any]:
        """The peer's record once it finished, or after ``limit`` (monotonic) a partial
        one: the peer is stopped and reports what it had."""
        try:
            peer.proc.wait(max(1.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.warnings.append(f"transfer not finished {self.a.duration + self.a.grace:g} s "
                                 f"after the start: {role} stopped (partial results)")
            peer.stop(5.0)
        peer.stop(5.0)
        try:
            return peer.record(2.0)
        except PeerError as exc:
            return {"error": f"no record from the {role}: {exc}"}

    # ------------------------------------------------------------------ the bed
    def _bed(self) -> None:
        a = self.a
        self.topo = self.stack.enter_context(
            Topology(client_links=2, server_links=1, ipv6=a.ipv6, offloads=False,
                     client_policy_routing=not a.no_user_routing))
        topo = self.topo
        self.emu = self.stack.enter_context(Emulation(topo))
        for link in (0, 1):
            self.emu.delay(link, a.delay_ms)
            self.emu.rate(link, a.rate_mbit)
        if not a.sack:
            topo.sysctl(topo.client, "net.ipv4.tcp_sack", 0)
        # source address validation at the access router (BCP 38): a packet that leaves by
        # the wrong link with its old source address is dropped, as a real access network
        # would, instead of keeping a "dead" path alive
        topo.sysctl(topo.router, "net.ipv4.conf.all.rp_filter", 1)
        if a.fallback_route:
            topo.run(topo.client, ["ip", "route", "add", "default", "via",
                                   topo.client_gateways[1], "dev", "c1", "metric", "100"])
        if a.cc:
            self._congestion_control(a.cc)
        self.cc = {"server": _sysctl(topo, topo.server, "net.ipv4.tcp_congestion_control"),
                   "client": _sysctl(topo, topo.client, "net.ipv4.tcp_congestion_control")}

    def _congestion_control(self, cc: str) -> None:
        topo = self.topo
        allowed = _sysctl(topo, topo.client, "net.ipv4.tcp_allowed_congestion_control").split()
        if cc not in allowed:
            raise SystemExit(f"tools/handover: --cc {cc}: a namespace may only use "
                             f"{' '.join(allowed)} (net.ipv4.tcp_allowed_congestion_control"
                             " of the host)")
        for ns in (topo.client, topo.server):
            topo.sysctl(ns, "net.ipv4.tcp_congestion_control", cc)
