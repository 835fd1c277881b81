"""The sans-I/O proxy: every connection, the dispatch of packets by 4-tuple, timers, and
the packets the proxy forges (after aioquic's ``QuicConnection``).

Three inputs, pulled outputs::

    verdict = proxy.outbound(buf, now, csum)  # from the TCP side toward the MPTCP side
    verdict = proxy.inbound(buf, now, csum)   # from the MPTCP side (the network)
    proxy.handle_timer(now)                   # when proxy.get_timer() is due
    for pkt in proxy.packets_to_send(): ...   # forged segments, whole IP packets
    for ev in proxy.events(): ...             # events.Event records

The driver says which way a packet goes. On an end host, outbound is what the local stack
sends (mangle OUTPUT) and inbound what arrives (raw PREROUTING), whether the local socket
is the client (client role) or a listener of ``serve`` (server role); on a router in
anchor mode, inbound is what arrives on a managed interface (from the MPTCP clients) and
outbound what comes from the servers.

``buf`` is a ``bytearray`` the core may rewrite in place; the verdict
(:class:`~.verdict.Verdict`) says whether to pass it as it came, drop it, or pass it as
rewritten — a rewritten buffer is never reported unchanged. ``csum`` is the state of its
TCP checksum field as the queue reports it (``tcp.CSUM_*``). Time is ``now`` in seconds
(any monotonic origin); randomness comes from the ``random_bytes`` callable. Nothing here
touches a socket, clock or RNG.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import closing, crypto, handshake_server, joins_listener
from .connection import Connection
from .constants import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .counters import Counters
from .events import Event, EventKind
from .options import MpCapable, MpJoinSyn
from .orphans import Orphans, has_mptcp_option
from .policy import PathManager
from .states import ConnInput, ConnState
from .subflow import Subflow
from .tcp import (
    CSUM_OK,
    CSUM_UNVERIFIED,
    PacketTooBig,
    TcpPacket,
    parse_packet,
    peek_tuple,
)
from .verdict import ACCEPT, DROP, MANGLE, Verdict

__all__ = ["Proxy", "ProxyConfig", "Verdict", "ACCEPT", "DROP", "MANGLE"]

EVENT_BACKLOG = 4096  # events kept for the driver (oldest dropped first)
ANSWER_INTERVAL = 0.5  # s between answers to unacceptable pure ACKs per subflow (Linux
# tcp_invalid_ratelimit)
CHALLENGE_ACKS_PER_S = 1000  # challenge ACKs in all (Linux tcp_challenge_ack_limit)
PASSED_MAX = 4096  # 4-tuples of connections an anchor stepped aside for, remembered


@dataclass
class ProxyConfig:
    """Settings of the sans-I/O core.

    ``ports``: destination ports to convert (empty = all); ``client``: convert the TCP
    side's outgoing connections (client role); ``serve``: local listening ports whose
    incoming MPTCP connections are converted (server role, ``--serve``); ``anchor``: on a
    router, convert every incoming MPTCP connection (to ``ports``) whose server answers
    without MPTCP, and step aside for the others; ``passed_linger``: seconds the 4-tuple
    of such a connection is remembered (shown, never touched); ``checksum``: ask the peer for
    DSS checksums (MP_CAPABLE flag A, RFC 8684 §3.3); ``mss_overhead``: bytes subtracted
    from the peer's MSS shown to the TCP side so that our added options fit the MTU
    (MP_CAPABLE with data-level length, or DSS with DATA_ACK and 64-bit mapping, each 24
    bytes with padding); ``linger``: seconds a closed connection is remembered to absorb
    late segments; ``syn_timeout``: seconds a connection may stay in SYN_SENT;
    ``syn_mpc_retries``: SYN retransmissions that still carry MP_CAPABLE; ``fin_rto``:
    seconds before our subflow FIN is retransmitted (doubled each time, ``fin_retries``
    times); ``idle_timeout``: seconds without a segment of the TCP side after which it is
    probed (an ACK below its window, which a live socket answers; 0: never), at most
    ``idle_probes`` times ``idle_interval`` seconds apart, before the connection is reset
    on both sides (its socket vanished without a word: the state must not stay forever);
    ``max_connections``: connections tracked at once, ``max_syn_sent``: of
    them half open, in SYN_SENT or SYN_RCVD (0 = no limit; the daemon's
    ``--max-connections``/``--max-syn-sent``).
    ``worker`` of ``workers`` (the daemon's ``--workers``, docs/workers.md): this proxy's
    connection ids are ``worker + 1 + k * workers`` and its tokens are ``worker`` modulo
    ``workers``, so that ids and tokens name their owner among the workers.
    """

    ports: frozenset[int] = field(default_factory=frozenset)
    client: bool = True
    serve: frozenset[int] = field(default_factory=frozenset)
    anchor: bool = False
    passed_linger: float = 60.0
    checksum: bool = False
    mss_overhead: int = 24
    linger: float = 10.0
    syn_timeout: float = 75.0
    syn_mpc_retries: int = 2
    fin_rto: float = 0.3
    fin_retries: int = 6
    idle_timeout: float = 600.0
    idle_probes: int = 3
    idle_interval: float = 10.0
    max_connections: int = 65536
    max_syn_sent: int = 8192
    worker: int = 0
    workers: int = 1


class Proxy:
    """All connections of one proxy instance and the path manager they share."""

    def __init__(self, config: ProxyConfig | None = None,
                 random_bytes: Callable[[int], bytes] | None = None,
                 pm: PathManager | None = None) -> None:
        if random_bytes is None:
            raise ValueError("random_bytes is required (the core has no RNG of its own)")
        self.config = config or ProxyConfig()
        self.random_bytes = random_bytes
        self.counters = Counters()
        self.conns: dict[tuple, tuple[Connection, Subflow]] = {}  # wire 4-tuple -> owner
        self.connections: dict[int, Connection] = {}
        self.tokens: dict[int, Connection] = {}  # our tokens (unique, RFC 8684 §3.2)
        self.passed: dict[tuple, float] = {}  # anchor: 4-tuples stepped aside for -> when
        self.now = 0.0
        self._tx: list[bytearray] = []
        self._timers: list[tuple[float, int, Connection]] = []
        self._events: deque[Event] = deque(maxlen=EVENT_BACKLOG)
        self._next_id = self.config.worker + 1
        self._seq = 0
        self._challenge_second = -1
        self._challenges = 0
        self.syn_sent = 0  # half-open connections, SYN_SENT or SYN_RCVD (max_syn_sent)
        self.pm = pm if pm is not None else PathManager()
        self.pm.attach(self)
        self.orphans = Orphans(self)  # connections of a killed daemon (orphans.py)

    # -- services for the connections -------------------------------------------------------
    def next_conn_id(self) -> int:
        i = self._next_id
        self._next_id += self.config.workers
        return i

    def random32(self) -> int:
        """A random 32-bit value (nonces, ISNs)."""
        return int.from_bytes(self.random_bytes(4), "big")

    def send(self, pkt: bytearray) -> None:
        """Queue a forged packet (a whole IP packet) for the driver."""
        self._tx.append(pkt)

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

    def may_answer(self, sf: Subflow, now: float, challenge: bool, data: bool) -> bool:
        """Whether to answer an unacceptable segment on ``sf`` with an ACK (RFC 5961 §3–5
        rate limits, as Linux): a data segment always; a pure ACK, SYN or RST at most once
        per :data:`ANSWER_INTERVAL` per subflow; challenge ACKs also at most
        :data:`CHALLENGE_ACKS_PER_S` per second in all."""
        if data and not challenge:
            return True
        if now - sf.last_challenge < ANSWER_INTERVAL:
            return False
        if challenge:
            second = int(now)
            if second != self._challenge_second:
                self._challenge_second = second
                self._challenges = 0
            if self._challenges >= CHALLENGE_ACKS_PER_S:
                return False
            self._challenges += 1
        sf.last_challenge = now
        return True

    def schedule(self, conn: Connection, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, conn))

    def register_subflow(self, conn: Connection, sf: Subflow) -> None:
        self.conns[sf.key] = (conn, sf)

    def unregister_subflow(self, conn: Connection, sf: Subflow) -> None:
        cur = self.conns.get(sf.key)
        if cur is not None and cur[1] is sf:
            del self.conns[sf.key]

    def established(self) -> list[Connection]:
        """The connections in MPTCP use (a list: safe to change them while iterating)."""
        return [c for c in self.connections.values() if c.state == ConnState.ESTABLISHED]

    # -- outputs for the driver -----------------------------------------------------------
    def packets_to_send(self) -> list[bytearray]:
        """Take the forged packets queued since the last call."""
        tx = self._tx
        self._tx = []
        return tx

    def events(self) -> Iterator[Event]:
        """Pop the :class:`~.events.Event` records queued since the last call."""
        ev = self._events
        while ev:
            yield ev.popleft()

    @property
    def has_output(self) -> bool:
        """Forged packets or events are waiting for the driver."""
        return bool(self._tx or self._events)

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must be called, or None."""
        t = self._timers
        while t and t[0][2].timer != t[0][0]:
            heapq.heappop(t)
        return t[0][0] if t else None

    def handle_timer(self, now: float) -> None:
        """Run the timers due at ``now``."""
        self.now = now
        t = self._timers
        while t and t[0][0] <= now:
            when, _, conn = heapq.heappop(t)
            if conn.timer != when:
                continue
            conn.timer = None
            if conn.on_timer(now):
                self.forget(conn)

    def forget(self, conn: Connection, closed: bool = True) -> None:
        """Drop every trace of ``conn`` (``closed``: it ran and ended, counted)."""
        if conn.state != ConnState.GONE:
            conn.transition(ConnInput.EXPIRED)  # (keeps the half-open count)
        for sf in conn.subflows:
            self.unregister_subflow(conn, sf)
        self.connections.pop(conn.id, None)
        if self.tokens.get(conn.local_token) is conn:
            del self.tokens[conn.local_token]
        conn.timer = None
        if closed:
            self.counters.inc("ConnClosed")

    def step_aside(self, conn: Connection, now: float) -> None:
        """Anchor: the server answered with MP_CAPABLE itself, so the connection is MPTCP
        end to end with both ends' keys; nothing of it is kept but its 4-tuple, for a
        while (``passed_linger``), to show it."""
        conn.transition(ConnInput.STEP_ASIDE)
        self.counters.inc("AnchorStepAside")
        self.emit_event(EventKind.PASSED, conn)
        self.forget(conn, closed=False)
        passed = self.passed
        passed.pop(conn.key, None)
        passed[conn.key] = now
        while passed and (len(passed) > PASSED_MAX or
                          now - next(iter(passed.values())) > self.config.passed_linger):
            del passed[next(iter(passed))]

    def passed_through(self, now: float) -> list[tuple[tuple, float]]:
        """The 4-tuples (as the server sends) an anchor stepped aside for within
        ``passed_linger`` seconds, with the time it did."""
        return [(k, t) for k, t in self.passed.items()
                if now - t <= self.config.passed_linger]

    # -- dispatch ---------------------------------------------------------------------------
    def outbound(self, buf: bytearray, now: float, csum: int = CSUM_OK) -> Verdict:
        """A packet of the TCP side, caught before it leaves (mangle OUTPUT)."""
        self.now = now
        pkt = parse_packet(buf)
        if pkt is None:
            return self._unparsable(buf, outbound=True)
        pkt.csum_mode = csum
        try:
            v = self._outbound(pkt, now)
        except PacketTooBig:
            return self._too_big()
        return _checked(pkt, v)

    def _outbound(self, pkt: TcpPacket, now: float) -> Verdict:
        entry = self.conns.get((pkt.src, pkt.sport, pkt.dst, pkt.dport))
        flags = pkt.flags
        if entry is None or (entry[0].state in (ConnState.CLOSED, ConnState.FALLBACK)
                             and flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
            if entry is None and self.orphans.table:  # what a killed daemon left
                v = self.orphans.outbound(pkt, now)
                if v is not None:
                    return v
            # (a SYN with FIN is no connection request: Linux drops it in LISTEN)
            if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN \
                    or not self.config.client:
                self.counters.inc("PktUnknownConn")
                return ACCEPT
            ports = self.config.ports
            if ports and pkt.dport not in ports:
                return ACCEPT
            if has_mptcp_option(pkt):  # a native MPTCP socket: it speaks for itself
                self.counters.inc("PktAlreadyMptcp")
                self.orphans.note_native((pkt.src, pkt.sport, pkt.dst, pkt.dport), now)
                return ACCEPT
            if entry is not None:
                self.forget(entry[0])
            return self._new_connection(pkt, now)
        conn, sf = entry
        if sf is not conn.sf0:
            return ACCEPT  # a subflow tuple of ours used by a local socket: not ours to touch
        return conn.on_outbound(pkt, now)

    def inbound(self, buf: bytearray, now: float, csum: int = CSUM_UNVERIFIED) -> Verdict:
        """A packet from the network, caught before conntrack (raw PREROUTING). Its
        checksum counts as unverified unless ``csum`` says otherwise."""
        self.now = now
        pkt = parse_packet(buf)
        if pkt is None:
            return self._unparsable(buf, outbound=False)
        pkt.csum_mode = csum
        entry = self.conns.get((pkt.dst, pkt.dport, pkt.src, pkt.sport))
        if entry is None:
            return _checked(pkt, self._unknown_inbound(pkt, now))
        conn, sf = entry
        if pkt.flags & TCP_SYN and conn.role != "client" and sf is conn.sf0 \
                and pkt.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN \
                and conn.state in (ConnState.CLOSED, ConnState.FALLBACK) \
                and pkt.checksum_ok():
            self.forget(conn)  # a new connection on the 4-tuple of one that ended
            return _checked(pkt, self._unknown_inbound(pkt, now))
        try:
            v = conn.on_inbound(pkt, sf, now)
        except PacketTooBig:
            return self._too_big()
        return _checked(pkt, v)

    def _unparsable(self, buf: bytearray, outbound: bool) -> Verdict:
        """A packet the core cannot rewrite (not TCP, fragmented, IPv6 extension headers,
        BIG TCP, malformed): passed on untouched, unless it belongs to a connection the
        proxy converts — passing it would put unconverted bytes on that connection's
        wire or TCP side, so it is dropped (the sender retransmits) and counted."""
        t = peek_tuple(buf)
        if t is not None:
            src, sport, dst, dport = t
            key = (src, sport, dst, dport) if outbound else (dst, dport, src, sport)
            entry = self.conns.get(key)
            if entry is not None and entry[0].state == ConnState.ESTABLISHED:
                self.counters.inc("PktUnconvertible")
                return DROP
        self.counters.inc("PktNotTcp")
        return ACCEPT

    def _too_big(self) -> Verdict:
        """A rewrite would overflow the IP length (a segment near 64 KB): dropped, never
        passed unconverted; the sender's retransmission comes in smaller pieces (GSO) or
        the TCP side re-segments."""
        self.counters.inc("PktTooBig")
        return DROP

    def _new_connection(self, pkt: TcpPacket, now: float, role: str = "client") -> Verdict:
        """A connection the proxy takes on: the TCP side's SYN (client role) or the peer's
        MP_CAPABLE SYN (server role, watched by an anchor until the server answers); left
        as plain TCP over the limits of ``max_connections`` and ``max_syn_sent``."""
        cfg = self.config
        if cfg.max_connections and len(self.connections) >= cfg.max_connections:
            self.counters.inc("ConnLimit")
            return ACCEPT  # left as plain TCP: the state stays bounded
        if cfg.max_syn_sent and self.syn_sent >= cfg.max_syn_sent:
            self.counters.inc("SynSentLimit")
            return ACCEPT
        anchor = role == "server" and cfg.anchor
        conn = Connection(self, pkt, now, self._new_key(), role, anchor)
        self.tokens[conn.local_token] = conn
        self.connections[conn.id] = conn
        self.syn_sent += 1
        self.register_subflow(conn, conn.sf0)
        conn.set_timer(now + self.config.syn_timeout)
        self.emit_event(EventKind.CREATED, conn)
        if role == "client":
            return conn.on_outbound(pkt, now)
        if anchor:
            self.counters.inc("AnchorWatched")
        return handshake_server.accept_syn(conn, pkt)

    def _unknown_inbound(self, pkt: TcpPacket, now: float) -> Verdict:
        """A segment from the MPTCP side at no known 4-tuple: an MP_CAPABLE SYN the server
        role takes on, an MP_JOIN SYN (the listener side of joins), or the path
        manager's to judge."""
        cfg = self.config
        flags = pkt.flags
        if flags & TCP_SYN and flags & (TCP_RST | TCP_FIN) and (cfg.serve or cfg.anchor):
            self.counters.inc("PktUnknownConn")  # no connection request: nothing to take on
            return ACCEPT
        if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN and \
                (cfg.serve or cfg.anchor or self.tokens):
            if not pkt.checksum_ok():  # no state from it (the receiver's TCP drops it too)
                self.counters.inc("PktBadChecksum")
                return DROP
            o = handshake_server.syn_option(pkt)
            if isinstance(o, MpJoinSyn) and o.token in self.tokens:
                return joins_listener.join_syn(self, pkt, o, now)
            if isinstance(o, MpCapable) and (pkt.dport in cfg.serve or cfg.anchor and (
                    not cfg.ports or pkt.dport in cfg.ports)):
                return self._new_connection(pkt, now, "server")
            if isinstance(o, MpJoinSyn):  # another endpoint's token: not ours to take
                if not cfg.anchor:
                    self.orphans.note_native((pkt.dst, pkt.dport, pkt.src, pkt.sport), now)
                return self.pm.unknown_join(pkt, now)
        if not cfg.anchor:  # (an anchor's forwarded traffic has no local socket to ask)
            v = self.orphans.inbound(pkt, now)  # an MPTCP subflow a killed daemon left?
            if v is not None:
                return v
        return self.pm.unknown_inbound(pkt, now)

    def _new_key(self) -> int:
        """A random 64-bit key whose token is unique (RFC 8684 §3.1) and, with workers,
        names this worker (``token % workers == worker``: ~``workers`` draws)."""
        cfg = self.config
        while True:
            key = int.from_bytes(self.random_bytes(8), "big")
            token = crypto.token_of(key)
            if token not in self.tokens and token % cfg.workers == cfg.worker:
                return key

    def contain_failure(self, buf: bytes | bytearray, outbound: bool, now: float) -> Verdict:
        """After handling ``buf`` raised (a bug): the connection it belongs to is reset on
        both sides (its state can no longer be trusted) and the packet is dropped — never
        passed as if nothing happened. The driver calls this, catching the exception."""
        self.counters.inc("InternalErrors")
        t = peek_tuple(buf)
        if t is None:
            return DROP
        src, sport, dst, dport = t
        entry = self.conns.get((src, sport, dst, dport) if outbound else
                               (dst, dport, src, sport))
        if entry is not None and entry[0].state == ConnState.ESTABLISHED:
            self.counters.inc("ConnAbortedOnError")
            closing.abort(entry[0], now)
        return DROP

    # -- control ----------------------------------------------------------------------------
    def abort_all(self, now: float) -> None:
        """Reset every live MPTCP connection on both sides (daemon shutdown: existing
        connections end with a clean reset, not a hang)."""
        self.now = now
        for conn in self.established():
            closing.abort(conn, now)


def _checked(pkt: TcpPacket, verdict: Verdict) -> Verdict:
    """The verdict contract (verdict.py): a buffer that was changed is never passed as
    unchanged (its checksums are completed and it goes as rewritten)."""
    if verdict is ACCEPT and pkt.modified:
        return pkt.finish()
    return verdict
