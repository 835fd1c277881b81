"""Traces of the other side of the conversion (issue 10), for the fuzzer: the server role
(``--serve``), the anchor (a connection it converts, one it steps aside for, joins at an
address it announced), the peer's MP_JOIN subflows toward us (accepted and refused, in
both roles) and proxy↔proxy (each proxy's inputs as a trace of its own).

The models are tests/unit/server_model.py's: :class:`~server_model.ServerPair` (a plain
listener behind the proxy, a Linux-like native MPTCP client in front of it),
:class:`~server_model.JoinOpener` (the client's scripted joins) and
:class:`~server_model.ProxyProxyPair`. As in :mod:`.traces`, they are only driven here,
never changed; the recorder wraps the proxy they built.

Every setup carries :data:`LIMITS`, so the fuzzer's SYN and join floods meet the limits
the daemon has (``--max-connections``, ``--max-syn-sent``, ``PmConfig.max_subflows``)
instead of growing the proxy to its defaults of tens of thousands.
"""

from __future__ import annotations

import dataclasses
import random

from . import traces
from .build import config_dict, pm_config_dict

# the limits of every fuzzed setup: a flood must stay within them
LIMITS = {"max_connections": 1000, "max_syn_sent": 256}

CLIENT2 = bytes((10, 0, 2, 2))  # the native client's second address (joins come from it)
ANNOUNCED = bytes((10, 0, 1, 254))  # an address the anchor announces
SERVER2 = bytes((10, 0, 9, 2))  # a native server's second address (joins toward a client)


def limited(cfg):
    """``cfg`` (a ProxyConfig) with the fuzzing limits."""
    return dataclasses.replace(cfg, **LIMITS)


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _server_cfg(anchor: bool = False, checksum: bool = False):
    from server_model import SERVER_PORT

    from mptcp_proxy.core.proxy import ProxyConfig
    return ProxyConfig(client=False, anchor=anchor, checksum=checksum, **LIMITS,
                       serve=frozenset() if anchor else frozenset({SERVER_PORT}))


def _srv_trace(name: str, seed: int, script, *, anchor: bool = False, checksum: bool = False,
               pm: dict | None = None, **kw) -> traces.Trace:
    """A :class:`~server_model.ServerPair` run; ``pm``: PmConfig fields of a path manager
    of its own (announcements, the peer-join policy)."""
    from server_model import ServerPair

    from mptcp_proxy.core.policy import PathManager, PmConfig
    cfg = _server_cfg(anchor, checksum)
    pmc = PmConfig(**pm) if pm is not None else None
    pair = ServerPair(seed=seed, config=cfg, anchor=anchor,
                      pm=PathManager(config=pmc) if pmc is not None else None, **kw)
    setup = {"kind": "pair", "seed": seed, "config": config_dict(cfg)}
    if pmc is not None:
        setup["pm"] = pm_config_dict(pmc)
    tr = traces.Trace(name, setup)
    traces.Recorder(tr, pair.proxy)
    pair.elsewhere = []
    script(pair)
    return tr


def _inject(pair, pkt: bytes) -> None:
    pair.queue.append(("proxy_in", pkt))
    pair.pump()


def _close_both(pair) -> None:
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    pair.advance(1.0)
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)


# ------------------------------------------------------------------ server role
def _s_srv_basic(pair) -> None:
    pair.handshake()
    pair.local_send(b"220 banner\r\n")  # the server speaks first (its DATA_ACK matters)
    pair.transfer(_blob(20_000, 101), _blob(20_000, 102), segs_per_map=2)
    pair.peer_send(_blob(6000, 103), segs_per_map=3, map_mode="every")
    _close_both(pair)


def _s_srv_lossy(pair) -> None:
    pair.drop("from_peer", lambda s: s.ackf and not s.syn and not s.plen)  # third ACK lost
    pair.handshake()
    pair.peer_send(b"GET / HTTP/1.1\r\n\r\n")  # its MP_CAPABLE with data establishes
    nth = iter(range(10 ** 6))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) % 7 == 3, count=4)
    pair.drop("to_local", lambda s: s.plen > 0 and next(nth) % 5 == 1, count=3)
    pair.duplicate("from_peer", lambda s: s.plen > 0, count=3)
    pair.hold("from_peer", lambda s: s.plen > 0, count=2)
    pair.transfer(_blob(30_000, 104), _blob(30_000, 105), window=8)
    pair.release("from_peer")
    pair.transfer(_blob(5000, 106), _blob(5000, 107))
    pair.emit_peer(pair.peer.rst())  # MP_FASTCLOSE from the client
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)


def _s_srv_csum(pair) -> None:
    pair.handshake()
    pair.peer_send(_blob(700, 108))  # MP_CAPABLE with data and a DSS checksum (len 24)
    pair.transfer(_blob(12_000, 109), _blob(12_000, 110), segs_per_map=2)
    pair.emit_local(pair.local.rst())  # the server aborts: MP_FASTCLOSE to the client
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)


def _s_srv_v6(pair) -> None:
    pair.drop("to_peer", lambda s: s.syn)  # the SYN/ACK lost once: the SYN again
    pair.handshake()
    pair.emit_peer([pair.peer.syn()])
    pair.pump()
    pair.transfer(_blob(15_000, 111), _blob(15_000, 112))
    _close_both(pair)


def _s_srv_fallback(pair) -> None:
    pair.peer.dss_ack = lambda: b""  # a client that gave MPTCP up after the SYN/ACK
    pair.handshake()
    pair.peer.mptcp = False
    pair.transfer(_blob(8000, 113), _blob(8000, 114))


def _s_srv_half_open(pair) -> None:
    """Resets and timeouts around SYN_RCVD: a connection whose third ACK never comes is
    forgotten; a new one on the same 4-tuple then completes."""
    pair.drop("from_peer", lambda s: s.ackf and not s.syn, count=2)
    pair.handshake()
    pair.advance(2.0)
    pair.emit_peer([pair.peer.syn()])  # (the model's SYN again)
    pair.pump()
    pair.advance(pair.proxy.config.syn_timeout + 1)
    pair.local.listen()
    pair.peer.state = "CLOSED"
    pair.emit_peer(pair.peer.connect())
    pair.pump()
    pair.transfer(_blob(4000, 115), _blob(4000, 116))


# ------------------------------------------------------------------------ anchor
def _s_anchor_convert(pair) -> None:
    pair.drop("to_local", lambda s: s.ackf and not s.syn and not s.plen)  # behind the anchor
    pair.handshake()
    pair.emit_local([pair.local.synack()])  # the server repeats its SYN/ACK
    pair.pump()
    pair.transfer(_blob(25_000, 117), _blob(25_000, 118))
    _close_both(pair)


def _s_anchor_native(pair) -> None:
    """A native MPTCP server: the anchor steps aside (then only watches the 4-tuple)."""
    pair.handshake()
    for i in range(4):  # both ways, in rounds: every segment watched, none rewritten
        pair.peer.write(_blob(3000, 119 + 1000 * i))
        pair.emit_peer(pair.peer.push())
        pair.pump()
        pair.local.write(_blob(3000, 120 + 1000 * i))
        pair.emit_local(pair.local.push())
        pair.pump()
    pair.advance(1.0)
    pair.emit_local(pair.local.rst())
    pair.pump()


def _s_anchor_announce(pair) -> None:
    """ADD_ADDR of the anchor's second address; the client joins there (accepted), a
    join with an unknown token at that endpoint (reset), one more over the limit
    (refused), then data on the join."""
    from server_model import SERVER_PORT, JoinOpener
    pair.handshake()
    pair.transfer(_blob(3000, 121), _blob(3000, 122))
    key_b = pair.conn.local_key
    j = JoinOpener(pair, CLIENT2, 41000, ANNOUNCED, 9000, pair.peer.key, key_b)
    _inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    _inject(pair, j.third_ack())
    _join_data(pair, j, _blob(2000, 123))
    stranger = JoinOpener(pair, CLIENT2, 41001, ANNOUNCED, 9000, 1, 0x42)
    _inject(pair, stranger.syn())
    extra = JoinOpener(pair, CLIENT2, 41002, pair.local.addr, SERVER_PORT, pair.peer.key,
                       key_b, nonce=0x1234)
    _inject(pair, extra.syn())  # max_subflows 2: refused
    pair.transfer(_blob(6000, 124), _blob(6000, 125))
    pair.emit_peer(pair.peer.rst())
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)


def _join_data(pair, j, data: bytes) -> None:
    """The client's data on join ``j`` (its data level kept in step)."""
    from lockstep.wire import M64, key_sha
    d0 = pair.peer.d_nxt
    pair.peer.dsnd += data
    pair.peer.d_nxt += len(data)
    _inject(pair, j.data((key_sha(pair.peer.key)[1] + 1 + d0) & M64, 1, data))


# ------------------------------------------------------------ the peer's joins
def _s_srv_joins(pair) -> None:
    """Joins to the served address: one accepted (data, MP_PRIO moving the server's
    sending there), one with a wrong HMAC (reset), one left half open (SYN/ACK
    retransmitted, then reset), one to another port (refused), one with an unknown
    token (passed on)."""
    from lockstep.wire import M32
    from mpnet.options import prio_opt
    from server_model import SERVER_PORT, JoinOpener
    pair.handshake()
    pair.transfer(_blob(4000, 126), _blob(4000, 127))
    key_b = pair.conn.local_key
    j = JoinOpener(pair, CLIENT2, 41000, pair.local.addr, SERVER_PORT, pair.peer.key, key_b,
                   backup=True)
    _inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    _inject(pair, j.third_ack())
    _inject(pair, j.third_ack())  # repeated until the fourth ACK arrives
    _join_data(pair, j, _blob(3000, 128))
    bad = JoinOpener(pair, CLIENT2, 41001, pair.local.addr, SERVER_PORT, pair.peer.key,
                     key_b, nonce=0x77)
    _inject(pair, bad.syn())
    bad.take_synack(pair.elsewhere[-1])
    _inject(pair, bad.third_ack(good=False))
    half = JoinOpener(pair, CLIENT2, 41002, pair.local.addr, SERVER_PORT, pair.peer.key,
                      key_b, nonce=0x78)
    _inject(pair, half.syn())
    _inject(pair, half.syn())  # (its SYN again: the same SYN/ACK)
    other = JoinOpener(pair, CLIENT2, 41003, pair.local.addr, SERVER_PORT + 1, pair.peer.key,
                       key_b)
    _inject(pair, other.syn())
    stranger = JoinOpener(pair, CLIENT2, 41004, pair.local.addr, SERVER_PORT, 1, 0x42)
    _inject(pair, stranger.syn())
    pair.transfer(_blob(5000, 129), _blob(5000, 130))
    pair.advance(16.0)  # the half-open join: retransmitted, then reset
    # the client moves the server's sending to the join; the join's ACK takes it
    _inject(pair, j.ack_with(prio_opt(False)))
    pair.emit_peer([pair.peer._build(0, pair.peer.snd_nxt, pair.peer.dss_ack() +
                                     prio_opt(True))])
    pair.pump()
    pair.local_send(_blob(1200, 131))
    sent = [s for s in pair.elsewhere if s.plen and s.dst == CLIENT2]
    if sent:
        s = sent[-1]
        ack = (s.seq + s.plen - j.irs) & M32
        _inject(pair, j.ack_with(b"", ack_rel=ack))
    pair.emit_peer(pair.peer.rst())
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)


def _s_srv_refuse(pair) -> None:
    from server_model import SERVER_PORT, JoinOpener
    pair.handshake()
    pair.transfer(_blob(3000, 132), _blob(3000, 133))
    j = JoinOpener(pair, CLIENT2, 41000, pair.local.addr, SERVER_PORT, pair.peer.key,
                   pair.conn.local_key)
    _inject(pair, j.syn())
    pair.transfer(_blob(3000, 134), _blob(3000, 135))
    _close_both(pair)


def _cli_join_trace(name: str, seed: int) -> traces.Trace:
    """The client role, whose Linux server opens a join toward the client's address
    (accepted), with data on it, then one to another port (refused)."""
    from lockstep.pair import ProxyPair
    from lockstep.wire import M64
    from server_model import ElsewhereMixin, JoinOpener

    from mptcp_proxy.core.proxy import ProxyConfig

    class ClientJoinPair(ElsewhereMixin, ProxyPair):
        pass

    cfg = limited(ProxyConfig())
    pair = ClientJoinPair(seed=seed, config=cfg)
    tr = traces.Trace(name, {"kind": "pair", "seed": seed, "config": config_dict(cfg)})
    traces.Recorder(tr, pair.proxy)
    pair.elsewhere = []
    pair.handshake()
    pair.transfer(_blob(3000, 136), _blob(3000, 137))
    j = JoinOpener(pair, SERVER2, 8081, pair.local.addr, pair.local.port, pair.peer.key,
                   pair.conn.local_key, join_id=5)
    _inject(pair, j.syn())
    j.take_synack(pair.elsewhere[-1])
    _inject(pair, j.third_ack())
    data = _blob(1500, 138)
    dsn = (pair.peer.idsn + 1 + pair.peer.d_nxt) & M64
    pair.peer.dsnd += data
    pair.peer.d_nxt += len(data)
    _inject(pair, j.data(dsn, 1, data))
    other = JoinOpener(pair, SERVER2, 8082, pair.local.addr, pair.local.port + 1,
                       pair.peer.key, pair.conn.local_key)
    _inject(pair, other.syn())
    pair.transfer(_blob(5000, 139), _blob(5000, 140))
    pair.emit_local(pair.local.rst())
    pair.pump()
    pair.advance(pair.proxy.config.linger + 1)
    return tr


# ------------------------------------------------------------------ proxy↔proxy
def _pp_trace(name: str, seed: int, side: str) -> traces.Trace:
    """Both ends behind a proxy; ``side``: whose inputs are recorded ("client": the
    client role's proxy, "server": the ``--serve`` one)."""
    from server_model import SERVER_PORT, ProxyProxyPair

    from mptcp_proxy.core.proxy import ProxyConfig
    ccfg = limited(ProxyConfig())
    scfg = limited(ProxyConfig(client=False, serve=frozenset({SERVER_PORT})))
    pair = ProxyProxyPair(seed=seed, config=ccfg, server_config=scfg)
    proxy, cfg, pseed = (pair.proxy, ccfg, seed) if side == "client" else \
        (pair.server_proxy, scfg, seed + 1000)
    tr = traces.Trace(name, {"kind": "pair", "seed": pseed, "config": config_dict(cfg)})
    traces.Recorder(tr, proxy)
    pair.handshake()
    nth = iter(range(10 ** 6))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) % 9 == 4, count=3)
    pair.transfer(_blob(30_000, 141), _blob(30_000, 142), window=8)
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    pair.server.close()
    pair.emit_peer(pair.peer.push())
    pair.pump()
    pair.advance(pair.proxy.config.linger + 2)
    return tr


SERVER_SCENARIOS = {
    "srv_basic": lambda s: _srv_trace("srv_basic", s, _s_srv_basic),
    "srv_lossy": lambda s: _srv_trace("srv_lossy", s, _s_srv_lossy),
    "srv_csum": lambda s: _srv_trace("srv_csum", s, _s_srv_csum, checksum=True,
                                     client_checksum=True),
    "srv_v6": lambda s: _srv_trace("srv_v6", s, _s_srv_v6, v6=True),
    "srv_fallback": lambda s: _srv_trace("srv_fallback", s, _s_srv_fallback),
    "srv_half_open": lambda s: _srv_trace("srv_half_open", s, _s_srv_half_open),
    "srv_joins": lambda s: _srv_trace("srv_joins", s, _s_srv_joins, pm={}),
    "srv_refuse": lambda s: _srv_trace("srv_refuse", s, _s_srv_refuse,
                                       pm={"peer_joins": "refuse"}),
    "anchor_convert": lambda s: _srv_trace("anchor_convert", s, _s_anchor_convert,
                                           anchor=True),
    "anchor_native": lambda s: _srv_trace("anchor_native", s, _s_anchor_native, anchor=True,
                                          native=True),
    "anchor_announce": lambda s: _srv_trace(
        "anchor_announce", s, _s_anchor_announce, anchor=True,
        pm={"announce": [(ANNOUNCED, 9000)], "max_subflows": 2}),
    "cli_peer_join": lambda s: _cli_join_trace("cli_peer_join", s),
    "pp_client": lambda s: _pp_trace("pp_client", s, "client"),
    "pp_server": lambda s: _pp_trace("pp_server", s, "server"),
}
