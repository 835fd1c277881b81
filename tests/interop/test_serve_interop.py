"""The server role on an end host (``mptcp-proxy --serve PORT``): a native MPTCP client
with two links reaches a plain TCP listener on the server host through the proxy running
there; with ``--announce`` the proxy also announces the host's second address, where the
client joins. Data hashed both ways, the native client's counters and ``MPTCP_INFO``, a
tshark-clean capture, no rule left after SIGTERM."""

from __future__ import annotations

import pytest

from netns.anchor_bed import native_client, native_ok, plain_ok, transfer_ok
from netns.capture import capture, mptcp_summary, tshark_failures
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero
from netns.peer import run_client, start_server

pytestmark = pytest.mark.interop

MB = 1_000_000
PORT = 5001


def test_native_client_to_a_local_plain_listener(make_topology, run_proxy, tmp_path) -> None:
    """``--serve 5001`` on the server host; the client joins from its second link (its
    SYN crosses the router to the server's address) and the proxy answers it."""
    topo = make_topology(ipv6=False)
    native_client(topo, subflow_links=(1,))
    srv = start_server(topo, PORT, mptcp=False)
    px = run_proxy(topo, ["s0"], ["--serve", str(PORT)], ns=topo.server)
    assert "serve=5001" in px.ready_line
    c0 = mptcp_counters(topo.client)
    pcap = str(tmp_path / "s0.pcap")
    with capture(topo, "server", "s0", pcap, filter=f"tcp port {PORT}"):
        (cli,) = run_client(topo, topo.server_addr, PORT, upload=20 * MB, download=20 * MB,
                            mptcp=True, seed=61, timeout=30)
        (rec,) = srv.wait(1, timeout=15)
    cd = diff(c0, mptcp_counters(topo.client))
    pd = px.stats()
    conns = px.connections()
    assert px.stop() == 0 and px.rules_left == 0

    transfer_ok(cli, rec, 61, 20 * MB, 20 * MB)
    native_ok(cli)
    plain_ok(rec)  # the listener is plain TCP: the proxy is the MPTCP end
    assert cd["MPCapableSYNACKRX"] == 1 and cd["MPJoinSynAckRx"] == 1, nonzero(cd)
    assert_no_errors(cd)
    assert pd["MPCapableSYNRX"] == 1 and pd["MPCapableACKRX"] == 1, nonzero(pd)
    assert pd["MPJoinSynRx"] == 1 and pd["MPJoinAckRx"] == 1, nonzero(pd)
    assert pd["InternalErrors"] == 0 and pd["AnchorWatched"] == 0, nonzero(pd)
    assert [c["role"] for c in conns] == ["server"], conns
    assert tshark_failures(pcap) == []
    summary = mptcp_summary(pcap)
    assert summary["MP_JOIN"] >= 3 and summary["MP_FAIL"] == 0, summary


def test_serve_announces_the_hosts_second_address(make_topology, run_proxy, tmp_path) -> None:
    """The server host has a second link; ``--announce`` its address: the client, which
    opens no subflow by itself, joins the announced address and the transfer uses it."""
    topo = make_topology(ipv6=False, server_links=2)
    native_client(topo, subflow_links=(), add_addr=1)
    srv = start_server(topo, PORT, mptcp=False)
    px = run_proxy(topo, ["s0", "s1"], ["--serve", str(PORT), "--announce",
                                       topo.server_addrs[1]], ns=topo.server)
    c0 = mptcp_counters(topo.client)
    pcaps = [str(tmp_path / f"s{i}.pcap") for i in (0, 1)]
    with capture(topo, "server", "s0", pcaps[0], filter=f"tcp port {PORT}"), \
            capture(topo, "server", "s1", pcaps[1], filter=f"tcp port {PORT}"):
        (cli,) = run_client(topo, topo.server_addr, PORT, upload=10 * MB, download=10 * MB,
                            mptcp=True, seed=63, timeout=30)
        (rec,) = srv.wait(1, timeout=15)
    cd = diff(c0, mptcp_counters(topo.client))
    pd = px.stats()
    assert px.stop() == 0 and px.rules_left == 0

    transfer_ok(cli, rec, 63, 10 * MB, 10 * MB)
    native_ok(cli)
    assert cd["AddAddr"] == 1 and cd["MPJoinSynAckRx"] == 1, nonzero(cd)
    assert_no_errors(cd)
    assert pd["AddAddrTx"] >= 1 and pd["EchoAddRx"] == 1 and pd["MPJoinAckRx"] == 1, \
        nonzero(pd)
    second = mptcp_summary(pcaps[1])
    assert second["MP_JOIN"] >= 3 and second["DSS"] > 10, second
    for p in pcaps:
        assert tshark_failures(p) == []


def test_a_proxy_at_each_end_host(make_topology, run_proxy) -> None:
    """Paper Fig. 2a: a plain client behind ``mptcp-proxy`` (a backup subflow on c1) and a
    plain listener behind ``mptcp-proxy --serve``; neither host has MPTCP in its stack or
    apps. A make-before-break handover to c1 moves both directions; the data is intact."""
    import time

    from netns import wait_until
    from netns.anchor_bed import InThread, PhaseBytes
    from netns.emulation import Emulation

    topo = make_topology(ipv6=False)
    emu = Emulation(topo)
    emu.__enter__()
    try:
        for link in (0, 1):
            emu.rate(link, 50)
        srv = start_server(topo, PORT, mptcp=False)
        server_px = run_proxy(topo, ["s0"], ["--serve", str(PORT)], ns=topo.server)
        client_px = run_proxy(topo, extra=["--subflows", "backup"])
        meter = PhaseBytes(topo)
        tr = InThread(lambda: run_client(topo, topo.server_addr, PORT, upload=10 * MB,
                                         download=15 * MB, seed=65, timeout=30))
        cid = client_px.wait_connection("established", timeout=10)["id"]
        assert wait_until(lambda: any(s["iface"] == "c1" and s["state"] == "established"
                                      for s in client_px.ctl("subflows", str(cid))), 10)
        time.sleep(1.0)
        client_px.ctl("handover", str(cid), "--to", "c1")
        time.sleep(0.8)
        a = meter.read()
        time.sleep(1.5)
        b = meter.read()
        (cli,) = tr.result()
        (rec,) = srv.wait(1, timeout=15)
    finally:
        emu.__exit__(None, None, None)
    sd, cd = server_px.stats(), client_px.stats()
    roles = [c["role"] for c in server_px.connections()]
    for px in (client_px, server_px):
        assert px.stop() == 0 and px.rules_left == 0

    transfer_ok(cli, rec, 65, 10 * MB, 15 * MB)
    plain_ok(cli)
    plain_ok(rec)
    phase = PhaseBytes.between(a, b)
    assert PhaseBytes.share(phase["down"], "rc1") > 0.95, phase
    assert PhaseBytes.share(phase["up"], "rc1") > 0.95, phase
    assert roles == ["server"], roles
    assert sd["MPCapableACKRX"] == 1 and sd["MPJoinAckRx"] == 1, nonzero(sd)
    assert sd["MPPrioRx"] == cd["MPPrioTx"] >= 1 and sd["Handovers"] >= 1, \
        (nonzero(sd), nonzero(cd))
    for counters in (sd, cd):
        assert counters["InternalErrors"] == 0 and counters["DataCsumErr"] == 0
