"""Fallback to plain TCP (no or malformed MP_CAPABLE, data without DSS, infinite mappings) and
DSS checksums (negotiation, corruption), on the one-connection fake network of
tests/unit/lockstep/ (a scripted local TCP stack and a Linux 6.18-like native MPTCP server
around one Proxy, a fake clock). The peer model validates every packet the proxy puts on the
wire as Linux would (docs/protocol.md §1–§5); ``pair.assert_clean()`` asserts no party
recorded a deviation."""

from __future__ import annotations

import struct

import pytest
from connection_kit import blob, counters, data_segs, established
from lockstep.decode import OtherMp, parse_seg
from lockstep.pair import ProxyPair
from lockstep.wire import CAP_A, CAP_H, M64, PSH, dss_csum, dss_csum_ok, dss_opt, mpc_opt

from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict


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
