"""Helpers of the connection tests (tests/unit/test_conn_*.py): payloads, an established
:class:`~lockstep.pair.ProxyPair`, segment filters, a graceful close of both sides.

The tests run the proxy's connection logic end to end on the one-connection fake network of
tests/unit/lockstep/ (a scripted local TCP stack and a Linux 6.18-like native MPTCP server
around one Proxy, a fake clock). The peer model validates every packet the proxy puts on the
wire as Linux would (docs/protocol.md §1–§5); ``pair.assert_clean()`` asserts no party
recorded a deviation."""

from __future__ import annotations

import random

from lockstep.pair import ProxyPair

PAYLOAD = bytes(random.Random(7).randbytes(300_000))


def blob(n: int, seed: int = 0) -> bytes:
    return PAYLOAD[seed:seed + n] if seed + n <= len(PAYLOAD) else \
        random.Random(seed).randbytes(n)


def established(**kw) -> ProxyPair:
    pair = ProxyPair(**kw)
    pair.handshake()
    assert pair.peer.state == "ESTABLISHED"
    return pair


def data_segs(segs):
    return [s for s in segs if s.plen]


def raw_mptcp(seg) -> list[bytes]:
    return [o for k, o in seg.opts if k == 30]


def non_mptcp(seg) -> list:
    return [(k, o) for k, o in seg.opts if k != 30]


def counters(pair) -> dict:
    return pair.proxy.counters

def close_both(pair: ProxyPair) -> None:
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
