"""Targeted attacks on the server side of the conversion (issue 8 item 6, issue 10): the
proxy serving a plain listener (``--serve``), an anchor in front of a server
(``--anchor``), and the peer's joins toward us (RFC 8684 §3.2). One attacker per test
against the unit-test models of tests/unit/server_model.py; each test asserts that the
attack creates no state (no connection, no subflow), kills nothing, and is counted.

The attacker is blind unless the test says otherwise: it knows the 4-tuple and the
token (a join's SYN carries it in clear), not the keys or the sequence numbers.
"""

from __future__ import annotations

import struct

import pytest
from attack_kit import blob, flip_bit
from lockstep.decode import TcpRst, parse_seg
from lockstep.pair import verdict_output
from lockstep.wire import FIN, M32, RST, SYN
from server_model import CLIENT_PORT, SERVER_PORT, JoinOpener, ServerPair

from mptcp_proxy.core.connection import ConnState
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.policy import PathManager, PmConfig
from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.core.states import SubflowState
from mptcp_proxy.core.tcp import CSUM_UNVERIFIED
from mptcp_proxy.core.verdict import DROP
from tests.fuzz import snapshot, wire

CLIENT2 = bytes([10, 0, 2, 2])  # the native client's second address
ATTACKER = bytes([10, 0, 66, 6])


def served(**kw) -> ServerPair:
    """A server-role connection, established, data both ways."""
    pair = ServerPair(**kw)
    pair.handshake()
    pair.transfer(blob(3000, 1), blob(3000, 2))
    assert pair.conn.state == ConnState.ESTABLISHED
    pair.elsewhere = []
    return pair


def inject(pair, pkt: bytes):
    """A packet from the network side (checksum unverified, as the queue gives it)."""
    n = len(pair.verdicts)
    pair.queue.append(("proxy_in", bytes(pkt)))
    pair.pump()
    return pair.verdicts[n][1]


def corrupt(pkt: bytes) -> bytes:
    """``pkt`` with one bit of its TCP payload or options flipped, checksum left as is."""
    lo = wire.layout(pkt)
    out = flip_bit(pkt, len(pkt) - 1 if lo.end > lo.th + 20 else lo.th + 14, 2)
    assert not wire.csum_valid(out)
    return out


def opener(pair, sport: int = 41000, **kw) -> JoinOpener:
    return JoinOpener(pair, CLIENT2, sport, pair.local.addr, SERVER_PORT, pair.peer.key,
                      pair.conn.local_key, **kw)


def still_healthy(pair) -> None:
    """More data both ways arrives intact; nothing was reset."""
    before_local, before_peer = bytes(pair.local.rcv), bytes(pair.peer.data)
    up, down = blob(8000, 11), blob(8000, 12)
    pair.transfer(down, up)
    assert bytes(pair.local.rcv) == before_local + up
    assert bytes(pair.peer.data) == before_peer + down
    assert pair.conn.state == ConnState.ESTABLISHED and pair.conn.sf0.alive
    pair.assert_clean()


# ================================================================ the handshake
def test_bad_checksum_mp_capable_syn_creates_no_connection():
    """RFC 1122 §4.2.2.7: a corrupted MP_CAPABLE SYN to a served port makes no
    connection and reaches no listener's half-open queue through us unconverted; the
    genuine SYN then makes one."""
    pair = ServerPair()
    pair.local.listen()
    syn = pair.peer.syn()
    before = pair.proxy.counters["PktBadChecksum"]
    inject(pair, corrupt(syn))
    assert not pair.proxy.connections and not pair.proxy.tokens
    assert pair.proxy.syn_sent == 0
    assert pair.proxy.counters["PktBadChecksum"] == before + 1
    pair.emit_peer(pair.peer.connect())
    pair.pump()
    pair.transfer(blob(2000, 3), blob(2000, 4))
    assert pair.conn.state == ConnState.ESTABLISHED
    pair.assert_clean()


def test_syn_with_fin_to_a_served_port_is_no_connection_request():
    """A SYN with FIN is no connection request (Linux drops it in LISTEN): no state,
    counted as not ours."""
    pair = ServerPair()
    s = parse_seg(pair.peer.syn())
    pkt = build_segment(s.src, s.dst, s.sport, s.dport, s.seq, 0, SYN | 0x01, s.win,
                        s.opt_block)
    before = pair.proxy.counters["PktUnknownConn"]
    inject(pair, bytes(pkt))
    assert not pair.proxy.connections and pair.proxy.syn_sent == 0
    assert pair.proxy.counters["PktUnknownConn"] == before + 1


def test_repeated_syn_with_fin_during_syn_rcvd_is_dropped():
    """A repeat of the peer's SYN that also carries FIN, on a connection still in
    SYN_RCVD, is no more a connection request than a first one: dropped and counted
    ``PktMalformed``, never passed to the TCP side; the handshake then completes."""
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn, count=1)  # third ACK lost
    pair.handshake()
    assert pair.conn.state == ConnState.SYN_RCVD
    s = parse_seg(pair.peer.syn())
    pkt = build_segment(s.src, s.dst, s.sport, s.dport, s.seq, 0, SYN | FIN, s.win,
                        s.opt_block)
    before = pair.proxy.counters["PktMalformed"]
    nfin = len([x for x in pair.segs("to_local") if x.fin])
    assert inject(pair, bytes(pkt)) is DROP
    assert pair.proxy.counters["PktMalformed"] == before + 1
    assert len([x for x in pair.segs("to_local") if x.fin]) == nfin
    assert pair.conn.state == ConnState.SYN_RCVD
    pair.peer_send(b"GET / HTTP/1.1\r\n\r\n")  # its first data with MP_CAPABLE establishes
    assert pair.conn.state == ConnState.ESTABLISHED


def test_rst_outside_the_window_during_syn_rcvd_is_ignored():
    """RFC 5961 §3.2: in SYN_RCVD an RST counts only at exactly RCV.NXT (the client's
    ISN + 1). Blind RSTs elsewhere leave the half-open connection (and the listener)
    alone and are counted; the handshake then completes."""
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn, count=1)  # third ACK lost
    pair.handshake()
    assert pair.conn.state == ConnState.SYN_RCVD
    before = pair.proxy.counters["PktOutOfWindow"]
    nrst = len([s for s in pair.segs("to_local") if s.rst])
    for off in (2, 1000, 65535, 1 << 30):
        inject(pair, pair.peer.rst(fastclose=False, reason=None, seq_rel=off, forged=True)[0])
    assert pair.conn.state == ConnState.SYN_RCVD
    assert pair.proxy.counters["PktOutOfWindow"] == before + 4
    assert len([s for s in pair.segs("to_local") if s.rst]) == nrst
    pair.peer_send(b"GET / HTTP/1.1\r\n\r\n")  # its first data with MP_CAPABLE establishes
    assert pair.conn.state == ConnState.ESTABLISHED
    pair.transfer(blob(3000, 5), blob(3000, 6))
    pair.assert_clean()


def test_rst_outside_the_window_of_an_established_server_connection():
    """RFC 5961 §3.2 on the server side: blind RSTs out of the window do not kill the
    connection; they are counted."""
    pair = served()
    before = pair.proxy.counters["PktOutOfWindow"]
    for off in (1 << 20, 1 << 30, (1 << 32) - 70000):
        inject(pair, pair.peer.rst(seq_rel=off, forged=True)[0])
    assert pair.proxy.counters["PktOutOfWindow"] >= before + 3
    still_healthy(pair)


def test_oversized_mss_in_the_peers_syn_is_clamped():
    """A peer MSS of 65,535: the SYN the listener gets carries an MSS that leaves room for
    our options on a real link, counted; the transfer's segments are well formed."""
    pair = ServerPair()
    pair.peer.syn_mss = 65535
    pair.handshake()
    (syn,) = [s for s in pair.segs("to_local") if s.syn]
    assert syn.mss is not None and syn.mss < 65535
    assert pair.proxy.counters["MssClamped"] >= 1
    assert syn.mss == 65535 - pair.proxy.config.mss_overhead
    pair.transfer(blob(30_000, 7), blob(30_000, 8))
    assert bytes(pair.local.rcv) == bytes(pair.peer.dsnd)
    assert bytes(pair.peer.data) == bytes(pair.local.sndbuf)
    # (the server still sends segments of its own link's MSS, which with our DSS exceed
    # a 1,500-byte link: the same as in the client role, see docs/fuzzing.md; the model
    # flags them, nothing else may be wrong)
    assert all("exceeds the MTU" in v for v in pair.peer.violations), pair.peer.violations
    assert not pair.local.violations


# ========================================================== the peer's joins
def test_join_syn_with_a_bad_checksum_creates_no_subflow():
    pair = served()
    j = opener(pair)
    snap = snapshot.snapshot(pair.proxy)
    before = pair.proxy.counters["PktBadChecksum"]
    inject(pair, corrupt(j.syn()))
    assert snapshot.diff(snap, snapshot.snapshot(pair.proxy)) == []
    assert len(pair.conn.subflows) == 1 and not pair.elsewhere
    assert pair.proxy.counters["PktBadChecksum"] == before + 1
    still_healthy(pair)


def test_join_syn_with_an_unknown_token_creates_no_subflow():
    """A blind attacker guessing tokens: nothing is created, the SYN is passed on as not
    ours (the listener answers it with its own RST), counted."""
    pair = served()
    for i, tok_key in enumerate((1, 2, 3, 0x42)):
        j = JoinOpener(pair, ATTACKER, 42000 + i, pair.local.addr, SERVER_PORT, tok_key, tok_key)
        inject(pair, j.syn())
    assert len(pair.conn.subflows) == 1 and not pair.elsewhere
    assert pair.proxy.counters["MPJoinPassed"] == 4
    still_healthy(pair)


def test_forged_join_third_acks_with_wrong_hmacs_kill_only_that_join():
    """An attacker who saw the token opens a join but cannot compute the 160-bit HMAC
    (RFC 8684 §3.2): its third ACK is refused with MP_TCPRST, counted; the connection
    lives on, and a flood of such joins stays within ``max_subflows``."""
    pm = PathManager(config=PmConfig(max_subflows=3))
    pair = served(pm=pm)
    for i in range(12):
        j = opener(pair, sport=43000 + i, nonce=0x1000 + i)
        inject(pair, j.syn())
        synacks = [s for s in pair.elsewhere if s.syn and s.dport == 43000 + i]
        if synacks:
            j.take_synack(synacks[0])
            inject(pair, j.third_ack(good=False))
        live = [sf for sf in pair.conn.subflows if not sf.gone]
        assert len(live) <= 3
    c = pair.proxy.counters
    assert c["MPJoinAckHMacFailure"] >= 1
    assert c["MPJoinAckHMacFailure"] + c["MPJoinRejected"] == 12
    assert all(sf.gone for sf in pair.conn.subflows[1:])
    rsts = [s for s in pair.elsewhere if s.rst]
    assert len(rsts) == 12 and all(any(isinstance(x, TcpRst) for x in s.mp) for s in rsts)
    still_healthy(pair)


def test_bad_checksum_third_ack_of_a_join_changes_nothing():
    """A corrupted copy of the join's third ACK neither establishes nor resets the join
    (and sends nothing); the genuine one then establishes it."""
    pair = served()
    j = opener(pair)
    inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    sf = pair.conn.subflows[1]
    n = len(pair.elsewhere)
    snap = snapshot.snapshot(pair.proxy)
    inject(pair, corrupt(j.third_ack()))
    assert snapshot.diff(snap, snapshot.snapshot(pair.proxy)) == []
    assert sf.state == SubflowState.PRE_ESTABLISHED and len(pair.elsewhere) == n
    inject(pair, j.third_ack())
    assert sf.state == SubflowState.ESTABLISHED


def test_bad_checksum_copy_of_a_repeated_third_ack_gets_no_fourth_ack():
    """On a join just established (finding F1 of the server-role fuzzing): a corrupted
    copy of the repeated third ACK is not answered with a fourth ACK and changes
    nothing; it is dropped and counted."""
    pair = served()
    j = opener(pair)
    inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    inject(pair, j.third_ack())
    n = len(pair.elsewhere)
    fourth = pair.proxy.counters["MPJoinFourthAckTx"]
    bad = pair.proxy.counters["PktBadChecksum"]
    snap = snapshot.snapshot(pair.proxy)
    inject(pair, corrupt(j.third_ack()))
    assert snapshot.diff(snap, snapshot.snapshot(pair.proxy)) == []
    assert len(pair.elsewhere) == n
    assert pair.proxy.counters["MPJoinFourthAckTx"] == fourth
    assert pair.proxy.counters["PktBadChecksum"] == bad + 1
    inject(pair, j.third_ack())  # the genuine repetition is still answered
    assert pair.proxy.counters["MPJoinFourthAckTx"] == fourth + 1


def test_blind_rst_on_a_half_open_join_is_ignored():
    """RFC 5961 §3.2 for the peer's join: an RST not at exactly RCV.NXT leaves the
    half-open join alone (counted); the join then completes."""
    pair = served()
    j = opener(pair)
    inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    sf = pair.conn.subflows[1]
    for off in (2, 100, 1 << 30):
        pkt = build_segment(CLIENT2, pair.local.addr, 41000, SERVER_PORT,
                            (j.iss + off) & M32, 0, RST, 0, b"")
        inject(pair, bytes(pkt))
    assert sf.state == SubflowState.PRE_ESTABLISHED and not sf.gone
    inject(pair, j.third_ack())
    assert sf.state == SubflowState.ESTABLISHED
    still_healthy(pair)


def test_mp_capable_syn_flood_stays_within_the_half_open_limit():
    """Spoofed MP_CAPABLE SYNs from many ports: at most ``max_syn_sent`` half-open
    connections, the rest passed as plain TCP and counted; the established connection
    is untouched."""
    cfg = ProxyConfig(client=False, serve=frozenset({SERVER_PORT}), max_syn_sent=16,
                      max_connections=64)
    pair = served(config=cfg)
    s = parse_seg(pair.peer.syn())
    for i in range(100):
        pkt = build_segment(ATTACKER, s.dst, 20000 + i, s.dport, 1000 * i, 0, SYN, s.win,
                            s.opt_block)
        inject(pair, bytes(pkt))
    half = [c for c in pair.proxy.connections.values() if c.state == ConnState.SYN_RCVD]
    assert len(half) == 16 == pair.proxy.syn_sent
    assert pair.proxy.counters["SynSentLimit"] == 100 - 16
    conn = next(c for c in pair.proxy.connections.values()
                if c.state == ConnState.ESTABLISHED)
    assert conn.key[3] == CLIENT_PORT


# =================================================================== the anchor
def test_anchor_drops_a_corrupted_synack_of_the_server():
    """On an anchor the server is across a link: its SYN/ACK may come unverified. A
    corrupted one changes nothing (no key given out, no conversion decided), sends
    nothing and is dropped, counted; the genuine one then converts."""
    pair = ServerPair(anchor=True)
    pair.local.listen()
    syn = pair.peer.connect()[0]
    b = bytearray(syn)
    to_server = verdict_output(syn, pair.proxy.inbound(b, pair.now), b)
    assert to_server is not None and pair.conn.state == ConnState.SYN_RCVD
    synacks = pair.local.receive(parse_seg(to_server))
    list(pair.proxy.events())  # (CREATED)
    snap = snapshot.snapshot(pair.proxy)
    before = pair.proxy.counters["PktBadChecksum"]
    bad = corrupt(synacks[0])
    b = bytearray(bad)
    assert verdict_output(bad, pair.proxy.outbound(b, pair.now, CSUM_UNVERIFIED), b) is None
    assert snapshot.diff(snap, snapshot.snapshot(pair.proxy)) == []
    assert pair.proxy.counters["PktBadChecksum"] == before + 1
    assert list(pair.proxy.packets_to_send()) == [] and list(pair.proxy.events()) == []
    pair.emit_local(synacks)
    pair.pump()
    pair.transfer(blob(4000, 9), blob(4000, 10))
    assert pair.conn.state == ConnState.ESTABLISHED and pair.peer.mptcp
    pair.assert_clean()


@pytest.mark.parametrize("extra", [bytes((30, 4, 0x01, 0x81)),
                                   struct.pack("!BBBBII", 30, 12, 0x10, 1, 0x11223344,
                                               0x55667788)],
                         ids=["two_mp_capable", "mp_capable_and_mp_join"])
def test_anchor_passes_one_mp_capable_to_the_server(extra):
    """A SYN with two MP_CAPABLE options, or MP_CAPABLE and MP_JOIN: the server behind
    an anchor sees the one valid MP_CAPABLE the anchor judged, nothing else of MPTCP."""
    pair = ServerPair(anchor=True)
    pair.local.listen()
    s = parse_seg(pair.peer.syn())
    opts = s.opt_block + extra
    assert len(opts) <= 40
    pkt = build_segment(s.src, s.dst, s.sport, s.dport, s.seq, 0, SYN, s.win, opts)
    inject(pair, bytes(pkt))
    (syn,) = [x for x in pair.segs("to_local") if x.syn]
    assert syn.csum_ok
    (mpc,) = syn.mp  # the client's own, the first one
    assert (mpc.length, mpc.flags) == (4, s.mpc.flags) and syn.mpc is mpc, syn.mp


# ============================================ found on the way (the client role)
def test_forged_segments_are_capped_when_the_tcp_side_announced_no_mss():
    """A TCP side whose SYN carries MSS 0 (or none) counts as announcing RFC 9293
    §3.7.1's default of 536: a 64 KB segment the proxy must cut (its DSS would not fit
    the IP length) is sent as segments of at most that size, not as one 64 KB piece
    sized by a peer MSS of 65,535 (fuzzer finding, trace cli_peer_join)."""
    from mptcp_proxy.core.proxy import Proxy
    from mptcp_proxy.core.tcp import CSUM_PARTIAL
    la, ra = bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2])
    proxy = Proxy(ProxyConfig(), lambda n: bytes(range(1, n + 1)))
    ts = struct.pack("!BBII", 8, 10, 100, 0)
    syn = wire.build(la, ra, 40000, 8080, 1000, 0, SYN, 0xFFFF,
                     struct.pack("!BBH", 2, 4, 0) + b"\x01\x01" + ts)
    proxy.outbound(bytearray(syn), 0.0)
    mpc = bytes((30, 12, 0x01, 0x01)) + (0x1122334455667788).to_bytes(8, "big")
    synack = wire.build(ra, la, 8080, 40000, 5000, 1001, SYN | 0x10, 0xFFFF,
                        struct.pack("!BBH", 2, 4, 65535) + b"\x01\x01" + ts + mpc)
    proxy.inbound(bytearray(synack), 0.0, CSUM_UNVERIFIED)
    list(proxy.packets_to_send())
    big = wire.build(la, ra, 40000, 8080, 1001, 5001, 0x18, 0xFFFF, b"\x01\x01" + ts,
                     blob(65535 - 20 - 32, 13))
    proxy.outbound(bytearray(big), 0.1, CSUM_PARTIAL)
    forged = [parse_seg(bytes(p)) for p in proxy.packets_to_send()]
    assert sum(s.plen for s in forged) == 65535 - 20 - 32
    assert all(s.plen <= 536 for s in forged), [s.plen for s in forged]


# ================================================ malformed handshake segments
def test_syn_options_of_a_wrong_length_are_left_out_and_counted():
    """A peer SYN whose timestamps option has 11 bytes and a server SYN/ACK whose MSS
    option has 6: neither is carried over (Linux ignores such options too), both counted;
    the handshake completes."""
    pair = ServerPair()
    pair.local.listen()
    s = parse_seg(pair.peer.syn())
    opts = s.opt_block.replace(b"\x08\x0a", b"\x08\x0b", 1)
    opts = opts[:opts.index(b"\x08\x0b") + 11] + opts[opts.index(b"\x08\x0b") + 10:]
    opts += b"\x00" * (-len(opts) % 4)
    inject(pair, bytes(build_segment(s.src, s.dst, s.sport, s.dport, s.seq, 0, SYN, s.win,
                                     opts)))
    (syn,) = [x for x in pair.segs("to_local") if x.syn]
    assert syn.opts_ok and syn.ts is None and syn.mpc is None
    assert pair.proxy.counters["OptMalformed"] == 1
    conn = pair.conn
    sa = parse_seg(pair.local.synack())
    bad = build_segment(sa.src, sa.dst, sa.sport, sa.dport, sa.seq, sa.ack, sa.flags, sa.win,
                        b"\x02\x06\x05\xb4\x00\x00" + b"\x01\x01")
    b = bytearray(bad)
    out = verdict_output(bytes(bad), pair.proxy.outbound(b, pair.now), b)
    assert out is not None and conn.state == ConnState.SYN_RCVD
    got = parse_seg(out)
    assert got.opts_ok and got.mss is None and got.mpc is not None
    assert pair.proxy.counters["OptMalformed"] == 2


def test_synack_with_fin_from_the_server_is_dropped():
    """A SYN/ACK with FIN is no segment a stack sends: it does not go to the peer with
    our key, counted; the genuine SYN/ACK then does."""
    pair = ServerPair()
    pair.local.listen()
    syn = pair.peer.connect()[0]
    b = bytearray(syn)
    to_server = verdict_output(syn, pair.proxy.inbound(b, pair.now), b)
    synacks = pair.local.receive(parse_seg(to_server))
    sa = parse_seg(synacks[0])
    fin = bytes(build_segment(sa.src, sa.dst, sa.sport, sa.dport, sa.seq, sa.ack,
                              sa.flags | 0x01, sa.win, sa.opt_block))
    b = bytearray(fin)
    assert verdict_output(fin, pair.proxy.outbound(b, pair.now), b) is None
    assert pair.proxy.counters["PktMalformed"] == 1 and pair.conn.syn_count == 0
    pair.emit_local(synacks)
    pair.pump()
    pair.transfer(blob(2000, 14), blob(2000, 15))
    pair.assert_clean()


def test_first_data_with_mp_capable_and_a_dss_reaches_the_server_with_one_dss():
    """The client's first data with MP_CAPABLE (data-level length) and a DSS besides: the
    implied mapping holds, the extra DSS is left out (counted); the server gets the
    bytes, and no segment with two DSS."""
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn and not s.plen)  # third ACK lost
    pair.handshake()
    p = pair.peer
    p.write(b"GET / HTTP/1.1\r\n\r\n")
    (first,) = p.push()
    f = parse_seg(first)
    opts = f.opt_block + bytes((30, 4, 0x20, 0x00))
    pkt = build_segment(f.src, f.dst, f.sport, f.dport, f.seq, f.ack, f.flags, f.win, opts,
                        f.payload)
    assert len(opts) <= 40
    inject(pair, bytes(pkt))
    got = [s for s in pair.segs("to_local") if s.plen][-1]
    assert got.payload == b"GET / HTTP/1.1\r\n\r\n"
    assert sum(1 for o in got.mp if type(o).__name__ == "DssOpt") <= 1, got.mp
    assert pair.proxy.counters["OptMalformed"] == 1
    assert bytes(pair.local.rcv) == b"GET / HTTP/1.1\r\n\r\n"
