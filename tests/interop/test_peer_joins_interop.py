"""Subflows the peer opens toward a client-role proxy (issue 9 item 9): a Linux server
with a second link gets a ``subflow`` endpoint during a transfer (the in-kernel path
manager then opens a join from it toward the client's address). By default the proxy
answers it as listener; with ``--peer-joins refuse`` it resets it with MP_TCPRST
"administratively prohibited". Either way the join never reaches the local stack (which
would answer it with a RST of its own) and nothing is left half-open."""

from __future__ import annotations

import time

import pytest

from netns.anchor_bed import ENDPOINT_SUBFLOW, InThread, native_ok, plain_ok, transfer_ok
from netns.capture import capture, tshark, tshark_failures
from netns.emulation import Emulation
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero, tcp_counters
from netns.peer import run_client, start_server

pytestmark = pytest.mark.interop

MB = 1_000_000
PORT = 5001


@pytest.mark.parametrize("policy", ["accept", "refuse"])
def test_server_initiated_join(make_topology, run_proxy, tmp_path, policy: str) -> None:
    topo = make_topology(ipv6=False, server_links=2)
    topo.mptcp_limits("server", subflows=2, add_addr_accepted=2)
    emu = Emulation(topo)
    emu.__enter__()
    try:
        emu.rate(0, 50)
        srv = start_server(topo, PORT, mptcp=True)
        extra = ["--subflows", "manual"] + (["--peer-joins", "refuse"] if policy == "refuse"
                                            else [])
        px = run_proxy(topo, ["c0"], extra)
        s0, t0 = mptcp_counters(topo.server), tcp_counters(topo.client)
        pcap = str(tmp_path / "c0.pcap")
        with capture(topo, "client", "c0", pcap, filter=f"tcp and host {topo.server_addrs[1]}"):
            tr = InThread(lambda: run_client(topo, topo.server_addr, PORT, upload=8 * MB,
                                             download=8 * MB, seed=71, timeout=30))
            px.wait_connection("established", timeout=10)
            time.sleep(0.5)
            topo.mptcp_endpoint("server", topo.server_addrs[1], flags=ENDPOINT_SUBFLOW, id=2)
            (cli,) = tr.result()
            (rec,) = srv.wait(1, timeout=15)
    finally:
        emu.__exit__(None, None, None)
    sd = diff(s0, mptcp_counters(topo.server))
    td = diff(t0, tcp_counters(topo.client))
    pd = px.stats()
    assert px.stop() == 0 and px.rules_left == 0

    transfer_ok(cli, rec, 71, 8 * MB, 8 * MB)
    plain_ok(cli)
    native_ok(rec)
    assert sd["MPJoinSynTx"] == 1, nonzero(sd)
    assert_no_errors(sd)
    assert td.get("OutRsts", 0) == 0, f"the local stack answered something: {td}"
    assert pd["InternalErrors"] == 0, nonzero(pd)
    rows = tshark(pcap, ["-T", "fields", "-e", "ip.src", "-e", "tcp.flags.syn",
                          "-e", "tcp.flags.ack", "-e", "tcp.flags.reset",
                          "-e", "tcp.options.mptcp.subtype",
                          "-e", "tcp.options.mptcp.rst_reason"], prefs={})
    lines = [r.split("\t") for r in rows.splitlines() if r.strip()]
    from_client = [x for x in lines if x[0] == topo.client_addrs[0]]
    if policy == "accept":
        assert sd["MPJoinSynAckRx"] == 1, nonzero(sd)
        assert pd["MPJoinSynRx"] == 1 and pd["MPJoinAckRx"] == 1, nonzero(pd)
        synack = [x for x in from_client if x[1] in ("1", "True") and x[2] in ("1", "True")]
        assert len(synack) == 1 and "1" in synack[0][4].split(","), synack
        assert tshark_failures(pcap) == []
    else:
        assert sd["MPJoinSynAckRx"] == 0, nonzero(sd)
        assert pd["MPJoinRejected"] == 1 and pd["MPJoinSynRx"] == 0, nonzero(pd)
        rsts = [x for x in from_client if x[3] in ("1", "True")]
        assert len(rsts) == 1 and int(rsts[0][5], 0) == 3, rsts  # administratively prohibited
        assert not any(x[1] in ("1", "True") and x[2] in ("1", "True") for x in from_client)
