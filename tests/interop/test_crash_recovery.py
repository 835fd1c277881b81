"""A daemon killed with SIGKILL leaves nothing the next start (or ``mptcp-proxy --cleanup``)
does not restore, and the connections it carried end with a clean reset, not a hang
(mptcp_proxy/recovery.py, mptcp_proxy/core/orphans.py, docs/recovery.md).

State compared before the first start and after the last stop, in the client namespace:
the interfaces' ``rp_filter`` (the bed starts them strict), the policy-routing rules,
the routes of the fallback table, the MPTCP_PROXY chains, and the daemon's state journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from netns import Topology, wait_until
from netns.emulation import Emulation
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero
from netns.peer import expected_sha, run_client, start_server
from netns.proxyd import _py, count_proxy_rules, start_proxy
from netns.topology import python_argv

pytestmark = pytest.mark.interop

MB = 1_000_000
QUEUE = 4700
FALLBACK_TABLE = 10000 + QUEUE
RESET_ERRORS = ("reset", "broken-pipe", "econnreset", "epipe")


def _state(topo: Topology) -> dict:
    """What the daemon may change in the client namespace."""
    ns = topo.client

    def cmd(*argv: str) -> str:  # (a routing table that does not exist lists nothing)
        return topo.run(ns, list(argv), check=False).stdout

    rp = {i: cmd("cat", f"/proc/sys/net/ipv4/conf/{i}/rp_filter").strip()
          for i in topo.client_ifaces}
    rules = sorted([f"v4 {ln}" for ln in cmd("ip", "-4", "rule", "show").splitlines()]
                   + [f"v6 {ln}" for ln in cmd("ip", "-6", "rule", "show").splitlines()])
    routes = sorted(cmd("ip", "-4", "route", "show", "table", str(FALLBACK_TABLE)).splitlines()
                    + cmd("ip", "-6", "route", "show", "table", str(FALLBACK_TABLE))
                    .splitlines())
    return {"rp_filter": rp, "rules": rules, "fallback_routes": routes,
            "chains": count_proxy_rules(topo, ns), "journal": _journal(topo).exists()}


def _kill9(px) -> None:
    os.killpg(px.proc.pid, signal.SIGKILL)
    px.proc.wait(10)


def _cleanup(topo: Topology) -> subprocess.CompletedProcess:
    argv = [_py(), "-m", "mptcp_proxy.daemon", "--cleanup", "--queue", str(QUEUE)]
    for i in topo.client_ifaces:
        argv += ["--iface", i]
    return topo.run(topo.client, argv, check=False, timeout=30)


def _journal(topo: Topology) -> Path:
    """The journal path the daemon uses in the client namespace (named by its netns
    cookie, asked from inside it)."""
    out = topo.run(topo.client, [_py(), "-c", "from mptcp_proxy.recovery import journal_path;"
                                 f" print(journal_path({QUEUE}))"])
    return Path(out.stdout.strip())


@pytest.fixture
def strict_bed(make_topology):
    topo = make_topology(client_rp_filter=1)
    journal = _journal(topo)
    yield topo
    journal.unlink(missing_ok=True)  # a failed test's leftover (the namespace goes too)


def test_cleanup_restores_what_sigkill_left(strict_bed: Topology, run_proxy) -> None:
    topo = strict_bed
    before = _state(topo)
    assert set(before["rp_filter"].values()) == {"1"} and before["chains"] == 0
    px = run_proxy(topo, queue=QUEUE)
    running = _state(topo)
    assert set(running["rp_filter"].values()) == {"2"} and running["journal"], running
    assert running["fallback_routes"] and running["rules"] != before["rules"], running

    cp = _cleanup(topo)  # a daemon runs: nothing may be touched
    assert cp.returncode == 5 and "running" in cp.stderr, (cp.stdout, cp.stderr)
    assert _state(topo) == running

    _kill9(px)
    assert _state(topo) == running, "SIGKILL cannot undo anything"
    cp = _cleanup(topo)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    assert "undone" in cp.stdout, cp.stdout
    assert _state(topo) == before
    cp = _cleanup(topo)  # nothing left: a no-op
    assert cp.returncode == 0 and _state(topo) == before, (cp.stdout, cp.stderr)


def test_restart_restores_and_clean_stop_leaves_nothing(strict_bed: Topology,
                                                        run_proxy) -> None:
    """The issue's drift: after SIGKILL + restart + clean stop, strict rp_filter was never
    restored and one policy-routing rule stayed."""
    topo = strict_bed
    before = _state(topo)
    px1 = run_proxy(topo, queue=QUEUE)
    _kill9(px1)
    px2 = run_proxy(topo, queue=QUEUE)
    assert any("unclean exit" in line for line in px2.log), px2.log[-20:]
    running = _state(topo)
    assert set(running["rp_filter"].values()) == {"2"}
    # each of the daemon's rules once (the fallback rule, v4 and v6; the source routing
    # of the managed addresses): none left twice by the killed daemon
    added = Counter(running["rules"]) - Counter(before["rules"])
    assert added and max(added.values()) == 1, running
    assert px2.stop() == 0
    assert _state(topo) == before


# ------------------------------------------------------------------ kill -9 mid-transfer

def _start_client(topo: Topology, upload: int, download: int, seed: int) -> subprocess.Popen:
    argv = python_argv("netns.peer", "client", "--addr", topo.server_addr, "--port", "5001",
                       "--upload", upload, "--download", download, "--seed", seed,
                       "--timeout", 60)
    return topo.popen(topo.client, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)


def _record(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(recs) == 1, (out, err[-2000:])
    return recs[0]


def test_sigkill_mid_transfer_then_restart(strict_bed: Topology, run_proxy) -> None:
    """A download and an upload run through the proxy (20 Mbit/s: they last minutes);
    the daemon is killed, then started again. Both applications see a reset within
    seconds, not a hang; the server's sockets close too; a new connection is converted;
    nothing is left after the last clean stop."""
    topo = strict_bed
    before = _state(topo)
    emu = Emulation(topo)
    try:
        for link in range(len(topo.client_ifaces)):
            emu.rate(link, 20)
        srv = start_server(topo, 5001, mptcp=True, timeout=120)
        px1 = run_proxy(topo, queue=QUEUE)
        down = _start_client(topo, 0, 2000 * MB, seed=31)
        up = _start_client(topo, 2000 * MB, 0, seed=32)
        assert wait_until(lambda: len([c for c in px1.connections()
                                       if c["state"] == "established"]) == 2, 20, 0.2)
        time.sleep(2.0)  # both moving
        assert down.poll() is None and up.poll() is None
        _kill9(px1)
        time.sleep(3.0)  # the wire without a daemon: segments pass unconverted

        t0 = time.monotonic()
        px2 = start_proxy(topo, queue=QUEUE)
        ready_s = time.monotonic() - t0
        try:
            cli_down = _record(down, timeout=45)
            cli_up = _record(up, timeout=45)
            ended_s = time.monotonic() - t0
            recs = srv.wait(2, timeout=45)
            assert len(recs) == 2, recs  # both server sockets ended (an idle join included)
            pd = px2.stats()
            age = [ln for ln in px2.log if "after the process started" in ln]
            print(f"restart to ready {ready_s:.2f} s seen by the test ({age}); both "
                  f"transfers ended {ended_s:.2f} s after the restart; proxy: "
                  f"{nonzero({k: v for k, v in pd.items() if k.startswith('Orphan')})}")
            for rec in (cli_down, cli_up):
                assert rec["error"] in RESET_ERRORS, rec  # a reset, not a timeout
            assert cli_down["received"] < 2000 * MB and cli_up["sent"] < 2000 * MB
            for rec in recs:
                assert rec["error"] is not None and rec["error"] != "timeout", rec
            assert pd["OrphanRstLocal"] >= 2 and pd["OrphanRstPeer"] >= 2, nonzero(pd)
            assert pd.get("InternalErrors", 0) == 0, nonzero(pd)

            for link in range(len(topo.client_ifaces)):
                emu.clear_rate(link)
            p0, s0 = px2.stats(), mptcp_counters(topo.server)
            (cli,) = run_client(topo, topo.server_addr, 5001, upload=MB, download=MB,
                                seed=33, timeout=30)
            (rec,) = srv.wait(3, timeout=30)[2:]
            assert cli["error"] is None and rec["error"] is None, (cli, rec)
            assert rec["recv_sha256"] == expected_sha(33, MB, "up")
            assert cli["recv_sha256"] == expected_sha(33, MB, "down")
            assert rec["is_mptcp"] and rec["fallback"] is False, rec
            assert diff(p0, px2.stats())["MPCapableSYNACKRX"] == 1
            assert_no_errors(diff(s0, mptcp_counters(topo.server)))
        finally:
            px2.stop()
        assert px2.exit_code == 0, px2.log[-20:]
    finally:
        emu.close()
    assert _state(topo) == before


def test_restart_spares_what_is_not_orphaned(topo: Topology, run_proxy) -> None:
    """Connections that were not the proxy's keep working when a daemon starts under them:
    a native MPTCP connection of a local application (its segments carry MPTCP options:
    the probe's answer shows a DSS, it is left alone) and a plain TCP connection (no MPTCP
    option anywhere: never even suspected)."""
    emu = Emulation(topo)
    try:
        emu.rate(0, 20)
        mp_srv = start_server(topo, 5001, mptcp=True, timeout=60)
        tcp_srv = start_server(topo, 5002, mptcp=False, timeout=60)
        native = subprocess_client(topo, 5001, mptcp=True, seed=41)
        plain = subprocess_client(topo, 5002, mptcp=False, seed=42)
        time.sleep(1.0)  # both moving before the daemon starts
        assert native.poll() is None and plain.poll() is None
        px = run_proxy(topo, queue=QUEUE)
        rec_native, rec_plain = _record(native, timeout=90), _record(plain, timeout=90)
        for rec, seed in ((rec_native, 41), (rec_plain, 42)):
            assert rec["error"] is None, rec
            assert rec["recv_sha256"] == expected_sha(seed, 20 * MB, "down")
        assert rec_native["is_mptcp"] is True, rec_native
        (srv_native,) = mp_srv.wait(1, timeout=30)
        (srv_plain,) = tcp_srv.wait(1, timeout=30)
        assert srv_native["error"] is None and srv_plain["error"] is None
        pd = px.stats()
        assert pd["OrphanRstLocal"] == 0 and pd["OrphanRstPeer"] == 0, nonzero(pd)
        assert pd["OrphanNative"] >= 1, nonzero(pd)
    finally:
        emu.close()


def subprocess_client(topo: Topology, port: int, mptcp: bool, seed: int) -> subprocess.Popen:
    argv = python_argv("netns.peer", "client", "--addr", topo.server_addr, "--port", port,
                       "--download", 20 * MB, "--seed", seed, "--timeout", 30,
                       *(["--mptcp"] if mptcp else []))
    return topo.popen(topo.client, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
