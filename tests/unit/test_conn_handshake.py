"""The connection's handshake and first data segments (MP_CAPABLE in SYN, SYN/ACK, third ACK
and first data; the implied first mapping) and their retransmissions, on the one-connection
fake network of tests/unit/lockstep/ (a scripted local TCP stack and a Linux 6.18-like
native MPTCP server around one Proxy, a fake clock). The peer model validates every packet
the proxy puts on the wire as Linux would (docs/protocol.md §1–§5); ``pair.assert_clean()``
asserts no party recorded a deviation."""

from __future__ import annotations

import pytest
from connection_kit import blob, counters, data_segs, established, non_mptcp, raw_mptcp
from lockstep.pair import ProxyPair, seeded_random_bytes
from lockstep.wire import (
    CAP_A,
    CAP_H,
    DSS_A,
    DSS_F,
    DSS_M,
    M32,
    M64,
    PSH,
    DSS_m,
    dss_csum_ok,
    key_sha,
    sdiff,
)

from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict


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
