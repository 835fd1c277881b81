"""Data transfer through one connection: peer data to the local stack, bulk transfers with loss
and reordering, SACK and timestamp translation, IPv6, 32-bit DSN wrap-around and mappings
that stay fixed once sent, on the one-connection fake network of tests/unit/lockstep/ (a
scripted local TCP stack and a Linux 6.18-like native MPTCP server around one Proxy, a fake
clock). The peer model validates every packet the proxy puts on the wire as Linux would
(docs/protocol.md §1–§5); ``pair.assert_clean()`` asserts no party recorded a deviation."""

from __future__ import annotations

import random

import pytest
from connection_kit import blob, close_both, counters, data_segs, established
from lockstep.pair import ProxyPair
from lockstep.wire import DSS_M, M32, M64, MTU, PSH, dss_opt, key_sha, sdiff

from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.verdict import Verdict


# ==================================================== 3. peer data to the local stack
@pytest.mark.parametrize("segs_per_map,map_mode", [(1, "first"), (3, "first"), (3, "every")])
def test_peer_data_delivered_with_right_sequence_numbers(segs_per_map, map_mode):
    pair = established()
    data = blob(4200 * 2 + 77, 6)
    pair.peer_send(data, segs_per_map=segs_per_map, map_mode=map_mode)
    delivered = data_segs(pair.segs("to_local"))
    assert len(delivered) == 7
    off = 0
    for s in delivered:
        assert s.seq == pair.local.rwire(off)  # TSN = peer ISN + 1 + offset
        assert s.payload == data[off:off + s.plen]
        # at most the DSS stays (passed unchanged; a plain TCP socket ignores it)
        assert s.csum_ok and all(o[2] >> 4 == 2 for k, o in s.opts if k == 30)
        off += s.plen
    assert bytes(pair.local.rcv) == data
    assert counters(pair)["DSSNoMapping"] == 0
    pair.assert_clean()


def test_local_ack_number_is_the_translated_data_ack():
    """The local stack's cumulative ACK is the peer's DATA_ACK, not its subflow ACK."""
    pair = established()
    pair.peer_send(b"p" * 10)
    pair.drop("from_peer", lambda s: not s.plen, count=100)  # the peer's ACKs are lost
    pair.local_send(blob(2000, 8))
    peer = pair.peer
    assert pair.local.snd_una == 0 and peer.rcv_nxt == 2000
    # the peer's subflow ACK covers all 2000 bytes but its DATA_ACK only 1500
    m = pair.mark()
    dsn = (peer.idsn + 1 + 10) & M64
    pkt = peer._build(0, peer.snd_nxt, dss_opt(
        data_ack=(key_sha(pair.conn.local_key)[1] + 1 + 1500) & M64, ack64=True, dsn=dsn,
        ssn=11, dll=5), payload=b"q" * 5)
    pair.emit_peer([pkt])
    pair.pump()
    s = pair.since(m, "to_local")[0]
    assert s.ack == pair.local.swire(1500)
    assert pair.local.snd_una == 1500
    assert bytes(pair.local.rcv) == b"p" * 10 + b"q" * 5


def test_data_before_its_mapping_is_dropped_then_delivered_after_retransmission():
    pair = established()
    data = blob(4200, 9)
    pair.drop("from_peer", lambda s: s.plen and s.dss and s.dss.flags & DSS_M)
    pair.peer_send(data, segs_per_map=3, map_mode="first")
    assert counters(pair)["DSSNoMapping"] == 2
    assert [v for d, v in pair.verdicts[-4:] if d == "in"].count(Verdict.DROP) == 2
    assert pair.local.rcv == b""
    pair.emit_peer(pair.peer.retransmit())  # the mapping comes back with segment 1
    pair.pump()
    assert bytes(pair.local.rcv) == data
    pair.assert_clean()


# =================================================================== 4. bulk
@pytest.mark.parametrize("kw", [
    dict(),
    dict(segs_per_map=4, map_mode="first"),
    dict(segs_per_map=3, map_mode="every", checksum=True),
], ids=["per-segment", "4seg-maps", "3seg-maps-csum"])
def test_one_megabyte_each_way(kw):
    checksum = kw.pop("checksum", False)
    pair = established(checksum=checksum)
    up, down = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(1 << 20)
    pair.transfer(up, down, **kw)
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    wire = pair.segs("to_peer")
    assert all(len(s.raw) <= MTU and len(s.opt_block) <= 40 for s in wire)
    assert sum(s.plen for s in wire) == len(up)  # no retransmissions needed
    # every data segment on the wire carries a mapping (MPC for the first)
    assert all(s.dss is not None and s.dss.flags & DSS_M or s.mpc for s in data_segs(wire))
    pair.assert_clean()


def test_lossy_reordering_transfer():
    """Drops, duplicates and reordering in both directions on the wire."""
    pair = established()
    rng = random.Random(5)

    def chaos(direction):
        def match(_s):
            return rng.random() < 0.04
        pair.drop(direction, match, count=10 ** 9)
        pair.duplicate(direction, lambda s: rng.random() < 0.03, count=10 ** 9)
    chaos("to_peer")
    chaos("from_peer")
    up, down = blob(150_000, 10), blob(150_000, 11)
    pair.transfer(up, down, window=16)
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    pair.assert_clean()


def test_held_segments_delivered_out_of_order():
    pair = established()
    pair.hold("from_peer", lambda s: s.plen > 0, count=2)
    pair.hold("to_peer", lambda s: s.plen > 0, count=2)
    up, down = blob(10_000, 12), blob(10_000, 13)
    pair.local_send(up)
    pair.peer_send(down)
    pair.release("from_peer")
    pair.release("to_peer")
    assert bytes(pair.peer.data) == up
    assert bytes(pair.local.rcv) == down
    pair.assert_clean()


# ======================================================= 9. SACK and timestamps
def test_peer_sack_blocks_translated_for_the_local_stack():
    pair = established()
    pair.transfer(b"w" * 100, b"v" * 100)
    nth = iter(range(100))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) == 1)  # lose the 2nd segment
    m = pair.mark()
    pair.local_send(blob(5 * 1424, 48))
    assert pair.peer.sacks_seen == []
    seen = pair.local.sacks_seen
    assert seen, "the local stack got no SACK blocks"
    # offsets in the local stack's own sequence space: bytes 100+1424*2 .. 100+1424*5
    assert seen[-1][0] == (100 + 2 * 1424, 100 + 5 * 1424)
    assert all(s.ack == pair.local.swire(100 + 1424) for s in pair.since(m, "to_local")[1:])
    pair.emit_local(pair.local.retransmit(only_first=True))
    pair.pump()
    assert pair.local.snd_una == 100 + 5 * 1424
    assert bytes(pair.peer.data) == b"w" * 100 + blob(5 * 1424, 48)
    pair.assert_clean()


def test_local_sack_blocks_translated_for_the_peer():
    pair = established()
    pair.transfer(b"w" * 100, b"v" * 100)
    nth = iter(range(100))
    pair.drop("from_peer", lambda s: s.plen > 0 and next(nth) == 1)
    pair.peer_send(blob(5 * 1400, 49))
    assert pair.local.sacks_seen == []
    assert pair.peer.sacks_seen, "the peer got no SACK blocks"
    # in the peer's subflow sequence space: its 3rd..5th segments
    assert pair.peer.sacks_seen[-1][0] == (100 + 2 * 1400, 100 + 5 * 1400)
    assert pair.peer.snd_una == 100 + 1400
    pair.emit_peer(pair.peer.retransmit(only_first=True))
    pair.pump()
    assert bytes(pair.local.rcv) == b"v" * 100 + blob(5 * 1400, 49)
    assert pair.peer.snd_una == 100 + 5 * 1400
    pair.assert_clean()


def test_timestamps_pass_and_echo():
    pair = established()
    pair.peer_send(b"hello")
    peer_tsval = pair.peer.tsvals_sent[-1]
    pair.advance(0.5)
    m = pair.mark()
    pair.local_send(b"x" * 3000)
    outs = data_segs(pair.since(m, "out"))
    wires = data_segs(pair.since(m, "to_peer"))
    assert [s.ts[0] for s in wires] == [s.ts[0] for s in outs]  # local TSval passes
    assert wires[0].ts[1] == peer_tsval  # TSecr echoes the peer's last TSval
    pair.assert_clean()


def test_tsval_shown_to_local_never_goes_backwards():
    pair = established()
    pair.transfer(b"a", b"b")
    pair.hold("from_peer", lambda s: s.plen > 0, count=1)
    pair.peer_send(b"older")
    pair.advance(1.0)
    pair.peer_send(b"newer")
    pair.release("from_peer")
    shown = [s.ts[0] for s in pair.segs("to_local")]
    assert all(not sdiff(b, a) < 0 for a, b in zip(shown, shown[1:])), shown
    assert bytes(pair.local.rcv) == b"boldernewer"
    pair.assert_clean()


# ======================================================================= IPv6
def test_ipv6_handshake_and_transfer():
    pair = ProxyPair(v6=True, peer_kw=dict(mss=1440))
    pair.handshake()
    assert pair.segs("to_peer")[0].v6 and pair.segs("to_peer")[0].mpc is not None
    assert pair.segs("to_local")[0].mss == 1440 - 24
    up, down = blob(50_000, 55), blob(50_000, 56)
    pair.transfer(up, down)
    assert bytes(pair.peer.data) == up and bytes(pair.local.rcv) == down
    assert all(len(s.raw) <= MTU for s in pair.segs("to_peer"))
    close_both(pair)
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    assert pair.conn.state == ConnState.CLOSED
    pair.assert_clean()


# ================================================ sequence and DSN wrap-around
def _key_with_idsn_near_wrap(limit: int, start: int) -> int:
    k = start
    while (key_sha(k)[1] & M32) < (1 << 32) - limit:
        k += 1
    return k


def test_32bit_dsn_and_data_ack_wrap():
    """32-bit DSNs from the peer and the proxy's 32-bit DATA_ACKs across a 2**32
    wrap of both IDSNs' low halves."""
    peer_key = _key_with_idsn_near_wrap(150_000, 1)
    local_key = _key_with_idsn_near_wrap(150_000, peer_key + 1)  # the proxy's key
    keys = iter([local_key.to_bytes(8, "big")])
    pair = ProxyPair(peer_key=peer_key, random_bytes=lambda n: next(keys),
                     peer_kw=dict(force_ack64=False))
    pair.handshake()
    assert pair.conn.local_key == local_key
    up, down = blob(200_000, 57), blob(200_000, 58)
    pair.transfer(up, down, dsn64=False)
    assert bytes(pair.peer.data) == up and bytes(pair.local.rcv) == down
    pair.assert_clean()


# ============================================================== mappings are fixed once sent
@pytest.mark.parametrize("checksum", [False, True])
def test_resegmented_retransmission_keeps_the_original_mapping(checksum):
    """With GSO the proxy maps a whole super-packet at once (one DSS copied on every
    segment). When the local stack later retransmits only part of it (re-segmented),
    the DSS must be the ORIGINAL mapping, checksum included: Linux, holding the
    original as its current mapping, takes a different one covering the segment as
    DSSNotMatching (fallback or reset). RFC 8684 §3.3.1."""
    pair = established(checksum=checksum, peer_checksum=checksum)
    pair.transfer(b"a" * 100, b"b" * 100)  # fully established both ways
    loc = pair.local
    data = blob(4000, 77)
    loc.write(data)
    rel = loc.snd_nxt
    big = loc._seg(PSH, rel, data)  # a 4000-byte "super-packet"
    loc.snd_nxt += len(data)
    pair.drop("to_peer", lambda s: s.plen == 4000)
    m = pair.mark()
    pair.emit_local([big])
    pair.pump()
    first = [s for s in pair.since(m, "to_peer") if s.plen]
    assert len(first) == 1 and first[0].dss.dll == 4000
    orig = (first[0].dss.dsn, first[0].dss.ssn, first[0].dss.dll, first[0].dss.csum)
    # the local stack resends the same bytes in two pieces of its own choosing
    m = pair.mark()
    pair.emit_local([loc._seg(PSH, rel, data[:1400]), loc._seg(PSH, rel + 1400, data[1400:])])
    pair.pump()
    again = [s for s in pair.since(m, "to_peer") if s.plen]
    assert [s.plen for s in again] == [1400, 2600]
    for s in again:
        assert (s.dss.dsn, s.dss.ssn, s.dss.dll, s.dss.csum) == orig
    assert bytes(pair.peer.data).endswith(data)
    # (the model has no GSO: its MTU check flags the artificial super-packets, nothing else)
    problems = [v for v in pair.peer.violations + pair.local.violations if "MTU" not in v]
    assert not problems, problems


def test_new_data_above_unseen_bytes_leaves_no_subflow_hole():
    """The local stack sent bytes the proxy never saw (dropped while no subflow could
    carry them, break before make): its next new data is mapped at the subflow's next
    sequence number, not after a reserved gap, so the peer's subflow has no hole; the
    unseen bytes get a mapping of their own when the local stack re-sends them, and the
    stream arrives whole."""
    pair = established()
    a = blob(3000, 11)
    pair.local_send(a)
    data = blob(6000, 12)
    pair.local.write(data)
    segs = pair.local.push(None)
    assert len(segs) >= 3
    pair.emit_local(segs[:1] + segs[2:])  # the second segment never reaches the proxy
    pair.pump()
    sent = data_segs(pair.since(0, "to_peer"))
    ssn_ranges = sorted((s.dss.ssn, s.dss.ssn + s.dss.dll) for s in sent if s.dss)
    ends = {hi for _, hi in ssn_ranges}
    # subflow sequence space contiguous: every mapping starts where an earlier one ended
    assert all(lo in ends for lo, _ in ssn_ranges[1:]), ssn_ranges
    assert bytes(pair.peer.data) != a + data  # the middle is missing at the data level
    pair.advance(0.3)
    pair.emit_local(pair.local.retransmit())
    pair.pump()
    assert bytes(pair.peer.data) == a + data
    pair.assert_clean()


def test_payload_running_past_its_mapping_is_cut_for_the_local_stack():
    """The verdict contract (issue 8, finding 2): a segment whose payload runs past the
    mapping it carries is cut to the mapping, and the cut buffer is what passes (MANGLE);
    the local stack never receives bytes the proxy did not map."""
    pair = established()
    pair.transfer(blob(2000, 60), blob(2000, 61))
    peer = pair.peer
    mapped_part, extra = b"m" * 300, b"x" * 700
    dsn = (peer.idsn + 1 + peer.d_nxt) & M64
    dack = (peer.remote_idsn + 1 + len(peer.data)) & M64
    pkt = peer._build(PSH, peer.s_alloc, dss_opt(data_ack=dack, dsn=dsn, ssn=peer.s_alloc + 1,
                                                 dll=len(mapped_part)),
                      payload=mapped_part + extra)
    m = len(pair.verdicts)
    pair.emit_peer([pkt])
    pair.pump()
    assert counters(pair)["DSSPartialMapping"] == 1
    assert pair.verdicts[m] == ("in", Verdict.MANGLE)
    assert bytes(pair.local.rcv) == blob(2000, 61) + mapped_part
