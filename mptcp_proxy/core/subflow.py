"""Per-subflow state: addresses, sequence spaces, SEND/RECV tables, timestamps.

Paper §3.2 (each subflow looks like an independent TCP connection on the wire)
and §3.3–3.5; RFC 8684 §3.2–3.3. All sequence numbers held here are relative
and unwrapped (see :mod:`.mapping`): ``s`` counts subflow bytes from 0 (the
RFC's SSN is ``s + 1``), ``d``/``r`` count data-level bytes of our and the
peer's direction from 0.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from .mapping import MapTable, Range, merge_ranges
from .seq import MASK32, diff32


class SubflowState(IntEnum):
    """Subflow life cycle as the proxy runs it (paper Fig. 4a, per subflow)."""

    SYN_SENT = 1  # MP_JOIN SYN sent, waiting for SYN/ACK
    PRE_ESTABLISHED = 2  # MP_JOIN third ACK sent, waiting for the peer's fourth ACK
    ESTABLISHED = 3
    CLOSING = 4  # a FIN was sent or received; the other one or its ACK is pending
    CLOSED = 5  # both FINs acknowledged, or reset


def unwrap(wire: int, base: int, ref: int) -> int:
    """Relative, unwrapped value of a 32-bit wire sequence number.

    ``base`` is the wire value of relative 0 (ISN + 1); ``ref`` a relative value
    near the expected result. Result = the integer ≡ wire - base (mod 2**32)
    nearest ``ref``.
    """
    return ref + diff32((wire - base) & MASK32, ref & MASK32)


class Subflow:
    """One TCP subflow of an MPTCP connection, as seen and run by the proxy.

    ``laddr``/``lport``/``raddr``/``rport`` form its wire 4-tuple (bytes addresses,
    int ports). ``snd_isn``/``rcv_isn`` are the 32-bit ISNs of our side and the
    peer's. ``send_map`` maps our subflow bytes ``s`` → data bytes ``d``;
    ``rcv_map`` maps the peer's subflow bytes ``s`` → data bytes ``r``.
    """

    __slots__ = (
        "index", "addr_id", "remote_id", "laddr", "lport", "raddr", "rport", "key",
        "state", "snd_isn", "rcv_isn", "snd_base", "rcv_base",
        "snd_nxt", "snd_una", "send_map", "rcv_map", "rcv_high", "rcv_acked",
        "rcv_wnd_sent", "sack_ok", "ts_ok", "ts_recent", "ts_off", "snd_wscale",
        "rcv_wscale", "mss", "backup", "peer_backup", "peer_fin", "fin_sent",
        "fin_acked", "last_rx", "last_tx", "rto", "retries", "timer", "nonce",
        "remote_nonce", "join_hmac", "iface", "dup_acks", "last_dsack", "closed_at",
        "rcv_contig", "rcv_ooo", "est_once", "fill_time", "prio_at", "maps",
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
        self.rcv_wnd_sent = -1
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0  # peer's last TSval on this subflow
        self.ts_off: int | None = None  # peer TSval -> value shown to the local stack
        self.snd_wscale = 0  # the window scale we announced on this subflow
        self.rcv_wscale = 0  # the peer's window scale on this subflow
        self.mss = 0
        self.backup = False
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
        self.dup_acks = 0
        self.last_dsack = None
        self.closed_at: float | None = None
        self.rcv_contig = 0  # peer's subflow bytes received without a gap, from 0
        self.rcv_ooo: list[list[int]] = []  # received ranges above a gap (merged)
        self.est_once = False  # the handshake completed once
        self.fill_time = -1.0
        self.prio_at: float | None = None  # a deferred MP_PRIO (break before make)
        # the DSS mappings we sent, [s, d, n, data_fin, checksum], in subflow order
        self.maps: deque[list] = deque()

    def set_rcv_isn(self, isn: int) -> None:
        self.rcv_isn = isn & MASK32
        self.rcv_base = (isn + 1) & MASK32

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
    def alive(self) -> bool:
        """Usable for data (established, not closed or closing)."""
        return self.state == SubflowState.ESTABLISHED

    # -- sequence conversions ------------------------------------------------
    def snd_wire(self, s: int) -> int:
        return (self.snd_base + s) & MASK32

    def rcv_wire(self, s: int) -> int:
        return (self.rcv_base + s) & MASK32

    def snd_rel(self, wire: int) -> int:
        return unwrap(wire, self.snd_base, self.snd_una)

    def rcv_rel(self, wire: int) -> int:
        return unwrap(wire, self.rcv_base, self.rcv_high)

    # -- SEND side -------------------------------------------------------------
    def find_sent(self, d: int, limit: int) -> tuple[int, int] | None:
        """Where data byte ``d`` was sent on this subflow: ``(s, n)`` with ``n`` ≤
        ``limit`` contiguous bytes mapped linearly from there, or ``None``."""
        for sa, da, n in reversed(self.send_map.entries):
            if da <= d < da + n:
                return sa + (d - da), min(limit, da + n - d)
        return None

    # -- the mappings sent (a retransmission must carry its original one) ------
    def map_add(self, s: int, d: int, n: int, fin: bool = False,
                csum: int | None = None) -> list:
        """Record a DSS mapping sent for subflow bytes ``[s, s+n)`` ↔ data ``[d, d+n)``.

        RFC 8684 §3.3.1: a mapping, once sent, is fixed; a receiver holding part of it
        must see the same mapping on any retransmission of its bytes (Linux counts a
        different one covering the segment as DSSNotMatching and falls back or resets).
        The local stack re-segments retransmissions freely (and with GSO one mapping
        covers a whole super-packet), so the proxy keeps what it sent."""
        e = [s, d, n, fin, csum]
        maps = self.maps
        if not maps or maps[-1][0] < s:
            maps.append(e)
        else:
            i = len(maps)
            while i and maps[i - 1][0] > s:
                i -= 1
            maps.insert(i, e)
        return e

    def maps_over(self, s: int, n: int) -> list[list]:
        """The recorded mappings overlapping subflow bytes ``[s, s+n)``, in order."""
        maps = self.maps
        if not maps or maps[-1][0] + maps[-1][2] <= s:
            return []
        end = s + n
        return [e for e in maps if e[0] < end and e[0] + e[2] > s]

    def maps_prune(self) -> None:
        """Forget the mappings of subflow bytes the peer has acknowledged."""
        maps = self.maps
        una = self.snd_una
        while maps and maps[0][0] + maps[0][2] <= una:
            maps.popleft()

    # -- RECV side / ACK projection towards the peer -------------------------
    def rcv_add(self, lo: int, hi: int) -> None:
        """Record that the peer's subflow bytes ``[lo, hi)`` arrived."""
        if lo <= self.rcv_contig:
            if hi > self.rcv_contig:
                self.rcv_contig = hi
                ooo = self.rcv_ooo
                while ooo and ooo[0][0] <= self.rcv_contig:
                    if ooo[0][1] > self.rcv_contig:
                        self.rcv_contig = ooo[0][1]
                    del ooo[0]
            return
        ooo = self.rcv_ooo
        for r in ooo:
            if r[0] <= hi and lo <= r[1]:
                r[0] = min(r[0], lo)
                r[1] = max(r[1], hi)
                break
        else:
            ooo.append([lo, hi])
        if len(ooo) > 1:
            merged = merge_ranges([tuple(r) for r in ooo])
            self.rcv_ooo = [list(r) for r in merged[:64]]

    def project_ack(self, r_ack: int, held: list[Range]) -> tuple[int, list[Range]]:
        """Subflow ACK and SACK blocks (relative ``s``) for the peer's data on this
        subflow (paper §3.4–3.5, TCP → MPTCP direction).

        ``r_ack`` is what the local stack acknowledged (data level); ``held`` are
        data ranges above it that the local stack holds (forwarded to it, or SACKed),
        sorted and merged (as :meth:`Connection._held` returns them).
        The ACK covers subflow bytes whose data is acknowledged or held, in subflow
        order; it never goes below the last ACK sent (``rcv_acked``) nor beyond what
        arrived (``rcv_high``), and covers the peer's subflow FIN once all data before
        it is covered. The SACK blocks (if SACK is on, and only when the local stack holds
        data above a data-level hole or this subflow has one: otherwise there is no loss
        for them to tell about) are the arrived subflow bytes above the ACK whose data the
        local stack acknowledged or holds.
        """
        s = self.rcv_acked
        ents = self.rcv_map.entries
        for sa, ra, n in ents:
            if sa + n <= s:
                continue
            if sa > s:
                break
            d0 = ra + (s - sa)
            end = ra + n
            hi = r_ack
            if d0 >= hi:
                hi = d0
            # extend through held ranges starting at or below the current point
            if held:
                for lo_h, hi_h in held:
                    if lo_h <= hi < hi_h:
                        hi = hi_h
            if hi <= d0:
                break
            adv = min(end, hi) - d0
            s += adv
            if s < sa + n:
                break
        if s > self.rcv_contig:
            s = self.rcv_contig  # never acknowledge subflow bytes that did not arrive
        if self.peer_fin is not None and s >= self.peer_fin:
            s = self.peer_fin + 1
        sacks: list[Range] = []
        if self.sack_ok and (held or self.rcv_ooo) and s < self.rcv_high:
            # data the local stack acknowledged counts too: a peer reinjecting old data
            # on this subflow must see what arrived above a loss, or it recovers one
            # segment per round trip
            acked_or_held = [(-(1 << 64), r_ack), *held]
            for sa, ra, n in ents:
                if sa + n <= s:
                    continue
                for lo, hi in acked_or_held:
                    a = max(lo, ra)
                    b = min(hi, ra + n)
                    if a < b:
                        sl = sa + (a - ra)
                        sh = min(sa + (b - ra), self.rcv_high)
                        if sh > s:
                            sacks.append((max(sl, s), sh))
            got = [(0, self.rcv_contig)] + [tuple(r) for r in self.rcv_ooo]
            sacks = [(max(lo, g0), min(hi, g1)) for lo, hi in merge_ranges(sacks)
                     for g0, g1 in got if lo < g1 and g0 < hi]
            sacks = [x for x in sacks if x[1] > x[0]]
        return s, sacks
