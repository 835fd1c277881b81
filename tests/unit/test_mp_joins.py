"""The proxy's MP_JOIN subflows toward the peer: HMACs verified, a lost fourth ACK
retransmitted and no data before it, a bad SYN/ACK HMAC reset, on the fake network of
tests/unit/mpnet/ (a real-ish local TCP stack, a Linux-like native MPTCP peer with several
subflows, two lossy/reordering paths, a fake clock). Every test checks the byte streams both
ways and ``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

import pytest
from lockstep.decode import TcpRst, parse_seg
from mpnet.addresses import A0, A1, P0
from multipath_kit import SYN_FLAG, ProxyTx, blob, mptcp_opts, started

from mptcp_proxy.core.events import EventKind
from mptcp_proxy.core.subflow import SubflowState


# ====================================================================== 1. joins
def test_backup_join_comes_up_with_verified_hmacs():
    net = started(1, subflows="backup")
    c = net.proxy.counters
    assert (c["MPJoinSynTx"], c["MPJoinSynAckRx"], c["MPJoinAckTx"], c["MPJoinEstab"]) == \
        (1, 1, 1, 1)
    peer = net.peer
    assert peer.joins_ok == 1  # the peer checked the 160-bit HMAC of the third ACK
    join = peer.subs[1]
    assert join.is_join and join.backup  # B=1 in the MP_JOIN SYN
    assert join.remote_id == 2  # the address ID of interface c1
    assert join.raddr == A1 and join.laddr == P0
    sf1 = net.conn.subflows[1]
    assert sf1.backup and sf1.iface == "c1" and sf1.laddr == A1
    tx = ProxyTx(net)
    net.run_transfer(blob(400_000, 1), blob(600_000, 2))
    net.stream_ok()
    # a backup subflow carries nothing while the initial one works, either way
    assert join.bytes_sent == 0
    assert tx.new_data_tuples(0, 0) == {(A0, 40000, P0, 8080)}
    assert not tx.errors
    net.assert_clean()


def _is_join_ack(p: bytes) -> bool:
    s = parse_seg(p)
    return any(len(o) == 24 for o in mptcp_opts(s, 1))


@pytest.mark.parametrize("which", ["third", "fourth"])
def test_lost_join_ack_is_retransmitted_and_no_data_before_the_fourth_ack(which):
    """A make-before-break handover requested before the join exists: the proxy opens
    it and moves data there only once the peer's fourth ACK arrived, although the
    first third ACK (or the fourth ACK) is lost and data flows both ways all along."""
    net = started(2, subflows="manual")
    lost = []

    def drop_first_join_ack(p: bytes) -> bool:
        if not lost and _is_join_ack(p):
            lost.append(net.now)
            return True
        return False

    def drop_fourth_ack(p: bytes) -> bool:
        if not lost and not p[(p[0] & 15) * 4 + 13] & SYN_FLAG:
            lost.append(net.now)  # the first non-SYN segment of the join: the 4th ACK
            return True
        return False

    if which == "third":
        net.paths[1]["up"].drop_fn = drop_first_join_ack
    else:
        net.paths[1]["down"].drop_fn = drop_fourth_ack
    net.local.write(blob(800_000, 3))
    net.peer.write(blob(800_000, 4))
    net.run(net.now + 0.1)
    tx = ProxyTx(net)
    t_h = net.now
    d_h = net.conn.d_nxt
    sf = net.handover(1)
    assert sf is not None and sf.state == SubflowState.SYN_SENT
    assert net.conn.pending_handover is not None
    net.run(net.now + 60, net.transfer_done)
    assert lost, f"the {which} ACK was not seen"
    c = net.proxy.counters
    assert c["MPJoinAckTx"] == 1
    if which == "third":
        assert c["Retransmits"] >= 1
    # (a lost fourth ACK: the peer's next segment on the join acknowledges the third
    # ACK as well, RFC 8684 §3.2, and completes the handshake)
    assert net.peer.joins_ok == 1
    # the retransmitted third ACK established the subflow; data moved there after it
    assert sf.state == SubflowState.ESTABLISHED
    assert net.conn.active is sf
    assert (A1, sf.lport, P0, 8080) in tx.new_data_tuples(t_h, d_h)
    net.stream_ok()
    assert not tx.errors
    net.assert_clean()  # includes: no data on the join before the fourth ACK


def test_bad_synack_hmac_resets_the_join():
    net = started(3, subflows="backup", join=False, peer_kw=dict(bad_join_hmac=True))
    net.run(net.now + 1.0)
    c = net.proxy.counters
    assert c["MPJoinSynAckHMacFailure"] == 1
    assert c["MPJoinAckTx"] == 0 and c["MPJoinEstab"] == 0
    sf1 = net.conn.subflows[1]
    assert sf1.state == SubflowState.CLOSED
    # the peer got RST + MP_TCPRST (reason 1, MPTCP-specific) on the join
    join = net.peer.subs[1]
    assert join.state == "CLOSED"
    resets = [r for idx, r in net.peer.resets_rcvd if idx == join.idx]
    assert resets and resets[0] and isinstance(resets[0][0], TcpRst)
    assert resets[0][0].reason == 1
    assert (EventKind.SF_CLOSED, 1, "join failed") in \
        [(e.kind, e.subflow, e.reason) for _t, e in net.events]
    # nothing more on that 4-tuple, and the connection lives on the initial subflow
    net.run_transfer(blob(300_000, 5), blob(300_000, 6))
    net.stream_ok()
    assert c["MPJoinSynTx"] == 1
    net.assert_clean()
