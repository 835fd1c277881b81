"""The server role end to end on a fake network (tests/unit/server_model.py): a native
MPTCP client (a model of Linux 6.18's) connects through the proxy to a plain TCP listener
— with ``--serve`` on the listener's host, and as an anchor on a router, which converts
only when the server answers without MP_CAPABLE (RFC 8684 §3.1; docs/protocol.md §4.1).

The client model checks every option the proxy sends as Linux would (lengths, keys,
DATA_ACK on the first segment, mappings, checksums) and the plain server checks that no
MPTCP option reaches it; ``pair.assert_clean()`` asserts neither found anything.
"""

from __future__ import annotations

import random

import pytest
from lockstep.decode import parse_seg
from lockstep.wire import CAP_A, CAP_H, M32, M64, dss_csum_ok, key_sha, mpc_opt, opt_mss
from server_model import CLIENT_PORT, SERVER_PORT, ServerPair

from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.core.states import ConnState, SubflowState
from mptcp_proxy.core.verdict import Verdict

PAYLOAD = bytes(random.Random(11).randbytes(400_000))


def blob(n: int, seed: int = 0) -> bytes:
    return PAYLOAD[seed:seed + n]


def established(**kw) -> ServerPair:
    pair = ServerPair(**kw)
    pair.handshake()
    assert pair.peer.state == "ESTABLISHED" and pair.local.state == "ESTABLISHED"
    return pair


def raw_mptcp(seg) -> list[bytes]:
    return [o for k, o in seg.opts if k == 30]


def non_mptcp(seg) -> list:
    return [(k, o) for k, o in seg.opts if k != 30]


# ================================================================= 1. handshake
@pytest.mark.parametrize("client_csum,proxy_csum", [(False, False), (True, False),
                                                    (False, True), (True, True)])
def test_handshake_keys_and_checksum_negotiation(client_csum, proxy_csum):
    pair = established(client_checksum=client_csum, checksum=proxy_csum)
    syn_wire, syn_server = pair.segs("from_peer")[0], pair.segs("to_local")[0]
    # the plain listener sees the SYN without MP_CAPABLE, its MSS clamped, the rest as sent
    assert not syn_server.has_mptcp and syn_server.mss == syn_wire.mss - 24
    assert [x for x in non_mptcp(syn_server) if x[0] != 2] == \
        [x for x in non_mptcp(syn_wire) if x[0] != 2]
    synack = pair.segs("to_peer")[0]
    conn = pair.conn
    assert raw_mptcp(synack) == [mpc_opt(flags=CAP_H | (CAP_A if client_csum or proxy_csum
                                                         else 0), sndr_key=conn.local_key)]
    assert non_mptcp(synack) == non_mptcp(pair.segs("out")[0])  # the server's own options
    third = pair.segs("to_local")[1]
    assert third.ackf and not third.syn and not third.has_mptcp
    assert conn.state == ConnState.ESTABLISHED and conn.role == "server" and not conn.anchor
    assert conn.remote_key == pair.peer.key and conn.fully_established
    assert conn.local_token == key_sha(conn.local_key)[0]
    assert conn.csum == pair.peer.csum_enabled == (client_csum or proxy_csum)
    c = pair.proxy.counters
    assert (c["MPCapableSYNRX"], c["MPCapableSYNACKTX"], c["MPCapableACKRX"]) == (1, 1, 1)
    assert conn.key == (pair.local.addr, SERVER_PORT, pair.peer.addr, CLIENT_PORT)
    kinds = [e.kind.value for e in pair.events]
    assert kinds[:2] == ["CREATED", "ESTABLISHED"]
    pair.assert_clean()


def test_first_segment_of_the_server_carries_a_data_ack():
    """A server that speaks first (a banner): its first segment must carry a DSS with a
    DATA_ACK, or a Linux client falls back (docs/protocol.md §1.2)."""
    pair = established()
    pair.local_send(b"220 banner\r\n")
    seg = [s for s in pair.segs("to_peer") if s.plen][0]
    assert seg.mpc is None and seg.dss is not None and seg.dss.data_ack is not None
    assert seg.dss.data_ack == (key_sha(pair.peer.key)[1] + 1) & (M64 if seg.dss.ack64 else M32)
    assert seg.dss.dsn == (key_sha(pair.conn.local_key)[1] + 1) & M64
    assert pair.peer.fully_est and bytes(pair.peer.data) == b"220 banner\r\n"
    pair.assert_clean()


@pytest.mark.parametrize("checksum", [False, True])
def test_client_first_data_with_mp_capable_is_delivered(checksum):
    pair = established(client_checksum=checksum)
    req = blob(700, 3)
    pair.peer_send(req)
    first = [s for s in pair.segs("from_peer") if s.plen][0]
    assert first.mpc is not None and first.mpc.length == (24 if checksum else 22)
    got = [s for s in pair.segs("to_local") if s.plen][0]
    # no key reaches the server (a DSS passed on unchanged, as in the client role, is
    # ignored by a plain TCP stack)
    assert got.mpc is None and got.payload == req
    assert bytes(pair.local.rcv) == req
    assert pair.proxy.counters["MPCapableDataRX"] == 1
    # the server's ACK makes the client fully established: a DSS with DATA_ACK
    ack = pair.segs("to_peer")[-1]
    assert ack.dss is not None and ack.dss.data_ack == \
        (key_sha(pair.peer.key)[1] + 1 + len(req)) & (M64 if ack.dss.ack64 else M32)
    assert pair.peer.fully_est
    pair.assert_clean()


def test_lost_third_ack_then_first_data_establishes():
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn and not s.plen)
    pair.handshake()
    assert pair.conn.state == ConnState.SYN_RCVD and pair.local.state == "SYN_RCVD"
    pair.peer_send(b"GET / HTTP/1.1\r\n\r\n")
    assert pair.conn.state == ConnState.ESTABLISHED and pair.local.state == "ESTABLISHED"
    assert bytes(pair.local.rcv) == b"GET / HTTP/1.1\r\n\r\n"
    pair.local_send(b"HTTP/1.1 200 OK\r\n")
    assert bytes(pair.peer.data) == b"HTTP/1.1 200 OK\r\n"
    pair.assert_clean()


def test_third_ack_lost_behind_the_proxy_is_answered_for_the_server():
    """The third ACK is lost between the proxy and the server: the server repeats its
    SYN/ACK; the proxy (established with the client) answers with the ACK it needs."""
    pair = ServerPair()
    pair.drop("to_local", lambda s: s.ackf and not s.syn and not s.plen)
    pair.handshake()
    assert pair.conn.state == ConnState.ESTABLISHED and pair.local.state == "SYN_RCVD"
    m = pair.mark()
    pair.emit_local([pair.local.synack()])
    pair.pump()
    assert pair.local.state == "ESTABLISHED"
    assert not pair.since(m, "to_peer")  # the client is past its handshake
    pair.transfer(blob(20_000, 5), blob(20_000, 6))
    assert bytes(pair.peer.data) == blob(20_000, 5) and bytes(pair.local.rcv) == blob(20_000, 6)
    pair.assert_clean()


def test_lost_synack_syn_retransmitted_and_answered_again():
    pair = ServerPair()
    pair.drop("to_peer", lambda s: s.syn)
    pair.handshake()
    assert pair.peer.state == "SYN_SENT"
    pair.emit_peer([pair.peer.syn()])
    pair.pump()
    syns = [s for s in pair.segs("to_local") if s.syn]
    assert len(syns) == 2 and not any(s.has_mptcp for s in syns)
    synack = [s for s in pair.segs("to_peer") if s.syn][-1]
    assert synack.mpc.sndr_key == pair.conn.local_key
    assert pair.peer.state == "ESTABLISHED" and pair.conn.state == ConnState.ESTABLISHED
    pair.assert_clean()


def test_third_ack_with_other_keys_is_dropped():
    pair = ServerPair()
    pair.local.listen()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn)
    pair.emit_peer(pair.peer.connect())
    pair.pump()
    forged = pair.peer._build(0, 0, mpc_opt(sndr_key=pair.peer.key, rcvr_key=0x1234))
    pair.queue.append(("proxy_in", forged))
    pair.pump()
    assert pair.conn.state == ConnState.SYN_RCVD
    assert pair.proxy.counters["MPCapableKeyMismatch"] == 1
    assert pair.local.state == "SYN_RCVD"


def test_third_ack_without_mp_capable_falls_back_untouched():
    pair = ServerPair()
    pair.peer.dss_ack = lambda: b""  # a client that gave MPTCP up after the SYN/ACK
    pair.handshake()
    pair.peer.mptcp = False
    assert pair.conn.state == ConnState.FALLBACK
    pair.transfer(blob(10_000, 8), blob(10_000, 9))
    assert bytes(pair.peer.data) == blob(10_000, 8)
    assert bytes(pair.local.rcv) == blob(10_000, 9)
    c = pair.proxy.counters
    assert c["MPCapableFallbackACK"] == 1 and c["FallbackConnections"] == 1
    n = len(pair.verdicts)
    assert all(v is Verdict.ACCEPT for _, v in pair.verdicts[3:n])


def test_port_not_served_and_plain_syn_pass_untouched():
    pair = ServerPair(config=ProxyConfig(client=False, serve=frozenset({9999})))
    pair.handshake()  # to port 8080: not served
    assert not pair.proxy.connections and pair.verdicts[0][1] is Verdict.ACCEPT
    assert pair.peer.fallback_reason == "MPCapableFallbackSYNACK"
    plain = ServerPair()
    plain.local.listen()
    syn = bytes(build_segment(plain.peer.addr, plain.local.addr, CLIENT_PORT, SERVER_PORT,
                              1000, 0, 0x02, 0xFFFF, opt_mss(1460)))
    plain.queue.append(("proxy_in", syn))
    plain.pump()
    assert not plain.proxy.connections and plain.verdicts[0][1] is Verdict.ACCEPT
    assert plain.local.state == "SYN_RCVD"


# ================================================================= 2. data
@pytest.mark.parametrize("kw", [{}, {"checksum": True}, {"v6": True}])
def test_transfer_both_ways(kw):
    pair = established(**kw)
    pair.transfer(blob(300_000, 1), blob(300_000, 2))
    assert bytes(pair.peer.data) == blob(300_000, 1)
    assert bytes(pair.local.rcv) == blob(300_000, 2)
    assert len(pair.peer.mappings) > 100
    pair.assert_clean()


def test_lossy_transfer_both_ways():
    pair = established()
    rng = random.Random(5)
    for d in ("to_peer", "from_peer", "to_local"):
        pair.drop(d, lambda s, r=rng: s.plen > 0 and r.random() < 0.05, count=20)
    pair.transfer(blob(150_000, 3), blob(150_000, 4))
    assert bytes(pair.peer.data) == blob(150_000, 3)
    assert bytes(pair.local.rcv) == blob(150_000, 4)
    pair.assert_clean()


def test_checksummed_mapping_of_the_server_data():
    pair = established(client_checksum=True)
    pair.local_send(blob(5000, 7))
    idsn = key_sha(pair.conn.local_key)[1]
    for s in [s for s in pair.segs("to_peer") if s.plen]:
        d = s.dss
        assert d.csum is not None
        assert dss_csum_ok((idsn + 1 + ((d.dsn - idsn - 1) & M64)) & M64, d.ssn, d.dll,
                           s.payload, d.csum)
    pair.assert_clean()


# ================================================================= 3. close and reset
def test_graceful_close_from_both_sides():
    pair = established()
    pair.transfer(blob(5000, 10), blob(5000, 11))
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    assert pair.peer.dfin_rcvd
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    assert pair.local.fin_rcvd
    pair.advance(1.0)
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    pair.advance(1.0)
    assert pair.conn.state == ConnState.CLOSED
    pair.advance(pair.proxy.config.linger + 1)
    assert not pair.proxy.connections
    pair.assert_clean()


def test_server_reset_becomes_fastclose_with_the_clients_key():
    pair = established()
    pair.transfer(blob(3000, 12), blob(3000, 13))
    pair.emit_local(pair.local.rst())
    pair.pump()
    rst = pair.segs("to_peer")[-1]
    assert rst.rst and pair.peer.fastclosed
    assert pair.conn.state == ConnState.CLOSED
    pair.assert_clean()


def test_client_fastclose_resets_the_server():
    pair = established()
    pair.transfer(blob(3000, 14), blob(3000, 15))
    pair.emit_peer(pair.peer.rst())
    pair.pump()
    assert pair.local.reset and not pair.segs("to_local")[-1].has_mptcp
    assert pair.conn.state == ConnState.CLOSED


@pytest.mark.parametrize("who", ["server", "client"])
def test_reset_during_the_handshake_closes(who):
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf and not s.syn)  # no third ACK
    pair.handshake()
    assert pair.conn.state == ConnState.SYN_RCVD
    if who == "server":
        pair.emit_local(pair.local.rst())  # the listener aborts
        pair.pump()
        assert pair.segs("to_peer")[-1].rst
    else:
        pair.emit_peer(pair.peer.rst(fastclose=False, reason=None, seq_rel=0))
        pair.pump()
        got = pair.segs("to_local")[-1]
        assert got.rst and not got.has_mptcp  # (no MPTCP option reaches the server)
    assert pair.conn.state == ConnState.CLOSED


def test_synack_without_room_for_mp_capable_leaves_plain_tcp():
    """A SYN/ACK whose options leave less than 12 bytes: the connection stays plain TCP
    (the client sees no MP_CAPABLE and falls back), counted."""
    pair = ServerPair()
    plain_synack = pair.local.synack

    def fat_synack() -> bytes:  # ten more bytes of options (an experimental kind)
        s = parse_seg(plain_synack())
        return bytes(build_segment(s.src, s.dst, s.sport, s.dport, s.seq, s.ack, 0x12, s.win,
                                   s.opt_block + bytes((0xFD, 10)) + bytes(8)))
    pair.local.synack = fat_synack
    pair.handshake()
    assert pair.proxy.counters["MPCapableSYNACKTXDrop"] == 1
    assert pair.conn.state == ConnState.FALLBACK
    assert pair.segs("to_peer")[-1].mpc is None


def test_syn_rcvd_is_forgotten_after_the_syn_timeout():
    pair = ServerPair()
    pair.drop("from_peer", lambda s: s.ackf)
    pair.handshake()
    assert pair.conn.state == ConnState.SYN_RCVD
    pair.advance(pair.proxy.config.syn_timeout + 1)
    assert not pair.proxy.connections and not pair.proxy.tokens


# ================================================================= 4. anchor
def test_anchor_converts_for_a_plain_server():
    pair = established(anchor=True)
    syn_wire, syn_server = pair.segs("from_peer")[0], pair.segs("to_local")[0]
    # the server may speak MPTCP: MP_CAPABLE stays in the SYN; the MSS is clamped anyway
    assert raw_mptcp(syn_server) == raw_mptcp(syn_wire)
    assert syn_server.mss == syn_wire.mss - 24
    conn = pair.conn
    assert conn.anchor and conn.role == "server" and conn.state == ConnState.ESTABLISHED
    c = pair.proxy.counters
    assert (c["AnchorWatched"], c["AnchorConverted"], c["AnchorStepAside"]) == (1, 1, 0)
    pair.transfer(blob(50_000, 16), blob(50_000, 17))
    assert bytes(pair.peer.data) == blob(50_000, 16)
    pair.assert_clean()


def test_anchor_steps_aside_for_a_native_server():
    pair = ServerPair(anchor=True, native=True)
    pair.handshake()
    synack_server, synack_wire = pair.segs("out")[0], pair.segs("to_peer")[0]
    assert synack_wire.raw == synack_server.raw  # untouched: the server's own key
    assert synack_wire.mpc.sndr_key == pair.local.key == pair.peer.remote_key
    assert not pair.proxy.connections and not pair.proxy.tokens
    key = (pair.local.addr, SERVER_PORT, pair.peer.addr, CLIENT_PORT)
    assert [k for k, _t in pair.proxy.passed_through(pair.now)] == [key]
    c = pair.proxy.counters
    assert (c["AnchorWatched"], c["AnchorConverted"], c["AnchorStepAside"]) == (1, 0, 1)
    assert c["ConnClosed"] == 0
    n = len(pair.verdicts)
    third = pair.segs("from_peer")[1]
    assert third.mpc is not None and third.mpc.rcvr_key == pair.local.key
    assert [v for _, v in pair.verdicts[2:n]] == [Verdict.ACCEPT] * (n - 2)
    assert any(e.kind.value == "PASSED" for e in pair.events)
    # remembered for a while only
    pair.advance(pair.proxy.config.passed_linger + 1)
    assert pair.proxy.passed_through(pair.now) == []


def test_anchor_leaves_plain_syns_and_other_ports_alone():
    pair = ServerPair(config=ProxyConfig(client=False, anchor=True, ports=frozenset({443})))
    pair.handshake()
    assert not pair.proxy.connections
    assert pair.verdicts[0][1] is Verdict.ACCEPT
    assert pair.proxy.counters["AnchorWatched"] == 0


def test_anchor_ignores_outgoing_syns_of_the_servers():
    pair = ServerPair(anchor=True)
    pair.emit_local(pair.local.syn())
    pair.pump()
    assert not pair.proxy.connections and pair.verdicts[0][1] is Verdict.ACCEPT


def test_server_role_subflow0_orientation():
    pair = established()
    sf0 = pair.conn.sf0
    assert sf0.state == SubflowState.ESTABLISHED
    assert (sf0.laddr, sf0.lport, sf0.raddr, sf0.rport) == pair.conn.key
    assert sf0.snd_isn == pair.local.iss and sf0.rcv_isn == pair.peer.iss
    assert sf0.mss == pair.peer.mss - 24
    assert pair.conn.tcp_snd_base == (pair.local.iss + 1) & M32
