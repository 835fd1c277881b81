"""One bed of the benchmark: a topology (client with c0, c1 -> router -> server), the
peer server (plain TCP and MPTCP listeners) and agent, and the configuration's daemons."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from ..peer import AgentHandle, PeerError, ServerHandle, start_agent, start_server
from ..proxyd import ProxyHandle, start_proxy
from ..topology import Topology
from .configs import MPTCP_PORT, PLAIN_PORT, Daemon

__all__ = ["Bed", "BenchError", "log", "CLK_TCK"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


CLIENT_SYSCTLS = {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": 1,
                  "net.ipv4.tcp_no_metrics_save": 1}
SERVER_SYSCTLS = {"net.core.somaxconn": 65535, "net.ipv4.tcp_max_syn_backlog": 65535,
                  "net.ipv4.tcp_no_metrics_save": 1}


class Bed:
    """Topology, server, agent and ``daemons`` (started with ``proxy_extra`` appended)."""

    def __init__(self, name: str, daemons: tuple[Daemon, ...], proxy_extra: list[str]):
        self.name = name
        self.daemons = daemons
        self.proxy_extra = proxy_extra
        self.topo = Topology(client_links=2, server_links=1, ipv6=False)
        self.proxies: list[ProxyHandle] = []
        self.pids: list[int] = []
        self.server: ServerHandle | None = None
        self.agent: AgentHandle | None = None

    def build(self) -> None:
        """Namespaces and links (pyroute2 forks into the namespaces: done for every bed
        before any helper thread exists)."""
        self.topo.start()

    def start(self) -> None:
        topo = self.topo
        topo.sysctls(topo.client, CLIENT_SYSCTLS)
        topo.sysctls(topo.server, SERVER_SYSCTLS)
        try:
            self.server = start_server(topo, PLAIN_PORT, mptcp=False, bind="0.0.0.0",
                                       timeout=20, extra=["--listen", f"{MPTCP_PORT}:mptcp"])
        except (PeerError, TimeoutError) as exc:
            raise BenchError(f"{self.name}: server did not start: {exc}") from None
        self.start_agent()

    def start_agent(self) -> None:
        if self.agent is not None and self.agent.proc.poll() is None:
            self.agent.proc.kill()
        self.agent = start_agent(self.topo)

    def call(self, op: str, wait: float, **kw: Any) -> dict[str, Any]:
        """One agent command; on a hang the agent is replaced and BenchError raised."""
        assert self.agent is not None
        try:
            return self.agent.call(op, wait, **kw)
        except PeerError as exc:
            self.start_agent()
            raise BenchError(f"agent {op}: {exc}") from None

    # ---------------------------------------------------------------- daemons
    def start_daemon(self, wait: bool = True) -> None:
        self.proxies = [start_proxy(self.topo, self._ifaces(d),
                                    extra=[*d.args, *self.proxy_extra],
                                    ns=self.topo.ns(d.ns), ready=False)
                        for d in self.daemons]
        self.pids = []
        if wait:
            self.wait_daemon()

    def _ifaces(self, d: Daemon) -> list[str]:
        if d.ifaces is not None:
            return list(d.ifaces)
        links = {"client": self.topo.client_ifaces, "router": self.topo.router_client_ifaces,
                 "server": self.topo.server_ifaces}
        return list(links[d.ns])

    def wait_daemon(self) -> None:
        for px in self.proxies:
            try:
                px.wait_ready()
            except Exception:
                px.stop()
                raise
        self.pids = [px.pid() for px in self.proxies]

    def daemon_dead(self) -> str | None:
        """None while the daemons run, else a description of an exit."""
        for px in self.proxies:
            rc = px.proc.poll()
            if rc is not None:
                time.sleep(0.1)
                return f"daemon exited with code {rc}: " + " | ".join(px.log[-6:])
        return None

    def stop_daemon(self) -> str | None:
        """Stop the daemons; a description of any unclean exit, else None."""
        proxies, self.proxies = self.proxies, []
        problems = [p for p in (_stop(px) for px in proxies) if p]
        return "; ".join(problems) or None

    def restart_daemon(self) -> str | None:
        problem = self.stop_daemon()
        self.start_daemon()
        return problem

    def status(self) -> dict[str, Any]:
        """The first daemon's ``status`` (the mptcpctl protocol); ``packets`` summed over
        all the bed's daemons."""
        replies = [px.query("status") for px in self.proxies]
        if not replies:
            raise BenchError("no daemon in this bed")
        return {**replies[0], "packets": sum(r["packets"] for r in replies)}

    def cpu_ticks(self) -> tuple[int, int]:
        """(utime, stime) of the daemons, all threads (fields 14 and 15 of /proc/PID/stat)."""
        user = system = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        return user, system

    def rss_kb(self) -> int:
        return sum(px.rss_kb(pid) for px, pid in zip(self.proxies, self.pids))

    def close(self) -> None:
        try:
            if self.agent is not None and self.agent.proc.poll() is None:
                self.agent.close()
            self.stop_daemon()
        except Exception as exc:
            log(f"{self.name}: stopping the daemon failed: {exc!r}")
        finally:
            self.topo.close()


def _stop(px: ProxyHandle) -> str | None:
    dead = px.proc.poll()
    code = px.stop()
    problems = []
    if dead is not None:
        problems.append(f"had exited with code {dead} before the stop")
    elif code != 0:
        problems.append(f"exit code {code} on SIGTERM")
    if px.rules_left:
        problems.append(f"{px.rules_left} MPTCP_PROXY rule(s) left")
    if problems:
        return "daemon " + ", ".join(problems) + ": " + " | ".join(px.log[-4:])
    return None

