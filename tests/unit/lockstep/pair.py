"""Local stack ↔ Proxy ↔ wire ↔ Linux peer on a fake clock (:class:`ProxyPair`), with
the wire's drop/duplicate/hold rules, the hop logs and the verdict helpers."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lockstep.decode import parse_seg
from lockstep.linux_peer import LinuxPeer
from lockstep.local_stack import LocalStack
from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.verdict import Verdict

if TYPE_CHECKING:
    from lockstep.decode import Seg


@dataclass
class Rule:
    direction: str  # "to_peer" (proxy -> wire -> peer), "from_peer" or "to_local"
    match: Callable[[Seg], bool]
    action: str  # drop | dup | hold
    count: int


@dataclass
class Hop:
    hop: str
    seg: Seg
    now: float


V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 1, 2]))
V6 = (bytes.fromhex("fd000000000000000000000000000001"),
      bytes.fromhex("fd000001000000000000000000000002"))


def verdict_output(buf: bytes, v: Verdict, b: bytearray) -> bytes | None:
    """What passes the queue for verdict ``v`` on ``buf``, which the core got as ``b``:
    the original (ACCEPT — and then the core must not have changed a byte of it),
    nothing (DROP) or the rewritten buffer (MANGLE)."""
    assert isinstance(v, Verdict), f"bad verdict {v!r}"
    if v is Verdict.ACCEPT:
        assert bytes(b) == buf[:len(b)], "ACCEPT for a buffer the core changed"
        return buf
    if v is Verdict.DROP:
        return None
    return bytes(b)


def seeded_random_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


class ProxyPair:
    """Local stack ↔ Proxy ↔ wire ↔ Linux peer, on a fake clock.

    Packets travel through FIFO queues; :meth:`pump` runs them until quiet. Logs:
    ``hops`` (every packet with its hop name: "out" = local stack output,
    "to_peer" = what the proxy puts on the wire, "from_peer" = the peer's output,
    "to_local" = what the proxy hands the local stack) and ``verdicts``.
    """

    def __init__(self, checksum: bool = False, peer_checksum: bool = False, v6: bool = False,
                 seed: int = 1, config: ProxyConfig | None = None, peer_mode: str = "mptcp",
                 synack_mpc: bytes | None = None, local_isn: int = 0xFFFFF000,
                 peer_isn: int = 0xFFFFFE00, peer_key: int = 0x29A6C86981AD933C,
                 local_kw: dict | None = None, peer_kw: dict | None = None,
                 random_bytes: Callable[[int], bytes] | None = None) -> None:
        self.now = 0.0
        if config is None:
            config = ProxyConfig(checksum=checksum)
        self.config = config
        self.proxy = Proxy(config, random_bytes or seeded_random_bytes(seed))
        la, ra = V6 if v6 else V4
        self.local = LocalStack(self, la, 40000, ra, 8080, local_isn, **(local_kw or {}))
        self.peer = LinuxPeer(self, ra, 8080, peer_key, peer_isn, checksum=peer_checksum,
                              mode=peer_mode, synack_mpc=synack_mpc, **(peer_kw or {}))
        self.queue: deque[tuple[str, bytes]] = deque()
        self.rules: list[Rule] = []
        self.held: dict[str, list[bytes]] = {"to_peer": [], "from_peer": [], "to_local": []}
        self.hops: list[Hop] = []
        self.verdicts: list[tuple[str, object]] = []
        self.events: list[tuple] = []

    # -- wire manipulation
    def _rule(self, direction, match, action, count):
        assert direction in ("to_peer", "from_peer", "to_local")
        self.rules.append(Rule(direction, match or (lambda s: True), action, count))

    def drop(self, direction: str, match: Callable[[Seg], bool] | None = None,
             count: int = 1) -> None:
        self._rule(direction, match, "drop", count)

    def duplicate(self, direction: str, match=None, count: int = 1) -> None:
        self._rule(direction, match, "dup", count)

    def hold(self, direction: str, match=None, count: int = 1) -> None:
        """Hold matching packets back until :meth:`release` (reordering)."""
        self._rule(direction, match, "hold", count)

    def release(self, direction: str, pump: bool = True) -> None:
        held, self.held[direction] = self.held[direction], []
        dest = {"to_peer": "peer", "from_peer": "proxy_in", "to_local": "local"}[direction]
        for b in held:
            self.queue.append((dest, b))
        if pump:
            self.pump()

    def _wire(self, direction: str, buf: bytes) -> None:
        s = parse_seg(buf)
        self.hops.append(Hop(direction, s, self.now))
        dest = {"to_peer": "peer", "from_peer": "proxy_in", "to_local": "local"}[direction]
        for rule in self.rules:
            if rule.direction == direction and rule.count > 0 and rule.match(s):
                rule.count -= 1
                if rule.action == "drop":
                    return
                if rule.action == "hold":
                    self.held[direction].append(buf)
                    return
                if rule.action == "dup":
                    self.queue.append((dest, buf))
                break
        self.queue.append((dest, buf))

    # -- plumbing
    def _forged(self) -> None:
        for p in self.proxy.packets_to_send():
            assert isinstance(p, (bytes, bytearray)), type(p)
            s = parse_seg(p)
            if s.dst == self.peer.addr:
                self._wire("to_peer", bytes(p))
            elif s.dst == self.local.addr:
                self._wire("to_local", bytes(p))
            else:
                raise AssertionError(f"forged packet to an unknown address: {s!r}")
        self.events.extend(self.proxy.events())

    def _verdict(self, direction: str, buf: bytes, v, b: bytearray) -> bytes | None:
        """What passes for verdict ``v`` on ``buf`` (``b``: the buffer the core got)."""
        self.verdicts.append((direction, v))
        return verdict_output(buf, v, b)

    def emit_local(self, pkts) -> None:
        for p in pkts:
            self.queue.append(("proxy_out", p))

    def emit_peer(self, pkts) -> None:
        for p in pkts:
            self._wire("from_peer", p)

    def pump(self, max_steps: int = 200000) -> None:
        steps = 0
        q = self.queue
        while q:
            steps += 1
            assert steps < max_steps, "packet storm"
            dest, buf = q.popleft()
            if dest == "proxy_out":
                self.hops.append(Hop("out", parse_seg(buf), self.now))
                b = bytearray(buf)
                v = self.proxy.outbound(b, self.now)
                out = self._verdict("out", buf, v, b)
                if out is not None:
                    self._wire("to_peer", out)
                self._forged()
            elif dest == "proxy_in":
                b = bytearray(buf)
                v = self.proxy.inbound(b, self.now)
                out = self._verdict("in", buf, v, b)
                if out is not None:
                    self._wire("to_local", out)
                self._forged()
            elif dest == "peer":
                for r in self.peer.receive(parse_seg(buf)):
                    self._wire("from_peer", r)
            elif dest == "local":
                self.emit_local(self.local.receive(parse_seg(buf)))
        self.events.extend(self.proxy.events())

    def advance(self, dt: float) -> None:
        """Move the clock, firing the proxy's timers at their exact times."""
        end = self.now + dt
        while True:
            t = self.proxy.get_timer()
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            self.proxy.handle_timer(self.now)
            self._forged()
            self.pump()
        self.now = end

    # -- scripted conversations
    def handshake(self) -> None:
        self.emit_local(self.local.syn())
        self.pump()

    def local_send(self, data: bytes, window: int | None = None, close: bool = False) -> None:
        self.local.write(data)
        if close:
            self.local.close()
        self.emit_local(self.local.push(window))
        self.pump()

    def peer_send(self, data: bytes, **kw) -> None:
        self.peer.write(data, **kw)
        self.emit_peer(self.peer.push())
        self.pump()

    def transfer(self, local_data: bytes = b"", peer_data: bytes = b"", window: int = 32,
                 max_rounds: int = 5000, rto: float = 0.2, **peer_kw) -> None:
        """Send both ways with at most ``window`` segments in flight per side; when
        nothing moves, both sides retransmit what is unacknowledged (go-back-N)."""
        self.local.write(local_data)
        self.peer.write(peer_data, **peer_kw)
        for _ in range(max_rounds):
            before = len(self.hops)
            self.emit_local(self.local.push(window))
            self.emit_peer(self.peer.push(window))
            self.pump()
            if self.local.all_acked and self.peer.all_acked:
                return
            if len(self.hops) == before:
                self.advance(rto)
                self.emit_local(self.local.retransmit())
                self.emit_peer(self.peer.retransmit())
                self.pump()
        raise AssertionError("transfer did not complete")

    # -- views
    def segs(self, hop: str) -> list[Seg]:
        return [h.seg for h in self.hops if h.hop == hop]

    def mark(self) -> int:
        return len(self.hops)

    def since(self, mark: int, hop: str) -> list[Seg]:
        return [h.seg for h in self.hops[mark:] if h.hop == hop]

    @property
    def conn(self):
        conns = list(self.proxy.connections.values())
        assert len(conns) == 1, conns
        return conns[0]

    def assert_clean(self) -> None:
        problems = self.peer.violations + self.local.violations
        assert not problems, "\n".join(problems[:20])
