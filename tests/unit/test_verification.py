"""Verify before acting (issue 8): what the core takes from the wire, and what it never
passes unconverted. Each test drives the sans-I/O core with the Linux-like peer model
(tests/unit/lockstep/) and asserts the outcome the RFC asks for."""

import struct

from connection_kit import blob, counters, established
from lockstep.pair import ProxyPair, seeded_random_bytes
from lockstep.wire import M64, PSH, dss_opt

from mptcp_proxy.core.constants import TCP_ACK, TCP_RST, TCP_SYN
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.tcp import peek_tuple
from mptcp_proxy.core.verdict import Verdict


def _data_dack(peer):
    return (peer.remote_idsn + 1 + len(peer.data)) & M64


def test_ack_of_unsent_data_is_not_taken():
    """RFC 5961 §5: a segment acknowledging what we never sent (SEG.ACK > SND.NXT) changes
    nothing; it is answered with a (challenge) ACK and dropped, payload included."""
    pair = established()
    pair.transfer(blob(2000, 1), blob(2000, 2))
    peer = pair.peer
    sf = pair.conn.sf0
    before = (sf.snd_una, pair.conn.d_una, len(pair.local.rcv))
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    bad = peer._build(PSH, peer.s_alloc, dss_opt(data_ack=_data_dack(peer), dsn=dsn,
                                                 ssn=peer.s_alloc + 1, dll=5),
                      payload=b"hello", ack_rel=peer.snd_una + 10_000_000)
    m = len(pair.verdicts)
    pair.emit_peer([bad])
    pair.pump()
    assert pair.verdicts[m] == ("in", Verdict.DROP)
    assert counters(pair)["PktAckUnacceptable"] == 1 and counters(pair)["ChallengeAckTx"] == 1
    assert (sf.snd_una, pair.conn.d_una, len(pair.local.rcv)) == before


def test_segment_beyond_the_window_changes_nothing():
    pair = established()
    pair.transfer(blob(2000, 3), blob(2000, 4))
    peer = pair.peer
    far = peer.s_alloc + (1 << 28)
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    pkt = peer._build(PSH, far, dss_opt(data_ack=_data_dack(peer), dsn=dsn, ssn=far + 1,
                                        dll=6, fin=True), payload=b"fin!!")
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["PktOutOfWindow"] >= 1
    assert pair.conn.rcv_data_fin is None and pair.conn.state == ConnState.ESTABLISHED


def test_rst_only_at_rcv_nxt_even_with_a_hole():
    """RFC 5961 §3.2: RCV.NXT is the first byte not received in order; an RST at the
    highest byte received above a hole is challenged, not taken."""
    pair = established()
    pair.transfer(blob(2000, 5), blob(2000, 6))
    peer = pair.peer
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    above = peer.s_alloc + 1000  # 1000 bytes missing below this segment
    seg = peer._build(PSH, above, dss_opt(data_ack=_data_dack(peer), dsn=dsn + 1000,
                                          ssn=above + 1, dll=100), payload=b"x" * 100)
    pair.emit_peer([seg])
    pair.pump()
    rst = bytes(build_segment(peer.addr, pair.local.addr, peer.port, pair.local.port,
                              peer.swire(above + 100), 0, TCP_RST, 0))
    pair.emit_peer([rst])
    pair.pump()
    assert counters(pair)["RstChallenged"] == 1
    assert pair.conn.state == ConnState.ESTABLISHED and not pair.local.reset


def test_rst_in_syn_sent_must_acknowledge_our_syn():
    """RFC 9293 §3.10.7.3 / RFC 5961 §3: in SYN-SENT only an RST acknowledging our SYN
    counts; one that does not is dropped and the connection waits on."""
    pair = ProxyPair(seed=11)
    (syn,) = pair.local.syn()
    assert pair.proxy.outbound(bytearray(syn), pair.now) is Verdict.MANGLE  # no answer yet
    conn = pair.conn
    for ack in (0, conn.tcp_snd_base + 7):
        flags = TCP_RST | (TCP_ACK if ack else 0)
        pkt = bytearray(build_segment(pair.peer.addr, pair.local.addr, pair.peer.port,
                                      pair.local.port, 0, ack, flags, 0))
        assert pair.proxy.inbound(pkt, pair.now) is Verdict.DROP
    assert conn.state == ConnState.SYN_SENT
    pkt = bytearray(build_segment(pair.peer.addr, pair.local.addr, pair.peer.port,
                                  pair.local.port, 0, conn.tcp_snd_base, TCP_RST | TCP_ACK, 0))
    assert pair.proxy.inbound(pkt, pair.now) is Verdict.ACCEPT
    assert conn.state == ConnState.CLOSED


def test_data_fin_below_received_data_is_ignored():
    """A DATA_FIN below data already received would cap our DATA_ACK there and the
    transfer would never complete (issue 8, finding 4): it is ignored."""
    pair = established()
    pair.transfer(blob(2000, 7), blob(4000, 8))
    peer = pair.peer
    low = (peer.idsn + 1 + 100) & M64
    pkt = peer._build(0, peer.s_alloc, dss_opt(data_ack=_data_dack(peer), dsn=low, ssn=0,
                                               dll=1, fin=True))
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["DataFinBelowData"] == 1 and pair.conn.rcv_data_fin is None
    pair.transfer(b"", blob(3000, 9))
    assert bytes(pair.local.rcv) == blob(4000, 8) + blob(3000, 9)


def test_rewrite_that_would_overflow_the_ip_length_is_dropped():
    """Issue 8, finding 3: a segment whose rewrite would outgrow the 16-bit IP length (here
    a SYN carrying data up to 64 KB, to which MP_CAPABLE adds 4 bytes) is dropped and
    counted: no exception, never passed unconverted."""
    proxy = Proxy(ProxyConfig(), seeded_random_bytes(6))
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2])
    head = build_segment(a, b, 40000, 80, 1, 0, TCP_SYN, 65535, bytes([2, 4, 5, 180]))
    syn = bytearray(build_segment(a, b, 40000, 80, 1, 0, TCP_SYN, 65535, bytes([2, 4, 5, 180]),
                                  bytes(65535 - len(head))))
    assert len(syn) == 65535
    assert proxy.outbound(syn, 0.0) is Verdict.DROP
    assert proxy.counters["PktTooBig"] == 1


def test_fragments_and_extension_headers_of_a_converted_connection_are_dropped():
    pair = established()
    pair.transfer(blob(1000, 12), blob(1000, 13))
    peer = pair.peer
    seg = bytearray(peer._build(PSH, peer.s_alloc, b"", payload=b"y" * 200))
    frag = bytearray(seg)
    frag[6] |= 0x20  # MF: a first fragment
    frag[10:12] = b"\x00\x00"
    assert peek_tuple(frag) == (peer.addr, peer.port, pair.local.addr, pair.local.port)
    assert pair.proxy.inbound(frag, pair.now) is Verdict.DROP
    assert counters(pair)["PktUnconvertible"] == 1
    other = bytearray(seg)
    other[12:16] = bytes([192, 0, 2, 9])  # not a converted connection: passed on
    other[6] |= 0x20
    assert pair.proxy.inbound(other, pair.now) is Verdict.ACCEPT


def test_a_failure_resets_that_connection_on_both_sides():
    pair = established()
    pair.transfer(blob(1000, 14), blob(1000, 15))
    buf = bytearray(pair.peer._build(PSH, pair.peer.s_alloc, b"", payload=b"z"))
    assert pair.proxy.contain_failure(buf, False, pair.now) is Verdict.DROP
    pair._forged()
    pair.pump()
    assert pair.conn.state == ConnState.CLOSED
    assert pair.peer.fastclosed and pair.local.reset
    assert counters(pair)["InternalErrors"] == 1 and counters(pair)["ConnAbortedOnError"] == 1


def test_forged_packets_carry_the_tcp_sides_dscp_and_ttl():
    """Segments the proxy forges (here an MP_PRIO on a duplicate ACK) carry the DSCP and
    TTL of the TCP side's socket (the ECN bits cleared: they are not ECN-capable)."""
    pair = established(local_kw=dict(tos=0xB8 | 0x01, ttl=33))  # EF + ECT(1)
    pair.transfer(blob(1000, 16), blob(1000, 17))
    m = pair.mark()
    pair.proxy.pm.set_prio(pair.conn, pair.conn.sf0, True, pair.now)
    pair._forged()
    (forged,) = pair.since(m, "to_peer")
    assert forged.raw[1] == 0xB8 and forged.raw[8] == 33


def test_native_mptcp_syn_is_left_alone():
    proxy = Proxy(ProxyConfig(), seeded_random_bytes(5))
    syn = bytearray(build_segment(bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2]), 40000, 80, 1, 0,
                                  TCP_SYN, 65535, bytes([30, 4, 0x01, 0x01])))
    assert proxy.outbound(syn, 0.0) is Verdict.ACCEPT
    assert not proxy.connections and proxy.counters["PktAlreadyMptcp"] == 1


def test_mp_fail_on_a_one_to_one_connection_falls_back():
    """RFC 8684 §3.7: MP_FAIL on the only subflow, everything still mapped one to one: the
    connection falls back to TCP (no reset), and the stream goes on."""
    pair = established()
    pair.transfer(blob(2000, 18), blob(2000, 19))
    peer = pair.peer
    fail = bytes([30, 12, 0x60, 0]) + struct.pack("!Q", (peer.remote_idsn + 1) & M64)
    peer.sent_mp_fail = True
    pair.emit_peer([peer._build(0, peer.s_alloc, fail)])
    pair.pump()
    assert counters(pair)["MPFailRx"] == 1
    # the answer is an infinite mapping on our next data, then plain TCP (Linux does so)
    pair.local.write(blob(1500, 20))
    pair.emit_local(pair.local.push())
    pair.pump()
    assert peer.infinite_rcvd and pair.conn.state == ConnState.FALLBACK
    assert counters(pair)["InfiniteMapTx"] == 1
    assert not pair.local.reset and not pair.peer.fastclosed
