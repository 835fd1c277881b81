"""Handovers: make before break, break before make (a cut link, recovery with and without SACK)
and a graceful close after handovers, on the fake network of tests/unit/mpnet/ (a real-ish
local TCP stack, a Linux-like native MPTCP peer with several subflows, two lossy/reordering
paths, a fake clock). Every test checks the byte streams both ways and
``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

import pytest
from multipath_kit import ProxyTx, blob, started

from mptcp_proxy.core.subflow import SubflowState


# ========================================================= 2. make before break
@pytest.mark.parametrize("sack", [True, False])
def test_make_before_break_handover_both_ways(sack):
    net = started(4, subflows="backup", local_kw=dict(sack=sack))
    tx = ProxyTx(net)
    c = net.conn
    sf0, sf1 = c.subflows
    p0, p1 = net.peer.subs
    # some loss on path 0 so that data first sent there is retransmitted after the switch
    net.set_path(0, "up", loss=0.03)
    net.set_path(0, "down", loss=0.01)
    rtt = 2 * 0.015
    results = []
    for k, (frm_sf, to_sf, to_i) in enumerate(((sf0, sf1, 1), (sf1, sf0, 0))):
        net.local.write(blob(1_500_000, 10 + k))
        net.peer.write(blob(1_500_000, 20 + k))
        net.run(net.now + 0.39)
        # the last segments sent on the old subflow before the switch are lost: their
        # retransmissions come after it and must go back on the old subflow
        drops = [0]
        src = frm_sf.laddr

        def drop_three(p: bytes, src=src, drops=drops) -> bool:
            ihl = (p[0] & 15) * 4
            if drops[0] < 3 and p[12:16] == src and \
                    len(p) - ihl - (p[ihl + 12] >> 4) * 4 > 0:
                drops[0] += 1
                return True
            return False

        net.paths[1 - to_i]["up"].drop_fn = drop_three
        net.run(net.now + 0.01)
        net.paths[1 - to_i]["up"].drop_fn = None
        assert drops[0] == 3
        t_h = net.now
        d_h = c.d_nxt
        frm_p, to_p = (p0, p1) if to_i == 1 else (p1, p0)
        ret = net.handover(to_i)
        assert ret is to_sf and c.active is to_sf
        # MP_PRIO: B=0 on the new subflow, B=1 on the old one, reach the peer
        net.run(net.now + 4 * rtt)
        assert to_p.prio_rx and to_p.prio_rx[-1][1] is False and not to_p.backup
        assert frm_p.prio_rx and frm_p.prio_rx[-1][1] is True and frm_p.backup
        sent_old = frm_p.bytes_sent
        sent_new = to_p.bytes_sent
        remaining = len(net.peer.app) - net.peer.d_nxt
        net.run(net.now + 60, net.transfer_done)
        net.stream_ok()
        # the peer moved its sending (its old subflow only finished what was in flight)
        assert remaining > 500_000
        assert to_p.bytes_sent - sent_new >= remaining
        assert frm_p.bytes_sent - sent_old < 100_000
        # the proxy's new data goes to the new subflow only; data first sent on the old
        # subflow and lost there was retransmitted there (checked by ProxyTx)
        assert tx.new_data_tuples(t_h, d_h + 1) == {to_sf.key}
        assert tx.resent_on(frm_sf.key, t_h, d_h) > 0
        # no gap beyond a few RTTs in delivered data, either direction
        g_down = net.gap(net.local.progress, t_h - 0.05, t_h + 0.6)
        g_up = net.gap(net.peer.progress, t_h - 0.05, t_h + 0.6)
        results.append((g_down, g_up))
        assert g_down < 8 * rtt and g_up < 8 * rtt, results
    assert c.handovers == 2 and net.proxy.counters["MPPrioTx"] == 4
    # retransmissions of data first sent on a subflow went back there (paper §3.3)
    assert not tx.errors, tx.errors[:5]
    net.assert_clean()


# ======================================================= 3. break before make
@pytest.mark.parametrize("sack", [True, False])
def test_break_before_make_link_cut(sack):
    """Paper §5.4 / Fig. 9: one subflow on c0, its link is cut (everything on path 0
    is lost from now on), 50 ms later the link is reported down. The proxy joins
    from c1, sends REMOVE_ADDR for address ID 0, the peer reinjects; the local
    stack's retransmissions of data lost on path 0 are remapped onto path 1
    interleaved with new data (non-monotonic mapping). The oracles check every ACK
    and SACK in both spaces; the recovery time is measured in fake time."""
    net = started(5, subflows="manual", delay=0.03, local_kw=dict(sack=sack))
    net.set_path(1, reorder=0.05, jitter=0.01, loss=0.005)
    tx = ProxyTx(net)
    net.local.write(blob(1_500_000, 30))
    net.peer.write(blob(1_500_000, 31))
    net.run(net.now + 0.6)
    t_cut = net.now
    mark_up, mark_down = net.local.tx.nxt, net.peer.d_nxt
    net.cut(0)
    net.run(net.now + 0.05)
    net.link_down(0)
    assert net.conn.subflows[0].state == SubflowState.CLOSED
    assert net.run(net.now + 30, net.transfer_done), "stalled"
    net.stream_ok()
    c = net.proxy.counters
    assert c["RmAddrTx"] >= 1 and c["MPJoinEstab"] == 1
    peer = net.peer
    assert any(ids == (0,) for _, ids in peer.rm_addr_rx)
    assert peer.subs[0].state == "CLOSED" and "REMOVE_ADDR" in peer.subs[0].closed_why
    assert peer.reinjected + peer.dl_rtx > 0
    sf1 = net.conn.subflows[1]
    assert sf1.key in tx.nonmono, "no non-monotonic DSN->SSN mapping was exercised"
    rec_up = net.recovery_time(peer.progress, t_cut, mark_up)
    rec_down = net.recovery_time(net.local.progress, t_cut, mark_down)
    print(f"\nbreak-before-make sack={sack}: recovery up {rec_up:.3f}s down {rec_down:.3f}s")
    assert rec_up < 30 and rec_down < 30
    assert not tx.errors, tx.errors[:5]
    net.assert_clean()


def test_break_before_make_recovery_with_and_without_sack():
    """Recovery time (fake seconds until everything in flight at the cut arrived),
    with SACK on and off in the local stack, several seeds: all complete (no stall)
    well within 30 s."""
    out = {}
    for sack in (True, False):
        times = []
        for seed in (11, 12, 13):
            net = started(seed, subflows="manual", delay=0.03, local_kw=dict(sack=sack))
            net.set_path(1, reorder=0.1, jitter=0.01, loss=0.01)
            net.local.write(blob(600_000, seed))
            net.peer.write(blob(600_000, seed + 1))
            net.run(net.now + 0.5)
            t_cut = net.now
            marks = (net.local.tx.nxt, net.peer.d_nxt)
            net.cut(0)
            net.run(net.now + 0.05)
            net.link_down(0)
            assert net.run(net.now + 30, net.transfer_done), (sack, seed, "stalled")
            net.stream_ok()
            net.assert_clean()
            times.append(max(net.recovery_time(net.peer.progress, t_cut, marks[0]),
                             net.recovery_time(net.local.progress, t_cut, marks[1])))
        out[sack] = times
        assert max(times) < 30
    print(f"\nrecovery (s): with SACK {out[True]}, without {out[False]}")


# ================================================= close after handovers
def test_graceful_close_after_handovers():
    """DATA_FIN both ways once the connection moved back and forth: every subflow is
    closed with FINs and the proxy forgets the connection after its linger time."""
    net = started(33, subflows="backup")
    net.local.write(blob(400_000, 73))
    net.peer.write(blob(400_000, 74))
    net.run(net.now + 0.2)
    net.handover(1)
    net.run(net.now + 0.2)
    net.handover(0)
    net.run(net.now + 0.2)
    net.handover(1)
    assert net.run(net.now + 30, net.transfer_done)
    net.local.close()
    net.peer.close()
    assert net.run(net.now + 30, lambda: not net.proxy.connections)
    assert net.local.fin_rcvd and net.local.all_acked
    assert net.peer.dfin_rcvd and net.peer.dfin_acked
    for x in net.peer.subs:
        assert x.fin_rcvd and x.fin_acked, x
    net.stream_ok()
    net.assert_clean()


def test_removed_subflow_closes_when_the_peer_fin_is_acknowledged_late():
    """remove-subflow while the peer sends on that subflow (slowly, in large mappings):
    the peer finishes its mapping, answers with its FIN, both FINs are acknowledged and
    the subflow ends 'closed' in the proxy's view (not left 'closing', to be reset when
    the connection ends), with a graceful connection close afterwards. On the namespace
    bed the FIN sometimes came behind data the local stack had not acknowledged yet, so
    the proxy acknowledged it later on the local stack's ACK and never re-checked the
    subflow (tests/interop/test_multipath_interop.py test_remove_subflow); the model
    does not hit that ordering reliably, so this pins the flow, not that ordering."""
    net = started(41, subflows="active")
    conn = net.conn
    # 63 KB mappings at 100 KB/s on path 1: the peer's FIN comes after the mapping it is
    # sending, well after the proxy's FIN retransmission timer stopped (FIN acknowledged)
    net.peer.map_segs = 45
    net.paths[1]["down"].rate = 100_000
    net.peer.write(blob(3_000_000, 81))
    net.local.write(blob(300_000, 82))
    net.run(net.now + 0.6)
    sf1 = conn.subflows[1]
    assert sf1.state == SubflowState.ESTABLISHED and sf1.rcv_high > 20_000
    net.pm.remove_subflow(conn, sf1, net.now)
    net._forged()
    assert net.run(net.now + 3, lambda: sf1.state == SubflowState.CLOSED), \
        (sf1.state, sf1.fin_acked, sf1.peer_fin, sf1.rcv_acked)
    psub = net.peer.subs[1]
    assert psub.fin_rcvd and net.run(net.now + 1, lambda: psub.fin_acked)
    assert net.run(net.now + 30, net.transfer_done)
    net.local.close()
    net.peer.close()
    assert net.run(net.now + 30, lambda: not net.proxy.connections)
    assert net.proxy.counters["MPFastcloseTx"] == 0 and net.proxy.counters["RstTx"] == 0
    net.stream_ok()
    net.assert_clean()
