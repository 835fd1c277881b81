"""``--workers N`` without root: which worker owns a port and the u32 rules that say so,
the ports a worker reserves for its joins, connection ids and tokens naming their worker,
and the one-proxy view merged from the workers' replies (mptcp_proxy/workers.py,
docs/workers.md)."""

import random

import pytest
from lockstep.pair import ProxyPair

from mptcp_proxy.core import crypto
from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.links import PortReservations
from mptcp_proxy.rules import (
    PORT_BUCKETS,
    RuleParams,
    for_family,
    load_ruleset,
    port_owner,
    spread_match,
)
from mptcp_proxy.workers import merge_replies


def _u32_eval(expr: str, sport: int, dport: int) -> bool:
    """What xt_u32 computes for our two expression shapes on a TCP header whose first 32
    bits are ``sport << 16 | dport`` (IPv4 with a 20-byte header: the IHL jump lands on
    the TCP header, as in the kernel's u32_match_it)."""
    loc, _, values = expr.partition("=")
    word = (sport << 16) | dport
    shift = int(loc.split(">>")[-1].split("&")[0])
    mask = int(loc.split("&")[-1], 16)
    return ((word >> shift) & mask) in {int(v) for v in values.split(",")}


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 16])
def test_rules_send_each_port_to_its_owner(workers):
    """Outbound (sport) and inbound (dport) rules select exactly the owner's ports, so
    both directions of a connection meet in one worker; every port has one owner."""
    rng = random.Random(workers)
    for port in [0, 1, 2, 31, 32, 65535] + [rng.randrange(65536) for _ in range(300)]:
        owner = port_owner(port, workers)
        assert 0 <= owner < workers
        for w in range(workers):
            out = _u32_eval(spread_match("sport", w, workers)["u32"], port, rng.randrange(65536))
            inb = _u32_eval(spread_match("dport", w, workers)["u32"], rng.randrange(65536), port)
            assert out == inb == (w == owner), (port, w)


def test_even_ports_spread_too():
    """Linux's connect() prefers even ports: bit 0 is not used, so even ports still reach
    every worker."""
    owners = {port_owner(p, 4) for p in range(40000, 40200, 2)}
    assert owners == {0, 1, 2, 3}


def test_ruleset_has_one_queue_rule_per_worker():
    one = load_ruleset("endhost", RuleParams(["c0", "c1"], 4700, 4701, 0x4D500000, []))
    two = load_ruleset("endhost", RuleParams(["c0", "c1"], 4700, 4701, 0x4D500000, [],
                                             workers=2))
    for a, b in zip(one, two):
        qa = [r for r in a["rules"] if "NFQUEUE" in str(r.get("target"))]
        qb = [r for r in b["rules"] if "NFQUEUE" in str(r.get("target"))]
        assert len(qb) == 2 * len(qa) and len(b["counts"]) == len(b["rules"])
        if qa:
            base = int(qa[0]["target"]["NFQUEUE"]["queue-num"])
            assert {int(r["target"]["NFQUEUE"]["queue-num"]) for r in qb} == {base, base + 2}
            assert all("u32" in r for r in qb) and not any("u32" in r for r in qa)
    rule = next(r for r in two[0]["rules"] if "u32" in r)
    v6 = for_family(rule, True)
    assert v6["u32"]["u32"].startswith("40>>17&0xF=") and rule["u32"]["u32"].startswith("0>>22")
    assert for_family(rule, False) is rule


def test_join_ports_belong_to_the_worker():
    """A worker reserves for its own subflows only ports whose packets the rules send to
    it (binding on loopback, no root needed)."""
    for w in range(3):
        res = PortReservations(lambda p, w=w: port_owner(p, 3) == w)
        try:
            ports = [res.alloc(b"\x7f\x00\x00\x01") for _ in range(10)]
        finally:
            res.close()
        assert all(port_owner(p, 3) == w for p in ports), ports
        assert len(set(ports)) == 10


def test_ids_and_tokens_name_their_worker():
    """Worker 1 of 3: connection ids 2, 5, 8... and tokens 1 modulo 3, the connection
    working end to end."""
    for i in range(4):
        pair = ProxyPair(seed=40 + i, config=ProxyConfig(worker=1, workers=3))
        pair.handshake()
        pair.transfer(b"up" * 500, b"down" * 500)
        (conn,) = pair.proxy.connections.values()
        assert conn.id == 2
        assert conn.local_token % 3 == 1 and crypto.token_of(conn.local_key) == conn.local_token
        assert pair.local.rcv == b"down" * 500 and pair.peer.data == b"up" * 500


def test_next_ids_step_by_workers():
    pair = ProxyPair(config=ProxyConfig(worker=0, workers=4))
    assert [pair.proxy.next_conn_id() for _ in range(3)] == [1, 5, 9]


def _ok(result):
    return {"ok": True, "result": result}


def _err(name="unknown_connection"):
    return {"ok": False, "error": {"code": 3, "name": name, "message": "no connection"}}


def test_merge_status_connections_stats():
    local = _ok({"pid": 10, "connections": 2, "packets": 100, "interfaces": ["c0"],
                 "verdicts": {"in": {"accept": 1, "drop": 0, "mangle": 2},
                              "out": {"accept": 0, "drop": 1, "mangle": 3}}})
    other = _ok({"pid": 11, "connections": 3, "packets": 50, "interfaces": ["c0"],
                 "verdicts": {"in": {"accept": 4, "drop": 0, "mangle": 0},
                              "out": {"accept": 0, "drop": 0, "mangle": 5}}})
    st = merge_replies("status", {}, local, [other], [11])["result"]
    assert (st["connections"], st["packets"]) == (5, 150)
    assert st["verdicts"]["in"]["accept"] == 5 and st["verdicts"]["out"]["mangle"] == 8
    assert [w["connections"] for w in st["workers"]] == [2, 3]
    assert [w["pid"] for w in st["workers"]] == [10, 11]
    conns = merge_replies("connections", {}, _ok([{"id": 3}, {"id": 1}]), [_ok([{"id": 2}])],
                          [11])["result"]
    assert [c["id"] for c in conns] == [1, 2, 3]
    stats = merge_replies("stats", {}, _ok({"A": 1, "B": 0}), [_ok({"A": 2, "B": 5})], [11])
    assert stats["result"] == {"A": 3, "B": 5}


def test_merge_by_connection_takes_the_owner():
    """A command on one connection: only its owner knows it; the others' unknown-connection
    errors are not the answer (and a connection nobody knows stays an error)."""
    r = merge_replies("subflows", {"conn": 2}, _err(), [_ok([{"id": 0}])], [11])
    assert r == _ok([{"id": 0}])
    assert merge_replies("prio", {"conn": 9}, _err(), [_err()], [11]) == _err()
    refused = _err("not_possible")
    assert merge_replies("add-subflow", {"conn": 2}, _err(), [refused], [11]) == refused
    both = merge_replies("handover", {"all": True}, _ok([{"conn": 1}]), [_ok([{"conn": 2}])],
                         [11])
    assert both["result"] == [{"conn": 1}, {"conn": 2}]


def test_metrics_add_the_other_workers():
    from mptcp_proxy.metrics import Metrics
    pair = ProxyPair()
    pair.handshake()
    m = Metrics(pair.proxy)
    own = m.snapshot()
    m.extra = lambda: [{"counters": {"DSSRx": 7}, "connections": {"established": 2},
                        "subflows": {"established": 3}, "packets": 11}]
    both = m.snapshot()
    assert both["counters"]["DSSRx"] == own["counters"].get("DSSRx", 0) + 7
    assert both["connections"]["established"] == own["connections"]["established"] + 2
    assert both["packets"] == own["packets"] + 11
    m.observe_fields({"type": "ESTABLISHED", "elapsed": 0.002})
    assert m.events["ESTABLISHED"] == 1
    assert PORT_BUCKETS == 16
