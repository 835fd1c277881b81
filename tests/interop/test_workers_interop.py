"""``mptcp-proxy --workers 2`` against Linux native MPTCP: connections spread over two
processes and two queue pairs, every subflow of a connection (the initial one, and the
join the proxy opens from the second link) handled by the worker that owns it, and one
proxy seen through the control socket (docs/workers.md)."""

from __future__ import annotations

import pytest

from netns import Topology, wait_until
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero
from netns.peer import expected_sha, run_client, start_server

pytestmark = pytest.mark.interop

MB = 1_000_000
N = 16


def test_two_workers_carry_every_subflow(topo: Topology, run_proxy) -> None:
    """16 concurrent connections, 1 MB each way, ``--subflows active`` (a second subflow
    on c1 for each): data intact, every join established at the server (a join whose
    packets reached the wrong worker would never complete), both workers holding
    connections, and ``status``/``connections``/``stats`` summing the two."""
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--workers", "2", "--subflows", "active"])
    p0, s0 = px.stats(), mptcp_counters(topo.server)
    clis = run_client(topo, topo.server_addr, 5001, upload=MB, download=MB, conns=N,
                      seed=300, timeout=60)
    recs = {r["peer"]: r for r in srv.wait(N, timeout=60)}
    assert len(clis) == N and len(recs) == N
    for cli in clis:
        rec = recs[cli["local"]]
        assert cli["error"] is None and rec["error"] is None, (cli, rec)
        assert (cli["sent"], rec["received"], rec["sent"], cli["received"]) == (MB,) * 4
        assert rec["recv_sha256"] == expected_sha(cli["seed"], MB, "up")
        assert cli["recv_sha256"] == expected_sha(cli["seed"], MB, "down")
        assert rec["is_mptcp"] and rec["fallback"] is False, rec
    sd = diff(s0, mptcp_counters(topo.server))
    assert_no_errors(sd)
    assert sd["MPCapableSYNRX"] == N and sd["MPJoinAckRx"] == N, nonzero(sd)

    st = px.query("status")
    workers = st["workers"]
    assert [w["index"] for w in workers] == [0, 1]
    assert all(w["pid"] for w in workers) and workers[0]["pid"] != workers[1]["pid"]
    pd = {k: v - p0.get(k, 0) for k, v in px.stats().items()}
    assert pd["MPCapableSYNTX"] == N and pd["MPJoinSynTx"] == N, nonzero(pd)
    assert pd["MPJoinEstab"] == N and pd.get("InternalErrors", 0) == 0, nonzero(pd)
    # both workers converted connections: SYNs counted by each (16 random ports on one
    # worker: odds 2**-15)
    assert st["packets"] == sum(w["packets"] for w in workers)
    assert all(w["packets"] > 0 for w in workers), workers
    ids = [c["id"] for c in px.connections()]
    assert len(ids) == len(set(ids)) and {i % 2 for i in ids} == {0, 1}, ids
    # a command on a connection reaches its owner, whichever worker that is
    for cid in (min(i for i in ids if i % 2), min(i for i in ids if i % 2 == 0)):
        sfs = px.query("subflows", conn=cid)
        assert len(sfs) == 2, sfs
    assert wait_until(lambda: px.query("status")["connections"] == 0, 20), \
        px.query("status")["workers"]
