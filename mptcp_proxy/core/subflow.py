"""Per-subflow state: addresses, sequence spaces, SEND/RECV tables, the mappings sent,
timestamps (paper §3.2–3.5; RFC 8684 §3.2–3.3).

Each subflow looks like an independent TCP connection on the wire (paper §3.2). All
sequence numbers held here are relative and unwrapped (see :mod:`.seq`): ``s`` counts
subflow bytes from 0 (the RFC's SSN is ``s + 1``), ``d``/``r`` count data-level bytes of
our direction and the peer's from 0. ``snd_*`` is our sending direction on the subflow,
``rcv_*`` the peer's, as in the kernel's ``tcp_sock``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mapping import MapTable
from .rangeset import RangeSet
from .seq import MASK32, unwrap
from .states import SubflowInput, SubflowState, subflow_next

__all__ = ["Subflow", "SubflowState", "SentMapping"]

INITIAL_WINDOW = 65535  # bytes: a window before scaling is known (RFC 7323 §2.2)


@dataclass(slots=True)
class SentMapping:
    """A DSS mapping we sent on a subflow (RFC 8684 §3.3.1): subflow bytes ``[s, s+n)``
    carry data bytes ``[d, d+n)``; ``data_fin``: the mapping also carries our DATA_FIN
    (its data-level length is ``n + 1``); ``csum``: its DSS checksum once computed (None:
    not yet, or checksums off). Once sent, a mapping is fixed: a retransmission of any of
    its bytes carries it again (a receiver holding part of it drops a different one)."""

    s: int
    d: int
    n: int
    data_fin: bool = False
    csum: int | None = None

    @property
    def end(self) -> int:
        """The subflow byte after the mapping."""
        return self.s + self.n


class Subflow:
    """One TCP subflow of an MPTCP connection, as seen and run by the proxy.

    ``laddr``/``lport``/``raddr``/``rport`` form its wire 4-tuple (addresses as 4 or 16
    bytes, ports as ints); ``key`` is that tuple. ``snd_isn``/``rcv_isn`` are the 32-bit
    ISNs of our side and the peer's. ``send_map`` maps our subflow bytes ``s`` → data
    bytes ``d``; ``rcv_map`` maps the peer's subflow bytes ``s`` → data bytes ``r``;
    ``sent`` lists the :class:`SentMapping` still unacknowledged, in subflow order.
    """

    __slots__ = (
        "index", "addr_id", "remote_id", "laddr", "lport", "raddr", "rport", "key",
        "state", "snd_isn", "rcv_isn", "snd_base", "rcv_base",
        "snd_nxt", "snd_una", "send_map", "rcv_map", "rcv_high", "rcv_acked",
        "sack_ok", "ts_ok", "ts_recent", "ts_off", "snd_wscale",
        "rcv_wscale", "mss", "backup", "peer_backup", "peer_fin", "fin_sent",
        "fin_acked", "last_rx", "last_tx", "rto", "retries", "timer", "nonce",
        "remote_nonce", "join_hmac", "iface", "closed_at",
        "rcv_contig", "rcv_ooo", "est_once", "fill_time", "prio_at", "sent",
        "rcv_wnd_edge", "max_snd_wnd", "last_challenge", "rm_probe_at",
        "passive", "join_echo",
        # path liveness (:mod:`.liveness`)
        "srtt", "rttvar", "rtt_seq", "rtt_t", "tx_at", "answer_at", "rx_data_at", "rx_count",
        "rx_seen", "probe_at", "probes", "stale", "replaces", "syn_at",
    )

    def __init__(self, index: int, laddr: bytes, lport: int, raddr: bytes, rport: int,
                 snd_isn: int, addr_id: int = 0) -> None:
        self.index = index
        self.addr_id = addr_id
        self.remote_id = 0
        self.laddr = laddr
        self.lport = lport
        self.raddr = raddr
        self.rport = rport
        self.key = (laddr, lport, raddr, rport)
        self.state = SubflowState.SYN_SENT
        self.snd_isn = snd_isn & MASK32
        self.snd_base = (snd_isn + 1) & MASK32
        self.rcv_isn = 0
        self.rcv_base = 0
        self.snd_nxt = 0  # next relative subflow byte we will allocate
        self.snd_una = 0  # peer's cumulative subflow ACK (relative)
        self.send_map = MapTable()  # s -> d
        self.rcv_map = MapTable()  # s -> r
        self.rcv_high = 0  # highest relative subflow byte received + 1
        self.rcv_acked = 0  # last subflow ACK we sent (relative)
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0  # peer's last TSval on this subflow
        self.ts_off: int | None = None  # peer TSval -> value shown to the TCP side
        self.snd_wscale = 0  # the window scale we announced on this subflow
        self.rcv_wscale = 0  # the peer's window scale on this subflow
        self.mss = 0  # what we may send per segment here (peer's MSS minus our options)
        self.backup = False  # our backup flag (MP_JOIN B bit, MP_PRIO)
        self.peer_backup = False
        self.peer_fin: int | None = None  # relative s of the peer's subflow FIN
        self.fin_sent: int | None = None  # relative s of our subflow FIN
        self.fin_acked = False
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.rto = 0.2
        self.retries = 0
        self.timer: float | None = None
        self.nonce = 0
        self.remote_nonce = 0
        self.join_hmac = b""
        self.iface = ""
        self.closed_at: float | None = None
        self.rcv_contig = 0  # peer's subflow bytes received without a gap, from 0
        self.rcv_ooo = RangeSet()  # received ranges above a gap
        self.est_once = False  # the handshake completed once
        self.fill_time = -1.0
        self.prio_at: float | None = None  # a deferred MP_PRIO (break before make)
        # (a list: an idle subflow keeps none, and an empty deque costs 600 bytes)
        self.sent: list[SentMapping] = []
        # RFC 5961 acceptance: the right edge of the receive window we advertised
        # (relative), the largest window the peer advertised (bytes, scaled), and when we
        # last answered an unacceptable segment (seconds)
        self.rcv_wnd_edge = INITIAL_WINDOW
        self.max_snd_wnd = INITIAL_WINDOW
        self.last_challenge = -1.0
        self.rm_probe_at: float | None = None  # a REMOVE_ADDR probe is out until then
        self.passive = False  # opened by the peer's MP_JOIN (we are its listener)
        self.join_echo = False  # passive, established: the peer may repeat its third ACK
        self.srtt = 0.0  # smoothed RTT of this path (s; 0: no sample yet)
        self.rttvar = 0.0
        self.rtt_seq: int | None = None  # a timed subflow byte: its ACK is an RTT sample
        self.rtt_t = 0.0
        self.tx_at = 0.0  # our first data segment here since the peer's last answer
        self.answer_at = 0.0  # the peer's last answer here: a pure ACK, or its ACK moved
        self.rx_data_at = 0.0  # the peer's last data segment here
        self.rx_count = 0  # the peer's data segments here
        self.rx_seen = 0  # rx_count when the path was last known alive in silence
        self.probe_at: float | None = None  # an unanswered liveness probe went out then
        self.probes = 0  # unanswered probes in a row
        self.stale = False  # its path shows no progress: not used for new data
        self.replaces: "Subflow | None" = None  # a stale subflow this join takes over from
        self.syn_at = 0.0  # our SYN went out (the join's handshake RTT)

    def __repr__(self) -> str:
        return f"<Subflow {self.index} {self.state.name} {self.iface or ''}>"

    def set_snd_isn(self, isn: int) -> None:
        """Our 32-bit ISN, once known (server role: the TCP side's SYN/ACK sets sf0's)."""
        self.snd_isn = isn & MASK32
        self.snd_base = (isn + 1) & MASK32

    def set_rcv_isn(self, isn: int) -> None:
        self.rcv_isn = isn & MASK32
        self.rcv_base = (isn + 1) & MASK32

    def transition(self, event: SubflowInput) -> None:
        """Move the state machine (:data:`~.states.SUBFLOW_TRANSITIONS`)."""
        self.state = subflow_next(self.state, event)

    @property
    def seq_nxt(self) -> int:
        """Relative sequence of our next segment (our FIN, once sent, counts one)."""
        return self.snd_nxt + (1 if self.fin_sent is not None else 0)

    @property
    def can_send(self) -> bool:
        """Our direction is open: established, or half-closed by the peer only."""
        st = self.state
        return st == SubflowState.ESTABLISHED or (st == SubflowState.CLOSING
                                                  and self.fin_sent is None)

    @property
    def usable(self) -> bool:
        """It may carry new data: our direction open and its path not stale."""
        return self.can_send and not self.stale

    @property
    def alive(self) -> bool:
        """Usable for data (established, not closed or closing)."""
        return self.state == SubflowState.ESTABLISHED

    @property
    def gone(self) -> bool:
        return self.state == SubflowState.CLOSED

    # -- sequence conversions (32-bit wire <-> relative) -------------------------------
    def snd_wire(self, s: int) -> int:
        return (self.snd_base + s) & MASK32

    def rcv_wire(self, s: int) -> int:
        return (self.rcv_base + s) & MASK32

    def snd_rel(self, wire: int) -> int:
        return unwrap(wire, self.snd_base, self.snd_una)

    def rcv_rel(self, wire: int) -> int:
        return unwrap(wire, self.rcv_base, self.rcv_high)

    # -- the peer's bytes that arrived ---------------------------------------------------
    def rcv_add(self, lo: int, hi: int) -> None:
        """Record that the peer's subflow bytes ``[lo, hi)`` arrived."""
        if lo <= self.rcv_contig:
            if hi > self.rcv_contig:
                self.rcv_contig = hi
                ooo = self.rcv_ooo
                if ooo:
                    first = ooo.first()
                    while first is not None and first[0] <= self.rcv_contig:
                        if first[1] > self.rcv_contig:
                            self.rcv_contig = first[1]
                        ooo.discard_below(first[1])
                        first = ooo.first()
            return
        self.rcv_ooo.add(lo, hi)

    def arrived(self) -> list[tuple[int, int]]:
        """Every range of the peer's subflow bytes that arrived, sorted."""
        return [(0, self.rcv_contig), *self.rcv_ooo]
