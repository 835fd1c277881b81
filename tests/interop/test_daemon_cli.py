"""``mptcp-proxy`` command line: bad input gets a clear message and the documented exit code
(mptcp_proxy/daemon.py: 0 ok, 1 runtime, 2 usage, 3 not root, 4 bad interface, 5 queue busy,
6 rules), and no failed start leaves a netfilter rule behind (docs/recovery.md). Also: a stale
chain of a SIGKILLed daemon is replaced by the next start, and reverse-path filtering is
loosened only while the daemon runs (docs/architecture.md §6, docs/platform.md §6).

Every daemon runs in the client namespace of a test bed, never in the host's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pytest

import mptcp_proxy
from netns import Topology
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero
from netns.peer import run_client, start_server
from netns.proxyd import _py, count_proxy_rules
from netns.topology import REPO_ROOT

pytestmark = pytest.mark.interop

MB = 1_000_000
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_ROOT, EXIT_IFACE, EXIT_QUEUE = range(6)
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _daemon(topo: Topology, args: Sequence[str], pre: Sequence[str] = (),
            control: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Run the daemon to completion in the client namespace (a start that should fail).

    A control socket path of the bed's own is added unless ``control`` is False, so a
    daemon that starts by mistake never touches the host's default path."""
    argv = [*pre, _py(), "-m", "mptcp_proxy.daemon", *args]
    if control:
        argv += ["--control", f"/run/mptcp-proxy-cli-{topo.client}.sock"]
    return topo.run(topo.client, argv, check=False, timeout=timeout,
                    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def _failed_cleanly(topo: Topology, cp: subprocess.CompletedProcess, code: int,
                    pattern: str, rules: int = 0) -> None:
    """Exit ``code``, one clear ``mptcp-proxy: error:`` line matching ``pattern``, never
    'ready', no traceback, and ``rules`` MPTCP_PROXY rules in the namespace afterwards."""
    out = f"exit {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
    assert cp.returncode == code, out
    assert "ready" not in cp.stdout, out
    assert "Traceback" not in cp.stderr, out
    errors = [ln for ln in cp.stderr.splitlines() if ln.startswith("mptcp-proxy: error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), out
    assert count_proxy_rules(topo, topo.client) == rules


# ------------------------------------------------------------------ interfaces (exit 4)

def test_missing_interface_is_waited_for(topo: Topology, run_proxy) -> None:
    """An --iface that does not exist yet is no error: the daemon starts, names it, and
    would use it when it appears (tests/interop/test_mobility_interop.py)."""
    px = run_proxy(topo, ifaces=["c0", "wlan9"])
    assert any("wlan9" in ln and "do not exist" in ln for ln in px.log), px.log[:20]
    assert px.stop() == 0


def test_bad_interface_pattern(topo: Topology) -> None:
    cp = _daemon(topo, ["--iface", "c0", "--iface", "w?an*"])
    _failed_cleanly(topo, cp, EXIT_USAGE, r"PREFIX\*")


def test_loopback_interface(topo: Topology) -> None:
    cp = _daemon(topo, ["--iface", "lo"])
    _failed_cleanly(topo, cp, EXIT_IFACE, r"\blo\b|loopback")


# ------------------------------------------------------------------ usage (exit 2)

@pytest.mark.parametrize("args, pattern", [
    (["--iface", "c0", "--bogus"], r"--bogus"),
    (["--iface", "c0", "--port", "70000"], r"70000"),
    (["--iface", "c0", "--port", "http"], r"http"),
    (["--iface", "c0", "--queue", "65535"], r"65535"),
    (["--iface", "c0", "--subflows", "sometimes"], r"sometimes"),
    ([], r"--iface"),
], ids=["bad-option", "port-70000", "port-name", "queue-65535", "bad-subflows",
        "missing-iface"])
def test_usage_errors(topo: Topology, args: list[str], pattern: str) -> None:
    cp = _daemon(topo, args)
    _failed_cleanly(topo, cp, EXIT_USAGE, pattern)
    assert "usage: mptcp-proxy" in cp.stderr


def test_version(topo: Topology) -> None:
    cp = _daemon(topo, ["--version"], control=False)
    assert cp.returncode == EXIT_OK, cp.stderr
    assert cp.stdout.strip() == f"mptcp-proxy {mptcp_proxy.__version__}"
    script = REPO_ROOT / ".venv" / "bin" / "mptcp-proxy"  # the console script, if installed
    if script.exists():
        cp = topo.run(topo.client, [script, "--version"], check=False, timeout=15)
        assert (cp.returncode, cp.stdout.strip()) == (
            EXIT_OK, f"mptcp-proxy {mptcp_proxy.__version__}")
    assert count_proxy_rules(topo, topo.client) == 0


# ------------------------------------------------------------------ not root (exit 3)

def _readable_install(dest: Path) -> Path:
    """A copy of the package and of its runtime dependencies (as installed in this
    interpreter's environment) that any user can read: the checkout itself may sit in a
    directory only root can enter, as a home directory often is. Returns the directory to
    put on PYTHONPATH."""
    from importlib import metadata

    from packaging.requirements import Requirement
    site = dest / "site"
    shutil.copytree(REPO_ROOT / "mptcp_proxy", site / "mptcp_proxy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    todo, seen = ["mptcp-proxy"], set()
    while todo:
        dist = metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        if name == "mptcp-proxy":
            continue  # installed editable: the package itself was copied above
        for f in dist.files or []:
            src = Path(f.locate())
            if src.is_file() and "__pycache__" not in f.parts and not str(f).startswith(".."):
                (site / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, site / f)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return site


def test_not_root(topo: Topology) -> None:
    """An unprivileged user gets exit 3 and a clear message. The daemon runs from a copy
    anyone can read, with the base interpreter (the venv's lives in the checkout)."""
    dest = Path(tempfile.mkdtemp(prefix="mptcp-proxy-nonroot-"))
    try:
        site = _readable_install(dest)
        python = os.path.realpath(sys.executable)  # the venv's python links to it
        argv = [*AS_NOBODY, python, "-m", "mptcp_proxy.daemon", "--iface", "c0",
                "--control", f"/run/mptcp-proxy-cli-{topo.client}.sock"]
        cp = topo.run(topo.client, argv, check=False, timeout=30, cwd=dest,
                      env=dict(os.environ, PYTHONPATH=str(site)))
        assert "ModuleNotFoundError" not in cp.stderr, cp.stderr
        _failed_cleanly(topo, cp, EXIT_NOT_ROOT, r"root")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# ------------------------------------------------------------------ runtime (exit 1)

def test_control_socket_unusable(topo: Topology) -> None:
    """The control socket fails after the rules went in: they must come out again."""
    cp = _daemon(topo, ["--iface", "c0", "--control", "/nonexistent-dir/ctl.sock"],
                 control=False)
    _failed_cleanly(topo, cp, EXIT_FAIL, r"/nonexistent-dir/ctl\.sock")


# ------------------------------------------------------------------ queue busy (exit 5)

def _converted_transfer(topo: Topology, srv, px, n: int, seed: int) -> None:
    """One transfer through ``px``: hashes match and it became MPTCP on the wire."""
    p0, s0 = px.stats(), mptcp_counters(topo.server)
    (cli,) = run_client(topo, topo.server_addr, 5001, upload=MB, download=MB, seed=seed)
    rec = srv.wait(n, timeout=15)[n - 1]
    sd = diff(s0, mptcp_counters(topo.server))
    assert cli["error"] is None and rec["error"] is None, (cli, rec)
    assert cli["sent_sha256"] == rec["recv_sha256"] and cli["recv_sha256"] == rec["sent_sha256"]
    assert rec["is_mptcp"] and rec["fallback"] is False, rec
    assert sd["MPCapableACKRX"] == 1, nonzero(sd)
    assert_no_errors(sd)
    assert px.stats()["MPCapableSYNACKRX"] - p0["MPCapableSYNACKRX"] == 1


def test_queue_busy(topo: Topology, run_proxy) -> None:
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--subflows", "manual"], queue=4700)
    rules = count_proxy_rules(topo, topo.client)
    assert rules > 0
    # the same queue pair, then a pair whose inbound queue (N+1 = 4700) is the busy one
    for queue in ("4700", "4699"):
        cp = _daemon(topo, ["--iface", "c0", "--queue", queue])
        _failed_cleanly(topo, cp, EXIT_QUEUE, r"\b4700\b", rules=rules)
    assert px.proc.poll() is None, "the first daemon died"
    _converted_transfer(topo, srv, px, 1, seed=80)
    assert px.stop() == 0 and px.rules_left == 0


# ------------------------------------------------------------------ stale chains

def test_stale_chain_after_sigkill_is_replaced(topo: Topology, run_proxy) -> None:
    srv = start_server(topo, 5001, mptcp=True)
    px1 = run_proxy(topo, extra=["--subflows", "manual"], queue=4700)
    rules = count_proxy_rules(topo, topo.client)
    os.killpg(px1.proc.pid, signal.SIGKILL)
    px1.proc.wait(10)
    assert count_proxy_rules(topo, topo.client) == rules, "SIGKILL cannot remove rules"

    # no daemon on the queue: queue-bypass lets new connections through as plain TCP
    (cli,) = run_client(topo, topo.server_addr, 5001, upload=MB, download=MB, seed=90,
                        timeout=10)
    (rec,) = srv.wait(1, timeout=10)
    assert cli["error"] is None and rec["error"] is None, (cli, rec)
    assert cli["sent_sha256"] == rec["recv_sha256"] and rec["is_mptcp"] is False

    px2 = run_proxy(topo, extra=["--subflows", "manual"], queue=4700)
    # undone from the state journal (docs/recovery.md), or found by name without one
    assert any("restoring after an unclean exit: chain" in line or "stale chain" in line
               for line in px2.log), px2.log
    assert count_proxy_rules(topo, topo.client) == rules, "stale rules not replaced"
    _converted_transfer(topo, srv, px2, 2, seed=91)
    assert px2.stop() == 0
    assert px2.rules_left == 0 and count_proxy_rules(topo, topo.client) == 0


# ------------------------------------------------------------------ rp_filter

def _rp(topo: Topology, iface: str) -> int:
    path = f"/proc/sys/net/ipv4/conf/{iface}/rp_filter"
    return int(topo.run(topo.client, ["cat", path]).stdout)


def test_strict_rp_filter_loosened_while_running(make_topology, run_proxy) -> None:
    """docs/platform.md §6: inbound packets are queued in raw PREROUTING, which needs loose
    reverse-path filtering on a multihomed host; the daemon sets it and puts it back."""
    topo = make_topology(client_rp_filter=1)
    before = {i: _rp(topo, i) for i in topo.client_ifaces}
    assert set(before.values()) == {1}
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--subflows", "manual"])
    assert {i: _rp(topo, i) for i in topo.client_ifaces} == {i: 2 for i in topo.client_ifaces}
    _converted_transfer(topo, srv, px, 1, seed=95)
    assert px.stop() == 0 and px.rules_left == 0
    assert {i: _rp(topo, i) for i in topo.client_ifaces} == before


# ------------------------------------------------------------------ log level

def test_debug_log_is_the_proxys_own(topo: Topology, run_proxy) -> None:
    """``--log-level debug`` is for the proxy's own debug output; the daemon means to keep
    pyroute2 at WARNING (daemon.py main)."""
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--subflows", "manual", "--log-level", "debug"])
    _converted_transfer(topo, srv, px, 1, seed=97)
    assert px.stop() == 0
    assert any("mptcp_proxy" in line for line in px.log), px.log[-5:]
    noise = [line for line in px.log if " pyroute2" in line and " DEBUG " in line]
    assert noise == [], f"{len(noise)} pyroute2 DEBUG lines, e.g. {noise[0][:200]}"
