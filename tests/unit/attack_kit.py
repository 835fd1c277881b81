"""Helpers of the attack tests (test_attacks.py, test_attacks_hostile.py): a ready
connection on the unit-test models, packets as the peer's 4-tuple carries them (valid,
blind, corrupted), and the outcome checks.

The path manager is attached to a :class:`ProxyPair` by :func:`with_pm`, and verdicts are
read through ``tests.fuzz.build.verdict_of``: the only places that know how the core is
built and what it returns.
"""

from __future__ import annotations

import random
import struct

from lockstep.decode import parse_seg
from lockstep.pair import ProxyPair
from lockstep.wire import ACK, M64, PSH
from mpnet.network import MpNet

from mptcp_proxy.core.connection import ConnState
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.tcp import CSUM_GSO
from tests.fuzz import wire
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


def raw_from_peer(net: MpNet, sub, mp: bytes, payload: bytes = b"", seq_off: int = 0,
                   ack_off: int = 0, flags: int = ACK) -> bytes:
    """A segment on the peer's subflow ``sub`` (valid sequence and ACK numbers unless
    offset), not sent by the peer model: it goes straight to the proxy."""
    from lockstep.wire import opt_ts, pad4
    opts = (opt_ts(sub.tsval(), sub.ts_recent) if sub.ts_ok else b"") + pad4(mp)
    return bytes(build_segment(sub.laddr, sub.raddr, sub.lport, sub.rport,
                               sub.swire(sub.tx.nxt + seq_off), sub.rwire(sub.rcv_nxt + ack_off),
                               flags | (PSH if payload else 0), 1024, opts, payload))


def gso_segment(pair: ProxyPair, payload_len: int, flags: int = ACK | PSH) -> bytearray:
    loc = pair.local
    opts = struct.pack("!BBBBII", 1, 1, 8, 10, loc.tsval(), loc.ts_recent or 0)
    return build_segment(loc.addr, loc.raddr, loc.port, loc.rport, loc.swire(loc.snd_nxt),
                         loc.rwire(loc.rcv_nxt), flags, loc.win, opts,
                         blob(payload_len, payload_len))


def outbound_ok(pair: ProxyPair, pkt: bytearray, csum: int):
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


