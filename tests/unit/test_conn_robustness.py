"""Robustness of one connection against random, mutated and malformed packets (never an
exception, counted, the transfer continues), on the one-connection fake network of
tests/unit/lockstep/ (a scripted local TCP stack and a Linux 6.18-like native MPTCP server
around one Proxy, a fake clock). The peer model validates every packet the proxy puts on the
wire as Linux would (docs/protocol.md §1–§5); ``pair.assert_clean()`` asserts no party
recorded a deviation."""

from __future__ import annotations

import struct

import pytest
from connection_kit import blob, counters, established
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lockstep.decode import parse_seg
from lockstep.pair import ProxyPair, seeded_random_bytes
from lockstep.wire import DSS_A, DSS_M, M64, PSH, dss_opt, key_sha

from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict


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
