"""Peer-driven signalling: ADD_ADDR (echoed and joined, bad HMAC ignored, a lost echo),
MP_PRIO, REMOVE_ADDR and a reset of the active subflow, on the fake network of
tests/unit/mpnet/ (a real-ish local TCP stack, a Linux-like native MPTCP peer with several
subflows, two lossy/reordering paths, a fake clock). Every test checks the byte streams both
ways and ``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

from lockstep.decode import parse_seg
from mpnet.addresses import P1
from mpnet.network import MpNet
from multipath_kit import ProxyTx, blob, mptcp_opts, started

from mptcp_proxy.core.events import EventKind
from mptcp_proxy.core.subflow import SubflowState


# ================================================ 5. peer-driven signalling
def test_peer_add_addr_is_echoed_and_joined():
    net = started(6, subflows="manual")
    net.peer.write(blob(400_000, 50))
    net.run(net.now + 0.2)
    net.peer.announce(P1, 1)
    net.run(net.now + 0.5)
    c = net.proxy.counters
    assert net.peer.echo_rx == [1] and c["AddAddrRx"] == 1 and c["EchoAddTx"] == 1
    assert c["AddAddrHMacFailure"] == 0
    conn = net.conn
    assert conn.remote_addrs == {1: (P1, None)}
    j = conn.subflows[1]
    assert j.raddr == P1 and j.remote_id == 1 and j.state == SubflowState.ESTABLISHED
    pj = net.peer.subs[1]
    assert pj.laddr == P1 and pj.local_id == 1 and pj.state == "ESTABLISHED"
    net.run_transfer(blob(300_000, 51), blob(300_000, 52))
    net.stream_ok()
    net.assert_clean()


def test_peer_add_addr_with_bad_hmac_is_ignored():
    net = started(7, subflows="manual")
    net.peer.announce(P1, 1, bad_hmac=True)
    net.run(net.now + 5.0)  # the peer retransmits it (add_addr_timeout 1 s)
    c = net.proxy.counters
    assert c["AddAddrHMacFailure"] >= 1 and c["AddAddrRx"] == 0 and c["EchoAddTx"] == 0
    assert net.peer.echo_rx == []
    assert len(net.conn.subflows) == 1 and net.conn.remote_addrs == {}
    assert net.notes.get("join_syn_rx", 0) == 0
    net.run_transfer(blob(100_000, 53), blob(100_000, 54))
    net.stream_ok()
    net.assert_clean()


def _with_announced_subflow(seed: int) -> MpNet:
    net = started(seed, subflows="manual")
    net.peer.announce(P1, 1)
    net.run(net.now + 0.5)
    assert len(net.subflows_up()) == 2
    return net


def test_peer_mp_prio_backup_moves_the_proxy_sending():
    net = _with_announced_subflow(8)
    conn = net.conn
    sf0, sfj = conn.subflows
    assert conn.active is sf0
    tx = ProxyTx(net)
    net.local.write(blob(2_000_000, 55))
    net.run(net.now + 0.3)
    net.peer.set_prio(net.peer.subs[0], True)  # "do not send on the initial subflow"
    net.run(net.now + 0.05)
    assert net.proxy.counters["MPPrioRx"] == 1 and sf0.peer_backup
    assert conn.active is sfj
    t_p, d_p = net.now, conn.d_nxt
    net.run(net.now + 30, net.transfer_done)
    net.stream_ok()
    assert tx.new_data_tuples(t_p, d_p) == {sfj.key}
    assert not tx.errors
    net.assert_clean()


def test_peer_remove_addr_closes_the_subflow_and_moves_the_proxy_sending():
    net = _with_announced_subflow(9)
    conn = net.conn
    sf0, sfj = conn.subflows
    net.peer.set_prio(net.peer.subs[0], True)
    net.run(net.now + 0.05)
    assert conn.active is sfj
    tx = ProxyTx(net)
    to_p1 = []
    net.taps.append(lambda hop, p, now: to_p1.append(now) if hop == "to_peer" and
                    p[16:20] == P1 else None)
    net.local.write(blob(1_500_000, 56))
    net.peer.write(blob(1_500_000, 57))
    net.run(net.now + 0.3)
    net.peer.remove_addr(1)
    net.run(net.now + 0.2)
    assert net.proxy.counters["RmAddrRx"] == 1
    assert sfj.state == SubflowState.CLOSED and conn.active is sf0
    assert 1 not in conn.remote_addrs
    t_closed = next(t for t, e in net.events
                    if e.kind == EventKind.SF_CLOSED and e.subflow == sfj.index)
    t_r, d_r = net.now, conn.d_nxt
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()
    # nothing more to the removed address once the proxy processed REMOVE_ADDR; the
    # proxy's new data goes to the remaining subflow
    assert max(to_p1) <= t_closed
    assert tx.new_data_tuples(t_r, d_r) == {sf0.key}
    net.assert_clean()


def test_peer_reset_of_the_active_subflow_moves_the_proxy_sending():
    net = _with_announced_subflow(10)
    conn = net.conn
    sf0, sfj = conn.subflows
    net.peer.set_prio(net.peer.subs[0], True)
    net.run(net.now + 0.05)
    assert conn.active is sfj
    tx = ProxyTx(net)
    net.local.write(blob(1_000_000, 77))
    net.peer.write(blob(1_000_000, 78))
    net.run(net.now + 0.3)
    net.peer.reset_subflow(net.peer.subs[1])  # RST + MP_TCPRST on the active subflow
    net.run(net.now + 0.2)
    c = net.proxy.counters
    assert c["RstRx"] == 1 and c["MPRstRx"] == 1
    assert sfj.state == SubflowState.CLOSED and conn.active is sf0
    t_r, d_r = net.now, conn.d_nxt
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()
    assert not net.local.reset
    assert tx.new_data_tuples(t_r, d_r) == {sf0.key}
    net.assert_clean()


def test_lost_add_addr_echo_makes_the_peer_repeat_it_without_a_second_join():
    net = started(11, subflows="manual")
    echoes = []

    def drop_first_echo(p: bytes) -> bool:
        if not echoes and mptcp_opts(parse_seg(p), 3):
            echoes.append(net.now)
            return True
        return False

    net.paths[0]["up"].drop_fn = drop_first_echo
    net.peer.announce(P1, 1)
    net.run(net.now + 2.5)  # add_addr_timeout is 1 s
    assert echoes and net.peer.echo_rx == [1]
    c = net.proxy.counters
    assert c["AddAddrRx"] == 2 and c["EchoAddTx"] == 2
    assert c["MPJoinSynTx"] == 1 and len(net.subflows_up()) == 2
    net.run_transfer(blob(200_000, 79), blob(200_000, 80))
    net.stream_ok()
    net.assert_clean()
