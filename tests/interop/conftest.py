"""Fixtures for the interop suite: test beds in network namespaces (root only).

``topo`` builds a default :class:`netns.Topology` (2 client links, 1 server link, dual
stack) per test; ``make_topology(**kw)`` builds custom ones. Both skip when the machine
cannot run them (not root, no ``ip netns``, no MPTCP); strict mode turns those skips into
failures (tests/conftest.py). On a test failure the fixture prints ``ss -Menita`` and the
non-zero MPTCP counters of the client and server namespaces before tearing down.
``run_proxy(topo, ifaces=None, extra=(), **kw)`` starts ``mptcp-proxy`` in a bed (see
:func:`netns.proxyd.start_proxy`) and stops every daemon it started at teardown (before the
beds go), printing each daemon's log, exit code and leftover rules when the test failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Callable, Iterator

import pytest

from netns import Topology, reap_stale
from netns.nstat import mptcp_counters, nonzero
from netns.proxyd import ProxyHandle, start_proxy


def _unusable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "tcpdump", "tshark"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "ip netns unavailable"
    if not os.path.exists("/proc/sys/net/mptcp/enabled"):
        return "kernel without MPTCP"
    return None


@pytest.fixture(scope="session")
def netns_ok() -> None:
    reason = _unusable()
    if reason:
        pytest.skip(reason)
    reap_stale()


def _dump(topo: Topology) -> None:
    for ns in (topo.client, topo.server):
        try:
            ss = topo.run(ns, ["ss", "-Menita"], check=False, timeout=10).stdout
            print(f"--- {ns}: ss -Menita\n{ss}")
            print(f"--- {ns}: MPTcpExt (non-zero)\n{nonzero(mptcp_counters(ns))}")
        except Exception as exc:  # diagnostics only: never mask the test's own failure
            print(f"--- {ns}: diagnostics failed: {exc!r}")


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None
               and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def make_topology(netns_ok: None,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., Topology]]:
    beds: list[Topology] = []

    def make(**kw: Any) -> Topology:
        bed = Topology(**kw).start()
        beds.append(bed)
        return bed

    yield make
    failed = _failed(request)
    for bed in beds:
        if failed:
            _dump(bed)
        bed.close()


@pytest.fixture
def topo(make_topology: Callable[..., Topology]) -> Topology:
    return make_topology()


@pytest.fixture
def run_proxy(make_topology: Callable[..., Topology],
              request: pytest.FixtureRequest) -> Iterator[Callable[..., ProxyHandle]]:
    """Factory starting ``mptcp-proxy`` (default: client namespace, every client link);
    every daemon it started is stopped (SIGTERM) at teardown, before the beds are closed."""
    handles: list[ProxyHandle] = []

    def start(topo: Topology, ifaces: Any = None, extra: Any = (), **kw: Any) -> ProxyHandle:
        handle = start_proxy(topo, ifaces, extra, **kw)
        handles.append(handle)
        return handle

    yield start
    failed = _failed(request)
    for handle in handles:
        try:
            handle.stop()
        except Exception as exc:  # never mask the test's own failure
            print(f"--- mptcp-proxy stop failed: {exc!r}")
        if failed:
            print(f"--- mptcp-proxy in {handle.ns}: exit {handle.exit_code}, "
                  f"rules left {handle.rules_left}, last log lines:")
            print("\n".join(handle.log[-80:]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/interop is an interop test, marked or not."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep) and item.get_closest_marker("interop") is None:
            item.add_marker(pytest.mark.interop)
