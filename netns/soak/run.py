"""One soak run: the bed, the daemon, the peers and the watchers, from start to teardown.
What was observed is kept on the :class:`Soak` for :mod:`.verdict`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from ..emulation import Emulation
from ..nstat import diff, mptcp_counters
from ..peer import PeerProcess, ServerHandle, start_client, start_server
from ..proxyd import ProxyHandle, start_proxy
from ..topology import Topology
from .monitor import Handovers, Progress, RssSampler

__all__ = ["PORT", "Soak", "log"]

PORT = 5301
MAX_SNAPSHOTS = 10  # stalled connections described in the report


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Soak:
    """The run of ``tools/soak`` with arguments ``a`` (see :mod:`netns.soak.cli`)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.seconds = a.seconds
        self.warmup = a.warmup
        self.rate = a.rate_kbit * 1000 / 8  # bytes/s per connection and direction
        self.peer_timeout = max(60.0, 3 * a.stall_limit)
        self.down = Progress("down", a.stall_limit)   # the client's view
        self.up = Progress("up", a.stall_limit)       # the server's view
        self.topo: Topology | Any = None
        self.px: ProxyHandle | Any = None
        self.pid = 0
        self.rss: RssSampler | Any = None
        self.handovers: Handovers | Any = None
        self.t_start = self.t_end = 0.0
        self.client_recs: list[dict[str, Any]] = []
        self.server_recs: list[dict[str, Any]] = []
        self.server_delta: dict[str, int] = {}
        self.proxy_delta: dict[str, int] = {}
        self.daemon: dict[str, Any] = {}
        self.problems: list[str] = []   # what went wrong with the run itself
        self.snapshots: list[dict[str, Any]] = []
        self.namespaces: list[str] = []

    # ------------------------------------------------------------------ the run
    def execute(self) -> None:
        with contextlib.ExitStack() as stack:
            self._bed(stack)
            srv = start_server(self.topo, PORT, mptcp=True, bind="0.0.0.0",
                               timeout=self.peer_timeout, on_progress=self.up,
                               extra=["--progress", self.a.progress])
            stack.callback(srv.stop)
            self.px = start_proxy(self.topo, extra=["--subflows", "backup",
                                                    "--log-level", "warning"])
            stack.callback(self.px.stop)
            self.pid = self.px.pid()
            s0, p0 = mptcp_counters(self.topo.server), self.px.stats()
            self._traffic(stack, srv)
            self.server_delta = diff(s0, mptcp_counters(self.topo.server))
            self.proxy_delta = diff(p0, self.px.stats())
            self._stop_daemon()

    def _bed(self, stack: contextlib.ExitStack) -> None:
        self.topo = stack.enter_context(Topology(client_links=2, server_links=1, ipv6=False))
        topo = self.topo
        self.namespaces = list(topo.namespaces)
        topo.sysctls(topo.client, {"net.ipv4.ip_local_port_range": "1024 65535"})
        topo.sysctls(topo.server, {"net.core.somaxconn": 65535,
                                   "net.ipv4.tcp_max_syn_backlog": 65535})
        if self.a.delay_ms or self.a.rate_mbit:
            emu = stack.enter_context(Emulation(topo))
            for link in (0, 1):
                if self.a.delay_ms:
                    emu.delay(link, self.a.delay_ms)
                if self.a.rate_mbit:
                    emu.rate(link, self.a.rate_mbit)

    def _client_args(self) -> list[Any]:
        a = self.a
        return ["--addr", self.topo.server_addr, "--port", PORT, "--conns", a.connections,
                "--stagger", a.stagger, "--seed", 1, "--timeout", self.peer_timeout,
                "--upload-seconds", self.seconds, "--download-seconds", self.seconds,
                "--upload-rate", self.rate, "--download-rate", self.rate,
                "--progress", a.progress, "--events"]

    def _traffic(self, stack: contextlib.ExitStack, srv: ServerHandle) -> None:
        a = self.a
        self.t_start = time.monotonic()
        cli = start_client(self.topo, self._client_args(), on_progress=self.down)
        stack.callback(cli.stop)
        self.rss = RssSampler(self.px, self.pid, a.rss_every).start()
        self.handovers = Handovers(self.px, self.topo.client_ifaces, a.handover_every,
                                   until=self.t_start + self.seconds - 1.0).start()
        try:
            self._wait(cli)
        finally:
            self.handovers.stop()
            self.rss.stop()
        self.t_end = time.monotonic()
        self.client_recs = cli.results()
        self.server_recs = srv.wait(a.connections, timeout=30)

    def _wait(self, cli: PeerProcess) -> None:
        """Until the client exits (or must be stopped), logging progress every minute."""
        limit = (self.t_start + self.seconds + self.a.connections * self.a.stagger
                 + self.peer_timeout + 30)
        next_log = time.monotonic() + 60
        while cli.proc.poll() is None:
            if self.px.proc.poll() is not None:
                self.problems.append(f"the daemon exited with code {self.px.proc.poll()} "
                                     "during the run")
                break
            if time.monotonic() > limit:
                self.problems.append("the client did not finish in time: stopped")
                break
            if time.monotonic() >= next_log:
                next_log += 60
                self._log_progress()
            self._snapshot_stalls(cli)
            time.sleep(0.5)
        cli.stop(10.0)

    def _snapshot_stalls(self, cli: PeerProcess) -> None:
        """For a connection that just went silent too long (the first few), what the
        proxy and both stacks say about it at that moment."""
        for p in (self.down, self.up):
            for seed in p.take_new_stalls():
                if len(self.snapshots) < MAX_SNAPSHOTS:
                    self.snapshots.append(self._snapshot(cli, seed, p.direction))

    def _snapshot(self, cli: PeerProcess, seed: int, direction: str) -> dict[str, Any]:
        snap: dict[str, Any] = {"seed": seed, "direction": direction,
                                "t_s": round(time.monotonic() - self.t_start, 1)}
        try:
            local = next(e["local"] for e in cli.events
                         if e.get("event") == "connected" and e.get("seed") == seed)
            conn = next(c for c in self.px.query("connections") if c["local"] == local)
            snap["proxy"] = conn
            snap["subflows"] = self.px.query("subflows", conn=conn["id"])
            snap["client_ss"] = self._ss(self.topo.client, "src", local)
            snap["server_ss"] = [self._ss(self.topo.server, "dst", sf["local"])
                                 for sf in snap["subflows"]]
        except Exception as exc:  # diagnostics only
            snap["error"] = f"{type(exc).__name__}: {exc}"
        log(f"connection seed {seed}: no {direction}load byte for {self.a.stall_limit:g} s: "
            f"{snap.get('proxy', snap.get('error'))}")
        return snap

    def _ss(self, ns: str, which: str, endpoint: str) -> str:
        return self.topo.run(ns, ["ss", "-tinH", which, endpoint], check=False,
                             timeout=10).stdout.strip()

    def _log_progress(self) -> None:
        rss = self.rss.samples[-1] if self.rss.samples else [0, 0, 0]
        log(f"{time.monotonic() - self.t_start:.0f} s: {rss[2]} connections in the daemon, "
            f"RSS {rss[1] / 1024:.1f} MiB, {len(self.handovers.log)} handovers, "
            f"longest silence down {self.down.max_idle:.2f} s / up {self.up.max_idle:.2f} s")

    def _stop_daemon(self) -> None:
        px = self.px
        dead = px.proc.poll()
        code = px.stop()
        self.daemon = {"exit_code": code, "exited_early": dead is not None,
                       "rules_left": px.rules_left,
                       "log_errors": [ln for ln in px.log if " ERROR " in ln
                                      or "Traceback" in ln][:20]}
