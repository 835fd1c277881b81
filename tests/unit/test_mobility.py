"""Mobility as it really happens, on the fake network of tests/unit/mpnet/ (30 ms one
way per path, a Linux-like local stack and native MPTCP peer, a fake clock): paths that
die silently (a blackhole upstream, the link up), outages of every path (the freeze),
paths that return (back to the preferred interface), addresses that change, joins at
the right moment and retried with back-off.

Every test checks the byte streams both ways and ``net.assert_clean()`` (the oracles of
mpnet: ACKs and SACKs shown on either side only for data really held; no data on a
join before its fourth ACK; the local stack never times out). Times are fake seconds.
"""

from __future__ import annotations

import pytest
from mpnet.addresses import A0, A1
from mpnet.network import MpNet
from multipath_kit import blob, started

from mptcp_proxy.core.events import EventKind
from mptcp_proxy.core.subflow import SubflowState

A2 = bytes([10, 0, 0, 7])  # a second address on interface c0 (path 0), e.g. a new lease
RTT = 0.06


def kinds(net, *want) -> list[tuple]:
    return [(e.kind, e.subflow) for _t, e in net.events if e.kind in want]


def event_times(net, kind) -> list[float]:
    return [t for t, e in net.events if e.kind == kind]


def first_after(series, t0):
    return next((t for t, _v in series if t > t0), None)


def rate(series, a: float, b: float) -> float:
    """Bytes per second delivered in order in ``[a, b]``."""
    vals = [v for t, v in series if a <= t <= b]
    return (vals[-1] - vals[0]) / (b - a) if len(vals) > 1 else 0.0


# ---------------------------------------------------------------- silent path failures
@pytest.mark.parametrize("mode", ["backup", "manual"])
def test_silent_blackhole_of_the_active_path_is_detected_and_left(mode):
    """The path of c0 drops everything from now on, its link stays up (no event). The
    download stops; the proxy probes after the silence, finds the path stale, abandons
    it (REMOVE_ADDR: the peer reinjects) for the backup subflow on c1, or (manual: only
    the initial subflow) for a join it opens there. The longest delivery gap stays
    under a second; never a hang."""
    net = started(7, subflows=mode, delay=RTT / 2)
    net.peer.write(blob(3_000_000, 1))
    net.run(net.now + 0.5)
    t_cut = net.now
    net.cut(0)
    assert net.run(net.now + 30, net.transfer_done), "the transfer hung"
    net.stream_ok()
    gap = net.gap(net.local.progress, t_cut, net.now)
    assert gap <= 1.0, gap
    c = net.proxy.counters
    assert c["SubflowStale"] == 1 and c["PathProbeTx"] >= 1 and c["RmAddrTx"] >= 1
    stale = [e for _t, e in net.events if e.kind == EventKind.SF_STALE]
    assert stale[0].subflow == 0 and "probes unanswered" in stale[0].reason
    assert net.conn.active.iface == "c1"
    assert any(ids == (0,) for _, ids in net.peer.rm_addr_rx)
    net.assert_clean()


def test_silent_blackhole_during_an_upload_is_found_by_unanswered_data():
    """An upload: our data goes out on c0 and nothing answers for two RTOs."""
    net = started(8, subflows="backup", delay=RTT / 2)
    net.local.write(blob(3_000_000, 2))
    net.run(net.now + 0.5)
    t_cut = net.now
    net.cut(0)
    assert net.run(net.now + 30, net.transfer_done), "the transfer hung"
    net.stream_ok()
    assert net.gap(net.peer.progress, t_cut, net.now) <= 1.0
    stale = [e for _t, e in net.events if e.kind == EventKind.SF_STALE]
    assert len(stale) == 1 and "unanswered" in stale[0].reason
    net.assert_clean()


@pytest.mark.parametrize("sack", [True, False])
def test_no_false_stale_path_under_loss_and_reordering(sack):
    """Random loss (2 %) and reordering on both paths, both directions at once, and the
    local stack's own RTO back-off after lost retransmissions: a path that answers is
    never declared stale."""
    net = started(9, subflows="backup", delay=RTT / 2, local_kw=dict(sack=sack))
    for i in (0, 1):
        net.set_path(i, loss=0.02, reorder=0.05, jitter=0.01)
    net.run_transfer(blob(2_000_000, 3), blob(2_000_000, 4), timeout=120)
    net.stream_ok()
    assert net.proxy.counters["SubflowStale"] == 0, kinds(net, EventKind.SF_STALE)
    net.assert_clean()


def test_small_bursts_then_quiet_are_not_probed():
    """An interactive connection (a few bytes now and then, each way) costs no probe:
    a quiet spell after a small burst is not suspicious."""
    net = started(10, subflows="backup", delay=RTT / 2)
    for k in range(20):
        net.local.write(b"k" * 10)
        net.peer.write(b"e" * 60)
        net.run(net.now + 1.0)
    assert net.proxy.counters["PathProbeTx"] == 0
    assert net.proxy.counters["SubflowStale"] == 0
    net.stream_ok()
    net.assert_clean()


def test_stale_path_is_probed_by_joins_and_traffic_returns_to_the_preferred_interface():
    """After the blackhole on c0 ends, a join (retried with back-off) gets through and
    the connection moves back to c0, its preferred interface (the first given)."""
    net = started(11, subflows="backup", delay=RTT / 2)
    net.peer.write(blob(6_000_000, 5))
    net.run(net.now + 0.5)
    net.cut(0)
    net.run(net.now + 3.0)
    assert net.conn.active.iface == "c1"
    net.uncut(0)
    t_back = net.now
    ok = net.run(net.now + 40, lambda: net.conn.active.iface == "c0")
    assert ok, "never moved back to c0"
    assert net.now - t_back < 20
    c = net.proxy.counters
    assert c["PreferredReturn"] == 1 and c["JoinRetry"] >= 1
    assert net.run(net.now + 60, net.transfer_done)
    net.stream_ok()
    net.assert_clean()


# ------------------------------------------------------------------------ the freeze
def _outage(net, seconds: float, back: int = 0):
    """Both links go down (c1 first), ``seconds`` later link ``back`` returns."""
    net.link_down(1)
    net.run(net.now + 0.2)
    t_down = net.now
    net.link_down(0)
    net.run(net.now + seconds)
    t_up = net.now
    net.link_up(back)
    return t_down, t_up


@pytest.mark.parametrize("sack", [True, False])
def test_outage_of_30_s_freezes_and_resumes_both_ways_within_a_round_trip_and_a_join(sack):
    """Every path is down for 30 s with bulk data both ways in flight. The local stack is
    frozen: its retransmissions are answered with ICMP unreachables, so its RTO does not
    back off (it never gives up); when c0 returns a fresh join replaces the old subflow
    (REMOVE_ADDR of the old address ID: the peer resends at once), the first byte is
    delivered both ways within a round trip after the join, and the previous rate is
    back within a second."""
    net = started(12, subflows="backup", delay=RTT / 2, local_kw=dict(sack=sack))
    net.peer.write(blob(40_000_000, 6))
    net.local.write(blob(40_000_000, 7))
    net.run(net.now + 1.5)
    t_down, t_up = _outage(net, 30.0)
    c = net.proxy.counters
    assert c["ConnFrozen"] == 1 and c["UnreachableTx"] > 50
    assert net.local.tx.backoff <= 1 and net.local.state == "ESTABLISHED"
    net.run(net.now + 3.0)
    join = RTT * 2 + 0.01  # SYN/SYN-ACK and third/fourth ACK
    for series in (net.local.progress, net.peer.progress):
        first = first_after(series, t_up)
        assert first is not None and first - t_up <= join + RTT + 0.05, first and first - t_up
        before = rate(series, t_down - 1.0, t_down)
        assert rate(series, t_up + 1.0, t_up + 2.0) >= 0.8 * before
    assert kinds(net, EventKind.THAWED) and c["SubflowReplaced"] == 1
    assert net.conn.active.iface == "c0" and net.conn.active.addr_id != 0
    assert any(ids == (0,) for _, ids in net.peer.rm_addr_rx)
    net.assert_clean()


def test_idle_local_stack_is_shown_a_zero_window_and_restarted_by_a_window_update():
    """An outage while the local stack has nothing in flight: it is shown a zero window;
    data the application writes meanwhile waits in persist mode (its probes answered);
    the window update when the path returns sends it at once."""
    net = started(13, subflows="backup", delay=RTT / 2)
    net.run(net.now + 0.5)
    net.link_down(1)
    net.link_down(0)
    assert net.proxy.counters["ZeroWindowTx"] == 1
    net.run(net.now + 1.0)
    sent = net.local.tx.nxt
    net.local.write(blob(200_000, 8))  # the application writes during the outage
    net.run(net.now + 6.0)
    assert net.local.tx.nxt == sent, "data left the local stack into a dead path"
    assert net.local.window_probes >= 2 and net.local.state == "ESTABLISHED"
    net.link_up(0)
    t_up = net.now
    assert net.run(net.now + 10, net.transfer_done)
    first = first_after(net.peer.progress, t_up)
    assert first - t_up <= RTT * 3 + 0.05, first - t_up
    net.stream_ok()
    net.assert_clean()


def test_freeze_longer_than_the_bound_resets_the_connection():
    net = started(14, subflows="backup", delay=RTT / 2, pm_kw=dict(freeze_max=5.0))
    net.local.write(blob(1_000_000, 9))
    net.run(net.now + 0.5)
    _outage(net, 8.0)
    assert net.proxy.counters["FreezeTimeout"] == 1
    assert net.local.reset, "the local stack was not told"
    assert not net.proxy.established()


def test_outage_without_the_icmp_answers_lets_the_local_rto_back_off():
    """The control experiment: with ``freeze_icmp`` off the local stack backs off as in a
    plain outage (what the ICMPs save it from)."""
    net = started(15, subflows="backup", delay=RTT / 2, pm_kw=dict(freeze_icmp=False))
    net.local.write(blob(20_000_000, 10))
    net.run(net.now + 1.0)
    _outage(net, 20.0)
    assert net.proxy.counters["UnreachableTx"] == 0
    assert net.local.tx.backoff >= 5


# ----------------------------------------------------------------- links and addresses
def test_link_flap_moves_away_and_back_to_the_preferred_interface():
    net = started(16, subflows="backup", delay=RTT / 2)
    net.peer.write(blob(8_000_000, 11))
    net.local.write(blob(8_000_000, 12))
    net.run(net.now + 0.5)
    net.link_down(0)
    net.run(net.now + 1.0)
    assert net.conn.active.iface == "c1"
    net.link_up(0)
    assert net.run(net.now + 2.0, lambda: net.conn.active.iface == "c0")
    assert net.proxy.counters["PreferredReturn"] == 1
    assert net.run(net.now + 60, net.transfer_done)
    net.stream_ok()
    net.assert_clean()


def test_preferred_interface_can_be_configured():
    """``prefer=("c1",)``: the connection moves to c1 as soon as its subflow there is up,
    and a returning c0 does not take it back."""
    net = started(17, subflows="backup", delay=RTT / 2, pm_kw=dict(prefer=("c1",)))
    assert net.conn.active.iface == "c1"
    assert net.proxy.counters["PreferredReturn"] == 1
    net.peer.write(blob(4_000_000, 13))
    net.run(net.now + 0.3)
    net.link_down(0)
    net.run(net.now + 1.0)
    net.link_up(0)
    assert net.run(net.now + 5.0, lambda: len(net.subflows_up()) == 2)
    net.run(net.now + 0.5)
    assert net.conn.active.iface == "c1"
    assert net.proxy.counters["PreferredReturn"] == 1
    assert net.run(net.now + 60, net.transfer_done)
    net.assert_clean()


@pytest.mark.parametrize("order", ["add_first", "remove_first"])
def test_address_replaced_on_the_active_interface(order):
    """DHCP replaces c0's address (A0 → A2) during a download, in either order of events.
    The connection moves to a subflow from the new address (REMOVE_ADDR for the old one);
    added first, it is make-before-break."""
    net = started(18, subflows="backup", delay=RTT / 2)
    net.addr_path[A2] = 0
    net.peer.write(blob(4_000_000, 14))
    net.local.write(blob(1_000_000, 15))
    net.run(net.now + 0.5)
    t0 = net.now
    if order == "add_first":
        net.pm.link_up("c0", net.now, [A0, A2], [])
        net.run(net.now + 0.5)
        net.pm.link_up("c0", net.now, [A2], [])
    else:
        net.pm.link_up("c0", net.now, [], [])
        net.run(net.now + 0.1)
        net.pm.link_up("c0", net.now, [A2], [])
    net._forged()
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()
    active = net.conn.active
    assert active.laddr == A2 and active.iface == "c0", active
    assert net.gap(net.local.progress, t0, net.now) <= (0.3 if order == "add_first" else 1.0)
    assert any(0 in ids for _, ids in net.peer.rm_addr_rx)
    net.assert_clean()


# ---------------------------------------------------------------- joins, the right way
def test_refused_joins_are_retried_with_back_off():
    """The peer refuses joins at first (its subflow limit): the backup join is tried
    again after 1, 2, 4... s, and comes up once the peer accepts."""
    net = started(19, subflows="backup", join=False, delay=RTT / 2,
                  peer_kw=dict(join_limit=0))
    net.run(net.now + 7.5)
    refused = net.peer.joins_refused
    assert refused >= 3
    syns = [t for t, e in net.events if e.kind == EventKind.SF_OPENING]
    gaps = [b - a for a, b in zip(syns, syns[1:])]
    assert all(b > a * 1.5 for a, b in zip(gaps, gaps[1:])), gaps  # back-off
    net.peer.join_limit = None
    net.wait_subflows(2, timeout=20)
    net.run_transfer(blob(100_000, 16), blob(100_000, 17))
    net.assert_clean()


def test_third_ack_is_retransmitted_on_the_paths_rto():
    """A long path (300 ms one way): the join's third ACK is retransmitted after the
    path's RTO (from the SYN/SYN-ACK round trip), not after a fixed 200 ms."""
    net = MpNet(20, subflows="backup", delay=0.3)
    lost = []

    def drop_third_ack(p):
        ihl = (p[0] & 15) * 4
        if p[12:16] == A1 and p[ihl + 13] == 0x10 and not lost and \
                any(p[i] == 30 and p[i + 2] >> 4 == 1 for i in range(ihl + 20, len(p) - 2)):
            lost.append(net.now)
            return True
        return False

    synacks = []

    def drop_repeated_synack(p):  # (so that only our own retransmission recovers)
        ihl = (p[0] & 15) * 4
        if p[ihl + 13] & 0x12 == 0x12:
            synacks.append(net.now)
            return len(synacks) > 1
        return False

    net.paths[1]["up"].drop_fn = drop_third_ack
    net.paths[1]["down"].drop_fn = drop_repeated_synack
    net.connect(timeout=10)
    net.local.write(b"x")
    net.wait_subflows(2, timeout=10)
    assert lost
    sf = net.conn.subflows[1]
    assert sf.state == SubflowState.ESTABLISHED and sf.srtt >= 0.59
    assert net.proxy.counters["Retransmits"] >= 1
    # up one RTO (3 x the 0.6 s handshake RTT, RFC 6298 with RTTVAR = RTT/2) and one
    # round trip after the loss; a fixed 200 ms would have made it 0.8 s
    up = [t for t, e in net.events if e.kind == EventKind.SF_ESTABLISHED][0]
    assert up - lost[0] >= 1.8 + 0.6 - 0.05, up - lost[0]
    net.assert_clean()


def test_no_join_before_full_establishment_even_on_a_command():
    """A join asked for before the peer's first DATA_ACK is not sent (the peer could
    not know our token)."""
    net = MpNet(21, subflows="manual")
    net.connect()
    assert not net.conn.fully_established
    sf = net.pm.add_subflow(net.conn, net.pm.ifaces["c1"], backup=True, now=net.now)
    net._forged()
    assert sf is None or net.proxy.counters["MPJoinSynTx"] == 0
