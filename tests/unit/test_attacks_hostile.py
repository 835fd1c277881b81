"""Attacks on the proxy's connection logic (2): forged joins, authentic but hostile
peers (ADD_ADDR, MP_FASTCLOSE), floods, oversized segments, fragments and extension
headers, and the verdict contract, sans-I/O, on the unit-test peer models.

Same conventions as test_attacks.py (RFC rule in each docstring, strict xfails naming
the finding of issue 8); helpers: attack_kit.py.
"""

from __future__ import annotations

import random
import struct

import pytest
from attack_kit import (
    blob,
    crafted,
    gso_segment,
    inject,
    mptcp_raw,
    outbound_ok,
    peer_dack,
    peer_dsn,
    raw_from_peer,
    ready,
    streams_intact,
    with_pm,
)
from lockstep.decode import parse_seg
from lockstep.pair import ProxyPair
from lockstep.wire import ACK, FIN, M32, PSH, RST, SYN, dss_opt, fastclose_opt, key_sha, mpc_opt
from mpnet.network import MpNet
from mpnet.options import add_addr_hmac8

from mptcp_proxy.core.connection import ConnState
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.tcp import CSUM_GSO, CSUM_OK
from tests.fuzz import wire
from tests.fuzz.build import verdict_of


# ================================== 4. forged joins, ADD_ADDR, FASTCLOSE, floods
def test_forged_mp_join_syn_towards_the_proxy_never_makes_a_subflow():
    """RFC 8684 §3.2: a subflow joins a connection only through the MP_JOIN handshake with
    the token and the HMACs of both keys. The proxy accepts the peer's joins (as Linux
    does): an MP_JOIN SYN with our token but sent blind gets one SYN/ACK (no
    amplification) and a half-open subflow; a third ACK without the right HMAC resets it
    (MP_TCPRST), a bad checksum or a reset out of sequence changes nothing, a flood is held
    to the subflow limit, and the transfer goes on."""
    from mptcp_proxy.core.subflow import SubflowState
    pair = ready(40)
    tok, _ = key_sha(pair.conn.local_key)
    opt = struct.pack("!BBBBII", 30, 12, 0x10, 0, tok, 0x12345678)

    def join_syn(port, corrupt=False):
        syn = bytearray(build_segment(pair.peer.addr, pair.local.addr, port, pair.local.port,
                                      1, 0, SYN, 0xFFFF, opt))
        if corrupt:
            syn[-1] ^= 0x40  # (inside the options: the TCP checksum no longer matches)
        buf = bytearray(syn)
        assert verdict_of(pair.proxy.inbound(buf, pair.now), buf) in (None, False)
        return pair.proxy.packets_to_send()

    assert not join_syn(9998, corrupt=True) and len(pair.conn.subflows) == 1
    answers = join_syn(9999)
    assert len(answers) == 1 and answers[0][33] & SYN, "one SYN/ACK per SYN"
    sf = pair.conn.subflows[-1]
    assert sf.passive and sf.state == SubflowState.PRE_ESTABLISHED
    # a reset out of sequence: taken by nobody
    rst = build_segment(pair.peer.addr, pair.local.addr, 9999, pair.local.port, 5000, 0,
                        RST, 0)
    pair.proxy.inbound(bytearray(rst), pair.now)
    assert sf.state == SubflowState.PRE_ESTABLISHED
    # the third ACK with a made-up HMAC
    ack_opt = struct.pack("!BBH", 30, 24, 0x1000) + bytes(20)
    third = build_segment(pair.peer.addr, pair.local.addr, 9999, pair.local.port, 2,
                          sf.snd_wire(0), ACK, 0xFFFF, ack_opt)
    pair.proxy.inbound(bytearray(third), pair.now)
    out = pair.proxy.packets_to_send()
    assert any(p[33] & RST for p in out), "the failed join is reset"
    assert sf.state != SubflowState.ESTABLISHED and sf.gone
    assert pair.proxy.counters["MPJoinAckHMacFailure"] == 1
    # a flood: bounded by the subflow limit
    for port in range(10000, 10200):
        join_syn(port)
    limit = pair.proxy.pm.config.max_subflows
    assert sum(1 for s in pair.conn.subflows if not s.gone) <= limit
    streams_intact(pair)


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
    net._proxy_in(raw_from_peer(net, sub, opt))
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
        net._proxy_in(raw_from_peer(net, sub, bytes((30, 16, 0x30, aid)) + addr + h))
        net._forged()
    from mptcp_proxy.core.subflow import SubflowState
    live = [s for s in net.conn.subflows if s.state != SubflowState.CLOSED]
    assert len(live) <= net.pm.config.max_subflows
    assert net.proxy.counters["MPJoinSynTx"] <= net.pm.config.max_subflows


# ============================ 5. sizes, fragments, the verdict contract (items 2, 3, 7)
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


def test_local_gso_segment_near_64k_does_not_overflow():
    """RFC 791/8200: the IP length is a 16-bit field. A local GSO super-packet of
    65,483 bytes on an established connection gets its MPTCP options without raising;
    it leaves whole (at most 65,535 bytes) or as smaller segments that carry every byte."""
    pair = ready(52)
    pkt = gso_segment(pair, 65535 - 20 - 32)
    v, out = outbound_ok(pair, pkt, CSUM_GSO)
    carried = (parse_seg(bytes(v)).plen if isinstance(v, bytearray) else 0) + \
        sum(parse_seg(p).plen for p in out)
    # every byte carried, or dropped whole (and counted) for the local stack to re-send
    assert carried == 65535 - 20 - 32 or (v is False and carried == 0)


def test_local_rst_with_data_near_64k_does_not_overflow():
    """RFC 9293 §3.5.3 allows data on an RST; the 16-bit IP length does not allow the
    MP_FASTCLOSE + MP_TCPRST the proxy adds to a 64 KB one. No exception: the reset goes
    out (its data may be dropped) and the connection is closed on both sides."""
    pair = ready(53)
    v, _out = outbound_ok(pair, gso_segment(pair, 65535 - 20 - 32, RST | ACK), CSUM_OK)
    assert pair.conn.state == ConnState.CLOSED


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


def test_forged_segments_fit_a_peer_mss_of_65535():
    """RFC 9293 §3.7.1: the MSS a peer announces bounds what it can receive, not what our
    link can carry; a segment larger than the local link's MTU cannot leave. With a
    peer MSS of 65,535, a local GSO packet the proxy must cut is cut into segments no
    larger than the local stack's own MSS, without raising."""
    pair = ProxyPair(seed=54, peer_kw=dict(mss=65535))
    with_pm(pair)
    pair.handshake()
    pair.transfer(blob(3000, 54), blob(3000, 55))
    pkt = gso_segment(pair, 65535 - 20 - 32 - 10, ACK | PSH | FIN)  # (the end of a file)
    v, out = outbound_ok(pair, pkt, CSUM_GSO)
    for p in out:
        assert parse_seg(p).plen <= pair.local.mss


def test_peer_window_scale_above_14_is_taken_as_14():
    """RFC 7323 §2.3: "If a Window Scale option is received with a shift.cnt value larger
    than 14, the TCP SHOULD log the error but MUST use 14 instead of the specified
    value." (Checked on the initial subflow's recorded shift: the window the local stack
    is shown comes from it once a join uses another scale.)"""
    pair = with_pm(ProxyPair(seed=56, peer_kw=dict(wscale=20)))
    pair.handshake()
    assert pair.conn.sf0.rcv_wscale <= 14


@pytest.mark.parametrize("shape", ["ipv4_length_0_out", "ipv4_length_0_in",
                                   "ipv4_first_fragment_in", "ipv6_hop_by_hop_in"])
def test_packets_of_a_converted_connection_never_pass_unconverted(shape):
    """Issue 8 item 3 (Deliver 3): a segment of an MPTCP connection the proxy carries is
    converted, or dropped and counted — never handed on unconverted (its sequence
    numbers belong to the other space, its MPTCP options to no one)."""
    pair = ready(57, v6=shape.startswith("ipv6"))
    if shape.endswith("_out"):
        pkt = gso_segment(pair, 30_000)  # (BIG TCP's are larger; the length field is what counts)
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

