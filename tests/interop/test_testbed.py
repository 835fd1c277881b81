"""The test bed itself, against Linux native MPTCP (no proxy involved).

Proves that the namespaces, policy routing, peers, captures and counters the proxy's interop
tests rely on behave as documented: native MPTCP on both ends is clean (hashes, counters,
MPTCP_INFO, tshark), plain TCP against an MPTCP listener falls back, a source address picks
its link, ``mptcpize`` makes stock tools MPTCP, and the bed leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from netns import Topology, ns_pids, reap_stale
from netns.capture import capture, mptcp_summary, tshark_failures
from netns.nstat import assert_no_errors, diff, mptcp_counters
from netns.peer import ServerHandle, expected_sha, run_client, start_server
from netns.topology import NETNS_DIR, _child_env, python_argv

pytestmark = pytest.mark.interop

MB = 1_000_000


def _pair_ok(cli: dict, srv: dict) -> None:
    assert cli["error"] is None and srv["error"] is None, (cli, srv)
    assert cli["sent_sha256"] == srv["recv_sha256"]
    assert cli["recv_sha256"] == srv["sent_sha256"]


def test_native_mptcp_both_ways(topo: Topology, tmp_path) -> None:
    srv = start_server(topo, 5001, mptcp=True)
    before = mptcp_counters(topo.server)
    pcap = str(tmp_path / "s0.pcap")
    with capture(topo, "server", "s0", pcap, filter="tcp port 5001"):
        (cli,) = run_client(topo, topo.server_addr, 5001, upload=20 * MB, download=20 * MB,
                            mptcp=True, seed=11)
        (rec,) = srv.wait(1, timeout=30)
    delta = diff(before, mptcp_counters(topo.server))

    _pair_ok(cli, rec)
    assert cli["sent"] == rec["received"] == 20 * MB
    assert rec["sent_sha256"] == expected_sha(11, 20 * MB, "down")
    assert delta["MPCapableSYNRX"] >= 1 and delta["MPCapableACKRX"] >= 1, delta
    assert_no_errors(delta)
    assert rec["is_mptcp"] and rec["mptcp_socket"] and rec["fallback"] is False
    assert rec["mptcp_info"]["remote_key_received"]
    assert cli["is_mptcp"] and cli["fallback"] is False
    assert tshark_failures(pcap) == []
    summary = mptcp_summary(pcap)
    assert summary["MP_CAPABLE"] >= 3 and summary["DSS"] > 0, summary


def test_plain_tcp_client_falls_back(topo: Topology) -> None:
    srv = start_server(topo, 5002, mptcp=True)
    before = mptcp_counters(topo.server)
    (cli,) = run_client(topo, topo.server_addr6, 5002, upload=2 * MB, download=2 * MB)
    (rec,) = srv.wait(1, timeout=30)
    delta = diff(before, mptcp_counters(topo.server))

    _pair_ok(cli, rec)
    # An MPTCP listener hands out a plain TCP socket when the SYN has no MP_CAPABLE: no
    # MPTCP counter moves (MPCapableFallbackACK is for a 3rd ACK without MPC).
    assert rec["mptcp_socket"] is False and rec["is_mptcp"] is False
    assert rec["fallback"] is True and rec["mptcp_info"] is None
    assert cli["fallback"] is None
    assert delta["MPCapableSYNRX"] == 0
    assert_no_errors(delta)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_source_address_picks_link(topo: Topology, family: str) -> None:
    v6 = family == "ipv6"
    src = (topo.client_addrs6 if v6 else topo.client_addrs)[1]
    dst = topo.server_addr6 if v6 else topo.server_addr
    srv = start_server(topo, 5003, mptcp=False)
    before = [topo.link_stats("router", i) for i in topo.router_client_ifaces]
    (cli,) = run_client(topo, dst, 5003, upload=2 * MB, download=2 * MB, bind=src)
    (rec,) = srv.wait(1, timeout=30)
    after = [topo.link_stats("router", i) for i in topo.router_client_ifaces]
    _pair_ok(cli, rec)
    rx = [a["rx_bytes"] - b["rx_bytes"] for a, b in zip(after, before)]
    tx = [a["tx_bytes"] - b["tx_bytes"] for a, b in zip(after, before)]
    assert rx[1] > 2 * MB and tx[1] > 2 * MB, (rx, tx)  # both directions on link 1
    assert rx[0] < 10_000 and tx[0] < 10_000, (rx, tx)  # link 0: at most stray ND/ARP


def test_native_join_on_second_link(topo: Topology) -> None:
    """Native client with an in-kernel PM 'subflow' endpoint on c1: a second subflow joins
    through link 1 (the bed supports native multipath baselines)."""
    topo.mptcp_limits("client", subflows=4, add_addr_accepted=4)
    topo.mptcp_endpoint("client", topo.client_addrs[1], flags=2)  # SUBFLOW
    srv = start_server(topo, 5004, mptcp=True)
    before = mptcp_counters(topo.server)
    rc1_before = topo.link_stats("router", "rc1")["rx_packets"]
    (cli,) = run_client(topo, topo.server_addr, 5004, upload=10 * MB, download=10 * MB,
                        mptcp=True)
    (rec,) = srv.wait(1, timeout=30)
    delta = diff(before, mptcp_counters(topo.server))
    _pair_ok(cli, rec)
    assert delta["MPJoinSynRx"] >= 1 and delta["MPJoinAckRx"] >= 1, delta
    # the join (SYN, 3rd ACK, ...) came in through link 1; the subflow count in MPTCP_INFO
    # is not asserted: the extra subflow may already be closed when the transfer ends
    assert topo.link_stats("router", "rc1")["rx_packets"] - rc1_before >= 2
    assert_no_errors(delta)


def test_mptcpize_http_get_put(topo: Topology, tmp_path) -> None:
    proc = topo.popen("server", ["mptcpize", "run", *python_argv("netns.httpd", "--port", 8080)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    httpd = ServerHandle(proc)
    httpd.wait_listening()
    url = f"http://{topo.server_addr}:8080"
    blob, upload = tmp_path / "blob.bin", tmp_path / "up.bin"
    upload.write_bytes(os.urandom(3 * MB))
    curl = ["mptcpize", "run", "curl", "-sS", "--fail"]
    topo.run("client", [*curl, "-o", blob, f"{url}/blob?size={4 * MB}&seed=5"])
    put = topo.run("client", [*curl, "-T", upload, f"{url}/upload"])
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == expected_sha(5, 4 * MB, "down")
    up_sha = hashlib.sha256(upload.read_bytes()).hexdigest()
    assert f'"sha256": "{up_sha}"' in put.stdout
    get_log, put_log = httpd.wait(2, timeout=10)
    for log in (get_log, put_log):
        assert log["status"] == 200 and log["is_mptcp"] and log["fallback"] is False, log
    assert (get_log["bytes"], put_log["bytes"]) == (4 * MB, 3 * MB)
    assert put_log["sha256"] == up_sha


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _spawn(bed: Topology) -> list[int]:
    procs = [bed.popen("client", ["sleep", "300"]),
             # a grandchild that ignores SIGTERM: only the namespace sweep can get it
             bed.popen("server", ["sh", "-c", "trap '' TERM; sleep 300 & wait"]),
             bed.popen("router", ["sh", "-c", "trap '' TERM; sleep 300"])]
    time.sleep(0.2)
    return [p.pid for p in procs] + ns_pids([bed.server])


def test_cleanup_leaves_nothing(netns_ok: None) -> None:
    with Topology() as bed:
        names = bed.namespaces
        pids = _spawn(bed)
        assert all((NETNS_DIR / n).exists() for n in names)
    assert not any((NETNS_DIR / n).exists() for n in names)
    assert not any(_alive(p) for p in pids), [p for p in pids if _alive(p)]


def test_cleanup_on_exception_and_failed_setup(netns_ok: None) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Topology() as bed:
            names, pids = bed.namespaces, _spawn(bed)
            raise RuntimeError("boom")
    assert not any((NETNS_DIR / n).exists() for n in names)
    assert not any(_alive(p) for p in pids)

    # Setup failing half way (the server namespace name is taken): what was built goes, the
    # namespace that was there before stays.
    squatter = Topology(tag="cleanup" + os.urandom(2).hex())
    subprocess.run(["ip", "netns", "add", squatter.server], check=True)
    try:
        with pytest.raises(FileExistsError):
            squatter.start()
        assert not (NETNS_DIR / squatter.client).exists()
        assert not (NETNS_DIR / squatter.router).exists()
        assert (NETNS_DIR / squatter.server).exists()
    finally:
        subprocess.run(["ip", "netns", "delete", squatter.server], check=True)


def test_many_parallel_connections(topo: Topology) -> None:
    srv = start_server(topo, 5005, mptcp=True)
    clis = run_client(topo, topo.server_addr, 5005, upload=200_000, download=200_000,
                      conns=60, mptcp=True, seed=100)
    recs = {r["peer"]: r for r in srv.wait(60, timeout=30)}
    assert len(clis) == 60 and len(recs) == 60
    for cli in clis:
        _pair_ok(cli, recs[cli["local"]])


@pytest.mark.parametrize("mode", ["server-close", "server-reset", "client-reset"])
def test_close_modes(topo: Topology, mode: str) -> None:
    srv = start_server(topo, 5006, mptcp=True)
    upload = 0 if mode == "server-close" else 100_000
    (cli,) = run_client(topo, topo.server_addr, 5006, upload=upload, download=300_000,
                        mptcp=True, mode=mode, timeout=10)
    (rec,) = srv.wait(1, timeout=15)
    if mode == "server-close":
        _pair_ok(cli, rec)
    elif mode == "server-reset":
        assert rec["error"] is None and rec["sent"] == 300_000
        assert cli["error"] == "reset"
    else:
        assert cli["error"] is None and cli["sent"] == upload
        assert rec["error"] in ("reset", "broken-pipe")


_CRASH = """
import os, sys, time
from netns import Topology
bed = Topology(tag=sys.argv[1]).start()
bed.popen("server", ["sleep", "300"])
print("up", flush=True)
sys.stdin.readline()
if sys.argv[2] == "raise":
    raise SystemExit("crash")      # uncaught: the atexit guard must clean up
time.sleep(300)                     # killed with SIGKILL: only reap_stale() can clean up
"""


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_crashed_run_is_cleaned_up(netns_ok: None, how: str) -> None:
    tag = "crash" + os.urandom(2).hex()
    names = Topology(tag=tag).namespaces
    proc = subprocess.Popen([sys.executable, "-c", _CRASH, tag, how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_child_env(None))
    try:
        assert proc.stdout.readline().strip() == "up", proc.stderr.read()
        deadline = time.monotonic() + 5
        while not (pids := ns_pids(names)) and time.monotonic() < deadline:
            time.sleep(0.02)  # `ip netns exec` may not have entered the namespace yet
        assert pids
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if how == "sigkill":
            proc.kill()
            proc.wait(10)
            assert all((NETNS_DIR / n).exists() for n in names)
            assert sorted(reap_stale()) == sorted(names)
        else:
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reap_stale()
    assert not any((NETNS_DIR / n).exists() for n in names)
    assert not any(_alive(p) for p in pids)
