"""Real traces: every input the core gets in a run of the unit-test peer models,
recorded so it can be replayed into a fresh proxy built by :func:`.build.make_proxy`.

A trace is the setup of the proxy plus its ordered inputs::

    ("out", now, packet, csum)     # Proxy.outbound
    ("in", now, packet, csum)      # Proxy.inbound
    ("timer", now)                 # Proxy.handle_timer
    ("pm", now, name, args)        # a PathManager command (link_down, handover, ...)

with a digest of every verdict and of the forged packets, so a replay can prove it
reproduced the recorded run exactly (the fuzzer's branches then start from real
states). The models are tests/unit/lockstep/ (one connection, lockstep, a
Linux-like peer) and tests/unit/mpnet/ (timed multipath network) for the client
role, and tests/unit/server_model.py for the server role, the anchor, the peer's joins
and proxy↔proxy (:mod:`.traces_server`); they are only driven here, never changed: the
recorder wraps the instance methods of the proxy and path manager they built. Every
setup carries the same connection limits (:data:`.traces_server.LIMITS`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from . import traces_server
from .build import IN_CSUM_DEFAULT, OUT_CSUM_DEFAULT, config_dict, pm_config_dict, verdict_of

PM_OPS = ("link_down", "link_up", "handover", "remove_subflow", "set_prio", "abort_all")


def digest_verdict(v) -> str:
    if v is None:
        return "A"
    if v is False:
        return "D"
    try:
        return hashlib.blake2s(bytes(v), digest_size=8).hexdigest()
    except TypeError:
        return f"?{type(v).__name__}"


def digest_packet(p) -> str:
    return hashlib.blake2s(bytes(p), digest_size=8).hexdigest()


@dataclass
class Trace:
    name: str
    setup: dict
    ops: list = field(default_factory=list)
    digests: list = field(default_factory=list)  # one per op ("" for timers/pm)
    forged: list = field(default_factory=list)  # digests of forged packets, in order

    def __len__(self) -> int:
        return len(self.ops)

    def packets(self) -> int:
        return sum(1 for op in self.ops if op[0] in ("out", "in"))


class Recorder:
    """Wraps a model's proxy (and path manager) to log every input into ``trace``."""

    def __init__(self, trace: Trace, proxy, pm=None) -> None:
        self.trace = trace
        self.depth = 0
        real_out, real_in = proxy.outbound, proxy.inbound
        real_timer, real_pull = proxy.handle_timer, proxy.packets_to_send

        def outbound(buf, now, csum=OUT_CSUM_DEFAULT):
            return self._packet("out", real_out, buf, now, csum)

        def inbound(buf, now, csum=IN_CSUM_DEFAULT):  # (the models leave it to the core)
            return self._packet("in", real_in, buf, now, csum)

        def handle_timer(now):
            self.trace.ops.append(("timer", now))
            self.trace.digests.append("")
            return real_timer(now)

        def packets_to_send():
            out = real_pull()
            self.trace.forged.extend(digest_packet(p) for p in out)
            return out

        proxy.outbound, proxy.inbound = outbound, inbound
        proxy.handle_timer, proxy.packets_to_send = handle_timer, packets_to_send
        real_abort = proxy.abort_all

        def abort_all(now):
            return self._pm_op("abort_all", real_abort, now, [], (now,))

        proxy.abort_all = abort_all
        if pm is not None:
            self._wrap_pm(pm)

    def _packet(self, kind, real, buf, now, csum):
        self.trace.ops.append((kind, now, bytes(buf), csum))
        v = real(buf, now, csum)
        self.trace.digests.append(digest_verdict(verdict_of(v, buf)))
        return v

    def _pm_op(self, name, real, now, args, call_args, kw=None):
        if self.depth:
            return real(*call_args, **(kw or {}))
        self.depth += 1
        try:
            self.trace.ops.append(("pm", now, name, args))
            self.trace.digests.append("")
            return real(*call_args, **(kw or {}))
        finally:
            self.depth -= 1

    def _wrap_pm(self, pm) -> None:
        r_down, r_up, r_ho = pm.link_down, pm.link_up, pm.handover
        r_rm, r_prio = pm.remove_subflow, pm.set_prio

        def link_down(name, now):
            return self._pm_op("link_down", r_down, now, [name], (name, now))

        def link_up(name, now, v4=None, v6=None):
            args = [name, None if v4 is None else [a.hex() for a in v4],
                    None if v6 is None else [a.hex() for a in v6]]
            return self._pm_op("link_up", r_up, now, args, (name, now, v4, v6))

        def handover(conn, iface, now, break_=False):
            return self._pm_op("handover", r_ho, now, [conn.id, iface.name, break_],
                               (conn, iface, now), {"break_": break_})

        def remove_subflow(conn, sf, now):
            return self._pm_op("remove_subflow", r_rm, now, [conn.id, sf.index],
                               (conn, sf, now))

        def set_prio(conn, sf, backup, now):
            return self._pm_op("set_prio", r_prio, now, [conn.id, sf.index, backup],
                               (conn, sf, backup, now))

        pm.link_down, pm.link_up, pm.handover = link_down, link_up, handover
        pm.remove_subflow, pm.set_prio = remove_subflow, set_prio


def apply_pm_op(proxy, pm, name: str, now: float, args: list):
    """Replay one recorded command. Returns False when it no longer applies (its
    connection or subflow is gone, e.g. after a mutation ended it)."""
    if name == "abort_all":
        proxy.abort_all(now)
        return True
    if pm is None:
        return False
    if name == "link_down":
        pm.link_down(args[0], now)
        return True
    if name == "link_up":
        v4 = None if args[1] is None else [bytes.fromhex(a) for a in args[1]]
        v6 = None if args[2] is None else [bytes.fromhex(a) for a in args[2]]
        pm.link_up(args[0], now, v4, v6)
        return True
    conn = proxy.connections.get(args[0])
    if conn is None:
        return False
    if name == "handover":
        iface = pm.ifaces.get(args[1])
        if iface is None:
            return False
        pm.handover(conn, iface, now, break_=args[2])
        return True
    sf = next((s for s in conn.subflows if s.index == args[1]), None)
    if sf is None:
        return False
    if name == "remove_subflow":
        pm.remove_subflow(conn, sf, now)
    elif name == "set_prio":
        pm.set_prio(conn, sf, args[2], now)
    return True


# --------------------------------------------------------------------- scenarios
def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _pair_trace(name: str, seed: int, script, **kw) -> Trace:
    from lockstep.pair import ProxyPair

    from mptcp_proxy.core.proxy import ProxyConfig
    cfg = traces_server.limited(kw.pop("config", None) or
                                ProxyConfig(checksum=kw.get("checksum", False)))
    pair = ProxyPair(seed=seed, config=cfg, **kw)
    tr = Trace(name, {"kind": "pair", "seed": seed, "config": config_dict(cfg)})
    Recorder(tr, pair.proxy)
    script(pair)
    return tr


def _mp_trace(name: str, seed: int, script, *, subflows: str = "backup",
              pm_kw: dict | None = None, **kw) -> Trace:
    from mpnet.network import MpNet

    from mptcp_proxy.core.proxy import ProxyConfig
    net = MpNet(seed, subflows=subflows, pm_kw=pm_kw,
                proxy_config=traces_server.limited(ProxyConfig()), **kw)
    setup = {"kind": "mp", "seed": seed, "config": config_dict(net.proxy.config),
             "pm": pm_config_dict(net.pm.config),
             "ifaces": [[i.name, i.addr_id, [a.hex() for a in i.v4]] for i in net.ifaces],
             "port_base": net._port}
    tr = Trace(name, setup)
    Recorder(tr, net.proxy, net.pm)
    script(net)
    return tr


def _close_both(pair) -> None:
    pair.local.close()
    pair.emit_local(pair.local.push())
    pair.pump()
    pair.emit_peer(pair.peer.data_fin_alone())
    pair.pump()
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    pair.advance(pair.config.linger + 1)


def _s_pair_basic(pair) -> None:
    pair.handshake()
    pair.transfer(_blob(20_000, 1), _blob(20_000, 2), segs_per_map=2)
    pair.peer_send(_blob(6000, 3), segs_per_map=3, map_mode="every")
    _close_both(pair)


def _s_pair_lossy(pair) -> None:
    pair.handshake()
    nth = iter(range(10 ** 6))
    pair.drop("to_peer", lambda s: s.plen > 0 and next(nth) % 7 == 3, count=4)
    pair.duplicate("from_peer", lambda s: s.plen > 0, count=3)
    pair.hold("from_peer", lambda s: s.plen > 0, count=2)
    pair.transfer(_blob(30_000, 4), _blob(30_000, 5), window=8)
    pair.release("from_peer")
    pair.transfer(_blob(5000, 6), _blob(5000, 7))
    pair.emit_peer(pair.peer.rst(fastclose=True))
    pair.pump()
    pair.advance(pair.config.linger + 1)


def _s_pair_csum(pair) -> None:
    pair.handshake()
    pair.transfer(_blob(12_000, 8), _blob(12_000, 9), segs_per_map=2)
    pair.emit_local(pair.local.rst())
    pair.pump()
    pair.advance(pair.config.linger + 1)


def _s_pair_v6(pair) -> None:
    pair.handshake()
    pair.transfer(_blob(15_000, 10), _blob(15_000, 11))
    pair.local_send(b"last words", close=True)
    pair.peer_send(_blob(3000, 12), data_fin=True)
    pair.emit_peer(pair.peer.subflow_fin())
    pair.pump()
    pair.advance(pair.config.linger + 1)


def _s_pair_fallback(pair) -> None:
    pair.handshake()
    pair.transfer(_blob(8000, 13), _blob(8000, 14))


def _mp_started(net, seed: int, join: bool = True) -> None:
    net.connect()
    net.local.write(_blob(3000, seed + 1000))
    net.run(net.now + 0.01)
    if join:
        net.wait_subflows(2)


def _s_mp_backup(net) -> None:
    _mp_started(net, 21)
    net.run_transfer(_blob(60_000, 22), _blob(150_000, 23))
    net.handover(1)
    net.run_transfer(_blob(40_000, 24), _blob(80_000, 25))
    net.local.close()
    net.peer.close()
    net.run(net.now + 20, lambda: not net.proxy.connections)


def _s_mp_break(net) -> None:
    _mp_started(net, 31, join=False)
    net.local.write(_blob(80_000, 32))
    net.peer.write(_blob(200_000, 33))
    net.run(net.now + 0.15)
    net.cut(0)
    net.run(net.now + 0.05)
    net.link_down(0)
    net.run(net.now + 20, net.transfer_done)
    net.link_up(0)
    net.run(net.now + 1.0)
    net.run_transfer(_blob(30_000, 34), _blob(30_000, 35))


def _s_mp_announce(net) -> None:
    from mpnet.addresses import P1
    _mp_started(net, 41, join=False)
    net.peer.announce(P1, 1)
    net.run(net.now + 0.3)
    net.run_transfer(_blob(50_000, 42), _blob(100_000, 43))
    net.peer.remove_addr(1)
    net.run(net.now + 0.2)
    net.run_transfer(_blob(20_000, 44), _blob(20_000, 45))
    net.proxy.abort_all(net.now)
    net._forged()
    net.run(net.now + 0.1)


def _s_mp_active_loss(net) -> None:
    _mp_started(net, 51)
    for i in (0, 1):
        net.set_path(i, loss=0.02, reorder=0.1, jitter=0.01, dup=0.01)
    net.run_transfer(_blob(80_000, 52), _blob(250_000, 53), timeout=60)
    net.handover(1, break_=True)
    net.run_transfer(_blob(20_000, 54), _blob(20_000, 55), timeout=60)


SCENARIOS = {
    "pair_basic": lambda s: _pair_trace("pair_basic", s, _s_pair_basic),
    "pair_lossy": lambda s: _pair_trace("pair_lossy", s, _s_pair_lossy),
    "pair_csum": lambda s: _pair_trace("pair_csum", s, _s_pair_csum, checksum=True,
                                       peer_checksum=True),
    "pair_v6": lambda s: _pair_trace("pair_v6", s, _s_pair_v6, v6=True),
    "pair_fallback": lambda s: _pair_trace("pair_fallback", s, _s_pair_fallback,
                                           peer_mode="plain"),
    "mp_backup": lambda s: _mp_trace("mp_backup", s, _s_mp_backup, subflows="backup"),
    "mp_break": lambda s: _mp_trace("mp_break", s, _s_mp_break, subflows="manual"),
    "mp_announce": lambda s: _mp_trace("mp_announce", s, _s_mp_announce, subflows="manual"),
    "mp_active_loss": lambda s: _mp_trace("mp_active_loss", s, _s_mp_active_loss,
                                          subflows="active"),
    **traces_server.SERVER_SCENARIOS,
}


def record(name: str, seed: int = 1) -> Trace:
    """Run scenario ``name`` of :data:`SCENARIOS` on the models and return its trace."""
    return SCENARIOS[name](seed)
