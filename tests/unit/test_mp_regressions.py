"""Regression tests of defects the multipath tests found (each fixed), on the fake network of
tests/unit/mpnet/ (a real-ish local TCP stack, a Linux-like native MPTCP peer with several
subflows, two lossy/reordering paths, a fake clock). Every test checks the byte streams both
ways and ``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

import random

import pytest
from lockstep.decode import parse_seg
from lockstep.wire import sdiff
from mpnet.network import MpNet
from multipath_kit import M64, SYN_FLAG, ProxyTx, SackRecency, _apply, blob, mptcp_opts, started


# =========================================== regressions of fixed defects
def test_joins_wait_for_full_establishment_and_the_first_join_segment_is_paws_consistent():
    """RFC 8684 §3.1/§3.2: our MP_JOINs go out only once the connection is fully
    established (the peer's first DATA_ACK: before it, the peer may not have processed
    our third ACK and would not know our token). With both applications silent no join
    is opened; the first byte the local stack sends brings the DATA_ACK, then the join.
    Regression (fixed in 17063df) kept: the first segment from the join that reaches the
    local stack carries a PAWS-consistent TSval."""
    net = MpNet(21, subflows="backup")
    net.connect()
    net.run(net.now + 2.0)
    assert net.proxy.counters["MPJoinSynTx"] == 0
    assert not net.conn.fully_established
    net.local.write(b"x")
    net.wait_subflows(2)
    assert net.conn.fully_established
    net.run_transfer(blob(100_000, 60), blob(100_000, 61))
    assert net.local.paws_drops == 0
    net.assert_clean()


# ========================================== regressions (found as defects, fixed)
def test_break_handover_on_command_joins_only_the_target_and_removes_the_old_address():
    net = started(25, subflows="manual", delay=0.03)
    net.local.write(blob(600_000, 68))
    net.peer.write(blob(600_000, 69))
    net.run(net.now + 0.4)
    sf = net.handover(1, break_=True)
    assert sf is not None and sf.iface == "c1"
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()
    c = net.proxy.counters
    assert c["MPJoinSynTx"] == 1, "a join was opened on the abandoned interface too"
    assert any(ids == (0,) for _, ids in net.peer.rm_addr_rx), "REMOVE_ADDR(0) not sent"
    assert net.peer.subs[0].state == "CLOSED"


def test_newest_sack_block_is_shown_first_after_break_before_make():
    # found by test_random_schedules_keep_streams_identical (seed 1680)
    seed = 1680
    net = started(seed, subflows="active", local_kw=dict(sack=True, delack=False),
                  peer_kw=dict(map_segs=1), delay=0.015)
    for i in (0, 1):
        net.set_path(i, loss=0.02, jitter=0.01, dup=0.01)
    tx = ProxyTx(net)
    rec = SackRecency(net, tx)
    net.local.write(blob(230_689, seed + 1))
    net.peer.write(blob(21_301, seed + 2))
    net.run(net.now + 0.2578125)
    net.link_down(0)
    done = net.run(net.now + 30, net.transfer_done)
    assert rec.checked > 0
    assert not rec.errors, rec.errors[:3]
    assert done, "stalled"
    net.stream_ok()


def test_link_flap_with_no_other_subflow_keeps_the_connection():
    net = started(26, subflows="backup", join=False)
    # the c1 join never completes (its SYNs are lost), so c0's subflow is the only one
    net.paths[1]["up"].drop_fn = lambda p: bool(p[(p[0] & 15) * 4 + 13] & SYN_FLAG)
    net.local.write(blob(500_000, 75))
    net.peer.write(blob(500_000, 76))
    net.run(net.now + 0.3)
    net.link_down(0)
    net.run(net.now + 0.2)
    net.link_up(0)  # the address is back: rejoin from c0
    done = net.run(net.now + 30, net.transfer_done)
    assert not net.local.reset, "the local stack was reset"
    assert done
    net.stream_ok()
    assert net.proxy.counters["MPJoinEstab"] == 1


def test_break_handover_with_loss_does_not_leave_an_unfillable_subflow_hole():
    # found by a random schedule: manual joins, make-before-break to c1, make again,
    # then handover --break back to c0, with loss and reordering on both paths
    net = MpNet(3241, subflows="manual", local_kw=dict(sack=True, delack=False),
                peer_kw=dict(map_segs=2, join_wscale=9), delay=0.03)
    net.connect()
    net.local.write(b"y" * 3000)
    net.local.write(random.Random(3242).randbytes(376_244))
    net.peer.write(random.Random(3243).randbytes(256_567))
    net.set_path(0, loss=0.03, reorder=0.2, jitter=0.02)
    net.set_path(1, loss=0.02, reorder=0.05, jitter=0.005, dup=0.01)
    for t, action in ((0.5417597890467254, "up1"), (1.0896591173095769, "make1"),
                      (1.2169339599908717, "make1"), (1.6352582487472493, "break0")):
        net.run(t)
        _apply(net, action)
    assert net.run(net.now + 60, net.transfer_done), (
        f"stalled: peer has {net.peer.dl_contig} of {len(net.local.app)} in order, "
        f"{net.peer.got} at all")
    net.stream_ok()


def test_remove_addr_survives_the_loss_of_one_copy():
    net = started(22, subflows="manual", delay=0.03)
    net.local.write(blob(500_000, 62))
    net.peer.write(blob(500_000, 63))
    net.run(net.now + 0.3)
    dropped = []

    def drop_first_rm_addr(p: bytes) -> bool:
        if not dropped and mptcp_opts(parse_seg(p), 4):
            dropped.append(net.now)
            return True
        return False

    net.paths[1]["up"].drop_fn = drop_first_rm_addr
    net.cut(0)
    net.link_down(0)
    net.run(net.now + 3.0)
    assert dropped
    assert any(ids == (0,) for _, ids in net.peer.rm_addr_rx)


def test_subflow_ack_never_covers_bytes_lost_on_that_subflow():
    """The peer maps two segments per DSS mapping (as GSO/TSO does). Its MPTCP-level
    retransmission timer fires while data is in flight (a late DATA_ACK) and reinjects
    that data on the same subflow (Linux __mptcp_retrans may pick it) at new subflow
    sequence numbers; the first segment of the reinjected mapping is lost, its sibling
    arrives, and the originals arrive too, so the local stack has the data. The
    subflow ACK must stop at the lost segment until the peer retransmits it there."""
    net = started(23, subflows="manual", peer_kw=dict(map_segs=2))
    peer = net.peer
    peer.write(blob(100_000, 64))
    net.run(net.now + 0.5)
    assert net.local.rcv_nxt == 100_000 and peer.d_una == 100_000
    sub = peer.subs[0]
    lost = []

    def drop_first_reinjected(p: bytes) -> bool:
        s = parse_seg(p)
        if lost or not s.plen or s.dss is None or s.dss.dsn is None:
            return False
        d = (s.dss.dsn - peer.idsn - 1) & M64
        srel = sdiff(s.seq, sub.iss + 1)
        if srel == s.dss.ssn - 1 and srel != d:  # first segment of a reinjected mapping
            lost.append(net.now)
            return True
        return False

    net.paths[0]["down"].drop_fn = drop_first_reinjected
    peer.write(blob(20_000, 65))
    peer._dl_rto()  # the MPTCP-level retransmission timer, early
    assert lost and peer.dl_rtx == 1
    assert net.run(net.now + 10, net.transfer_done)
    net.stream_ok()
    net.assert_clean()


@pytest.mark.parametrize("sack", [True, False])
def test_no_duplicate_subflow_acks_without_a_hole_on_burst_arrivals(sack):
    """A lossless path that delivers bursts (Wi-Fi A-MPDU aggregation, or the proxy
    falling behind its queue): several segments reach the proxy before the local
    stack's first ACK for them."""
    net = MpNet(24, subflows="manual", local_kw=dict(sack=sack, delack=False))
    net.set_path(0, rate=None)
    net.connect()
    net.local.write(blob(3000, 66))
    net.run(net.now + 0.1)
    net.run_transfer(b"", blob(1_000_000, 67))
    x = net.peer.subs[0]
    assert x.tx.fast_recoveries == 0 and x.tx.rexmit_segs == 0  # nothing was lost
    assert x.dupacks_no_hole <= x.dup_arrivals_at_proxy, \
        (x.dupacks_no_hole, x.dup_arrivals_at_proxy)
