"""Multipath reception: the peer sends over several subflows at once, on the fake network of
tests/unit/mpnet/ (a real-ish local TCP stack, a Linux-like native MPTCP peer with several
subflows, two lossy/reordering paths, a fake clock). Every test checks the byte streams both
ways and ``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

import pytest
from multipath_kit import blob, started


# ==================================================== 4. multipath reception
@pytest.mark.parametrize("sack,seed", [(True, 1), (True, 2), (False, 3)])
def test_multipath_reception(sack, seed):
    """Paper §5.5: non-backup joins, the peer sends on both subflows at once with
    reordering and drops on both paths; the local stack gets the stream intact, each
    subflow's ACKs advance (no subflow starves into repeated RTOs), and duplicate
    subflow ACKs only go where the proxy has a hole (or answer a duplicate)."""
    net = started(seed, subflows="active", local_kw=dict(sack=sack))
    assert not net.peer.subs[1].backup
    for i in (0, 1):
        net.set_path(i, loss=0.01, reorder=0.1, jitter=0.01)
    net.run_transfer(blob(300_000, seed + 40), blob(3_000_000, seed + 41), timeout=60)
    net.stream_ok()
    # the streams are complete; a last subflow ACK lost on the way is repaired by the
    # peer's retransmission timer (the answer to its retransmission is an ACK)
    net.run(net.now + 3.0, lambda: all(x.tx.una == x.tx.nxt for x in net.peer.subs))
    for x in net.peer.subs:
        assert x.bytes_sent > 600_000, "the peer did not use both subflows"
        assert x.tx.una == x.tx.nxt  # every subflow byte acknowledged at subflow level
        assert x.acks_rcvd > 100
        assert x.tx.rto_count <= 3, (x.idx, x.tx.rto_count)
        assert x.dupacks_no_hole <= x.dup_arrivals_at_proxy, \
            (x.idx, x.dupacks_no_hole, x.dup_arrivals_at_proxy)
    assert net.proxy.counters["DSSNoMapping"] == 0
    net.assert_clean()
