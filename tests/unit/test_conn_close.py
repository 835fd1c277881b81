"""The end of a connection: DATA_FIN and subflow FINs, resets and MP_FASTCLOSE, reused
4-tuples, unanswered SYNs, connection caps and idle probing, on the one-connection fake
network of tests/unit/lockstep/ (a scripted local TCP stack and a Linux 6.18-like native
MPTCP server around one Proxy, a fake clock). The peer model validates every packet the
proxy puts on the wire as Linux would (docs/protocol.md §1–§5); ``pair.assert_clean()``
asserts no party recorded a deviation."""

from __future__ import annotations

import struct

import pytest
from connection_kit import blob, close_both, counters, established, raw_mptcp
from lockstep.decode import Fastclose, TcpRst
from lockstep.pair import ProxyPair, seeded_random_bytes
from lockstep.wire import DSS_M, M64, dss_csum_ok, key_sha, sdiff

from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict


# ============================================================== 5. DATA_FIN
def test_local_fin_alone_becomes_data_fin():
    pair = established()
    pair.transfer(blob(3000, 14), blob(2000, 15))
    m = pair.mark()
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    fin_wire = pair.since(m, "to_peer")[0]
    assert not fin_wire.fin and not fin_wire.plen
    dss = fin_wire.dss
    assert dss.fin and dss.flags & DSS_M and dss.data_ack is not None
    assert (dss.ssn, dss.dll) == (0, 1)
    assert dss.dsn == (key_sha(pair.conn.local_key)[1] + 1 + 3000) & M64
    assert pair.peer.dfin_rcvd and pair.peer.rcv_dfin == 3000
    # the peer's DATA_ACK of the DATA_FIN acknowledges the local stack's FIN
    assert pair.local.fin_acked
    assert pair.since(m, "to_local")[-1].ack == pair.local.swire(3001)
    assert counters(pair)["DataFinTx"] == 1
    pair.assert_clean()


@pytest.mark.parametrize("checksum", [False, True])
def test_local_fin_with_data_becomes_mapping_with_data_fin(checksum):
    pair = established(checksum=checksum)
    pair.transfer(blob(1000, 16), b"r")
    m = pair.mark()
    pair.local_send(b"last words", close=True)
    seg = pair.since(m, "to_peer")[0]
    assert not seg.fin and seg.payload == b"last words"
    dss = seg.dss
    assert dss.fin and dss.dll == len(b"last words") + 1 and dss.ssn == 1001
    if checksum:
        assert dss_csum_ok(dss.dsn, dss.ssn, dss.dll, seg.payload, dss.csum)
    assert pair.peer.rcv_dfin == 1010 and pair.peer.dfin_rcvd
    assert pair.local.fin_acked
    pair.assert_clean()


@pytest.mark.parametrize("form", ["with_data", "alone", "multi_segment_map"])
def test_peer_data_fin_gives_the_local_stack_a_fin(form):
    pair = established()
    data = blob(5000, 17)
    if form == "alone":
        pair.peer_send(data)
        m = pair.mark()
        pair.emit_peer(pair.peer.data_fin_alone())
        pair.pump()
        fin = pair.since(m, "to_local")[0]
        assert fin.fin and not fin.plen
    else:
        kw = dict(segs_per_map=3) if form == "multi_segment_map" else {}
        m = pair.mark()
        pair.peer_send(data, data_fin=True, **kw)
        segs = pair.since(m, "to_local")
        assert [s.fin for s in segs] == [False] * (len(segs) - 1) + [True]
        fin = segs[-1]
    assert sdiff(fin.seq, pair.local.rwire(0)) + fin.plen == len(data)
    assert pair.local.fin_rcvd and bytes(pair.local.rcv) == data
    assert counters(pair)["DataFinRx"] == 1
    pair.assert_clean()


def test_graceful_close_subflow_fin_and_forget():
    pair = established()
    pair.transfer(blob(5000, 18), blob(5000, 19))
    m = pair.mark()
    close_both(pair)
    assert pair.local.fin_acked and pair.local.fin_rcvd
    fins = [s for s in pair.since(m, "to_peer") if s.fin]
    assert len(fins) == 1 and counters(pair)["SubflowFinTx"] == 1
    assert fins[0].seq == pair.local.swire(5000)  # subflow seq: the DATA_FIN took none
    assert pair.peer.subflow_fin_rcvd and pair.peer.dfin_rcvd
    # the peer closes its subflow; the proxy acknowledges it
    m = pair.mark()
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    acks = pair.since(m, "to_peer")
    assert acks and sdiff(acks[-1].ack, pair.peer.swire(0)) == 5001
    assert pair.peer.fin_acked
    conn = pair.conn
    assert conn.state == ConnState.CLOSED
    pair.advance(pair.config.linger + 0.01)
    assert pair.proxy.connections == {}
    assert counters(pair)["ConnClosed"] == 1
    pair.assert_clean()


def test_subflow_fin_retransmitted_on_timer_until_acked():
    pair = established()
    pair.transfer(blob(2000, 20), blob(2000, 21))
    # the peer's ACKs of our subflow FIN are lost twice
    pair.drop("from_peer", lambda s: not s.plen and not s.fin and pair.peer.subflow_fin_rcvd,
              count=2)
    close_both(pair)
    assert counters(pair)["SubflowFinTx"] == 1
    fin_times = []
    for _ in range(4):
        before = len([s for s in pair.segs("to_peer") if s.fin])
        pair.advance(0.35 * 2 ** len(fin_times))
        after = len([s for s in pair.segs("to_peer") if s.fin])
        fin_times.append(after - before)
    assert counters(pair)["Retransmits"] == 2
    assert fin_times[:2] == [1, 1] and sum(fin_times) == 2
    assert all(s.seq == pair.local.swire(2000) for s in pair.segs("to_peer") if s.fin)
    assert pair.peer.fin_acked is False  # the peer has not sent its FIN yet
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    assert pair.conn.state == ConnState.CLOSED
    pair.advance(pair.config.linger + 0.01)
    assert pair.proxy.connections == {}
    pair.assert_clean()


def test_peer_subflow_fin_first_then_ours():
    pair = established()
    pair.transfer(blob(2000, 22), blob(2000, 23))
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    m = pair.mark()
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    assert pair.peer.fin_acked  # acknowledged: the local stack has all data before it
    assert not [s for s in pair.since(m, "to_peer") if s.fin]
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    assert pair.peer.subflow_fin_rcvd
    assert pair.conn.state == ConnState.CLOSED
    pair.assert_clean()


def test_late_peer_fin_after_close_is_acknowledged():
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    close_both(pair)
    pair.drop("to_peer", lambda s: pair.peer.fin_s is not None, count=1)  # our ACK of its FIN
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    assert not pair.peer.fin_acked and pair.conn.state == ConnState.CLOSED
    pair.emit_peer(pair.peer.retransmit())
    pair.pump()
    assert pair.peer.fin_acked
    pair.assert_clean()


# ================================================================== 6. resets
def test_local_rst_becomes_fastclose():
    pair = established()
    pair.transfer(blob(3000, 24), blob(3000, 25))
    m = pair.mark()
    pair.emit_local(pair.local.rst())
    pair.pump()
    rst = pair.since(m, "to_peer")[0]
    assert rst.rst
    mp = raw_mptcp(rst)
    assert struct.pack("!BBBBQ", 30, 12, 0x70, 0, pair.peer.key) in mp
    assert any(o[1] == 4 and o[2] >> 4 == 8 for o in mp)
    assert isinstance(rst.mp[0], Fastclose) and isinstance(rst.mp[1], TcpRst)
    assert pair.peer.fastclosed and pair.peer.challenge_acks == 0
    assert counters(pair)["MPFastcloseTx"] == 1
    assert pair.conn.state == ConnState.CLOSED
    pair.advance(pair.config.linger + 0.01)
    assert pair.proxy.connections == {}
    pair.assert_clean()


def test_local_rst_beyond_peer_rcv_nxt_answers_the_challenge_ack():
    pair = established()
    pair.transfer(blob(3000, 26), blob(3000, 27))
    pair.drop("to_peer", lambda s: s.plen > 0)  # the last data segment is lost
    pair.local_send(b"c" * 1000)
    pair.emit_local(pair.local.rst())
    pair.pump()
    assert pair.peer.challenge_acks == 1  # Linux: RST in window but not exact
    assert pair.peer.fastclosed


@pytest.mark.parametrize("local_acked", [True, False])
def test_peer_fastclose_resets_local_stack_exactly(local_acked):
    pair = established()
    pair.transfer(blob(3000, 28), blob(3000, 29))
    if not local_acked:  # data forwarded to the local stack but lost on its way in
        pair.drop("to_local", lambda s: s.plen > 0)
        pair.peer_send(b"z" * 500)
        assert len(pair.local.rcv) == 3000
    m = pair.mark()
    pair.emit_peer(pair.peer.rst(fastclose=True))
    pair.pump()
    assert pair.local.reset
    rsts = [s for s in pair.since(m, "to_local") if s.rst]
    assert any(s.seq == pair.local.rwire(len(pair.local.rcv)) for s in rsts)
    if local_acked:
        assert pair.local.challenge_acks == 0 and len(rsts) == 1
    assert counters(pair)["MPFastcloseRx"] == 1
    assert pair.conn.state == ConnState.CLOSED
    pair.advance(pair.config.linger + 0.01)
    assert pair.proxy.connections == {}


def test_peer_fastclose_after_its_data_fin_resets_local_stack():
    pair = established()
    pair.transfer(blob(1000, 30), blob(1000, 31))
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    assert pair.local.fin_rcvd
    pair.emit_peer(pair.peer.rst(fastclose=True))
    pair.pump()
    assert pair.local.reset


def test_in_window_inexact_peer_rst_does_not_reset_the_local_stack():
    pair = established()
    pair.transfer(blob(3000, 32), blob(3000, 33))
    pair.emit_peer(pair.peer.rst(fastclose=False, reason=None,
                                 seq_rel=pair.peer.snd_nxt + 5000, forged=True))
    pair.pump()
    assert not pair.local.reset
    assert pair.conn.state == ConnState.ESTABLISHED


def test_peer_rst_far_out_of_window_is_ignored():
    pair = established()
    pair.transfer(blob(3000, 34), blob(3000, 35))
    pair.emit_peer(pair.peer.rst(fastclose=False, seq_rel=pair.peer.snd_nxt + (1 << 28),
                                 forged=True))
    pair.pump()
    assert not pair.local.reset
    assert pair.conn.state == ConnState.ESTABLISHED
    pair.transfer(b"more", b"data")
    assert bytes(pair.local.rcv).endswith(b"data")


# ==================================================================== odds and ends
def test_data_fin_alone_overtaking_the_last_data():
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    pair.hold("from_peer", lambda s: s.plen > 0)
    pair.peer_send(b"last")
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    assert not pair.local.fin_rcvd
    pair.release("from_peer")
    assert bytes(pair.local.rcv) == b"b" * 100 + b"last" and pair.local.fin_rcvd
    pair.assert_clean()


def test_unanswered_syn_is_forgotten_after_syn_timeout():
    pair = ProxyPair()
    pair.drop("to_peer", count=10)
    pair.handshake()
    pair.advance(pair.config.syn_timeout - 1)
    assert len(pair.proxy.connections) == 1
    pair.advance(2)
    assert pair.proxy.connections == {} and counters(pair)["ConnTimeout"] == 1


def test_four_tuple_reused_while_the_old_connection_lingers():
    from lockstep.linux_peer import LinuxPeer
    from lockstep.local_stack import LocalStack
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    pair.emit_local(pair.local.rst())
    pair.pump()
    old = pair.conn
    assert old.state == ConnState.CLOSED
    loc = pair.local
    pair.local = LocalStack(pair, loc.addr, loc.port, loc.raddr, loc.rport, 0x12345678)
    pair.peer = LinuxPeer(pair, pair.peer.addr, pair.peer.port, 0x5555, 0x9999)
    pair.handshake()
    assert pair.conn is not old and pair.conn.state == ConnState.ESTABLISHED
    assert pair.peer.mptcp
    pair.transfer(b"new" * 1000, b"NEW" * 1000)
    assert bytes(pair.peer.data) == b"new" * 1000 and bytes(pair.local.rcv) == b"NEW" * 1000
    pair.assert_clean()


def test_connection_caps_leave_new_connections_plain():
    """Bounded state (issue 8): beyond --max-syn-sent connections waiting for a SYN/ACK, or
    --max-connections in all, a new connection is left as plain TCP (its SYN passes
    unchanged, nothing is kept for it)."""
    from mptcp_proxy.core.forge import build_segment
    proxy = Proxy(ProxyConfig(max_connections=3, max_syn_sent=2), seeded_random_bytes(3))
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2])

    def syn(port):
        return bytearray(build_segment(a, b, port, 80, 1000 * port, 0, 0x02, 65535,
                                       bytes([2, 4, 5, 180])))
    verdicts = [proxy.outbound(syn(p), 0.0) for p in (4001, 4002, 4003)]
    assert verdicts == [Verdict.MANGLE, Verdict.MANGLE, Verdict.ACCEPT]
    assert proxy.counters["SynSentLimit"] == 1 and len(proxy.connections) == 2
    assert proxy.syn_sent == 2
    proxy.handle_timer(ProxyConfig().syn_timeout + 1)  # both SYN_SENT ones expire
    assert proxy.syn_sent == 0 and not proxy.connections
    for p in (5001, 5002):
        proxy.outbound(syn(p), 100.0)
    proxy.config.max_syn_sent = 0
    assert proxy.outbound(syn(5003), 100.0) is Verdict.MANGLE
    assert proxy.outbound(syn(5004), 100.0) is Verdict.ACCEPT  # max_connections = 3
    assert proxy.counters["ConnLimit"] == 1


def test_silent_tcp_side_is_probed_then_reset():
    """Bounded state (issue 8): a connection whose TCP side says nothing for idle_timeout
    is probed; a live socket answers and the connection stays; a vanished one (nothing
    answers) gets the connection reset on both sides after idle_probes probes."""
    pair = established(config=ProxyConfig(idle_timeout=30.0, idle_probes=2, idle_interval=5.0))
    pair.transfer(blob(2000, 70), blob(2000, 71))
    t0 = pair.now
    pair.advance(31.0)  # the model's local stack answers the probe with an ACK
    assert counters(pair)["IdleProbe"] == 1
    assert pair.conn.state == ConnState.ESTABLISHED and pair.conn.idle_probes == 0
    pair.local.gone = True  # from now on the socket is gone and answers nothing
    pair.advance(31.0 + 2 * 5.0 + 1.0)
    assert counters(pair)["IdleProbe"] == 3 and counters(pair)["IdleAbort"] == 1
    assert pair.conn.state == ConnState.CLOSED and pair.peer.fastclosed
    assert pair.now - t0 < 80
