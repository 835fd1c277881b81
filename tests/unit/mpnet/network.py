"""The multipath fake network (:class:`MpNet`): local stack ↔ Proxy(+PathManager) ↔ two
paths (:class:`PathDir`: delay, reordering, loss, duplication, cuts, link down/up) ↔
native MPTCP peer, on one event heap with a fake clock and a seeded RNG, and the
oracles that look across parties."""

from __future__ import annotations

import heapq
import random
from typing import Callable

from lockstep.pair import seeded_random_bytes, verdict_output
from lockstep.wire import FIN, RST, SYN, sdiff

from mpnet.addresses import A0, A1, LOCAL_PORT, P0, P1, SERVER_PORT
from mpnet.local_tcp import LocalTcp
from mpnet.peer import MpPeer
from mptcp_proxy.core.policy import LocalIface, PathManager, PmConfig
from mptcp_proxy.core.proxy import Proxy, ProxyConfig


class PathDir:
    """One direction of one path: base delay, reordering (with probability
    ``reorder`` a packet gets up to ``jitter`` extra delay), loss, duplication."""

    __slots__ = ("delay", "jitter", "reorder", "loss", "dup", "rate", "busy_until", "drop_fn")

    def __init__(self, delay: float = 0.015, jitter: float = 0.0, reorder: float = 0.0,
                 loss: float = 0.0, dup: float = 0.0, rate: float | None = 2.5e6) -> None:
        self.delay, self.jitter, self.reorder, self.loss, self.dup = delay, jitter, reorder, \
            loss, dup
        self.rate = rate  # bytes per second (serialization, FIFO); None = infinite
        self.busy_until = 0.0
        self.drop_fn: Callable[[bytes], bool] | None = None


IFACE = {0: "c0", 1: "c1"}


class MpNet:
    """Local stack ↔ Proxy(+PathManager) ↔ two paths ↔ native MPTCP peer, on a fake clock."""

    def __init__(self, seed: int = 1, *, subflows: str = "backup", pm_kw: dict | None = None,
                 proxy_config: ProxyConfig | None = None, local_kw: dict | None = None,
                 peer_kw: dict | None = None, delay: float = 0.015,
                 peer_key: int = 0x29A6C86981AD933C, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.heap: list = []
        self._seq = 0
        self.violations: list[tuple[str, str]] = []
        self.kinds: dict[str, int] = {}
        self.notes: dict[str, int] = {}
        self.trace: list | None = [] if trace else None
        self.paths = {i: {"up": PathDir(delay), "down": PathDir(delay)} for i in (0, 1)}
        self.cut_at: dict[int, float | None] = {0: None, 1: None}
        self.down: dict[int, bool] = {0: False, 1: False}
        self.addr_path = {A0: 0, A1: 1}
        self.ifaces = [LocalIface("c0", 1, v4=[A0]), LocalIface("c1", 2, v4=[A1])]
        self._port = 50000
        pm_kw = {"join_announced": "any", **(pm_kw or {})}  # (the model's addresses: 10/8)
        self.pm = PathManager(self.ifaces, PmConfig(subflows=subflows, **pm_kw),
                              alloc_port=self._alloc_port)
        self.proxy = Proxy(proxy_config or ProxyConfig(), seeded_random_bytes(seed),
                           pm=self.pm)
        self.join_pending: set[tuple] = set()
        self.local = LocalTcp(self, A0, LOCAL_PORT, P0, SERVER_PORT,
                              self.rng.getrandbits(32), **(local_kw or {}))
        self.peer = MpPeer(self, peer_key, self.rng.getrandbits(32), **(peer_kw or {}))
        self.local.expect = self.peer.app
        self.peer.expect = self.local.app
        self.events: list[tuple] = []
        self.wire_log: list[tuple] = []  # (t, dir, path, bytes) when trace
        self.taps: list[Callable] = []
        self.stall_guard = 0
        self.pkts = 0

    # -------------------------------------------------------------- plumbing
    def _alloc_port(self, addr: bytes) -> int:
        self._port += 1
        return self._port

    def at(self, t: float, fn: Callable, *args) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, fn, args))

    def violate(self, msg: str, kind: str = "general") -> None:
        """Record a deviation. ``kind`` lets a test set aside one known, separately
        tested defect (``assert_clean(allow=...)``)."""
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.violations) < 300:
            self.violations.append((kind, msg))

    def note(self, name: str, value=None) -> None:
        self.notes[name] = self.notes.get(name, 0) + 1

    def problems(self, allow: tuple[str, ...] = ()) -> list[str]:
        return [f"[{k}] {m}" for k, m in self.violations if k not in allow]

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        bad = self.problems(allow)
        assert not bad, f"{len(bad)} violations:\n" + "\n".join(bad[:15])

    def _log(self, hop: str, pkt: bytes) -> None:
        if self.trace is not None:
            self.trace.append((self.now, hop, pkt))
        for t in self.taps:
            t(hop, pkt, self.now)

    def _verdict(self, buf: bytes, v, b: bytearray):
        return verdict_output(buf, v, b)

    def _forged(self) -> None:
        for p in self.proxy.packets_to_send():
            assert isinstance(p, (bytes, bytearray)), type(p)
            p = bytes(p)
            src, dst = p[12:16], p[16:20]
            self._log("forged", p)
            if dst in self.peer.addrs or dst in (P0, P1):
                self._client_to_wire(p)
            elif dst == self.local.addr and src in (P0, P1):
                self.at(self.now, self._to_local, p)
            else:
                self.violate(f"proxy forged a packet to an unknown address {dst.hex()}")
        for ev in self.proxy.events():
            self.events.append((self.now, ev))

    # -- local stack -> proxy (OUTPUT) -> wire
    def local_out(self, buf: bytes) -> None:
        self.pkts += 1
        self._log("out", buf)
        b = bytearray(buf)
        v = self.proxy.outbound(b, self.now)
        out = self._verdict(buf, v, b)
        if out is not None:
            self._client_to_wire(out)
        self._forged()

    def _client_to_wire(self, p: bytes) -> None:
        src = p[12:16]
        path = self.addr_path.get(src)
        self._log("to_peer", p)
        if path is None:
            self.violate(f"a packet leaves from an address that is not ours: {src.hex()}")
            return
        ihl = (p[0] & 15) * 4
        plen = len(p) - ihl - (p[ihl + 12] >> 4) * 4
        if plen:
            tup = (src, int.from_bytes(p[ihl:ihl + 2], "big"), p[16:20],
                   int.from_bytes(p[ihl + 2:ihl + 4], "big"))
            if tup in self.join_pending:
                self.violate(f"t={self.now:.4f}: proxy sends data on join subflow {tup} before "
                             f"the fourth ACK reached it")
        self._transmit(path, "up", p, self.peer.receive)

    def _transmit(self, path: int, direction: str, p: bytes, deliver: Callable) -> None:
        if self.down[path] or (self.cut_at[path] is not None and self.now >= self.cut_at[path]):
            self.note(f"drop_cut_{path}")
            return
        pd = self.paths[path][direction]
        rng = self.rng
        if pd.drop_fn is not None and pd.drop_fn(p):
            self.note(f"drop_scripted_{path}_{direction}")
            return
        if pd.loss and rng.random() < pd.loss:
            self.note(f"drop_random_{path}_{direction}")
            return
        t = self.now
        if pd.rate:
            t = max(t, pd.busy_until) + len(p) / pd.rate
            pd.busy_until = t
        d = pd.delay
        if pd.reorder and rng.random() < pd.reorder:
            d += rng.uniform(0, pd.jitter)
        self.at(t + d, self._arrive, path, deliver, p)
        if pd.dup and rng.random() < pd.dup:
            self.at(t + d + rng.uniform(0, 0.002), self._arrive, path, deliver, p)

    def _arrive(self, path: int, deliver: Callable, p: bytes) -> None:
        if self.down[path] or (self.cut_at[path] is not None and self.now >= self.cut_at[path]):
            self.note(f"drop_cut_{path}")
            return
        deliver(p)

    # -- peer -> wire -> proxy (PREROUTING) -> local stack
    def peer_out(self, p: bytes) -> None:
        self.pkts += 1
        self._log("from_peer", p)
        path = self.addr_path.get(p[16:20])
        if path is None:
            self.violate(f"peer sends to an unknown address {p[16:20].hex()}")
            return
        self._transmit(path, "down", p, self._proxy_in)

    def _proxy_in(self, p: bytes) -> None:
        ihl = (p[0] & 15) * 4
        tup = (p[12:16], int.from_bytes(p[ihl:ihl + 2], "big"), p[16:20],
               int.from_bytes(p[ihl + 2:ihl + 4], "big"))
        sub = self.peer.by_tuple.get(tup)
        flags = p[ihl + 13]
        if sub is not None and not flags & (SYN | RST):
            if sub.client_tuple in self.join_pending and sub.state == "ESTABLISHED":
                self.join_pending.discard(sub.client_tuple)
            plen = len(p) - ihl - (p[ihl + 12] >> 4) * 4
            if plen or flags & FIN:
                s = sdiff(int.from_bytes(p[ihl + 4:ihl + 8], "big"), sub.iss + 1)
                if not sub.arrived_at_proxy.add(s, s + plen + (1 if flags & FIN else 0)):
                    sub.dup_arrivals_at_proxy += 1
        self._log("in", p)
        b = bytearray(p)
        v = self.proxy.inbound(b, self.now)
        out = self._verdict(p, v, b)
        # as the NFQUEUE driver does it: the verdict, then the forged packets; the local
        # stack reacts to the accepted packet later (its output is another callback)
        if out is not None:
            self._log("accepted_in", out)
            self.at(self.now, self._to_local, out)
        self._forged()

    def _to_local(self, p: bytes) -> None:
        self._log("to_local", p)
        self.local.receive(p)

    # ------------------------------------------------------------ oracles
    def check_local_ack(self, a: int, s) -> None:
        """The ACK and SACK blocks the proxy shows the local stack must be true."""
        peer = self.peer
        L = len(self.local.app)
        data_top = min(a, L)
        if data_top > peer.dl_contig:
            self.violate(f"t={self.now:.4f}: ACK {a} shown to the local stack, but the peer "
                         f"has only {peer.dl_contig} bytes in order at the data level", "oracle")
        if a > L and not peer.dfin_rcvd:
            self.violate(f"t={self.now:.4f}: ACK {a} covers the FIN but the peer has no "
                         f"DATA_FIN", "oracle")
        base = self.local.swire(0)
        for lo, hi in s.sack:
            bl, bh = sdiff(lo, base), sdiff(hi, base)
            bh_d = min(bh, L)
            if bl < bh_d and not peer.received(bl, bh_d):
                self.violate(f"t={self.now:.4f}: SACK block [{bl},{bh}) shown to the local "
                             f"stack, but the peer has not received "
                             f"{peer.got.missing(bl, bh_d)[:3]}", "oracle")

    # ---------------------------------------------------------------- driving
    def run(self, until: float, stop: Callable[[], bool] | None = None,
            max_events: int = 5_000_000) -> bool:
        """Run events up to time ``until`` (or until ``stop()``); True if stopped."""
        heap = self.heap
        proxy = self.proxy
        last_pt = None
        same = 0
        if stop is not None and stop():
            return True
        for _ in range(max_events):
            pt = proxy.get_timer()
            ht = heap[0][0] if heap else None
            if pt is not None and (ht is None or pt <= ht):
                if pt > until:
                    self.now = max(self.now, until)
                    return False
                if pt == last_pt:
                    same += 1
                    assert same < 1000, f"proxy timer stuck at {pt}"
                else:
                    same = 0
                last_pt = pt
                self.now = max(self.now, pt)
                proxy.handle_timer(self.now)
                self._forged()
            else:
                if ht is None or ht > until:
                    self.now = max(self.now, until)
                    return False
                t, _, fn, args = heapq.heappop(heap)
                self.now = max(self.now, t)
                fn(*args)
            if stop is not None and stop():
                return True
        raise AssertionError("event limit reached")

    def connect(self, timeout: float = 5.0) -> None:
        self.local.syn()
        ok = self.run(self.now + timeout, lambda: self.local.state == "ESTABLISHED"
                      and self.peer.state == "ESTABLISHED")
        assert ok, "handshake did not complete"

    @property
    def conn(self):
        conns = list(self.proxy.connections.values())
        assert len(conns) == 1, conns
        return conns[0]

    def subflows_up(self) -> list:
        from mptcp_proxy.core.subflow import SubflowState
        return [sf for sf in self.conn.subflows if sf.state == SubflowState.ESTABLISHED]

    def wait_subflows(self, n: int, timeout: float = 5.0) -> None:
        ok = self.run(self.now + timeout, lambda: len(self.subflows_up()) >= n and
                      sum(1 for x in self.peer.subs if x.state == "ESTABLISHED") >= n)
        assert ok, f"{n} subflows did not come up: {self.conn.subflows} {self.peer.subs}"

    def transfer_done(self) -> bool:
        lo, pe = self.local, self.peer
        return (lo.rcv_nxt >= len(pe.app) and pe.dl_contig >= len(lo.app)
                and lo.all_acked and pe.all_acked)

    def run_transfer(self, up: bytes = b"", down: bytes = b"", timeout: float = 60.0) -> float:
        """Write ``up`` (local → peer) and ``down`` (peer → local); run until both
        arrived and are acknowledged. Returns the fake time it took."""
        t0 = self.now
        if up:
            self.local.write(up)
        if down:
            self.peer.write(down)
        ok = self.run(t0 + timeout, self.transfer_done)
        assert ok, (f"transfer incomplete after {timeout}s: local got {self.local.rcv_nxt}/"
                    f"{len(self.peer.app)}, peer got {self.peer.dl_contig}/{len(self.local.app)}"
                    f"; violations: {self.violations[:5]}")
        return self.now - t0

    def stream_ok(self) -> None:
        """Byte-for-byte integrity both ways (every delivered byte was compared with
        the sender's stream on arrival; here: everything arrived)."""
        assert self.local.rcv_nxt >= len(self.peer.app)
        assert self.peer.dl_contig >= len(self.local.app)

    # -- scripted network events
    def set_path(self, i: int, direction: str = "both", **kw) -> None:
        for d in ("up", "down") if direction == "both" else (direction,):
            for k, v in kw.items():
                setattr(self.paths[i][d], k, v)

    def cut(self, i: int, at: float | None = None) -> None:
        """Drop everything on path ``i`` from time ``at`` (default: now), in flight too."""
        self.cut_at[i] = self.now if at is None else at

    def uncut(self, i: int) -> None:
        self.cut_at[i] = None

    def link_down(self, i: int) -> None:
        """The interface of path ``i`` goes down: the path drops everything and the
        daemon tells the PathManager."""
        self.down[i] = True
        self.pm.link_down(IFACE[i], self.now)
        self._forged()

    def link_up(self, i: int) -> None:
        self.down[i] = False
        self.cut_at[i] = None
        addr = A0 if i == 0 else A1
        self.pm.link_up(IFACE[i], self.now, [addr], [])
        self._forged()

    def handover(self, i: int, break_: bool = False):
        sf = self.pm.handover(self.conn, self.pm.ifaces[IFACE[i]], self.now, break_=break_)
        self._forged()
        return sf

    def gap(self, series: list[tuple[float, int]], t0: float, t1: float) -> float:
        """Longest time without in-order progress in ``[t0, t1]``."""
        last = t0
        worst = 0.0
        for t, _ in series:
            if t < t0:
                continue
            if t > t1:
                break
            worst = max(worst, t - last)
            last = t
        return max(worst, 0.0)

    def recovery_time(self, series: list[tuple[float, int]], t_event: float, mark: int) -> float:
        """Time from ``t_event`` until in-order delivery reached ``mark`` (typically
        the highest byte the sender had sent when the path broke: everything in flight
        then is recovered). ``inf`` if never."""
        for t, v in series:
            if t >= t_event and v >= mark:
                return t - t_event
        return float("inf")
