"""Attacks on the proxy's connection logic (1): corrupted frames, blind injections and the
MPTCP signals that ride on segments, sans-I/O, on the unit-test peer models.

Each test plays one attacker (or one corrupted frame) against a healthy connection and
asserts the outcome the RFC asks for; its docstring quotes or states the rule. The
attacker is **blind** unless said otherwise: it knows the 4-tuple and may guess a
sequence number inside the receive window, but not the ACK number (RFC 5961 §1). Tests
that fail on the code they were written against are marked ``xfail(strict=True)`` with
the finding of issue 8 they show ("What was found", items 1-9); a fix flips them to
XPASS, which fails the suite until the mark is removed. Hostile peers, floods, sizes
and fragments: test_attacks_hostile.py; helpers: attack_kit.py.
"""

from __future__ import annotations

import random
import struct

import pytest
from attack_kit import (
    BLIND_ACK,
    blob,
    crafted,
    flip_bit,
    inject,
    mptcp_raw,
    peer_dack,
    peer_dsn,
    raw_from_peer,
    ready,
    streams_intact,
    with_pm,
)
from lockstep.decode import parse_seg
from lockstep.pair import ProxyPair
from lockstep.wire import ACK, RST, dss_opt
from mpnet.network import MpNet

from mptcp_proxy.core.connection import ConnState
from mptcp_proxy.core.forge import build_segment
from tests.fuzz import snapshot, wire
from tests.fuzz.build import verdict_of


# =========================================== 1. checksums before state (item 1)
def test_synack_with_a_flipped_key_bit_is_ignored():
    """RFC 1122 §4.2.2.7 on the TCP checksum: "The sender MUST generate it and the receiver MUST
    check it"; a segment that fails is discarded. A SYN/ACK with one bit of the key flipped
    (checksum not fixed: corrupted on the way) must change nothing; the genuine SYN/ACK then
    establishes the connection with the peer's real key."""
    pair = with_pm(ProxyPair(seed=2))
    pair.hold("from_peer", lambda s: s.syn, count=1)
    pair.handshake()
    (synack,) = pair.held["from_peer"]
    pair.held["from_peer"] = []
    s = parse_seg(synack)
    key_at = synack.index(struct.pack("!Q", pair.peer.key))
    inject(pair, flip_bit(synack, key_at + 3, 2))
    assert s.syn and pair.conn.state == ConnState.SYN_SENT, "state changed by a bad SYN/ACK"
    inject(pair, synack)
    assert pair.conn.remote_key == pair.peer.key
    streams_intact(pair)


def test_rst_with_a_bad_checksum_in_syn_sent_is_ignored():
    """RFC 1122 §4.2.2.7: the receiver MUST check the TCP checksum; a segment failing it is
    discarded. An RST that
    acknowledges our SYN but is corrupted must not close the proxy's connection: the
    SYN/ACK that follows establishes it as MPTCP."""
    pair = with_pm(ProxyPair(seed=3))
    pair.hold("from_peer", lambda s: s.syn, count=1)
    pair.handshake()
    (synack,) = pair.held["from_peer"]
    pair.held["from_peer"] = []
    s = parse_seg(synack)
    rst = bytes(build_segment(pair.peer.addr, pair.local.addr, pair.peer.port,
                              pair.local.port, 0, s.ack, RST | ACK, 0))
    inject(pair, flip_bit(rst, 30, 1))  # (a bit of the ACK number: the sum no longer holds)
    inject(pair, synack)
    assert pair.conn.state == ConnState.ESTABLISHED
    streams_intact(pair)


def test_bad_checksum_copy_with_a_dss_checksum_does_not_reset():
    """RFC 8684 §3.3: a DSS checksum present although not negotiated makes the receiver close
    the subflow — but only for a segment that is itself valid: RFC 1122 §4.2.2.7 (the receiver
    MUST check the TCP checksum) discards a segment failing the TCP checksum before anything
    else. A corrupted copy of a data segment must leave the connection as it was."""
    pair = ready(4)
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair), ssn=pair.peer.s_alloc + 1,
                 dll=100, csum=0x1234)
    pkt = crafted(pair, mp, blob(100, 5))
    inject(pair, flip_bit(pkt, len(pkt) - 1))
    streams_intact(pair)


def test_bad_checksum_copy_with_data_level_length_0_does_not_fall_back():
    """RFC 1122 §4.2.2.7: a segment failing the TCP checksum is discarded; a corrupted DSS
    with data-level length 0 (an infinite mapping, RFC 8684 §3.7) must not make the
    proxy fall back or reset."""
    pair = ready(5)
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair), ssn=pair.peer.s_alloc + 1,
                 dll=0)
    pkt = crafted(pair, mp, blob(100, 6))
    inject(pair, flip_bit(pkt, len(pkt) - 2, 3))
    assert pair.conn.state == ConnState.ESTABLISHED
    streams_intact(pair)


@pytest.mark.parametrize("which", [
    "data",
    "pure_ack",
    "window_probe"])
def test_bad_checksum_copy_of_a_real_segment_changes_no_state(which):
    """RFC 1122 §4.2.2.7: "the receiver MUST check" the TCP checksum of every incoming segment,
    and one that fails is discarded. A corrupted copy of the peer's next real segment (data
    under the current mapping; a pure ACK acknowledging our data; a zero-length probe) changes
    no state of the proxy (every public attribute of every connection and subflow), and the
    proxy sends nothing for it."""
    pair = ready(6)
    old_dack = peer_dack(pair)
    if which == "data":  # the second segment of a mapping learned from the first (GSO)
        pair.peer.write(blob(2800, 8), segs_per_map=2, map_mode="every")
        first, pkt = pair.peer.push()
        inject(pair, first)
    elif which == "pure_ack":  # acknowledging data of ours
        pair.local.write(blob(5000, 7))
        pair.emit_local(pair.local.push())
        pair.drop("from_peer", count=100)  # (the peer's own ACKs are lost)
        pair.pump()
        pair.rules.clear()
        pkt = pair.peer.ack_pkt()
    else:  # nothing new: an old subflow ACK and DATA_ACK
        pkt = crafted(pair, dss_opt(data_ack=old_dack))
    bad = flip_bit(pkt, len(pkt) - 1 if which == "data" else 20 + 14)
    before = snapshot.snapshot(pair.proxy)
    m = pair.mark()
    pair.proxy.inbound(bytearray(bad), pair.now)
    changed = snapshot.diff(before, snapshot.snapshot(pair.proxy))
    assert not changed, changed
    assert not pair.proxy.packets_to_send() and not pair.since(m, "to_peer")


def test_bad_checksum_copies_on_the_multipath_model_kill_no_transfer():
    """Fault injection on the timed multipath model: 2 % of the peer's segments also
    arrive as a copy with one flipped bit (checksum not fixed: what a NIC that did not
    verify hands the queue). RFC 1122 §4.2.2.7: such segments are discarded; every transfer
    completes with identical streams. The local stack rightly refuses the copies the
    proxy passes unchanged, so its "bad checksum" complaints are set aside."""
    failures = []
    for seed in (1, 2, 3, 4, 5):
        net = _Corrupting(seed, rate=0.02)
        net.connect()
        net.local.write(blob(3000, seed))
        net.run(net.now + 0.01)
        net.wait_subflows(2)
        try:
            net.run_transfer(blob(200_000, seed + 10), blob(400_000, seed + 11), timeout=40)
            net.stream_ok()
        except AssertionError as exc:
            failures.append(f"seed {seed}: {str(exc)[:200]}")
            continue
        bad = [m for m in net.problems() if "bad checksum" not in m]
        if bad:
            failures.append(f"seed {seed}: {bad[:3]}")
    assert not failures, failures


class _Corrupting(MpNet):
    """MpNet where a fraction of the packets towards the proxy also arrive as a copy
    with one bit flipped in the TCP segment (checksum left as it was)."""

    def __init__(self, seed: int, rate: float) -> None:
        super().__init__(seed, subflows="backup")
        self.corrupt_rng = random.Random(seed * 31 + 7)
        self.rate = rate
        self.corrupted = 0

    def _proxy_in(self, p: bytes) -> None:
        if len(p) > 40 and self.corrupt_rng.random() < self.rate:
            b = bytearray(p)
            b[self.corrupt_rng.randrange(20, len(b))] ^= 1 << self.corrupt_rng.randrange(8)
            if not wire.csum_valid(bytes(b)):
                self.corrupted += 1
                super()._proxy_in(bytes(b))
        super()._proxy_in(p)


# ==================================== 2. acceptance, RFC 9293 / RFC 5961 (item 4)
def _hole(pair: ProxyPair) -> None:
    """The peer's next segment is lost, the one after arrives: a hole below RCV.NXT's
    highest byte received."""
    pair.peer.write(blob(2800, 9))
    segs = pair.peer.push()
    assert len(segs) == 2
    inject(pair, segs[1])


@pytest.mark.parametrize("at", ["rcv_nxt", "highest_received"])
def test_rst_exact_match_is_at_rcv_nxt(at):
    """RFC 5961 §3.2: "If the RST bit is set and the sequence number exactly matches the
    next expected sequence number (RCV.NXT), then TCP MUST reset the connection";
    in the window but not exact, it MUST send a challenge ACK instead. With a hole in
    the subflow, RCV.NXT is the start of the hole, not the highest byte received."""
    pair = ready(10)
    _hole(pair)
    off = 0 if at == "rcv_nxt" else 2800
    rst = pair.peer.rst(fastclose=False, reason=None, seq_rel=pair.peer.snd_nxt - 2800 + off,
                        forged=True)
    m = pair.mark()
    inject(pair, *rst)
    if at == "rcv_nxt":
        assert pair.conn.state == ConnState.CLOSED and pair.local.reset
    else:
        assert pair.conn.state == ConnState.ESTABLISHED and not pair.local.reset
        assert pair.since(m, "to_peer"), "no challenge ACK"


def test_challenge_acks_are_rate_limited():
    """RFC 5961 §7: "In order to alleviate multiple RSTs/SYNs from triggering multiple challenge
    ACKs, an ACK throttling mechanism is suggested." Linux allows one challenge ACK per 500 ms
    per socket (``net.ipv4.tcp_invalid_ratelimit``); 1000 in-window RSTs within one second must
    not draw more than a handful."""
    pair = ready(11)
    m = pair.mark()
    for i in range(1000):
        pair.now += 0.001
        inject(pair, *pair.peer.rst(fastclose=False, reason=None,
                                    seq_rel=pair.peer.snd_nxt + 1 + 37 * i, forged=True))
    acks = [s for s in pair.since(m, "to_peer") if not s.rst]
    assert len(acks) <= 10, f"{len(acks)} challenge ACKs for 1000 RSTs in 1 s"
    assert pair.conn.state == ConnState.ESTABLISHED


def _blind(pair: ProxyPair, what: str) -> list[bytes]:
    """Segments of a blind attacker: sequence number exactly RCV.NXT (the best guess),
    ACK number far outside [SND.UNA - MAX.SND.WND, SND.NXT]."""
    dack = peer_dack(pair)
    s_next = pair.peer.s_alloc + 1
    if what == "data_with_mapping":
        mp = dss_opt(data_ack=dack, dsn=peer_dsn(pair), ssn=s_next, dll=500)
        return [crafted(pair, mp, b"X" * 500, ack_off=BLIND_ACK)]
    if what == "data_fin":
        # inside the data still to come (a multiple of the peer's 1400-byte segments)
        mp = dss_opt(data_ack=dack, dsn=peer_dsn(pair, 7000), ssn=0, dll=1, fin=True)
        return [crafted(pair, mp, ack_off=BLIND_ACK)]
    if what == "mp_fail":
        mp = dss_opt(data_ack=dack) + struct.pack("!BBBBQ", 30, 12, 0x60, 0, peer_dsn(pair))
        return [crafted(pair, mp, ack_off=BLIND_ACK)]
    if what == "remove_addr_of_the_only_path":
        return [crafted(pair, dss_opt(data_ack=dack) + bytes((30, 4, 0x40, 0)),
                        ack_off=BLIND_ACK)]
    if what == "conflicting_mapping":  # the next 1400 subflow bytes, at another DSN
        mp = dss_opt(data_ack=dack, dsn=peer_dsn(pair, 7000), ssn=s_next, dll=1400)
        return [crafted(pair, mp, blob(1400, 12), ack_off=BLIND_ACK)]
    if what == "infinite_mapping":
        mp = dss_opt(data_ack=dack, dsn=peer_dsn(pair), ssn=s_next, dll=0)
        return [crafted(pair, mp, blob(700, 13), ack_off=BLIND_ACK)]
    if what == "dss_checksum_not_negotiated":
        mp = dss_opt(data_ack=dack, dsn=peer_dsn(pair), ssn=s_next, dll=700, csum=0xBEEF)
        return [crafted(pair, mp, blob(700, 14), ack_off=BLIND_ACK)]
    raise AssertionError(what)


@pytest.mark.parametrize("what", [
    "data_with_mapping", "data_fin", "mp_fail", "remove_addr_of_the_only_path",
    "conflicting_mapping", "infinite_mapping", "dss_checksum_not_negotiated"])
def test_blind_segment_with_an_unacceptable_ack_changes_nothing(what):
    """RFC 5961 §5.2: the ACK value is acceptable only if
    (SND.UNA - MAX.SND.WND) =< SEG.ACK =< SND.NXT; "All incoming segments whose ACK
    value doesn't satisfy the above condition MUST be discarded and an ACK sent back."
    A blind attacker who guessed RCV.NXT but not the ACK number disturbs nothing:
    no data reaches the local stack, no DATA_FIN, MP_FAIL, REMOVE_ADDR, mapping,
    infinite mapping or checksum-presence change takes effect; the transfer that
    follows completes with both streams intact."""
    pair = ready(20)
    inject(pair, *_blind(pair, what))
    assert not pair.local.reset and pair.conn.state == ConnState.ESTABLISHED
    assert bytes(pair.local.rcv) == bytes(pair.peer.dsnd)
    streams_intact(pair)


def test_segment_beyond_the_advertised_window_is_discarded():
    """RFC 9293 §3.10.7.4: a segment is acceptable if RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND
    (or its last byte is); otherwise it is discarded (an ACK is sent). A segment with a
    valid ACK but 1.5 windows ahead carries a mapping that conflicts with the genuine
    one to come: it must not be taken, and the genuine data must go through."""
    pair = ready(21)
    wnd = pair.local.win << pair.local.ws  # what the local stack, and so the proxy, offers
    ahead = wnd + wnd // 2
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair, 3), ssn=pair.peer.s_alloc + 1
                 + ahead, dll=1400)
    inject(pair, crafted(pair, mp, blob(1400, 22), seq_off=ahead))
    streams_intact(pair, down=blob(ahead + 5000, 23), rounds=600)


# ================================ 3. signals from acceptable segments (items 4, 9)
def test_mp_fail_on_the_only_subflow_falls_back_without_reset():
    """RFC 8684 §3.7: after a checksum failure on a connection with a single subflow the
    data receiver sends MP_FAIL; the sender then falls back to regular TCP by sending an
    infinite mapping (DSS with data-level length 0) — the connection is not reset.
    Linux does the same (it answers MP_FAIL with an infinite mapping)."""
    pair = ready(30)
    m = pair.mark()
    inject(pair, crafted(pair, dss_opt(data_ack=peer_dack(pair))
                         + struct.pack("!BBBBQ", 30, 12, 0x60, 0, peer_dsn(pair))))
    pair.local.write(blob(3000, 31))
    pair.emit_local(pair.local.push())
    pair.pump()
    assert not pair.local.reset
    out = pair.since(m, "to_peer")
    assert not any(s.rst for s in out), "the proxy reset the connection"
    assert any(s.dss is not None and s.dss.dsn is not None and s.dss.dll == 0 for s in out), \
        "no infinite mapping sent"


def test_remove_addr_of_the_only_path_is_probed_first():
    """RFC 8684 §3.4.2: REMOVE_ADDR is not authenticated, so before closing a path on it a host
    makes sure the path is really out of use — it SHOULD first send a TCP keepalive there and,
    if an answer comes, SHOULD NOT remove the path. A REMOVE_ADDR for the only path (valid
    sequence and ACK numbers) while the path works: the proxy keeps the subflow, opens no join,
    and the transfer goes on there."""
    from mptcp_proxy.core.subflow import SubflowState
    net = MpNet(40, subflows="manual")
    net.connect()
    net.local.write(blob(3000, 40))
    net.run(net.now + 0.05)
    net.local.write(blob(200_000, 41))
    net.peer.write(blob(200_000, 42))
    net.run(net.now + 0.05)
    sub = net.peer.subs[0]
    rm = bytes((30, 4, 0x40, 0))  # REMOVE_ADDR of address ID 0: the peer's only address
    net._proxy_in(raw_from_peer(net, sub, net.peer._dss_ack() + rm))
    net._forged()
    assert net.run(net.now + 30, net.transfer_done), "stalled"
    assert net.conn.subflows[0].state == SubflowState.ESTABLISHED
    assert net.proxy.counters["MPJoinSynTx"] == 0
    net.stream_ok()
    net.assert_clean()


def test_data_fin_below_what_was_received_is_ignored():
    """RFC 8684 §3.3.3: the DATA_FIN occupies one octet of the data sequence space, after
    the last data byte; like a TCP FIN (RFC 9293 §3.10.7.4) it takes effect in sequence.
    A DATA_FIN at a DSN below data already received and delivered is not in sequence: it
    must not cap the DATA_ACK or end the stream."""
    pair = ready(31)
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair, -2000), ssn=0, dll=1, fin=True)
    inject(pair, crafted(pair, mp))
    assert not pair.local.fin_rcvd
    streams_intact(pair)


def test_pure_ack_with_data_level_length_0_is_not_an_infinite_mapping():
    """RFC 8684 §3.3.1 / §3.7: an infinite mapping is a mapping with data-level length 0
    that covers the payload from its subflow sequence number on; a segment without
    payload maps nothing. Linux ignores a mapping on a data-less segment other than a
    DATA_FIN. The connection stays MPTCP."""
    pair = ready(32)
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair), ssn=pair.peer.s_alloc + 1,
                 dll=0)
    inject(pair, crafted(pair, mp))
    assert pair.conn.state == ConnState.ESTABLISHED
    streams_intact(pair)


def test_data_without_dss_on_a_subflow_in_use_resets_that_subflow():
    """RFC 8684 §3.7: once a subflow carries MPTCP, data arriving on it without a mapping
    means a middlebox strips options; the receiver closes that subflow with RST and
    MP_TCPRST reason 6 ("Middlebox interference", §3.6) and the data goes on elsewhere.
    On a two-subflow connection the other subflow takes over and the transfer completes."""
    net = MpNet(33, subflows="active")
    net.connect()
    net.local.write(blob(3000, 33))
    net.run(net.now + 0.01)
    net.wait_subflows(2)
    net.peer.write(blob(100_000, 34))
    net.run(net.now + 0.05)
    sub = net.peer.subs[1]
    sent = []
    net.taps.append(lambda hop, p, now: sent.append(p) if hop == "to_peer" else None)
    net._proxy_in(raw_from_peer(net, sub, b"", blob(1000, 35)))
    net._forged()
    rsts = [parse_seg(p) for p in sent if parse_seg(p).rst]
    assert any((s.src, s.sport) == (sub.raddr, sub.rport) and
               any(o[1] == 4 and o[2] >> 4 == 8 and o[3] == 6 for o in mptcp_raw(s))
               for s in rsts), "no MP_TCPRST reason 6 on that subflow"
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()



def test_blind_rst_out_of_window_and_bad_checksum_pure_ack_change_nothing():
    """Controls that hold today (RFC 5961 §3.2: an RST outside the window is silently
    dropped; RFC 1122 §4.2.2.7: a pure ACK failing the checksum that would advance the
    DATA_ACK is discarded): neither moves the connection."""
    pair = ready(59)
    inject(pair, *pair.peer.rst(fastclose=True, seq_rel=pair.peer.snd_nxt + (1 << 30),
                                forged=True))
    pair.local.write(blob(2000, 60))
    pair.emit_local(pair.local.push())
    pair.drop("from_peer", count=100)
    pair.pump()
    pair.rules.clear()
    ack = pair.peer.ack_pkt()
    d_una = pair.conn.d_una
    pair.proxy.inbound(bytearray(flip_bit(ack, 20 + 14)), pair.now)
    assert pair.conn.d_una == d_una
    assert pair.conn.state == ConnState.ESTABLISHED and not pair.local.reset
    pair.emit_local(pair.local.retransmit())
    pair.pump()
    streams_intact(pair)


def test_flood_of_out_of_window_segments_draws_nothing():
    """RFC 9293 §3.10.7.4 / RFC 5961 §4-5: segments far outside the window are
    discarded; 2000 of them (data with mappings, DATA_FINs, MP_FAILs) change nothing
    and the transfer goes on."""
    pair = ready(61)
    before = pair.conn.r_high, pair.conn.d_una, pair.conn.rcv_data_fin
    answers = {0: 0, 1: 0, 2: 0}
    for i in range(2000):
        off = (1 << 30) + 1400 * i
        kind = i % 3
        if kind == 0:
            mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair, i), ssn=off + 1, dll=100)
            pkt = crafted(pair, mp, b"q" * 100, seq_off=off)
        elif kind == 1:
            mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair, i), ssn=0, dll=1, fin=True)
            pkt = crafted(pair, mp, seq_off=off)
        else:
            mp = struct.pack("!BBBBQ", 30, 12, 0x60, 0, peer_dsn(pair))
            pkt = crafted(pair, mp, seq_off=off)
        buf = bytearray(pkt)
        assert verdict_of(pair.proxy.inbound(buf, pair.now), buf) is False
        answers[kind] += len(pair.proxy.packets_to_send())
    # Like Linux (tcp_oow_rate_limited): a segment carrying data is answered with one
    # duplicate ACK, unthrottled -- no amplification and no ACK loop; the others are
    # throttled (RFC 5961 §7).
    assert answers[0] <= 667, f"{answers[0]} answers to 667 data segments (amplified)"
    assert answers[1] + answers[2] <= 10, f"{answers} sent in answer (RFC 5961 §7: throttled)"
    assert (pair.conn.r_high, pair.conn.d_una, pair.conn.rcv_data_fin) == before
    streams_intact(pair)

