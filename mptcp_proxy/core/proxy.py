"""The sans-I/O proxy: every connection, the dispatch of packets, timers, and the
packets the proxy forges (after aioquic's ``QuicConnection``, STYLE.md §1).

Three inputs, pulled outputs::

    verdict = proxy.outbound(buf, now)   # a segment of the local stack (OUTPUT)
    verdict = proxy.inbound(buf, now)    # a segment from the network (PREROUTING)
    proxy.handle_timer(now)              # when proxy.get_timer() is due
    for pkt in proxy.packets_to_send(): ...   # forged segments, whole IP packets
    for ev in proxy.events(): ...             # ("established", conn) and the like

A verdict is :data:`ACCEPT` (``None``: pass unchanged), :data:`DROP` (``False``),
or a ``bytearray`` holding the rewritten packet. Time is ``now`` in seconds
(any monotonic origin); randomness comes from the ``random_bytes`` callable
given to the constructor. Nothing here touches a socket, clock or RNG.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .connection import ACCEPT, DROP, Connection, ConnState
from .constants import TCP_ACK, TCP_RST, TCP_SYN
from .counters import Counters
from .events import Event, EventKind
from .orphans import Orphans
from .subflow import Subflow
from .tcp import TcpPacket, parse_packet

__all__ = ["Proxy", "ProxyConfig", "ACCEPT", "DROP"]


@dataclass
class ProxyConfig:
    """Settings of the sans-I/O core.

    ``ports``: destination ports to convert (empty = all); ``checksum``: ask the
    peer for DSS checksums (MP_CAPABLE flag A, RFC 8684 §3.3); ``mss_overhead``:
    bytes subtracted from the peer's MSS shown to the local stack so that our
    added options fit the MTU (DESIGN.md §3.1: MP_CAPABLE with data-level length,
    or DSS with DATA_ACK and 64-bit mapping, each 24 bytes with padding);
    ``linger``: seconds a closed connection is remembered to absorb late
    segments; ``syn_timeout``: seconds a connection may stay in SYN_SENT;
    ``syn_mpc_retries``: SYN retransmissions that still carry MP_CAPABLE;
    ``max_connections``: connections tracked at once, ``max_syn_sent``: of them in
    SYN_SENT (0 = no limit; the daemon's ``--max-connections``/``--max-syn-sent``).
    """

    ports: frozenset[int] = field(default_factory=frozenset)
    checksum: bool = False
    mss_overhead: int = 24
    linger: float = 10.0
    syn_timeout: float = 75.0
    syn_mpc_retries: int = 2
    fin_rto: float = 0.3
    fin_retries: int = 6
    max_connections: int = 0
    max_syn_sent: int = 0


class Proxy:
    """All connections of one proxy instance (end-host mode)."""

    def __init__(self, config: ProxyConfig | None = None,
                 random_bytes: Callable[[int], bytes] | None = None) -> None:
        if random_bytes is None:
            raise ValueError("random_bytes is required (the core has no RNG of its own)")
        self.config = config or ProxyConfig()
        self.random_bytes = random_bytes
        self.counters = Counters()
        self.conns: dict[tuple, tuple[Connection, Subflow]] = {}
        self.connections: dict[int, Connection] = {}
        self.tokens: dict[int, Connection] = {}  # our local tokens (RFC 8684 §3.2)
        self.now = 0.0
        self._tx: list[bytearray] = []
        self._timers: list[tuple[float, int, Connection]] = []
        self._events: deque = deque(maxlen=4096)
        self._next_id = 1
        self._seq = 0
        self.pm = None  # path manager hook (multipath); None = single subflow
        self.orphans = Orphans(self)  # connections of a killed daemon (core/orphans.py)

    # ------------------------------------------------------------- plumbing
    def next_conn_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def send(self, pkt: bytearray) -> None:
        """Queue a forged packet (a whole IP packet) for the driver."""
        self._tx.append(pkt)

    def packets_to_send(self) -> list[bytearray]:
        """Take the forged packets queued since the last call."""
        tx = self._tx
        self._tx = []
        return tx

    def emit_event(self, kind: EventKind, conn: Connection, sf: Subflow | None = None,
                   **fields) -> None:
        """Record an :class:`~.events.Event` of ``conn`` (of its subflow ``sf`` for the
        ``SF_*`` kinds, with that subflow's 4-tuple, index, address IDs and backup flag)."""
        if sf is None:
            la, lp, ra, rp = conn.key
        else:
            la, lp, ra, rp = sf.key
            fields.setdefault("subflow", sf.index)
            fields.setdefault("locid", sf.addr_id)
            fields.setdefault("remid", sf.remote_id)
            fields.setdefault("backup", sf.backup)
            if sf.iface:
                fields.setdefault("iface", sf.iface)
        self._events.append(Event(kind, self.now, conn.id, conn.local_token,
                                  conn.remote_token, la, lp, ra, rp, **fields))

    def events(self) -> Iterator[Event]:
        """Pop the :class:`~.events.Event` records queued since the last call."""
        ev = self._events
        while ev:
            yield ev.popleft()

    @property
    def has_output(self) -> bool:
        """Forged packets or events are waiting for the driver."""
        return bool(self._tx or self._events)

    def schedule(self, conn: Connection, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, conn))

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must be called, or ``None``."""
        t = self._timers
        while t and t[0][2].timer != t[0][0]:
            heapq.heappop(t)
        return t[0][0] if t else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        t = self._timers
        while t and t[0][0] <= now:
            when, _, conn = heapq.heappop(t)
            if conn.timer != when:
                continue
            conn.timer = None
            if conn.on_timer(now):
                self.forget(conn)

    def forget(self, conn: Connection) -> None:
        for sf in conn.subflows:
            cur = self.conns.get(sf.key)
            if cur is not None and cur[0] is conn:
                del self.conns[sf.key]
        self.connections.pop(conn.id, None)
        if self.tokens.get(conn.local_token) is conn:
            del self.tokens[conn.local_token]
        conn.timer = None
        self.counters.inc("ConnClosed")

    def register_subflow(self, conn: Connection, sf: Subflow) -> None:
        self.conns[sf.key] = (conn, sf)

    # ------------------------------------------------------------ dispatch
    def outbound(self, buf: bytearray, now: float, csum: int = 0):
        """A packet of the local stack, caught before it leaves (mangle OUTPUT).
        ``csum``: the state of its TCP checksum field (``tcp.CSUM_*``)."""
        self.now = now
        pkt = parse_packet(buf)
        if pkt is None:
            self.counters.inc("PktNotTcp")
            return ACCEPT
        pkt.csum_mode = csum
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        entry = self.conns.get(key)
        flags = pkt.flags
        if entry is None or (entry[0].state in (ConnState.CLOSED, ConnState.FALLBACK)
                             and flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
            if entry is None and self.orphans.table:  # what a killed daemon left
                v = self.orphans.outbound(pkt, now)
                if v is not None:
                    return v
            if flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
                self.counters.inc("PktUnknownConn")
                return ACCEPT
            ports = self.config.ports
            if ports and pkt.dport not in ports:
                return ACCEPT
            if entry is not None:
                self.forget(entry[0])
            return self._new_connection(pkt, now)
        conn, sf = entry
        if sf is not conn.sf0:
            # a proxy-owned subflow's tuple used by a local socket: never touch it
            return ACCEPT
        return conn.on_outbound(pkt, now)

    def inbound(self, buf: bytearray, now: float, csum: int = 0):
        """A packet from the network, caught before conntrack (raw PREROUTING).
        ``csum``: the state of its TCP checksum field (``tcp.CSUM_*``)."""
        self.now = now
        pkt = parse_packet(buf)
        if pkt is None:
            self.counters.inc("PktNotTcp")
            return ACCEPT
        pkt.csum_mode = csum
        entry = self.conns.get((pkt.dst, pkt.dport, pkt.src, pkt.sport))
        if entry is None:
            v = self.orphans.inbound(pkt, now)  # an MPTCP subflow we do not know?
            if v is not None:
                return v
            if self.pm is not None:
                return self.pm.unknown_inbound(pkt, now)
            return ACCEPT
        conn, sf = entry
        return conn.on_inbound(pkt, sf, now)

    def _new_connection(self, pkt: TcpPacket, now: float):
        key = int.from_bytes(self.random_bytes(8), "big")
        conn = Connection(self, pkt, now, key)
        # RFC 8684 §3.1: the token must be unique among our connections
        while conn.local_token in self.tokens:
            conn = Connection(self, pkt, now, int.from_bytes(self.random_bytes(8), "big"))
        self.tokens[conn.local_token] = conn
        self.connections[conn.id] = conn
        self.register_subflow(conn, conn.sf0)
        conn._set_timer(now + self.config.syn_timeout)
        self.emit_event(EventKind.CREATED, conn)
        return conn.on_outbound(pkt, now)

    # ------------------------------------------------- hooks for connections
    def handle_mptcp_options(self, conn: Connection, sf: Subflow, pkt: TcpPacket,
                             others: list, now: float) -> bool:
        """MPTCP options other than DSS on an established subflow. Returns True when
        the segment is pure signalling (to be consumed, paper §3.1)."""
        if self.pm is not None:
            return self.pm.handle_options(conn, sf, pkt, others, now)
        self.counters.inc("OptUnexpected", len(others))
        return not pkt.plen

    def subflow_fin_received(self, conn: Connection, sf: Subflow, now: float) -> None:
        conn.on_subflow_fin(sf, now)

    def subflow_lost(self, conn: Connection, sf: Subflow, now: float) -> None:
        if self.pm is not None:
            self.pm.subflow_lost(conn, sf, now)

    def reset_subflow(self, conn: Connection, sf: Subflow, now: float, reason: int) -> None:
        if self.pm is not None:
            self.pm.reset_subflow(conn, sf, now, reason)

    # ------------------------------------------------------------- control
    def abort_all(self, now: float) -> None:
        """Reset every live MPTCP connection on both sides (daemon shutdown, DESIGN
        §3.11: existing connections end with a clean reset, not a hang)."""
        self.now = now
        for conn in list(self.connections.values()):
            if conn.state == ConnState.ESTABLISHED:
                conn.abort(now)


_ = (ACCEPT, DROP)
