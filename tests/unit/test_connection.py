"""The proxy's connection logic end to end, on a fake network with a fake clock.

A scripted local TCP stack and a model of a Linux 6.18 native MPTCP server sit
around one :class:`~mptcp_proxy.core.proxy.Proxy` (tests/unit/lockstep/).
The peer model validates every packet the proxy puts on the wire as Linux would
(docs/protocol.md §1–§5) and records deviations in ``violations``; the local stack
checks what the proxy hands it. ``pair.assert_clean()`` asserts there are none.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lockstep.decode import Fastclose, OtherMp, TcpRst, parse_seg
from lockstep.pair import ProxyPair, seeded_random_bytes
from lockstep.wire import (
    CAP_A,
    CAP_H,
    DSS_A,
    DSS_F,
    DSS_M,
    M32,
    M64,
    MTU,
    PSH,
    DSS_m,
    dss_csum,
    dss_csum_ok,
    dss_opt,
    key_sha,
    mpc_opt,
    sdiff,
)

from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict

PAYLOAD = bytes(random.Random(7).randbytes(300_000))


def blob(n: int, seed: int = 0) -> bytes:
    return PAYLOAD[seed:seed + n] if seed + n <= len(PAYLOAD) else \
        random.Random(seed).randbytes(n)


def established(**kw) -> ProxyPair:
    pair = ProxyPair(**kw)
    pair.handshake()
    assert pair.peer.state == "ESTABLISHED"
    return pair


def data_segs(segs):
    return [s for s in segs if s.plen]


def raw_mptcp(seg) -> list[bytes]:
    return [o for k, o in seg.opts if k == 30]


def non_mptcp(seg) -> list:
    return [(k, o) for k, o in seg.opts if k != 30]


def counters(pair) -> dict:
    return pair.proxy.counters


# ============================================================== 1. handshake
@pytest.mark.parametrize("checksum", [False, True])
def test_syn_gets_mp_capable_len4(checksum):
    pair = established(checksum=checksum)
    syn_local = pair.segs("out")[0]
    syn_wire = pair.segs("to_peer")[0]
    assert syn_wire.syn and not syn_wire.ackf
    assert syn_wire.csum_ok and syn_wire.opts_ok
    assert len(syn_wire.opt_block) <= 40
    # exactly one MPTCP option: kind 30, len 4, subtype 0 / version 1, flags H (+A)
    assert raw_mptcp(syn_wire) == [bytes([30, 4, 0x01, CAP_H | (CAP_A if checksum else 0)])]
    # every option of the local SYN is still there, byte for byte; seq untouched
    assert non_mptcp(syn_wire) == non_mptcp(syn_local)
    assert syn_wire.seq == syn_local.seq
    assert counters(pair)["MPCapableSYNTX"] == 1
    assert pair.verdicts[0][1] is Verdict.MANGLE
    pair.assert_clean()


def test_synack_key_stripped_and_mss_clamped():
    pair = established(config=ProxyConfig(mss_overhead=30))
    synack_wire = pair.segs("from_peer")[0]
    synack_local = pair.segs("to_local")[0]
    assert synack_wire.mpc is not None and synack_wire.mpc.sndr_key == pair.peer.key
    assert not synack_local.has_mptcp
    assert synack_local.csum_ok and synack_local.opts_ok
    assert synack_local.mss == synack_wire.mss - 30
    # the other options reach the local stack unchanged
    assert [x for x in non_mptcp(synack_local) if x[0] != 2] == \
        [x for x in non_mptcp(synack_wire) if x[0] != 2]
    assert (synack_local.seq, synack_local.ack) == (synack_wire.seq, synack_wire.ack)
    c = counters(pair)
    assert c["MPCapableSYNACKRX"] == 1 and c["MssClamped"] == 1
    assert pair.local.peer_mss == 1460 - 30


@pytest.mark.parametrize("checksum", [False, True])
def test_third_ack_carries_both_keys(checksum):
    pair = established(checksum=checksum, seed=42)
    third = pair.segs("to_peer")[1]
    assert third.ackf and not third.plen
    assert len(raw_mptcp(third)) == 1 and raw_mptcp(third)[0][1] == 20
    mpc = third.mpc
    assert mpc.flags == CAP_H | (CAP_A if checksum else 0)
    assert mpc.rcvr_key == pair.peer.key
    # the sender key comes from the random_bytes callable, deterministically
    key = int.from_bytes(seeded_random_bytes(42)(8), "big")
    assert mpc.sndr_key == key == pair.conn.local_key
    assert pair.conn.local_token == key_sha(key)[0]
    # ... and it is the key whose IDSN numbers the data the peer receives
    pair.local_send(b"x" * 10)
    pair.peer_send(b"y")
    pair.local_send(b"z" * 5)
    dss = data_segs(pair.segs("to_peer"))[-1].dss
    assert dss.dsn == (key_sha(key)[1] + 1 + 10) & M64
    assert bytes(pair.peer.data) == b"x" * 10 + b"z" * 5
    c = counters(pair)
    assert c["MPCapableACKTX"] == 1 and c["MPCapableSYNTX"] == 1
    pair.assert_clean()


def test_syn_options_ending_with_zero_tsecr_keep_timestamps_and_mpc():
    """A SYN whose option list ends with TS (TSecr = 0), as Linux sends it with
    net.ipv4.tcp_window_scaling=0: the proxy must append MP_CAPABLE without eating
    the TSecr's zero bytes."""
    pair = ProxyPair(local_kw=dict(wscale=None))
    pair.handshake()
    syn_local, syn_wire = pair.segs("out")[0], pair.segs("to_peer")[0]
    assert syn_local.ts == (pair.local.ts_base, 0)
    assert syn_wire.ts == syn_local.ts
    assert raw_mptcp(syn_wire) == [bytes([30, 4, 1, CAP_H])]
    assert pair.peer.mptcp and pair.conn.state == ConnState.ESTABLISHED


# ======================================================= 2. first data segments
@pytest.mark.parametrize("checksum", [False, True])
def test_first_data_segment_carries_mp_capable_with_dll(checksum):
    pair = established(checksum=checksum)
    data = blob(300, 1)
    pair.local_send(data)
    seg = data_segs(pair.segs("to_peer"))[0]
    assert seg.seq == pair.local.swire(0) and seg.payload == data
    assert len(raw_mptcp(seg)) == 1
    mpc = seg.mpc
    assert mpc.length == (24 if checksum else 22)
    assert (mpc.sndr_key, mpc.rcvr_key) == (pair.conn.local_key, pair.peer.key)
    assert mpc.data_len == len(data)
    if checksum:  # implied mapping DSN = IDSN+1, SSN = 1 (RFC 8684 §3.1)
        assert dss_csum_ok(key_sha(mpc.sndr_key)[1] + 1, 1, len(data), data, mpc.csum)
    else:
        assert mpc.csum is None
    assert counters(pair)["MPCapableDataTX"] == 1
    assert bytes(pair.peer.data) == data
    pair.assert_clean()


def test_second_segment_before_data_ack_carries_a_mapping():
    pair = established()
    pair.hold("from_peer")  # keep the peer's DATA_ACK away for now
    pair.local_send(blob(3000, 2))
    segs = data_segs(pair.segs("to_peer"))
    assert segs[0].mpc is not None and segs[0].mpc.data_len == segs[0].plen
    idsn = key_sha(pair.conn.local_key)[1]
    for s in segs[1:]:
        assert s.mpc is None
        off = sdiff(s.seq, pair.local.swire(0))
        assert (s.dss.dsn, s.dss.ssn, s.dss.dll) == ((idsn + 1 + off) & M64, off + 1, s.plen)
    pair.release("from_peer")
    assert bytes(pair.peer.data) == blob(3000, 2)
    pair.assert_clean()


def test_data_after_data_ack_carries_dss_mapping_and_data_ack():
    pair = established()
    a, b, c = blob(700, 3), blob(333, 4), blob(900, 5)
    pair.local_send(a)
    pair.peer_send(b)
    assert counters(pair)["MPFullyEstablished"] == 1
    m = pair.mark()
    pair.local_send(c)
    seg = data_segs(pair.since(m, "to_peer"))[0]
    assert seg.mpc is None
    dss = seg.dss
    assert dss.flags & (DSS_A | DSS_M | DSS_m | DSS_F) == DSS_A | DSS_M | DSS_m
    assert dss.length == 22  # 32-bit DATA_ACK + 64-bit mapping, no checksum
    assert dss.dsn == (key_sha(pair.conn.local_key)[1] + 1 + len(a)) & M64
    assert dss.ssn == len(a) + 1 and dss.dll == len(c)
    # DATA_ACK = peer's IDSN + 1 + what the local stack acknowledged
    assert dss.data_ack == (pair.peer.idsn + 1 + len(b)) & M32
    assert bytes(pair.peer.data) == a + c
    assert counters(pair)["DSSTx"] >= 1
    pair.assert_clean()


# ==================================================== 3. peer data to the local stack
@pytest.mark.parametrize("segs_per_map,map_mode", [(1, "first"), (3, "first"), (3, "every")])
def test_peer_data_delivered_with_right_sequence_numbers(segs_per_map, map_mode):
    pair = established()
    data = blob(4200 * 2 + 77, 6)
    pair.peer_send(data, segs_per_map=segs_per_map, map_mode=map_mode)
    delivered = data_segs(pair.segs("to_local"))
    assert len(delivered) == 7
    off = 0
    for s in delivered:
        assert s.seq == pair.local.rwire(off)  # TSN = peer ISN + 1 + offset
        assert s.payload == data[off:off + s.plen]
        # at most the DSS stays (passed unchanged; a plain TCP socket ignores it)
        assert s.csum_ok and all(o[2] >> 4 == 2 for k, o in s.opts if k == 30)
        off += s.plen
    assert bytes(pair.local.rcv) == data
    assert counters(pair)["DSSNoMapping"] == 0
    pair.assert_clean()


def test_local_ack_number_is_the_translated_data_ack():
    """The local stack's cumulative ACK is the peer's DATA_ACK, not its subflow ACK."""
    pair = established()
    pair.peer_send(b"p" * 10)
    pair.drop("from_peer", lambda s: not s.plen, count=100)  # the peer's ACKs are lost
    pair.local_send(blob(2000, 8))
    peer = pair.peer
    assert pair.local.snd_una == 0 and peer.rcv_nxt == 2000
    # the peer's subflow ACK covers all 2000 bytes but its DATA_ACK only 1500
    m = pair.mark()
    dsn = (peer.idsn + 1 + 10) & M64
    pkt = peer._build(0, peer.snd_nxt, dss_opt(
        data_ack=(key_sha(pair.conn.local_key)[1] + 1 + 1500) & M64, ack64=True, dsn=dsn,
        ssn=11, dll=5), payload=b"q" * 5)
    pair.emit_peer([pkt])
    pair.pump()
    s = pair.since(m, "to_local")[0]
    assert s.ack == pair.local.swire(1500)
    assert pair.local.snd_una == 1500
    assert bytes(pair.local.rcv) == b"p" * 10 + b"q" * 5


def test_data_before_its_mapping_is_dropped_then_delivered_after_retransmission():
    pair = established()
    data = blob(4200, 9)
    pair.drop("from_peer", lambda s: s.plen and s.dss and s.dss.flags & DSS_M)
    pair.peer_send(data, segs_per_map=3, map_mode="first")
    assert counters(pair)["DSSNoMapping"] == 2
    assert [v for d, v in pair.verdicts[-4:] if d == "in"].count(Verdict.DROP) == 2
    assert pair.local.rcv == b""
    pair.emit_peer(pair.peer.retransmit())  # the mapping comes back with segment 1
    pair.pump()
    assert bytes(pair.local.rcv) == data
    pair.assert_clean()


# =================================================================== 4. bulk
@pytest.mark.parametrize("kw", [
    dict(),
    dict(segs_per_map=4, map_mode="first"),
    dict(segs_per_map=3, map_mode="every", checksum=True),
], ids=["per-segment", "4seg-maps", "3seg-maps-csum"])
def test_one_megabyte_each_way(kw):
    checksum = kw.pop("checksum", False)
    pair = established(checksum=checksum)
    up, down = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(1 << 20)
    pair.transfer(up, down, **kw)
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    wire = pair.segs("to_peer")
    assert all(len(s.raw) <= MTU and len(s.opt_block) <= 40 for s in wire)
    assert sum(s.plen for s in wire) == len(up)  # no retransmissions needed
    # every data segment on the wire carries a mapping (MPC for the first)
    assert all(s.dss is not None and s.dss.flags & DSS_M or s.mpc for s in data_segs(wire))
    pair.assert_clean()


def test_lossy_reordering_transfer():
    """Drops, duplicates and reordering in both directions on the wire."""
    pair = established()
    rng = random.Random(5)

    def chaos(direction):
        def match(_s):
            return rng.random() < 0.04
        pair.drop(direction, match, count=10 ** 9)
        pair.duplicate(direction, lambda s: rng.random() < 0.03, count=10 ** 9)
    chaos("to_peer")
    chaos("from_peer")
    up, down = blob(150_000, 10), blob(150_000, 11)
    pair.transfer(up, down, window=16)
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    pair.assert_clean()


def test_held_segments_delivered_out_of_order():
    pair = established()
    pair.hold("from_peer", lambda s: s.plen > 0, count=2)
    pair.hold("to_peer", lambda s: s.plen > 0, count=2)
    up, down = blob(10_000, 12), blob(10_000, 13)
    pair.local_send(up)
    pair.peer_send(down)
    pair.release("from_peer")
    pair.release("to_peer")
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    pair.assert_clean()


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


def close_both(pair: ProxyPair) -> None:
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()


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


# ================================================================= 7. fallback
def test_synack_without_mp_capable_falls_back_untouched():
    pair = ProxyPair(peer_mode="plain")
    pair.handshake()
    pair.transfer(blob(20_000, 36), blob(20_000, 37))
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    assert [v for _, v in pair.verdicts[1:]] == [Verdict.ACCEPT] * (len(pair.verdicts) - 1)
    assert bytes(pair.peer.data) == blob(20_000, 36)
    assert bytes(pair.local.rcv) == blob(20_000, 37)
    assert pair.peer.mptcp_opts_in_fallback == 0
    c = counters(pair)
    assert c["MPCapableFallbackSYNACK"] == 1 and c["FallbackConnections"] == 1
    assert pair.conn.state == ConnState.FALLBACK
    pair.assert_clean()


MALFORMED_SYNACK_MPC = {
    "v0": bytes([30, 12, 0x00, 0x81]) + (0x1122334455667788).to_bytes(8, "big"),
    "flag_B": mpc_opt(flags=CAP_H | 0x40, sndr_key=0x1122334455667788),
    "no_H": mpc_opt(flags=0, sndr_key=0x1122334455667788),
    "len20": mpc_opt(sndr_key=1, rcvr_key=2),
    "len4": mpc_opt(),
    "len3": bytes([30, 3, 0x01]),
    "len2": bytes([30, 2]),
}


@pytest.mark.parametrize("name", [
    n for n in MALFORMED_SYNACK_MPC])
def test_malformed_mp_capable_in_synack_falls_back(name):
    pair = ProxyPair(peer_mode="plain", synack_mpc=MALFORMED_SYNACK_MPC[name])
    pair.handshake()
    pair.transfer(b"up" * 1000, b"down" * 1000)
    assert [v for _, v in pair.verdicts[1:]] == [Verdict.ACCEPT] * (len(pair.verdicts) - 1)
    assert counters(pair)["MPCapableFallbackSYNACK"] == 1
    assert bytes(pair.local.rcv) == b"down" * 1000


def test_peer_data_without_dss_before_data_ack_falls_back():
    pair = established()
    pair.peer.mptcp = False  # the peer fell back (e.g. it never saw our third ACK's MPC)
    m = len(pair.verdicts)
    pair.peer_send(blob(5000, 39))
    pair.transfer(blob(5000, 38))
    assert all(v is Verdict.ACCEPT for _, v in pair.verdicts[m:])
    assert counters(pair)["MPCapableDataFallback"] == 1
    assert counters(pair)["FallbackConnections"] == 1
    assert pair.conn.state == ConnState.FALLBACK
    assert bytes(pair.local.rcv) == blob(5000, 39)
    assert bytes(pair.peer.data) == blob(5000, 38)
    assert pair.peer.mptcp_opts_in_fallback == 0


@pytest.mark.parametrize("checksum", [False, True])
def test_infinite_mapping_falls_back_to_plain_tcp(checksum):
    pair = established(peer_checksum=checksum)
    pair.transfer(blob(3000, 40), blob(3000, 41))
    peer = pair.peer
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    inf = dss_opt(data_ack=dack, ack64=True, dsn=(peer.idsn + 1 + peer.d_nxt) & M64, ssn=0,
                  dll=0, csum=0 if checksum else None)
    extra = b"after the infinite mapping"
    pkt = peer._build(PSH, peer.s_alloc, inf, payload=extra)
    peer.mptcp = False
    peer.s_alloc += len(extra)
    peer.snd_nxt = peer.s_alloc
    m = len(pair.verdicts)
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["InfiniteMapRx"] == 1
    assert pair.conn.state == ConnState.FALLBACK
    assert pair.verdicts[m] == ("in", Verdict.ACCEPT)
    assert bytes(pair.local.rcv) == blob(3000, 41) + extra
    peer.segs.clear()
    pair.transfer(b"tail-up", b"tail-down")
    assert bytes(pair.local.rcv).endswith(b"tail-down")
    assert bytes(peer.data).endswith(b"tail-up")


# ================================================================ 8. checksums
@pytest.mark.parametrize("checksum,peer_checksum", [(False, True), (True, False), (True, True)])
def test_checksums_negotiated_and_correct(checksum, peer_checksum):
    pair = established(checksum=checksum, peer_checksum=peer_checksum)
    third = pair.segs("to_peer")[1]
    assert third.mpc.flags & CAP_A  # the A bit is echoed / asked in the third ACK
    assert pair.peer.csum_enabled
    pair.transfer(blob(60_000, 42), blob(60_000, 43), segs_per_map=2)
    n = 0
    for s in data_segs(pair.segs("to_peer")):
        if s.dss is not None:  # verify each single-segment mapping independently
            d = s.dss
            assert d.csum is not None and d.length == 24
            assert dss_csum(d.dsn, d.ssn, d.dll, s.payload) == d.csum or \
                dss_csum_ok(d.dsn, d.ssn, d.dll, s.payload, d.csum)
            n += 1
    assert n > 30
    assert counters(pair)["DSSChecksumTx"] >= n
    assert counters(pair)["DataCsumErr"] == 0
    pair.assert_clean()


def test_missing_checksum_resets():
    pair = established(peer_checksum=True)
    pair.transfer(blob(2000, 44), blob(2000, 45))
    pair.peer.csum_enabled = False  # a DSS mapping without the negotiated checksum
    pair.peer_send(b"no checksum here")
    assert counters(pair)["DataCsumMissing"] == 1
    assert pair.peer.fastclosed and pair.peer.rst_reason == 1  # MPTCP_RST_EMPTCP
    assert pair.local.reset
    assert bytes(pair.local.rcv) == blob(2000, 45)
    assert pair.conn.state == ConnState.CLOSED


def test_corrupted_payload_fails_the_dss_checksum_then_both_fall_back():
    """RFC 8684 §3.7: a DSS checksum failure on a connection that still maps one to one
    (one subflow) is not a reset: the segment is dropped, MP_FAIL tells the peer the DSN
    of the failed mapping, the peer answers with an infinite mapping, and the connection
    goes on as plain TCP with its data intact."""
    pair = established(peer_checksum=True)
    pair.transfer(blob(2000, 46), blob(2000, 47))
    peer = pair.peer
    good = b"genuine payload!"
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    cs = dss_csum(dsn, peer.s_alloc + 1, len(good), good)
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    bad = b"tampered payload"  # a middlebox rewrote it and fixed the TCP checksum
    pkt = peer._build(PSH, peer.s_alloc, dss_opt(data_ack=dack, dsn=dsn, ssn=peer.s_alloc + 1,
                                                 dll=len(good), csum=cs), payload=bad)
    m = len(pair.verdicts)
    pair.emit_peer([pkt])
    pair.pump()
    assert parse_seg(pkt).csum_ok
    assert pair.verdicts[m] == ("in", Verdict.DROP)
    assert counters(pair)["DataCsumErr"] == 1 and counters(pair)["MPFailTx"] == 1
    fails = [x for s in pair.segs("to_peer") for x in s.mp
             if isinstance(x, OtherMp) and x.subtype == 6]
    assert len(fails) == 1 and struct.unpack("!Q", fails[0].raw[4:12])[0] == dsn
    assert not pair.peer.fastclosed and not pair.local.reset
    assert bad not in bytes(pair.local.rcv)
    # the peer's answer: the genuine bytes again, under an infinite mapping (DLL 0)
    inf = dss_opt(data_ack=dack, dsn=dsn, ssn=peer.s_alloc + 1, dll=0, csum=0)
    pair.emit_peer([peer._build(PSH, peer.s_alloc, inf, payload=good)])
    pair.pump()
    assert counters(pair)["InfiniteMapRx"] == 1
    assert pair.conn.state == ConnState.FALLBACK
    assert bytes(pair.local.rcv) == blob(2000, 47) + good


def test_corrupted_payload_without_one_to_one_mapping_resets():
    """A connection that no longer maps one to one (here: a SEND table entry whose
    subflow and data sequence differ, as after a handover) cannot fall back: a checksum
    failure resets the subflow with reason 6 (middlebox interference; the last one here,
    so the connection)."""
    pair = established(peer_checksum=True)
    pair.transfer(blob(2000, 46), blob(2000, 47))
    pair.conn.sf0.send_map.entries.insert(0, [0, 7, 1])
    peer = pair.peer
    good = b"genuine payload!"
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    cs = dss_csum(dsn, peer.s_alloc + 1, len(good), good)
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    pkt = peer._build(PSH, peer.s_alloc, dss_opt(data_ack=dack, dsn=dsn, ssn=peer.s_alloc + 1,
                                                 dll=len(good), csum=cs), payload=b"x" * 16)
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["DataCsumErr"] == 1 and counters(pair)["MPFailTx"] == 0
    assert pair.peer.fastclosed and pair.peer.rst_reason == 6
    assert pair.local.reset


# ======================================================= 9. SACK and timestamps
def test_peer_sack_blocks_translated_for_the_local_stack():
    pair = established()
    pair.transfer(b"w" * 100, b"v" * 100)
    nth = iter(range(100))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) == 1)  # lose the 2nd segment
    m = pair.mark()
    pair.local_send(blob(5 * 1424, 48))
    assert pair.peer.sacks_seen == []
    seen = pair.local.sacks_seen
    assert seen, "the local stack got no SACK blocks"
    # offsets in the local stack's own sequence space: bytes 100+1424*2 .. 100+1424*5
    assert seen[-1][0] == (100 + 2 * 1424, 100 + 5 * 1424)
    assert all(s.ack == pair.local.swire(100 + 1424) for s in pair.since(m, "to_local")[1:])
    pair.emit_local(pair.local.retransmit(only_first=True))
    pair.pump()
    assert pair.local.snd_una == 100 + 5 * 1424
    assert bytes(pair.peer.data) == b"w" * 100 + blob(5 * 1424, 48)
    pair.assert_clean()


def test_local_sack_blocks_translated_for_the_peer():
    pair = established()
    pair.transfer(b"w" * 100, b"v" * 100)
    nth = iter(range(100))
    pair.drop("from_peer", lambda s: s.plen > 0 and next(nth) == 1)
    pair.peer_send(blob(5 * 1400, 49))
    assert pair.local.sacks_seen == []
    assert pair.peer.sacks_seen, "the peer got no SACK blocks"
    # in the peer's subflow sequence space: its 3rd..5th segments
    assert pair.peer.sacks_seen[-1][0] == (100 + 2 * 1400, 100 + 5 * 1400)
    assert pair.peer.snd_una == 100 + 1400
    pair.emit_peer(pair.peer.retransmit(only_first=True))
    pair.pump()
    assert bytes(pair.local.rcv) == b"v" * 100 + blob(5 * 1400, 49)
    assert pair.peer.snd_una == 100 + 5 * 1400
    pair.assert_clean()


def test_timestamps_pass_and_echo():
    pair = established()
    pair.peer_send(b"hello")
    peer_tsval = pair.peer.tsvals_sent[-1]
    pair.advance(0.5)
    m = pair.mark()
    pair.local_send(b"x" * 3000)
    outs = data_segs(pair.since(m, "out"))
    wires = data_segs(pair.since(m, "to_peer"))
    assert [s.ts[0] for s in wires] == [s.ts[0] for s in outs]  # local TSval passes
    assert wires[0].ts[1] == peer_tsval  # TSecr echoes the peer's last TSval
    pair.assert_clean()


def test_tsval_shown_to_local_never_goes_backwards():
    pair = established()
    pair.transfer(b"a", b"b")
    pair.hold("from_peer", lambda s: s.plen > 0, count=1)
    pair.peer_send(b"older")
    pair.advance(1.0)
    pair.peer_send(b"newer")
    pair.release("from_peer")
    shown = [s.ts[0] for s in pair.segs("to_local")]
    assert all(not sdiff(b, a) < 0 for a, b in zip(shown, shown[1:])), shown
    assert bytes(pair.local.rcv) == b"boldernewer"
    pair.assert_clean()


# ================================================================ 10. robustness
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_random_bytes_never_raise(data, inbound):
    proxy = Proxy(ProxyConfig(), seeded_random_bytes(1))
    buf = bytearray(data)
    v = proxy.inbound(buf, 0.0) if inbound else proxy.outbound(buf, 0.0)
    assert isinstance(v, Verdict)


def test_unparsable_packets_are_counted():
    pair = established()
    syn = pair.segs("out")[0].raw
    for bad in (syn[:30], syn[:9] + b"\x11" + syn[10:], b"\x00" * 60):
        assert pair.proxy.inbound(bytearray(bad), 0.0) is Verdict.ACCEPT
    assert counters(pair)["PktNotTcp"] == 3


def _established_with_traffic(seed: int) -> ProxyPair:
    pair = established(seed=seed)
    pair.transfer(blob(3000, seed % 97), blob(3000, seed % 89 + 1), segs_per_map=2)
    return pair


def _mutate(raw: bytes, how: str, pos: int, val: int) -> bytearray:
    b = bytearray(raw)
    ihl = 40 if raw[0] >> 4 == 6 else (raw[0] & 15) * 4
    hl = (b[ihl + 12] >> 4) * 4
    opt_lo, opt_hi = ihl + 20, ihl + hl
    if how == "flip_option_byte" and opt_hi > opt_lo:
        b[opt_lo + pos % (opt_hi - opt_lo)] ^= val or 1
    elif how == "bogus_option_length" and opt_hi > opt_lo:
        i = opt_lo
        idx = []
        while i < opt_hi:
            if b[i] in (0, 1):
                i += 1
                continue
            idx.append(i + 1)
            i += max(b[i + 1], 2) if i + 1 < opt_hi else 1
        if idx:
            b[idx[pos % len(idx)]] = val
    elif how == "truncate":
        del b[pos % len(b):]
    elif how == "any_byte":
        b[pos % len(b)] ^= val or 1
    return b


def _mapping(raw) -> tuple | None:
    try:
        d = parse_seg(raw).dss
    except (AssertionError, struct.error, IndexError):
        return ("unparsable",)
    return None if d is None or not d.flags & DSS_M else (d.dsn, d.ssn, d.dll, d.flags)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), pick=st.integers(0, 10 ** 6),
       how=st.sampled_from(["flip_option_byte", "bogus_option_length", "truncate"]),
       pos=st.integers(0, 10 ** 6), val=st.integers(0, 255), fix_csum=st.booleans())
def test_mutated_packets_never_raise_and_transfer_continues(seed, pick, how, pos, val,
                                                            fix_csum):
    pair = _established_with_traffic(seed % 5)
    cands = [h for h in pair.hops if h.hop in ("out", "from_peer") and not h.seg.syn]
    h = cands[pick % len(cands)]
    b = _mutate(h.seg.raw, how, pos, val)
    if fix_csum and len(b) >= 60:
        from mptcp_proxy.core.tcp import parse_packet
        p = parse_packet(bytearray(b))
        if p is not None:
            b = p.recompute_checksums()
    if h.hop == "out":
        v = pair.proxy.outbound(b, pair.now)
    else:
        v = pair.proxy.inbound(b, pair.now)
    assert isinstance(v, Verdict)
    pair._forged()
    if pair.conn.state != ConnState.ESTABLISHED:
        return  # (a mutated packet may legitimately end the connection)
    if fix_csum and h.hop == "from_peer" and _mapping(b) != _mapping(h.seg.raw):
        # a wrong mapping in a segment with a valid TCP checksum is a peer lying about
        # its data: without DSS checksums neither Linux nor the proxy can detect it
        # (with a bad checksum the segment is discarded: covered by the cases above)
        return
    pair.local.violations.clear()  # the local stack may have seen the bad packet
    pair.transfer(blob(4000, 50), blob(4000, 51), max_rounds=60)
    assert bytes(pair.peer.data).endswith(blob(4000, 50))
    assert bytes(pair.local.rcv).endswith(blob(4000, 51))


@pytest.mark.parametrize("direction", ["out", "in"])
def test_malformed_option_list_is_counted_and_dropped(direction):
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    if direction == "out":
        pkt = pair.local._seg(0, pair.local.snd_nxt, extra=b"\x01\x01\x05\x01")
        assert pair.proxy.outbound(bytearray(pkt), pair.now) is Verdict.DROP
    else:
        pkt = pair.peer._build(0, pair.peer.snd_nxt, b"\x01\x01\x05\x01")
        assert pair.proxy.inbound(bytearray(pkt), pair.now) is Verdict.DROP
    assert counters(pair)["PktMalformed"] == 1
    pair.transfer(b"c" * 100, b"d" * 100)
    assert bytes(pair.peer.data) == b"a" * 100 + b"c" * 100


def test_malformed_dss_is_counted():
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    bad = bytes([30, 9, 0x20, DSS_A]) + b"\x00" * 5  # length 9 for A (expects 8)
    pkt = pair.peer._build(0, pair.peer.snd_nxt, bad)
    pair.proxy.inbound(bytearray(pkt), pair.now)
    assert counters(pair)["OptMalformed"] == 1
    pair.transfer(b"c" * 100, b"d" * 100)
    assert bytes(pair.local.rcv) == b"b" * 100 + b"d" * 100


@pytest.mark.parametrize("variant", ["bad_tcp_checksum", "old_duplicate"])
def test_bogus_mapping_on_a_discarded_segment_does_not_poison_later_data(variant):
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    peer = pair.peer
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    bogus = dss_opt(data_ack=dack, dsn=(peer.idsn + 1 + peer.d_nxt + 1400) & M64,
                    ssn=peer.s_alloc + 1, dll=1400)  # next subflow bytes -> wrong DSN
    if variant == "bad_tcp_checksum":
        pkt = bytearray(peer._build(PSH, peer.s_alloc, bogus, payload=b"X" * 1400))
        pkt[-1] ^= 0xFF
        assert not parse_seg(pkt).csum_ok
    else:
        pkt = bytearray(peer._build(PSH, 0, bogus, payload=b"b" * 50))
    pair.emit_peer([bytes(pkt)])
    pair.pump()
    pair.local.violations.clear()  # the local stack rightly refused that packet
    pair.peer_send(blob(2800, 59))
    assert bytes(pair.local.rcv) == b"b" * 100 + blob(2800, 59)


@pytest.mark.parametrize("variant", ["bad_tcp_checksum", "out_of_window_seq"])
def test_discarded_segment_cannot_acknowledge_data_to_the_local_stack(variant):
    pair = established()
    pair.transfer(b"a" * 100, b"b" * 100)
    nth = iter(range(100))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) == 1)  # segment 2 lost
    pair.drop("from_peer", count=100)  # ... and the peer's ACKs
    pair.local_send(blob(3 * 1424, 60))
    pair.rules.clear()
    peer = pair.peer
    everything = (key_sha(pair.conn.local_key)[1] + 1 + pair.local.snd_nxt) & M64
    opt = dss_opt(data_ack=everything, ack64=True)
    if variant == "bad_tcp_checksum":
        pkt = bytearray(peer._build(0, peer.snd_nxt, opt))
        pkt[20 + 14] ^= 0x01  # window field: the TCP checksum no longer verifies
        assert not parse_seg(pkt).csum_ok
    else:
        pkt = bytearray(peer._build(0, peer.snd_nxt + (1 << 30), opt))
    pair.emit_peer([bytes(pkt)])
    pair.pump()
    pair.local.violations.clear()  # the local stack rightly refused the bad copy
    pair.peer_send(b"hi")  # the next valid packet carries the proxy's ACK
    assert pair.local.snd_una == 100 + 1424  # what the peer really acknowledged
    pair.emit_local(pair.local.retransmit())
    pair.pump()
    assert bytes(pair.peer.data) == b"a" * 100 + blob(3 * 1424, 60)


# =========================================================== 11. retransmissions
def test_retransmitted_local_segment_keeps_its_mapping():
    pair = established()
    pair.transfer(b"a" * 500, b"b" * 500)
    nth = iter(range(100))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) == 1)
    m = pair.mark()
    pair.local_send(blob(3 * 1424, 52))
    originals = data_segs(pair.since(m, "to_peer"))
    lost = originals[1]
    m = pair.mark()
    pair.emit_local(pair.local.retransmit(only_first=True))
    pair.pump()
    again = data_segs(pair.since(m, "to_peer"))
    assert len(again) == 1
    r = again[0]
    assert (r.seq, r.payload) == (lost.seq, lost.payload)
    assert (r.dss.dsn, r.dss.ssn, r.dss.dll) == (lost.dss.dsn, lost.dss.ssn, lost.dss.dll)
    assert bytes(pair.peer.data) == b"a" * 500 + blob(3 * 1424, 52)
    pair.assert_clean()


def test_retransmitted_first_segment_keeps_the_implied_mapping():
    pair = established()
    pair.drop("to_peer", lambda s: s.plen > 0)
    pair.local_send(b"first" * 50)
    first = data_segs(pair.segs("to_peer"))[0]
    pair.emit_local(pair.local.retransmit())
    pair.pump()
    again = data_segs(pair.segs("to_peer"))[1]
    assert again.mpc is not None and again.mpc.data_len == first.mpc.data_len
    assert bytes(pair.peer.data) == b"first" * 50
    # once the peer's DATA_ACK arrived, a late re-send of those bytes (racing that
    # DATA_ACK on its way to the local stack) is consumed: the peer would drop it as old
    n_sent = len(data_segs(pair.segs("to_peer")))
    pair.emit_local([pair.local._seg(PSH, 0, b"first" * 50)])
    pair.pump()
    assert len(data_segs(pair.segs("to_peer"))) == n_sent
    assert counters(pair)["RetransConsumed"] == 1
    assert bytes(pair.peer.data) == b"first" * 50
    pair.assert_clean()


def test_lost_third_ack_peer_retransmits_synack():
    pair = ProxyPair()
    pair.drop("to_peer", lambda s: s.ackf and not s.syn and not s.plen)
    pair.handshake()
    assert pair.peer.state == "SYN_RCVD"
    m = pair.mark()
    pair.emit_peer([pair.peer.syn_ack()])
    pair.pump()
    synack_local = pair.since(m, "to_local")[0]
    assert not synack_local.has_mptcp and synack_local.mss == 1460 - 24
    ack = pair.since(m, "to_peer")[0]
    assert ack.mpc is not None and ack.mpc.length == 20
    assert pair.peer.state == "ESTABLISHED"
    pair.transfer(blob(5000, 53), blob(5000, 54))
    assert bytes(pair.peer.data) == blob(5000, 53)
    pair.assert_clean()


def test_lost_third_ack_then_data_establishes_the_peer():
    pair = ProxyPair()
    pair.drop("to_peer", lambda s: s.ackf and not s.syn and not s.plen)
    pair.handshake()
    pair.local_send(b"early data")
    assert pair.peer.state == "ESTABLISHED"
    assert bytes(pair.peer.data) == b"early data"
    pair.assert_clean()


@pytest.mark.parametrize("retries", [2, 1])
def test_syn_retransmissions_drop_mp_capable_after_the_limit(retries):
    pair = ProxyPair(config=ProxyConfig(syn_mpc_retries=retries))
    pair.drop("to_peer", lambda s: s.syn, count=retries + 1)
    for _ in range(retries + 2):
        pair.emit_local(pair.local.syn())
        pair.pump()
        pair.advance(1.0)
    syns = [s for s in pair.segs("to_peer") if s.syn]
    assert [s.mpc is not None for s in syns] == [True] * (retries + 1) + [False]
    assert all(s.csum_ok for s in syns)
    c = counters(pair)
    assert c["MPCapableSYNTX"] == retries + 1 and c["MPCapableSYNTXDrop"] == 1
    # the plain SYN got a plain SYN/ACK: fallback, and traffic flows untouched
    assert pair.conn.state == ConnState.FALLBACK
    pair.transfer(b"x" * 3000, b"y" * 3000)
    assert bytes(pair.local.rcv) == b"y" * 3000


# ======================================================================= IPv6
def test_ipv6_handshake_and_transfer():
    pair = ProxyPair(v6=True, peer_kw=dict(mss=1440))
    pair.handshake()
    assert pair.segs("to_peer")[0].v6 and pair.segs("to_peer")[0].mpc is not None
    assert pair.segs("to_local")[0].mss == 1440 - 24
    up, down = blob(50_000, 55), blob(50_000, 56)
    pair.transfer(up, down)
    assert bytes(pair.peer.data) == up and bytes(pair.local.rcv) == down
    assert all(len(s.raw) <= MTU for s in pair.segs("to_peer"))
    close_both(pair)
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    assert pair.conn.state == ConnState.CLOSED
    pair.assert_clean()


# ================================================ sequence and DSN wrap-around
def _key_with_idsn_near_wrap(limit: int, start: int) -> int:
    k = start
    while (key_sha(k)[1] & M32) < (1 << 32) - limit:
        k += 1
    return k


def test_32bit_dsn_and_data_ack_wrap():
    """32-bit DSNs from the peer and the proxy's 32-bit DATA_ACKs across a 2**32
    wrap of both IDSNs' low halves."""
    peer_key = _key_with_idsn_near_wrap(150_000, 1)
    local_key = _key_with_idsn_near_wrap(150_000, peer_key + 1)  # the proxy's key
    keys = iter([local_key.to_bytes(8, "big")])
    pair = ProxyPair(peer_key=peer_key, random_bytes=lambda n: next(keys),
                     peer_kw=dict(force_ack64=False))
    pair.handshake()
    assert pair.conn.local_key == local_key
    up, down = blob(200_000, 57), blob(200_000, 58)
    pair.transfer(up, down, dsn64=False)
    assert bytes(pair.peer.data) == up and bytes(pair.local.rcv) == down
    pair.assert_clean()


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


# ============================================================== mappings are fixed once sent
@pytest.mark.parametrize("checksum", [False, True])
def test_resegmented_retransmission_keeps_the_original_mapping(checksum):
    """With GSO the proxy maps a whole super-packet at once (one DSS copied on every
    segment). When the local stack later retransmits only part of it (re-segmented),
    the DSS must be the ORIGINAL mapping, checksum included: Linux, holding the
    original as its current mapping, takes a different one covering the segment as
    DSSNotMatching (fallback or reset). RFC 8684 §3.3.1."""
    pair = established(checksum=checksum, peer_checksum=checksum)
    pair.transfer(b"a" * 100, b"b" * 100)  # fully established both ways
    loc = pair.local
    data = blob(4000, 77)
    loc.write(data)
    rel = loc.snd_nxt
    big = loc._seg(PSH, rel, data)  # a 4000-byte "super-packet"
    loc.snd_nxt += len(data)
    pair.drop("to_peer", lambda s: s.plen == 4000)
    m = pair.mark()
    pair.emit_local([big])
    pair.pump()
    first = [s for s in pair.since(m, "to_peer") if s.plen]
    assert len(first) == 1 and first[0].dss.dll == 4000
    orig = (first[0].dss.dsn, first[0].dss.ssn, first[0].dss.dll, first[0].dss.csum)
    # the local stack resends the same bytes in two pieces of its own choosing
    m = pair.mark()
    pair.emit_local([loc._seg(PSH, rel, data[:1400]), loc._seg(PSH, rel + 1400, data[1400:])])
    pair.pump()
    again = [s for s in pair.since(m, "to_peer") if s.plen]
    assert [s.plen for s in again] == [1400, 2600]
    for s in again:
        assert (s.dss.dsn, s.dss.ssn, s.dss.dll, s.dss.csum) == orig
    assert bytes(pair.peer.data).endswith(data)
    # (the model has no GSO: its MTU check flags the artificial super-packets, nothing else)
    problems = [v for v in pair.peer.violations + pair.local.violations if "MTU" not in v]
    assert not problems, problems


def test_new_data_above_unseen_bytes_leaves_no_subflow_hole():
    """The local stack sent bytes the proxy never saw (dropped while no subflow could
    carry them, break before make): its next new data is mapped at the subflow's next
    sequence number, not after a reserved gap, so the peer's subflow has no hole; the
    unseen bytes get a mapping of their own when the local stack re-sends them, and the
    stream arrives whole."""
    pair = established()
    a = blob(3000, 11)
    pair.local_send(a)
    data = blob(6000, 12)
    pair.local.write(data)
    segs = pair.local.push(None)
    assert len(segs) >= 3
    pair.emit_local(segs[:1] + segs[2:])  # the second segment never reaches the proxy
    pair.pump()
    sent = data_segs(pair.since(0, "to_peer"))
    ssn_ranges = sorted((s.dss.ssn, s.dss.ssn + s.dss.dll) for s in sent if s.dss)
    ends = {hi for _, hi in ssn_ranges}
    # subflow sequence space contiguous: every mapping starts where an earlier one ended
    assert all(lo in ends for lo, _ in ssn_ranges[1:]), ssn_ranges
    assert bytes(pair.peer.data) != a + data  # the middle is missing at the data level
    pair.advance(0.3)
    pair.emit_local(pair.local.retransmit())
    pair.pump()
    assert bytes(pair.peer.data) == a + data
    pair.assert_clean()


def test_payload_running_past_its_mapping_is_cut_for_the_local_stack():
    """The verdict contract (issue 8, finding 2): a segment whose payload runs past the
    mapping it carries is cut to the mapping, and the cut buffer is what passes (MANGLE);
    the local stack never receives bytes the proxy did not map."""
    pair = established()
    pair.transfer(blob(2000, 60), blob(2000, 61))
    peer = pair.peer
    mapped_part, extra = b"m" * 300, b"x" * 700
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    pkt = peer._build(PSH, peer.s_alloc, dss_opt(data_ack=dack, dsn=dsn, ssn=peer.s_alloc + 1,
                                                 dll=len(mapped_part)),
                      payload=mapped_part + extra)
    m = len(pair.verdicts)
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["DSSPartialMapping"] == 1
    assert pair.verdicts[m] == ("in", Verdict.MANGLE)
    assert bytes(pair.local.rcv) == blob(2000, 61) + mapped_part


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
