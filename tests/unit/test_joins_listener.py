"""The peer's MP_JOIN subflows, the proxy as listener B (RFC 8684 §3.2; docs/protocol.md
§3.3, §4.2): in the server role (the native client joins from its second address, to the
server's address or to one we announced) and in the client role (a Linux server opening a
join toward the client: issue 9 item 9). The joining side is scripted
(server_model.JoinOpener), its HMACs computed with tests/unit/mpnet/'s own
implementation.
"""

from __future__ import annotations

import pytest
from lockstep.decode import OtherMp, TcpRst
from lockstep.pair import ProxyPair
from lockstep.wire import M32, M64, RST, key_sha
from mpnet.options import add_addr_hmac8, decode_other, prio_opt
from server_model import CLIENT_PORT, SERVER_PORT, ElsewhereMixin, JoinOpener, ServerPair

from mptcp_proxy.core.policy import PathManager, PmConfig
from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.core.states import SubflowState
from mptcp_proxy.core.verdict import Verdict

CLIENT2 = bytes([10, 0, 2, 2])  # the native client's second address
ANNOUNCED = bytes([10, 0, 1, 254])  # an address of the proxy's host, announced


def inject(pair, pkt: bytes) -> Verdict:
    n = len(pair.verdicts)
    pair.queue.append(("proxy_in", pkt))
    pair.pump()
    return pair.verdicts[n][1]


def blob(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


def server_pair(**kw) -> ServerPair:
    pair = ServerPair(**kw)
    pair.handshake()
    pair.transfer(b"answer" * 100, b"request" * 100)  # (server to client, client to server)
    pair.elsewhere = []
    return pair


def opener(pair, **kw) -> JoinOpener:
    return JoinOpener(pair, CLIENT2, 41000, pair.local.addr, SERVER_PORT, pair.peer.key,
                      pair.conn.local_key, **kw)


def joined(pair, **kw):
    j = opener(pair, **kw)
    assert inject(pair, j.syn()) is Verdict.DROP
    (synack,) = pair.elsewhere
    j.take_synack(synack)
    assert inject(pair, j.third_ack()) is Verdict.DROP
    return j


# ========================================================== 1. server role
def test_join_answered_and_established_never_passed_to_the_server():
    pair = server_pair()
    j = opener(pair, backup=True)
    assert inject(pair, j.syn()) is Verdict.DROP
    (synack,) = pair.elsewhere
    backup, addr_id = j.take_synack(synack)
    assert (synack.dst, synack.dport, synack.src, synack.sport) == \
        (CLIENT2, 41000, pair.local.addr, SERVER_PORT)
    assert addr_id == 0 and not backup  # the server's address is the initial subflow's
    assert synack.mss == pair.local.mss and synack.wscale == pair.local.ws
    assert len(synack.opt_block) <= 40
    sf = pair.conn.subflows[1]
    assert sf.passive and sf.state == SubflowState.PRE_ESTABLISHED and sf.peer_backup
    assert inject(pair, j.third_ack()) is Verdict.DROP
    fourth = pair.elsewhere[-1]
    assert fourth.ackf and not fourth.syn and not fourth.plen
    assert fourth.ack == (j.iss + 1) & M32 and fourth.seq == (j.irs + 1) & M32
    dack = (key_sha(pair.peer.key)[1] + 1 + 700) & M64
    assert fourth.dss is not None and fourth.dss.data_ack == dack & (M64 if fourth.dss.ack64
                                                                      else M32)
    assert sf.state == SubflowState.ESTABLISHED and sf.remote_id == 2
    c = pair.proxy.counters
    assert (c["MPJoinSynRx"], c["MPJoinSynBackupRx"], c["MPJoinSynAckTx"],
            c["MPJoinAckRx"], c["MPJoinFourthAckTx"]) == (1, 1, 1, 1, 1)
    assert len(pair.local.syns) == 1  # the server never saw the join
    assert any(e.kind.value == "SF_ESTABLISHED" for e in pair.events)
    pair.assert_clean()


def test_data_on_the_join_reaches_the_server_in_its_own_connection():
    pair = server_pair()
    j = joined(pair)
    extra = b"more from the second path" * 40
    d0 = pair.peer.d_nxt
    pair.peer.dsnd += extra
    pair.peer.d_nxt += len(extra)
    v = inject(pair, j.data((key_sha(pair.peer.key)[1] + 1 + d0) & M64, 1, extra))
    assert v is Verdict.MANGLE
    got = [s for s in pair.segs("to_local") if s.plen][-1]
    assert (got.src, got.sport, got.dst, got.dport) == \
        (pair.peer.addr, CLIENT_PORT, pair.local.addr, SERVER_PORT)
    assert bytes(pair.local.rcv) == b"request" * 100 + extra
    # the server's ACK goes where it moves the subflow ACK most: the join
    ack = pair.elsewhere[-1]
    assert ack.ackf and not ack.plen and ack.ack == (j.iss + 1 + len(extra)) & M32
    dack = (key_sha(pair.peer.key)[1] + 1 + pair.peer.d_nxt) & M64
    assert ack.dss.data_ack == dack & (M64 if ack.dss.ack64 else M32)
    pair.assert_clean()


def test_data_beyond_the_servers_window_is_not_acknowledged_on_the_join():
    """A native sender may overestimate the TCP side's window on a join whose window
    updates it ignored. What the TCP side drops (it starts beyond its right edge) must not
    be acknowledged on the subflow (here: data above a hole, which the proxy otherwise
    counts as held by the TCP side), or only a data-level retransmission could recover
    it."""
    pair = server_pair(server_kw={"win": 8})  # 8 << 7: a 1 KB window
    j = joined(pair)
    far = blob(1000)
    d0 = pair.peer.d_nxt
    pair.peer.dsnd += bytes(2000) + far
    pair.peer.d_nxt += 3000
    n = len(pair.elsewhere)
    dsn = (key_sha(pair.peer.key)[1] + 1 + d0 + 2000) & M64
    inject(pair, j.data(dsn, 1, far))  # 2000 bytes beyond the server's edge
    assert pair.local.beyond_window == 1 and pair.proxy.counters["DataBeyondWindow"] == 1
    acks = [s.ack for s in pair.elsewhere[n:] if s.ackf]
    assert acks and all(a == (j.iss + 1) & M32 for a in acks)  # nothing acknowledged
    assert not any(s.sack for s in pair.elsewhere[n:])


def test_client_moves_the_servers_sending_with_mp_prio():
    pair = server_pair()
    j = joined(pair)
    sf = pair.conn.subflows[1]
    assert pair.conn.active is pair.conn.sf0
    inject(pair, j.ack_with(prio_opt(False)))  # regular on the join...
    pair.emit_peer([pair.peer._build(0, pair.peer.snd_nxt, pair.peer.dss_ack() +
                                     prio_opt(True))])  # ...backup on subflow 0
    pair.pump()
    assert pair.conn.active is sf
    pair.local_send(b"down the second path")
    (seg,) = [s for s in pair.elsewhere if s.plen]
    assert (seg.dst, seg.dport, seg.src, seg.sport) == (CLIENT2, 41000, pair.local.addr,
                                                        SERVER_PORT)
    assert seg.payload == b"down the second path" and seg.dss.dll == len(seg.payload)
    assert seg.dss.ssn == 1 and seg.csum_ok


def test_third_ack_with_a_wrong_hmac_resets_the_join():
    pair = server_pair()
    j = opener(pair)
    inject(pair, j.syn())
    j.take_synack(pair.elsewhere[0])
    assert inject(pair, j.third_ack(good=False)) is Verdict.DROP
    rst = pair.elsewhere[-1]
    assert rst.rst and isinstance(rst.mp[0], TcpRst) and rst.mp[0].reason == 1
    assert pair.proxy.counters["MPJoinAckHMacFailure"] == 1
    assert pair.conn.subflows[1].gone and pair.conn.sf0.alive
    pair.transfer(b"still fine", b"both ways")
    pair.assert_clean()


def test_peer_reset_during_its_join_ends_the_subflow_only():
    pair = server_pair()
    j = opener(pair)
    inject(pair, j.syn())
    j.take_synack(pair.elsewhere[0])
    assert inject(pair, j.rst()) is Verdict.DROP
    assert pair.conn.subflows[1].gone and pair.proxy.counters["MPJoinRstRx"] == 1
    pair.transfer(b"after", b"the reset")
    pair.assert_clean()


def test_repeated_third_ack_gets_the_fourth_ack_again():
    pair = server_pair()
    j = joined(pair)
    n = len(pair.elsewhere)
    assert inject(pair, j.third_ack()) is Verdict.DROP
    assert len(pair.elsewhere) == n + 1 and pair.elsewhere[-1].dss.data_ack is not None
    assert pair.proxy.counters["MPJoinFourthAckTx"] == 2


def test_repeated_join_syn_gets_the_same_synack():
    pair = server_pair()
    j = opener(pair)
    inject(pair, j.syn())
    inject(pair, j.syn())
    a, b = pair.elsewhere
    assert a.raw == b.raw and len(pair.conn.subflows) == 2


def test_half_open_join_is_retried_then_reset():
    pair = server_pair()
    j = opener(pair)
    inject(pair, j.syn())
    pair.advance(1.01)
    pair.advance(2.01)
    pair.advance(4.01)
    assert [s.syn for s in pair.elsewhere] == [True] * 4
    pair.advance(8.01)
    assert pair.elsewhere[-1].rst and pair.conn.subflows[1].gone
    assert pair.proxy.counters["MPJoinTimeout"] == 1


@pytest.mark.parametrize("case", ["policy", "closing", "other_port"])
def test_refused_joins_are_reset_with_mp_tcprst(case):
    pm = PathManager(config=PmConfig(peer_joins="refuse" if case == "policy" else "accept"))
    pair = ServerPair(pm=pm)
    pair.handshake()
    pair.transfer(b"x" * 100, b"y" * 100)
    pair.elsewhere = []
    if case == "closing":
        pair.local.close()
        pair.emit_local(pair.local.push())
        pair.pump()
    port = SERVER_PORT + 1 if case == "other_port" else SERVER_PORT
    j = JoinOpener(pair, CLIENT2, 41000, pair.local.addr, port, pair.peer.key,
                   pair.conn.local_key)
    assert inject(pair, j.syn()) is Verdict.DROP
    (rst,) = pair.elsewhere
    assert rst.rst and rst.ackf and rst.ack == (j.iss + 1) & M32
    assert [x.reason for x in rst.mp if isinstance(x, TcpRst)] == [3]
    assert pair.proxy.counters["MPJoinRejected"] == 1 and len(pair.conn.subflows) == 1
    assert len(pair.local.syns) == 1


def test_unknown_token_passes_on_unless_at_an_anchors_announced_endpoint():
    pair = server_pair()
    j = JoinOpener(pair, CLIENT2, 41000, pair.local.addr, SERVER_PORT, 1, 0x42)
    assert inject(pair, j.syn()) is Verdict.ACCEPT  # a native endpoint's token, perhaps
    assert pair.proxy.counters["MPJoinPassed"] == 1 and not pair.elsewhere
    pm = PathManager(config=PmConfig(announce=[(ANNOUNCED, None)]))
    anchor = ServerPair(anchor=True, pm=pm)
    anchor.handshake()
    anchor.elsewhere = []
    j = JoinOpener(anchor, CLIENT2, 41000, ANNOUNCED, SERVER_PORT, 1, 0x42)
    assert inject(anchor, j.syn()) is Verdict.DROP
    rst = anchor.elsewhere[-1]
    assert rst.rst and [x.reason for x in rst.mp if isinstance(x, TcpRst)] == [1]
    assert anchor.proxy.counters["MPJoinNoTokenFound"] == 1


@pytest.mark.parametrize("port", [None, 9000])
def test_announced_address_then_join_there(port):
    pm = PathManager(config=PmConfig(announce=[(ANNOUNCED, port)]))
    pair = ServerPair(anchor=True, pm=pm)
    pair.handshake()
    adds = [decode_other(x) for s in pair.segs("to_peer") for x in s.mp
            if isinstance(x, OtherMp) and x.subtype == 3]
    assert adds, "no ADD_ADDR"
    _n, echo, addr_id, addr, aport, h = adds[0]
    assert not echo and addr == ANNOUNCED and aport == port and addr_id >= 1
    assert h == add_addr_hmac8(pair.conn.local_key, pair.peer.key, addr_id, ANNOUNCED, port)
    assert pair.peer.fully_est  # an ADD_ADDR makes a Linux client fully established too
    pair.elsewhere = []
    j = JoinOpener(pair, CLIENT2, 41000, ANNOUNCED, port or SERVER_PORT, pair.peer.key,
                   pair.conn.local_key)
    inject(pair, j.syn())
    _backup, got_id = j.take_synack(pair.elsewhere[0])
    assert got_id == addr_id
    assert inject(pair, j.third_ack()) is Verdict.DROP
    assert pair.conn.subflows[1].alive and pair.conn.subflows[1].laddr == ANNOUNCED
    pair.assert_clean()


# ========================================================== 2. client role
class ClientJoinPair(ElsewhereMixin, ProxyPair):
    """The client role (the local stack's connection to a Linux server), whose server
    opens a join from its second address toward the client's address."""


SERVER2 = bytes([10, 0, 9, 2])


def client_pair(peer_joins: str = "accept") -> ClientJoinPair:
    pair = ClientJoinPair(config=ProxyConfig())
    pair.proxy.pm.config.peer_joins = peer_joins
    pair.handshake()
    pair.transfer(b"hello" * 300, b"world" * 300)
    pair.elsewhere = []
    return pair


def test_client_role_accepts_a_server_initiated_join():
    pair = client_pair()
    conn = pair.conn
    j = JoinOpener(pair, SERVER2, 8081, pair.local.addr, pair.local.port, pair.peer.key,
                   conn.local_key, join_id=5)
    assert inject(pair, j.syn()) is Verdict.DROP
    j.take_synack(pair.elsewhere[0])
    assert inject(pair, j.third_ack()) is Verdict.DROP
    sf = conn.subflows[-1]
    assert sf.passive and sf.alive and sf.remote_id == 5
    assert not any(s.syn for s in pair.segs("to_local")[1:])  # the local stack saw none
    # data from the server on it reaches the local stack in its own connection
    dsn = (pair.peer.idsn + 1 + pair.peer.d_nxt) & M64
    pair.peer.dsnd += b"via join"
    pair.peer.d_nxt += 8
    assert inject(pair, j.data(dsn, 1, b"via join")) is Verdict.MANGLE
    assert bytes(pair.local.rcv).endswith(b"via join")
    pair.assert_clean()


def test_client_role_refuses_a_join_when_the_policy_says_so():
    pair = client_pair("refuse")
    j = JoinOpener(pair, SERVER2, 8081, pair.local.addr, pair.local.port, pair.peer.key,
                   pair.conn.local_key)
    assert inject(pair, j.syn()) is Verdict.DROP
    (rst,) = pair.elsewhere
    assert rst.rst and rst.flags & RST and [x.reason for x in rst.mp
                                            if isinstance(x, TcpRst)] == [3]
    assert len(pair.conn.subflows) == 1 and pair.proxy.counters["MPJoinRejected"] == 1
    assert not any(s.syn for s in pair.segs("to_local")[1:])
    pair.transfer(b"still", b"working")
    pair.assert_clean()
