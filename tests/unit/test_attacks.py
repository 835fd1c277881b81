"""Attacks on the proxy's connection logic, sans-I/O, on the unit-test peer models.

Each test plays one attacker (or one corrupted frame, or one hostile but authentic
peer) against a healthy connection and asserts the outcome the RFC asks for; its
docstring quotes or states the rule. The attacker is **blind** unless said otherwise:
it knows the 4-tuple and may guess a sequence number inside the receive window, but
not the ACK number (RFC 5961 §1: the blind in-window attacks). Tests that fail on
today's code are marked ``xfail(strict=True)`` with the finding of issue 8 they show
("What was found", items 1-9); a fix flips them to XPASS, which fails the suite until
the mark is removed.

Models: tests/unit/peer_model.py (one subflow, lockstep, a Linux-like peer) and
tests/unit/mp_model.py (timed multipath network). The path manager is attached to a
:class:`ProxyPair` by :func:`with_pm`, the only place that knows how (the daemon
always runs one: MPTCP signals are handled there).
"""

from __future__ import annotations

import random
import struct

import pytest
from mp_model import MpNet, add_addr_hmac8
from peer_model import (
    ACK,
    FIN,
    M32,
    M64,
    PSH,
    RST,
    SYN,
    ProxyPair,
    dss_opt,
    fastclose_opt,
    key_sha,
    mpc_opt,
    parse_seg,
)

from mptcp_proxy.core.connection import ConnState
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.tcp import CSUM_GSO, CSUM_OK
from tests.fuzz import snapshot, wire
from tests.fuzz.build import verdict_of


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------------ helpers
def with_pm(pair: ProxyPair) -> ProxyPair:
    """Give the pair's proxy a path manager, as the daemon does (one interface, joins
    only on command): MPTCP signals (MP_FAIL, REMOVE_ADDR, ADD_ADDR) are handled there."""
    from tests.fuzz.build import LocalIface, PmConfig, attach_pm
    la = pair.local.addr
    iface = LocalIface("c0", 1, v4=[la] if len(la) == 4 else [], v6=[la] if len(la) == 16
                       else [])
    attach_pm(pair.proxy, [iface], PmConfig(subflows="manual", rejoin=False))
    return pair


def ready(seed: int = 1, **kw) -> ProxyPair:
    """Established, fully established (data both ways), with a path manager."""
    pair = with_pm(ProxyPair(seed=seed, **kw))
    pair.handshake()
    assert pair.peer.state == "ESTABLISHED"
    pair.transfer(blob(3000, seed), blob(3000, seed + 1))
    return pair


def inject(pair: ProxyPair, *pkts) -> None:
    """Packets that reach the proxy from the network side (as the peer's would)."""
    pair.emit_peer([bytes(p) for p in pkts])
    pair.pump()


def streams_intact(pair: ProxyPair, up: bytes = b"", down: bytes = b"",
                   rounds: int = 300) -> None:
    """More data both ways completes, and each side has exactly the other's stream."""
    pair.local.violations.clear()  # (it may have rightly refused an injected segment)
    pair.transfer(up or blob(20_000, 77), down or blob(20_000, 78), max_rounds=rounds)
    assert not pair.local.reset, "the local stack was reset"
    assert pair.conn.state == ConnState.ESTABLISHED
    assert bytes(pair.local.rcv) == bytes(pair.peer.dsnd), "stream to the local stack differs"
    assert bytes(pair.peer.data) == bytes(pair.local.sndbuf), "stream to the peer differs"
    # and at the data level: the peer got a DATA_ACK for everything it sent
    assert pair.peer.d_una == pair.peer.d_nxt, (pair.peer.d_una, pair.peer.d_nxt)
    pair.assert_clean()


def peer_dack(pair: ProxyPair) -> int:
    """The DATA_ACK the peer would send now (64-bit)."""
    p = pair.peer
    return (p.remote_idsn + 1 + p.data_ack_value()) & M64


def peer_dsn(pair: ProxyPair, off: int = 0) -> int:
    """The peer's next DSN (+ ``off``), 64-bit."""
    return (pair.peer.idsn + 1 + pair.peer.d_nxt + off) & M64


BLIND_ACK = 1 << 31  # added to the peer's RCV.NXT: as far from any acceptable ACK as can be


def crafted(pair: ProxyPair, mptcp: bytes = b"", payload: bytes = b"", *, seq_off: int = 0,
            ack_off: int = 0, flags: int = 0) -> bytes:
    """A segment as the peer's 4-tuple carries it: sequence ``seq_off`` bytes from the
    peer's SND.NXT, ACK ``ack_off`` from its RCV.NXT, timestamps as the peer sends them."""
    p = pair.peer
    return p._build(flags | (PSH if payload else 0), p.snd_nxt + seq_off, mptcp, payload,
                    sack=False, ack_rel=p.rcv_nxt + ack_off)


def mptcp_raw(seg) -> list[bytes]:
    return [o for k, o in seg.opts if k == 30]


def flip_bit(pkt: bytes, offset: int, bit: int = 0) -> bytes:
    """``pkt`` with one bit flipped and the checksum left alone (a corrupted frame)."""
    b = bytearray(pkt)
    b[offset] ^= 1 << bit
    assert not parse_seg(bytes(b)).csum_ok
    return bytes(b)


# =========================================== 1. checksums before state (item 1)
@pytest.mark.xfail(strict=True, reason="issue 8 item 1: the SYN/ACK is taken before its "
                   "checksum is verified (Connection.in_synack)")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 1: an RST in SYN_SENT closes the "
                   "connection unverified (Connection.on_inbound)")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 1: the DSS checksum-presence check "
                   "resets before the TCP checksum is verified (InboundPath._in_established)")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 1: DLL 0 is taken for an infinite "
                   "mapping before the TCP checksum is verified")
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
    pytest.param("data", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 8 item 1: data under a known mapping is taken unverified (in_fast; "
        "InboundPath._in_established takes rcv state, timestamps, liveness first)"))),
    pytest.param("pure_ack", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 8 item 1: the subflow-level ACK is taken before the checksum is verified "
        "(InboundPath._in_established)"))),
    pytest.param("window_probe", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 8 item 1: timestamps and liveness are updated before the checksum is "
        "verified (Connection.on_inbound, InboundPath._in_established)")))])
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 1: bad-checksum copies of real "
                   "segments change the proxy's state and kill transfers")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: RST exact-match uses the highest "
                   "byte received instead of RCV.NXT (ClosingPath._peer_reset)")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: challenge ACKs are not "
                   "rate-limited")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: the ACK field is never validated "
                   "(RFC 5961 §5); drastic MPTCP signals ride on unacceptable segments")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: acceptance is twice the local "
                   "window around the highest byte received, not RCV.WND")
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
@pytest.mark.xfail(strict=True, reason="issue 8 item 4: MP_FAIL resets a one-subflow "
                   "connection instead of falling back (PathManager.handle_options)")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: REMOVE_ADDR of the last path closes "
                   "it without the probe RFC 8684 §3.4.2 asks for (PathManager.handle_options)")
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
    net._proxy_in(_raw_from_peer(net, sub, net.peer._dss_ack() + rm))
    net._forged()
    assert net.run(net.now + 30, net.transfer_done), "stalled"
    assert net.conn.subflows[0].state == SubflowState.ESTABLISHED
    assert net.proxy.counters["MPJoinSynTx"] == 0
    net.stream_ok()
    net.assert_clean()


def _raw_from_peer(net: MpNet, sub, mp: bytes, payload: bytes = b"", seq_off: int = 0,
                   ack_off: int = 0, flags: int = ACK) -> bytes:
    """A segment on the peer's subflow ``sub`` (valid sequence and ACK numbers unless
    offset), not sent by the peer model: it goes straight to the proxy."""
    from peer_model import opt_ts, pad4
    opts = (opt_ts(sub.tsval(), sub.ts_recent) if sub.ts_ok else b"") + pad4(mp)
    return bytes(build_segment(sub.laddr, sub.raddr, sub.lport, sub.rport,
                               sub.swire(sub.tx.nxt + seq_off), sub.rwire(sub.rcv_nxt + ack_off),
                               flags | (PSH if payload else 0), 1024, opts, payload))


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: a DATA_FIN is recorded at any DSN "
                   "and caps our DATA_ACK")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 9: a pure ACK with DSS data-level "
                   "length 0 is taken for an infinite mapping")
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


@pytest.mark.xfail(strict=True, reason="issue 8 item 9: data without DSS after MPTCP is in "
                   "use is dropped in silence (DSSNoMapping) instead of MP_TCPRST reason 6")
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
    net._proxy_in(_raw_from_peer(net, sub, b"", blob(1000, 35)))
    net._forged()
    rsts = [parse_seg(p) for p in sent if parse_seg(p).rst]
    assert any((s.src, s.sport) == (sub.raddr, sub.rport) and
               any(o[1] == 4 and o[2] >> 4 == 8 and o[3] == 6 for o in mptcp_raw(s))
               for s in rsts), "no MP_TCPRST reason 6 on that subflow"
    assert net.run(net.now + 30, net.transfer_done)
    net.stream_ok()


# ================================== 4. forged joins, ADD_ADDR, FASTCLOSE, floods
def test_forged_mp_join_syn_towards_the_proxy_is_not_accepted():
    """RFC 8684 §3.2: a subflow joins a connection only through the MP_JOIN handshake
    with the token and HMACs of the keys. The proxy is the client side: an MP_JOIN SYN
    from the network (even with our token) creates no subflow and no state, and draws
    nothing from the proxy."""
    pair = ready(40)
    tok, _ = key_sha(pair.conn.local_key)
    opt = struct.pack("!BBBBII", 30, 12, 0x10, 0, tok, 0x12345678)
    syn = bytes(build_segment(pair.peer.addr, pair.local.addr, 9999, pair.local.port, 1, 0,
                              SYN, 0xFFFF, opt))
    before = len(pair.proxy.conns), len(pair.conn.subflows)
    buf = bytearray(syn)
    v = verdict_of(pair.proxy.inbound(buf, pair.now), buf)
    assert v is None or v is False
    assert (len(pair.proxy.conns), len(pair.conn.subflows)) == before
    assert not pair.proxy.packets_to_send()


def _mp_with_join_pending(seed: int):
    net = MpNet(seed, subflows="backup")
    net.paths[1]["down"].drop_fn = lambda p: bool(p[33] & SYN)  # join SYN/ACKs lost
    net.connect()
    net.local.write(blob(3000, seed))
    net.run(net.now + 0.3)
    from mptcp_proxy.core.subflow import SubflowState
    sf1 = net.conn.subflows[1]
    assert sf1.state == SubflowState.SYN_SENT
    return net, sf1


def test_forged_join_synack_with_a_wrong_ack_is_ignored():
    """RFC 9293 §3.10.7.3 (SYN-SENT): a segment whose ACK does not acknowledge our SYN
    (SEG.ACK =< ISS or > SND.NXT) is not acceptable: the join in progress is not
    disturbed and completes when the genuine SYN/ACK comes."""
    net, sf1 = _mp_with_join_pending(41)
    la, lp, ra, rp = sf1.key
    thmac = b"\x00" * 8
    opt = bytes((30, 16, 0x10, 0)) + thmac + b"\x00" * 4
    bogus = bytes(build_segment(ra, la, rp, lp, 7, (sf1.snd_isn + 99) & M32, SYN | ACK, 1024,
                                opt))
    net._proxy_in(bogus)
    net._forged()
    net.paths[1]["down"].drop_fn = None
    net.wait_subflows(2, timeout=10)
    assert net.proxy.counters["MPJoinSynAckHMacFailure"] == 0


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: an RST on a join in SYN_SENT is "
                   "not validated (PathManager.handle_join_packet)")
def test_rst_without_an_acceptable_ack_does_not_kill_a_join():
    """RFC 9293 §3.10.7.3 (SYN-SENT): "If the RST bit is set, If the ACK was acceptable
    then signal to the user 'error: connection reset', drop the segment, enter CLOSED
    state ... Otherwise (no ACK), drop the segment and return." A blind RST without an
    ACK of our join SYN leaves the join alone."""
    net, sf1 = _mp_with_join_pending(42)
    la, lp, ra, rp = sf1.key
    net._proxy_in(bytes(build_segment(ra, la, rp, lp, 12345, 0, RST, 0)))
    net._forged()
    net.paths[1]["down"].drop_fn = None
    net.wait_subflows(2, timeout=10)


@pytest.mark.xfail(strict=True, reason="issue 8 item 4: an RST in SYN_SENT is taken "
                   "without checking its ACK (Connection.on_inbound)")
def test_rst_without_an_acceptable_ack_in_syn_sent_is_ignored():
    """RFC 9293 §3.10.7.3 (SYN-SENT): an RST is acceptable only if its ACK acknowledges
    our SYN; otherwise "drop the segment and return". A blind RST (no ACK) during the
    handshake leaves the proxy's connection in SYN_SENT and the SYN/ACK establishes it."""
    pair = with_pm(ProxyPair(seed=43))
    pair.hold("from_peer", lambda s: s.syn, count=1)
    pair.handshake()
    (synack,) = pair.held["from_peer"]
    pair.held["from_peer"] = []
    rst = bytes(build_segment(pair.peer.addr, pair.local.addr, pair.peer.port,
                              pair.local.port, 4242, 0, RST, 0))
    inject(pair, rst)
    assert pair.conn.state == ConnState.SYN_SENT
    inject(pair, synack)
    assert pair.conn.state == ConnState.ESTABLISHED
    streams_intact(pair)


def test_add_addr_with_a_bad_hmac_is_ignored():
    """RFC 8684 §3.4.1: the HMAC of an ADD_ADDR authenticates it with both keys; one that
    does not verify is dropped (Linux: silently, no echo, no counter of its own). An
    off-path attacker's ADD_ADDR (valid sequence and ACK numbers, random HMAC) draws
    no echo and no join."""
    pair = ready(44)
    m = pair.mark()
    opt = bytes((30, 16, 0x30, 5)) + bytes((192, 0, 2, 7)) + b"\xAA" * 8
    inject(pair, crafted(pair, opt))
    assert pair.proxy.counters["AddAddrHMacFailure"] == 1
    assert pair.proxy.counters["MPJoinSynTx"] == 0 and pair.proxy.counters["EchoAddTx"] == 0
    assert not any(s.syn for s in pair.since(m, "to_peer"))
    streams_intact(pair)


@pytest.mark.xfail(strict=True, reason="issue 8 item 6: an authenticated ADD_ADDR makes the "
                   "proxy join any address it names (PathManager._add_addr)")
@pytest.mark.parametrize("addr,port", [
    (bytes((127, 0, 0, 1)), 8080), (bytes((192, 168, 1, 10)), 22), (bytes((169, 254, 1, 1)), 80),
    (bytes((10, 0, 0, 1)), 8080), (bytes((224, 0, 0, 1)), 8080), (bytes(4), 8080)])
def test_authentic_add_addr_to_a_non_global_address_is_not_joined(addr, port):
    """Issue 8 item 6, and RFC 8684 §3.4.1 / §5 (a path manager decides which announced
    addresses to use; an authentic peer can still name any address): with the default
    policy the proxy opens no subflow to a loopback, private (RFC 1918), link-local,
    multicast or unspecified address a peer announces — Linux's own path manager
    accepts no announced address by default. The announcement is still echoed."""
    from tests.fuzz.build import PmConfig
    # the core's default policy (the model itself may allow more for its 10/8 addresses)
    net = MpNet(45, subflows="manual", pm_kw={"join_announced": PmConfig().join_announced})
    net.connect()
    net.local.write(blob(3000, 45))
    net.run(net.now + 0.05)
    sub = net.peer.subs[0]
    h = add_addr_hmac8(net.peer.key, net.peer.remote_key, 7, addr, port)
    opt = bytes((30, 18, 0x30, 7)) + addr + struct.pack("!H", port) + h
    net._proxy_in(_raw_from_peer(net, sub, opt))
    net._forged()
    net.run(net.now + 0.5)
    assert net.proxy.counters["AddAddrRx"] == 1 and net.proxy.counters["EchoAddTx"] == 1
    assert net.proxy.counters["MPJoinSynTx"] == 0, "joined an announced non-global address"


@pytest.mark.parametrize("on", ["rst_in_window", "ack"])
def test_fastclose_with_a_wrong_key_is_ignored(on):
    """RFC 8684 §3.5: MP_FASTCLOSE carries the receiver's key; only with our key does it
    close the connection. An attacker's MP_FASTCLOSE with another key (on an in-window
    RST, or on an ACK with valid numbers) leaves the connection as it was."""
    pair = ready(46)
    wrong = pair.conn.local_key ^ 0x5A5A
    if on == "ack":
        inject(pair, crafted(pair, dss_opt(data_ack=peer_dack(pair)) + fastclose_opt(wrong)))
    else:
        inject(pair, *pair.peer.rst(fastclose=True, key=wrong, reason=None,
                                    seq_rel=pair.peer.snd_nxt + 1000, forged=True))
    assert not pair.local.reset and pair.conn.state == ConnState.ESTABLISHED
    assert pair.proxy.counters["MPFastcloseRx"] == 0
    streams_intact(pair)


@pytest.mark.xfail(strict=True, reason="issue 8 item 5: the RECV mapping table has no cap")
def test_mapping_flood_keeps_the_recv_table_bounded():
    """Issue 8 item 5 (bounded state; RFC 8684 §3.3.1 leaves buffering of mappings to the
    receiver): 10,000 one-byte segments, each with a mapping of its own and a gap after
    it, all inside the window with valid numbers, leave at most 4096 mappings held for
    the subflow, and the connection works afterwards."""
    pair = ready(47)
    base = pair.peer.s_alloc
    sf0 = pair.conn.sf0
    for i in range(10_000):
        s = base + 1 + 2 * i
        mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair, 3 * i + 1), ssn=s + 1, dll=1)
        pair.proxy.inbound(bytearray(crafted(pair, mp, b"z", seq_off=1 + 2 * i)), pair.now)
        pair.proxy.packets_to_send()
    assert len(sf0.rcv_map) <= 4096, f"{len(sf0.rcv_map)} mappings held"


@pytest.mark.xfail(strict=True, reason="issue 8 item 5: connections in SYN_SENT are capped "
                   "only by the 75 s timeout (no --max-connections)")
def test_local_syn_flood_keeps_the_connection_table_bounded():
    """Issue 8 item 5 (Deliver 5: ``--max-connections`` and a SYN_SENT share of it):
    20,000 local SYNs to distinct ports within one second leave at most the configured
    number of connections (``ProxyConfig.max_connections``, here 1000)."""
    import dataclasses

    from mptcp_proxy.core.proxy import Proxy, ProxyConfig
    assert "max_connections" in {f.name for f in dataclasses.fields(ProxyConfig)}, \
        "ProxyConfig has no max_connections"
    limit = 1000
    proxy = Proxy(ProxyConfig(max_connections=limit), random.Random(1).randbytes)
    la, ra = bytes((10, 0, 0, 1)), bytes((10, 0, 1, 2))
    for i in range(20_000):
        syn = build_segment(la, ra, 1024 + i % 60000, 8080, i * 7919, 0, SYN, 0xFFFF,
                            struct.pack("!BBH", 2, 4, 1460))
        proxy.outbound(syn, i / 20_000)
        proxy.packets_to_send()
    assert len(proxy.connections) <= limit


def test_add_addr_flood_with_valid_hmacs_stays_within_the_subflow_limit():
    """Issue 8 item 5: a hostile but authentic peer announcing 256 addresses (valid
    HMACs) makes the proxy open at most ``PmConfig.max_subflows`` subflows, and the
    connection keeps working."""
    net = MpNet(48, subflows="manual")
    net.connect()
    net.local.write(blob(3000, 48))
    net.run(net.now + 0.05)
    sub = net.peer.subs[0]
    for aid in range(256):
        addr = bytes((10, 9, 200 + aid // 250, aid % 250 + 1))
        h = add_addr_hmac8(net.peer.key, net.peer.remote_key, aid, addr, None)
        net._proxy_in(_raw_from_peer(net, sub, bytes((30, 16, 0x30, aid)) + addr + h))
        net._forged()
    from mptcp_proxy.core.subflow import SubflowState
    live = [s for s in net.conn.subflows if s.state != SubflowState.CLOSED]
    assert len(live) <= net.pm.config.max_subflows
    assert net.proxy.counters["MPJoinSynTx"] <= net.pm.config.max_subflows


# ============================ 5. sizes, fragments, the verdict contract (items 2, 3, 7)
@pytest.mark.xfail(strict=True, reason="issue 8 item 2: a payload cut to its mapping is "
                   "passed uncut (_truncate_payload, then the unchanged shortcut: ACCEPT)")
def test_payload_beyond_its_mapping_never_reaches_the_local_stack():
    """RFC 8684 §3.3.1: a mapping covers exactly data-level-length bytes of the subflow
    from its subflow sequence number; bytes outside any mapping are not part of the data
    stream. A segment of 1000 bytes whose mapping covers 300 hands the local stack at
    most those 300 bytes — and never reports a changed packet as unchanged (ACCEPT)."""
    pair = ready(50)
    payload = blob(1000, 51)
    mp = dss_opt(data_ack=peer_dack(pair), dsn=peer_dsn(pair), ssn=pair.peer.s_alloc + 1,
                 dll=300)
    pkt = crafted(pair, mp, payload)
    buf = bytearray(pkt)
    v = verdict_of(pair.proxy.inbound(buf, pair.now), buf)
    if v is None:
        assert bytes(buf) == pkt, "ACCEPT, but the core changed the packet"
        handed = parse_seg(pkt).plen
    else:
        handed = parse_seg(bytes(v)).plen if v is not False else 0
    assert handed <= 300, f"{handed} bytes handed to the local stack, 300 mapped"


def _gso(pair: ProxyPair, payload_len: int, flags: int = ACK | PSH) -> bytearray:
    loc = pair.local
    opts = struct.pack("!BBBBII", 1, 1, 8, 10, loc.tsval(), loc.ts_recent or 0)
    return build_segment(loc.addr, loc.raddr, loc.port, loc.rport, loc.swire(loc.snd_nxt),
                         loc.rwire(loc.rcv_nxt), flags, loc.win, opts,
                         blob(payload_len, payload_len))


def _outbound_ok(pair: ProxyPair, pkt: bytearray, csum: int):
    """Feed a local packet; it must not raise, and what comes out is well-formed."""
    v = verdict_of(pair.proxy.outbound(pkt, pair.now, csum), pkt)
    out = [bytes(p) for p in pair.proxy.packets_to_send()]
    if isinstance(v, bytearray):
        _seg, bad = wire.decode(v, require_tcp_csum=csum != CSUM_GSO)
        assert not bad, bad
    for p in out:
        _seg, bad = wire.decode(p)
        assert not bad, bad
    return v, out


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: out_fast grows a 64 KB GSO segment "
                   "past the 16-bit IP length (struct.error out of Proxy.outbound)")
def test_local_gso_segment_near_64k_does_not_overflow():
    """RFC 791/8200: the IP length is a 16-bit field. A local GSO super-packet of
    65,483 bytes on an established connection gets its MPTCP options without raising;
    it leaves whole (at most 65,535 bytes) or as smaller segments that carry every byte."""
    pair = ready(52)
    pkt = _gso(pair, 65535 - 20 - 32)
    v, out = _outbound_ok(pair, pkt, CSUM_GSO)
    carried = (parse_seg(bytes(v)).plen if isinstance(v, bytearray) else 0) + \
        sum(parse_seg(p).plen for p in out)
    # every byte carried, or dropped whole (and counted) for the local stack to re-send
    assert carried == 65535 - 20 - 32 or (v is False and carried == 0)


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: a local RST carrying data near 64 KB "
                   "overflows the IP length when MP_FASTCLOSE is added")
def test_local_rst_with_data_near_64k_does_not_overflow():
    """RFC 9293 §3.5.3 allows data on an RST; the 16-bit IP length does not allow the
    MP_FASTCLOSE + MP_TCPRST the proxy adds to a 64 KB one. No exception: the reset goes
    out (its data may be dropped) and the connection is closed on both sides."""
    pair = ready(53)
    v, _out = _outbound_ok(pair, _gso(pair, 65535 - 20 - 32, RST | ACK), CSUM_OK)
    assert pair.conn.state == ConnState.CLOSED


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: a local SYN with data near 64 KB "
                   "overflows the IP length when MP_CAPABLE is added (Connection.out_syn)")
def test_local_syn_with_data_near_64k_does_not_overflow():
    """A SYN may carry data (RFC 7413, TCP Fast Open). Adding MP_CAPABLE to a SYN of
    65,535 bytes must not raise out of the core."""
    from mptcp_proxy.core.proxy import Proxy, ProxyConfig
    proxy = Proxy(ProxyConfig(), random.Random(1).randbytes)
    la, ra = bytes((10, 0, 0, 1)), bytes((10, 0, 1, 2))
    opts = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02\x01\x01"
    syn = build_segment(la, ra, 40000, 8080, 1, 0, SYN, 0xFFFF, opts, blob(65535 - 48, 1))
    v = verdict_of(proxy.outbound(syn, 0.0, CSUM_OK), syn)
    if isinstance(v, bytearray):
        assert not wire.decode(v)[1]


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: forged segments are sized from the "
                   "peer's MSS, which is never clamped (a 65535 MSS overflows build_segment)")
def test_forged_segments_fit_a_peer_mss_of_65535():
    """RFC 9293 §3.7.1: the MSS a peer announces bounds what it can receive, not what our
    link can carry; a segment larger than the local link's MTU cannot leave. With a
    peer MSS of 65,535, a local GSO packet the proxy must cut is cut into segments no
    larger than the local stack's own MSS, without raising."""
    pair = ProxyPair(seed=54, peer_kw=dict(mss=65535))
    with_pm(pair)
    pair.handshake()
    pair.transfer(blob(3000, 54), blob(3000, 55))
    pkt = _gso(pair, 65535 - 20 - 32 - 10, ACK | PSH | FIN)  # (the end of a file)
    v, out = _outbound_ok(pair, pkt, CSUM_GSO)
    for p in out:
        assert parse_seg(p).plen <= pair.local.mss


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: the peer's window scale is never "
                   "clamped to 14")
def test_peer_window_scale_above_14_is_taken_as_14():
    """RFC 7323 §2.3: "If a Window Scale option is received with a shift.cnt value larger
    than 14, the TCP SHOULD log the error but MUST use 14 instead of the specified
    value." (Checked on the initial subflow's recorded shift: the window the local stack
    is shown comes from it once a join uses another scale.)"""
    pair = with_pm(ProxyPair(seed=56, peer_kw=dict(wscale=20)))
    pair.handshake()
    assert pair.conn.sf0.rcv_wscale <= 14


@pytest.mark.xfail(strict=True, reason="issue 8 item 3: BIG TCP (IP length 0), IPv4 "
                   "fragments and IPv6 extension headers of a converted connection pass "
                   "through unconverted (parse_packet -> PktNotTcp -> ACCEPT)")
@pytest.mark.parametrize("shape", ["ipv4_length_0_out", "ipv4_length_0_in",
                                   "ipv4_first_fragment_in", "ipv6_hop_by_hop_in"])
def test_packets_of_a_converted_connection_never_pass_unconverted(shape):
    """Issue 8 item 3 (Deliver 3): a segment of an MPTCP connection the proxy carries is
    converted, or dropped and counted — never handed on unconverted (its sequence
    numbers belong to the other space, its MPTCP options to no one)."""
    pair = ready(57, v6=shape.startswith("ipv6"))
    if shape.endswith("_out"):
        pkt = _gso(pair, 30_000)  # (BIG TCP's are larger; the length field is what counts)
        pkt[2:4] = b"\x00\x00"
        v = verdict_of(pair.proxy.outbound(pkt, pair.now, CSUM_GSO), pkt)
    else:
        pair.peer.write(blob(1400, 58))
        b = bytearray(pair.peer.push()[0])
        if shape == "ipv4_length_0_in":
            b[2:4] = b"\x00\x00"
        elif shape == "ipv4_first_fragment_in":
            b[6:8] = b"\x20\x00"
        else:
            nh = b[6]
            b = b[:40] + bytes((nh, 0, 1, 4, 0, 0, 0, 0)) + b[40:]
            b[6] = 0
            struct.pack_into("!H", b, 4, len(b) - 40)
        wire.fix_checksums(b)
        v = verdict_of(pair.proxy.inbound(b, pair.now, CSUM_OK), b)
    assert v is not None, "passed unconverted"


@pytest.mark.xfail(strict=True, reason="issue 8 item 7: a local SYN that already carries "
                   "MP_CAPABLE goes out with two (Connection.out_syn)")
def test_local_syn_already_carrying_mp_capable_goes_out_with_one():
    """RFC 8684 §3.1: the initiator's SYN carries one MP_CAPABLE (length 4). A native
    MPTCP application's SYN already has one: the SYN on the wire still has exactly one
    MP_CAPABLE (the proxy's, or the application's — never both)."""
    from mptcp_proxy.core.proxy import Proxy, ProxyConfig
    proxy = Proxy(ProxyConfig(), random.Random(1).randbytes)
    opts = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + mpc_opt(flags=0x01) + \
        b"\x01\x03\x03\x07"
    syn = build_segment(bytes((10, 0, 0, 1)), bytes((10, 0, 1, 2)), 40000, 8080, 1, 0, SYN,
                        0xFFFF, opts)
    v = verdict_of(proxy.outbound(syn, 0.0), syn)
    out = parse_seg(bytes(v) if isinstance(v, bytearray) else bytes(syn))
    mpcs = [o for o in mptcp_raw(out) if o[2] >> 4 == 0]
    assert len(mpcs) == 1, mpcs


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
    answers = 0
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
        answers += len(pair.proxy.packets_to_send())
    assert answers <= 10, f"{answers} packets sent in answer (RFC 5961 §7: throttled)"
    assert (pair.conn.r_high, pair.conn.d_una, pair.conn.rcv_data_fin) == before
    streams_intact(pair)

