"""Link emulation of the test bed (netns.emulation, netns.delay): delay, rate, loss and
link down/up on a client path measured end to end, plus the command line."""

from __future__ import annotations

import json
import statistics
import subprocess
import time

import pytest

from netns import Topology
from netns.emulation import Emulation
from netns.nstat import diff, tcp_counters
from netns.peer import measure_rtt, run_client, start_server
from netns.topology import REPO_ROOT, python_argv

pytestmark = pytest.mark.interop

MB = 1_000_000


@pytest.fixture
def bed(topo: Topology):
    """(topo, emulation, plain TCP server on port 5001)."""
    srv = start_server(topo, 5001, mptcp=False)
    with Emulation(topo) as emu:
        yield topo, emu, srv


def _rtt_ms(topo: Topology, link: int, v6: bool = False) -> float:
    src = (topo.client_addrs6 if v6 else topo.client_addrs)[link]
    dst = topo.server_addr6 if v6 else topo.server_addr
    return statistics.median(measure_rtt(topo, dst, 5001, count=15, bind=src)) * 1000


def test_delay_gives_the_configured_rtt(bed) -> None:
    topo, emu, _ = bed
    base = _rtt_ms(topo, 0)
    emu.delay(0, 30)                # both directions: RTT + 60 ms
    emu.delay(1, 30, "up")          # one direction only: RTT + 30 ms
    both, both6, up_only = _rtt_ms(topo, 0), _rtt_ms(topo, 0, v6=True), _rtt_ms(topo, 1)
    assert abs(both - base - 60) < 2.5, (base, both)
    assert abs(both6 - base - 60) < 2.5, (base, both6)
    assert abs(up_only - base - 30) < 2.0, (base, up_only)
    for stats in emu.delay_stats(0):
        assert stats["packets"] > 0 and stats["late_ms"]["mean"] < 1.0, stats


def test_rate_limits_both_directions(bed) -> None:
    topo, emu, srv = bed
    emu.rate(0, 20)
    # One direction at a time: both at once queue each side's ACKs behind 100 ms of data in
    # the other's tbf, which costs tbf drops and ~15 % of the rate. Alone, the goodput is
    # 19.0 Mbit/s (tbf counts the 14+20+32 header bytes of each 1448-byte segment too).
    (down_cli,) = run_client(topo, topo.server_addr, 5001, download=3 * MB,
                             bind=topo.client_addrs[0])
    run_client(topo, topo.server_addr, 5001, upload=3 * MB, bind=topo.client_addrs[0])
    down_srv, up_srv = srv.wait(2, timeout=10)
    assert down_cli["error"] is None and down_cli["recv_sha256"] == down_srv["sent_sha256"]
    down = down_cli["received"] * 8 / down_cli["recv_s"] / 1e6
    up = up_srv["received"] * 8 / up_srv["recv_s"] / 1e6
    assert 16 <= down <= 24 and 16 <= up <= 24, (down, up)
    # link 1 is not limited
    (fast,) = run_client(topo, topo.server_addr, 5001, download=3 * MB,
                         bind=topo.client_addrs[1])
    assert fast["received"] * 8 / fast["recv_s"] / 1e6 > 60


def test_loss_drops_about_the_probability(bed) -> None:
    topo, emu, srv = bed
    emu.loss(1, 0.10)
    rc1 = topo.router_client_ifaces[1]
    before = (tcp_counters(topo.client), tcp_counters(topo.server),
              topo.link_stats("router", rc1))
    (cli,) = run_client(topo, topo.server_addr, 5001, upload=2 * MB, download=2 * MB,
                        bind=topo.client_addrs[1])
    (rec,) = srv.wait(1, timeout=10)
    after = (tcp_counters(topo.client), tcp_counters(topo.server),
             topo.link_stats("router", rc1))
    assert cli["error"] is None and rec["error"] is None
    assert cli["sent_sha256"] == rec["recv_sha256"]
    assert cli["recv_sha256"] == rec["sent_sha256"]
    assert diff(before[0], after[0])["RetransSegs"] > 0
    assert diff(before[1], after[1])["RetransSegs"] > 0
    dropped_up, dropped_down = emu.dropped(1, "up"), emu.dropped(1, "down")
    came_up = after[2]["rx_packets"] - before[2]["rx_packets"]
    went_down = after[2]["tx_packets"] - before[2]["tx_packets"]
    ratio_up = dropped_up / came_up
    ratio_down = dropped_down / (went_down + dropped_down)
    assert 0.06 < ratio_up < 0.15 and 0.06 < ratio_down < 0.15, (ratio_up, ratio_down)
    emu.loss(1, 0)
    assert emu.dropped(1) == 0  # rules gone


def test_link_down_stops_and_up_resumes(bed) -> None:
    topo, emu, srv = bed
    emu.rate(0, 20)
    proc = topo.popen("client", python_argv(
        "netns.peer", "client", "--addr", topo.server_addr, "--port", 5001,
        "--download", 4 * MB, "--bind", topo.client_addrs[0]),
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    emu.down(0)
    t_down = time.monotonic()
    rx0 = topo.link_stats("client", "c0")["rx_bytes"]
    (probe,) = run_client(topo, topo.server_addr, 5001, download=10,
                          bind=topo.client_addrs[0], timeout=1)
    assert probe["error"] == "enetunreach"
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t_down)))
    assert topo.link_stats("client", "c0")["rx_bytes"] == rx0
    emu.up(0)
    out, _ = proc.communicate(timeout=30)
    rec = json.loads(out)
    assert rec["error"] is None and rec["received"] == 4 * MB
    assert rec["max_gap_s"] >= 0.9, rec
    for addr, src in ((topo.server_addr, topo.client_addrs[0]),
                      (topo.server_addr6, topo.client_addrs6[0])):
        (again,) = run_client(topo, addr, 5001, download=1000, bind=src, timeout=2)
        assert again["error"] is None


def test_close_undoes_everything(topo: Topology) -> None:
    with Emulation(topo) as emu:
        emu.rate(0, 10)
        emu.loss(1, 0.05)
        emu.delay(1, 5)
        emu.down(0)
        stages = list(emu._delays.values())
    assert all(p.poll() is not None for p in stages)
    assert "tbf" not in topo.run("client", ["tc", "qdisc", "show", "dev", "c0"]).stdout
    for cmd in ("iptables-legacy-save", "ip6tables-legacy-save"):
        rules = topo.run("router", [cmd]).stdout
        assert "statistic" not in rules and "NFQUEUE" not in rules
    (cli,) = run_client(topo, topo.server_addr, 9, timeout=1, bind=topo.client_addrs[0])
    assert cli["error"] == "econnrefused"  # link 0 is up again: the server answers


def test_command_line(bed) -> None:
    topo, _, _ = bed
    cli = python_argv("netns.emulation", "--tag", topo.tag)
    assert "rate" in subprocess.run(python_argv("netns.emulation", "--help"),
                                    capture_output=True, text=True, check=True,
                                    cwd=REPO_ROOT).stdout
    subprocess.run([*cli, "rate", "--link", "1", "--mbit", "10"], check=True,
                   cwd=REPO_ROOT)
    assert "tbf" in topo.run("router", ["tc", "qdisc", "show", "dev", "rc1"]).stdout
    base = _rtt_ms(topo, 1)
    proc = subprocess.Popen([*cli, "delay", "--link", "1", "--ms", "20"],
                            stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)
    try:
        assert "delaying" in proc.stdout.readline()
        assert abs(_rtt_ms(topo, 1) - base - 40) < 2.5
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and '"stats"' in out
    assert abs(_rtt_ms(topo, 1) - base) < 1.0
    subprocess.run([*cli, "clear", "--link", "1"], check=True,
                   cwd=REPO_ROOT)
    assert "tbf" not in topo.run("router", ["tc", "qdisc", "show", "dev", "rc1"]).stdout
