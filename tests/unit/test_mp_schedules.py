"""Random schedules of handovers and link changes (property) and the memory bound of the
connection's tables over 50 MB with periodic handovers and link flaps, on the fake network
of tests/unit/mpnet/ (a real-ish local TCP stack, a Linux-like native MPTCP peer with
several subflows, two lossy/reordering paths, a fake clock). Every test checks the byte
streams both ways and ``net.assert_clean()`` (the oracles listed in multipath_kit.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multipath_kit import ACTIONS, _apply, _table_sizes, blob, started

from mptcp_proxy.core.subflow import SubflowState

# ================================================= 6. random schedules (property)

@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.integers(0, 1 << 16), sack=st.booleans(), delack=st.booleans(),
       mode=st.sampled_from(["backup", "active", "manual"]),
       up=st.integers(20_000, 300_000), down=st.integers(20_000, 300_000),
       loss=st.sampled_from([0.0, 0.005, 0.02]), reorder=st.sampled_from([0.0, 0.05, 0.2]),
       dup=st.sampled_from([0.0, 0.01]), map_segs=st.sampled_from([1, 2, 4]),
       join_ws=st.sampled_from([None, 4, 10]), delay=st.sampled_from([0.005, 0.015, 0.03]),
       schedule=st.lists(st.tuples(st.floats(0.02, 0.6), st.sampled_from(ACTIONS)),
                         min_size=1, max_size=6))
def test_random_schedules_keep_streams_identical(seed, sack, delack, mode, up, down, loss,
                                                 reorder, dup, map_segs, join_ws, delay,
                                                 schedule):
    net = started(seed, subflows=mode, local_kw=dict(sack=sack, delack=delack),
                  peer_kw=dict(map_segs=map_segs, join_wscale=join_ws), delay=delay)
    for i in (0, 1):
        net.set_path(i, loss=loss, reorder=reorder, jitter=0.01, dup=dup)
    net.local.write(blob(up, seed + 1))
    net.peer.write(blob(down, seed + 2))
    worst: dict[str, int] = {}
    for dt, action in schedule:
        net.run(net.now + dt)
        for k, v in _table_sizes(net).items():
            worst[k] = max(worst.get(k, 0), v)
        _apply(net, action)
    if net.down[0] and net.down[1]:
        net.link_up(0)
    if not any(sf.state == SubflowState.ESTABLISHED for sf in net.conn.subflows) and \
            not net.down[0] and not net.down[1] and net.pm.config.subflows == "manual":
        net.handover(0)
    done = net.run(net.now + 120, net.transfer_done)
    assert done, (f"stalled: local got {net.local.rcv_nxt}/{len(net.peer.app)}, peer got "
                  f"{net.peer.dl_contig}/{len(net.local.app)}; {net.problems()[:3]}")
    net.stream_ok()
    net.assert_clean()
    # the SEND/RECV tables stay small during the run and are pruned once acknowledged
    assert worst.get("send_map", 0) <= 16 and worst.get("rcv_map", 0) <= 16, worst
    sizes = _table_sizes(net)
    assert sizes["send_map"] <= 8 and sizes["rcv_map"] <= 8 and sizes["r_fwd"] <= 1, sizes


# ===================================================== 7. memory bound, 50 MB
def test_fifty_megabytes_with_periodic_handovers_keep_tables_bounded():
    """50 MB up (and 2 MB down) over jumbo-frame paths with a make-before-break
    handover every 120 ms (~100 in all): every SEND/RECV table and the forwarded
    ranges stay within a few entries throughout."""
    mb = 1 << 20
    net = started(31, subflows="backup", local_kw=dict(mss=8960),
                  peer_kw=dict(mss=8960, mtu=9000))
    for i in (0, 1):
        net.set_path(i, rate=6.25e6, delay=0.01, reorder=0.02, jitter=0.004, loss=0.001)
    net.local.write(bytes(range(256)) * (50 * mb // 256))
    net.peer.write(blob(2_000_000, 70))
    worst: dict[str, int] = {}
    handovers = 0
    while not net.transfer_done():
        assert net.now < 300, "stalled"
        net.run(net.now + 0.12, net.transfer_done)
        for k, v in _table_sizes(net).items():
            worst[k] = max(worst.get(k, 0), v)
        net.handover(1 if net.conn.active.iface == "c0" else 0)
        handovers += 1
    net.stream_ok()
    assert net.peer.dl_contig >= 50 * mb
    assert handovers >= 50
    assert max(worst.values()) <= 16, worst
    assert len(net.conn.subflows) == 2
    net.assert_clean()


def test_link_flaps_do_not_accumulate_dead_subflows():
    """Regression (fixed in 17063df, PathManager.prune): every link flap (link_down then
    link_up with rejoin) closes one subflow and opens another; closed ones must be
    forgotten after ``linger`` (from conn.subflows and proxy.conns), or a long-lived
    connection's state and its per-packet loops over subflows grow without bound."""
    from mptcp_proxy.core.proxy import ProxyConfig
    net = started(32, subflows="backup", proxy_config=ProxyConfig(linger=2.0))
    net.local.write(blob(3_000_000, 71))
    net.peer.write(blob(3_000_000, 72))
    most = 0
    for _ in range(25):
        net.run(net.now + 0.25)
        i = 0 if net.conn.active.iface == "c0" else 1
        net.link_down(i)
        net.run(net.now + 0.15)
        net.link_up(i)
        most = max(most, len(net.conn.subflows), len(net.proxy.conns))
    assert net.run(net.now + 60, net.transfer_done)
    net.stream_ok()
    live = [sf for sf in net.conn.subflows if sf.state != SubflowState.CLOSED]
    assert len(live) == 2
    # at most the flaps of one linger period (2 s / 0.4 s) are remembered
    assert most <= 2 + 6, most
    net.assert_clean()
