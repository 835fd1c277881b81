"""Who runs the client side of a handover measurement: ``mptcp-proxy`` in front of a plain
TCP client (``proxy``), or a native MPTCP client with the kernel's path manager
(``native``). A stack sets itself up, tells when the second path is ready, switches the
connection to another interface on command, and reports what it knows afterwards.
Adding one (e.g. a plain TCP client, for comparison) is a class and a
:func:`register` call."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, Any

from ..nstat import read_counters

if TYPE_CHECKING:
    from .scenario import Run

__all__ = ["Stack", "ProxyStack", "NativeStack", "PlainStack", "STACKS", "register",
           "stack_name"]


class Stack:
    """Base of the client stacks; ``name`` is its key in :data:`STACKS`."""

    name = ""
    label = ""          # who, in the report's title
    mptcp_client = False  # the application's socket is IPPROTO_MPTCP

    def prepare(self, run: Run) -> None:
        """Before the server starts (endpoints, limits...)."""

    def start(self, run: Run) -> None:
        """After the server and the captures, before the client connects."""

    def connected(self, run: Run) -> None:
        """The client connected."""

    def path_ready(self, run: Run, iface: str, before: dict) -> bool:
        """The subflow on ``iface`` is established (``before``: the server's counters at
        the start)."""
        d = _delta(before, read_counters(run.topo.server), "MPTcpExt")
        return d.get("MPJoinAckRx", 0) >= 1

    def switch(self, run: Run, to: str, brk: bool) -> dict[str, Any]:
        """Move the connection to ``to`` (``brk``: break-before-make); facts to report."""
        raise NotImplementedError

    def finish(self, run: Run) -> None:
        """The transfer ended, the bed still stands: read what is needed afterwards."""

    def stop(self, run: Run) -> None:
        """The bed is gone."""


STACKS: dict[str, Stack] = {}


def register(stack: Stack) -> Stack:
    STACKS[stack.name] = stack
    return stack


def stack_name(a) -> str:
    """The client stack the command line asks for."""
    return "native" if a.native else "plain" if getattr(a, "plain", False) else "proxy"


def _delta(before: dict, after: dict, group: str) -> dict[str, int]:
    b, a = before.get(group, {}), after.get(group, {})
    return {k: a.get(k, 0) - b.get(k, 0) for k in a}


class ProxyStack(Stack):
    """``mptcp-proxy --subflows S`` in the client namespace; handovers by its control
    socket, in-process (as mptcpctl sends them, without an interpreter start-up)."""

    name = "proxy"
    label = "mptcp-proxy"

    def start(self, run: Run) -> None:
        from ..proxyd import start_proxy
        run.px = start_proxy(run.topo, ["c0", "c1"], ["--subflows", run.subflows,
                                                      "--log-level", run.a.proxy_log_level,
                                                      *run.a.proxy_arg])
        run.stack.callback(run.px.stop)
        run.proxy_before = run.px.stats()

    def connected(self, run: Run) -> None:
        run.cid = run.px.conn_id()

    def path_ready(self, run: Run, iface: str, before: dict) -> bool:
        return super().path_ready(run, iface, before) and any(
            sf["iface"] == iface and sf["state"] == "established"
            for sf in run.px.subflows(run.cid))

    def switch(self, run: Run, to: str, brk: bool) -> dict[str, Any]:
        return {"reply": run.px.query("handover", conn=run.cid, to=to, **{"break": brk})}

    def finish(self, run: Run) -> None:
        stats = run.px.stats()
        run.proxy_stats = {k: v - run.proxy_before.get(k, 0) for k, v in sorted(stats.items())
                           if v - run.proxy_before.get(k, 0)}
        run.proxy_connections = run.px.connections()


class NativeStack(Stack):
    """A native MPTCP client: endpoints c0 (id 1) and c1 (id 2, subflow backup); a
    switch is ``ip mptcp endpoint change id 2 nobackup; ... id 1 backup``."""

    name = "native"
    label = "native MPTCP client"
    mptcp_client = True

    def prepare(self, run: Run) -> None:
        topo, ns = run.topo, run.topo.client
        topo.mptcp_limits(ns, subflows=2, add_addr_accepted=0)
        topo.run(ns, ["ip", "mptcp", "endpoint", "add", topo.client_addrs[0], "dev", "c0",
                      "id", "1"])
        topo.run(ns, ["ip", "mptcp", "endpoint", "add", topo.client_addrs[1], "dev", "c1",
                      "id", "2", "subflow", "backup"])

    def switch(self, run: Run, to: str, brk: bool) -> dict[str, Any]:
        if to != "c1":
            raise ValueError("the native stack switches from c0 to c1 only")
        cmds = "mptcp endpoint change id 2 nobackup\nmptcp endpoint change id 1 backup\n"
        r = subprocess.run(["ip", "-n", run.topo.client, "-batch", "-"], input=cmds,
                           text=True, capture_output=True, timeout=10)
        if r.returncode:
            raise RuntimeError(f"ip mptcp endpoint change failed: {r.stderr.strip()}")
        return {"ip": "endpoint change id 2 nobackup; id 1 backup"}


class PlainStack(Stack):
    """Plain TCP, no proxy and no MPTCP on the client (the server's MPTCP socket falls
    back to TCP): what an unmodified host does, for comparison. It cannot switch."""

    name = "plain"
    label = "plain TCP"

    def path_ready(self, run: Run, iface: str, before: dict) -> bool:
        return False

    def switch(self, run: Run, to: str, brk: bool) -> dict[str, Any]:
        return {"switch": "none (plain TCP has one path)"}


register(ProxyStack())
register(NativeStack())
register(PlainStack())


def wait_path(run: Run, iface: str, before: dict, timeout: float = 5.0) -> float:
    """Wait (up to ``timeout`` s) until the subflow on ``iface`` is established; returns
    when it was (monotonic). A warning is recorded if it never was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.client_stack.path_ready(run, iface, before):
            return time.monotonic()
        time.sleep(0.05)
    run.warnings.append(f"the {iface} subflow was not established within {timeout:g} s of "
                        "the start")
    return time.monotonic()
