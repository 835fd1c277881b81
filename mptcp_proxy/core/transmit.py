"""The transmit path: a segment of the TCP side on an established connection goes out on
the subflows (paper §3.3–3.4: TCP → MPTCP). The same in both roles.

Stages, in order:

1. :func:`parse_tcp_segment` — its options: timestamps, SACK, the rest (kept if room).
2. :func:`note_tcp_state` — what it acknowledges (:func:`~.projection.note_tcp_ack`),
   its timestamp and window; what it holds above a hole (:func:`~.projection.held_ranges`).
3. :func:`data_fin` — its FIN is our DATA_FIN (RFC 8684 §3.3.3).
4. data: :func:`~.scheduling.assign` and :func:`~.scheduling.mapped` choose subflows and
   mappings; one piece rewrites the segment in place (:func:`~.emission.rewrite_onto`),
   several go as segments of our own (:func:`~.emission.send_pieces`);
   a pure ACK goes on the subflow it advances most (:func:`~.projection.pick_ack_subflow`).
5. the other subflows whose ACK the segment moves get ACKs of their own
   (:func:`~.emission.ack_subflows`).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import closing, fallback
from .constants import (
    TCP_ACK,
    TCP_FIN,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .emission import ack_subflows, ack_tcp_side, rewrite_onto, send_pieces
from .events import EventKind
from .projection import held_ranges, note_tcp_ack, pick_ack_subflow
from .scheduling import assign, assign_new, mapped
from .seq import MASK32, unwrap
from .tcp import TcpPacket, ip_tos_ttl, read_sack
from .verdict import DROP

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["TcpSegment", "transmit", "parse_tcp_segment", "note_tcp_state", "data_fin"]

_TS_PREFIX = b"\x01\x01\x08\x0a"
_II = struct.Struct("!II")
IP_MAX = 0xFFFF  # the 16-bit IP length field
MAX_OPTION_GROWTH = 40  # bytes our options may add to a TCP side's data segment, at most


class TcpSegment:
    """A segment of the TCP side as the stages see it (``d``: relative data sequence of
    its first byte)."""

    __slots__ = ("pkt", "flags", "plen", "d", "tsval", "r_sacks", "extra", "held", "carrier")

    def __init__(self, pkt: TcpPacket, tsval: int | None, sack_wire, extra: bytes) -> None:
        self.pkt = pkt
        self.flags = pkt.flags
        self.plen = pkt.plen
        self.d = 0
        self.tsval = tsval  # its TSval (None: no timestamps)
        self.r_sacks = sack_wire  # its SACK blocks: 32-bit wire pairs, then relative
        self.extra = extra  # its options other than timestamps, SACK and MPTCP
        self.held: list = []
        self.carrier = None  # the subflow the segment itself goes out on


def transmit(conn: "Connection", pkt: TcpPacket, now: float):
    """A segment of the TCP side on an established connection. Returns the verdict."""
    if conn.fast:
        v = steady(conn, pkt, now)
        if v is not None:
            return v
    seg = parse_tcp_segment(pkt)
    if seg is None:
        conn.counters.inc("PktMalformed")
        return DROP
    note_tcp_state(conn, seg, now)
    infinite = conn.infinite_pending
    fin = seg.flags & TCP_FIN
    seg.d = d = unwrap(pkt.seq, conn.tcp_snd_base, conn.d_nxt)
    new_fin = bool(fin) and data_fin(conn, d + seg.plen)
    if seg.plen:
        verdict = _data(conn, seg, bool(fin), now)
    else:
        sf, dupack = pick_ack_subflow(conn, seg.held)
        ack_subflows(conn, sf, seg.held, now, dupack=dupack)
        seg.carrier = sf
        verdict = rewrite_onto(conn, pkt, sf, d, sf.seq_nxt, 0, bool(fin), seg.tsval,
                               seg.held, seg.extra, now)
    if new_fin:
        closing.data_fin_elsewhere(conn, seg.carrier, now)
    if infinite and not conn.infinite_pending:
        fallback.infinite_sent(conn, now)  # (this segment carried the infinite mapping)
    if not seg.plen and conn.snd_data_fin is not None and conn.rcv_data_fin is not None:
        closing.check_close(conn, now)
    return verdict


def steady(conn: "Connection", pkt: TcpPacket, now: float):
    """The steady state in one pass: in-order new data or a pure ACK of the TCP side on a
    connection that has only its initial subflow, with timestamps and nothing else, no
    FIN, nothing held above a hole, no DSS checksums. The same stages as
    :func:`transmit` with their general cases left out (this guard is worth ~40 % of
    the core's time per segment, ``tools/microbench.py``). None — before changing any
    state but the TCP side's ACK — for any other segment."""
    sf = conn.sf0
    b = pkt.buf
    th = pkt.th
    if (pkt.hl != 32 or pkt.flags & 0xF7 != TCP_ACK or not conn.fully_established
            or conn.snd_data_fin is not None or conn.rcv_data_fin is not None
            or conn.active is not sf or b[th + 20:th + 24] != _TS_PREFIX
            or pkt.seq != (conn.tcp_snd_base + conn.d_nxt) & MASK32):
        return None
    note_tcp_ack(conn, pkt.ack)
    fwd = conn.r_fwd
    if fwd:
        fwd.discard_below(conn.r_ack)
        if len(fwd) > 1 or (fwd and fwd[0][0] > conn.r_ack):
            return None  # the TCP side holds data above a hole
    tsval = conn.tcp_tsval = _II.unpack_from(b, th + 24)[0]
    conn.tcp_win = pkt.win
    plen = pkt.plen
    d = conn.d_nxt
    if not plen:
        return rewrite_onto(conn, pkt, sf, d, sf.snd_nxt, 0, False, tsval, _NONE, b"", now)
    m = assign_new(conn, d, plen)
    return rewrite_onto(conn, pkt, sf, d, m.s, plen, False, tsval, _NONE, b"", now, m)


_NONE: list = []  # nothing held (read only)
# options never carried over from the TCP side's segments: ours to write (MPTCP,
# timestamps and SACK are translated), or meaningful on a SYN only (MSS, window scale,
# SACK permitted: RFC 9293 §3.1, RFC 7323 §2.2, RFC 2018 §2)
_NOT_CARRIED = frozenset((TCPOPT_MPTCP, TCPOPT_TIMESTAMP, TCPOPT_SACK, TCPOPT_MSS,
                          TCPOPT_WINDOW, TCPOPT_SACK_PERM))


def parse_tcp_segment(pkt: TcpPacket) -> TcpSegment | None:
    """The TCP side's options (None: a malformed option list). Its MPTCP options, if any,
    are dropped (the TCP side is plain TCP; the proxy speaks for it), and so are options
    that belong on a SYN only."""
    b = pkt.buf
    th = pkt.th
    if pkt.hl == 32 and b[th + 20:th + 24] == _TS_PREFIX:  # the steady state: NOP NOP TS
        return TcpSegment(pkt, _II.unpack_from(b, th + 24)[0], None, b"")
    opts = pkt.options()
    if opts is None:
        return None
    tsval = None
    sack_wire = None
    extra = b""
    for kind, off, olen in opts:
        if kind == TCPOPT_TIMESTAMP and olen == 10:
            tsval = int.from_bytes(b[off + 2:off + 6], "big")
        elif kind == TCPOPT_SACK:
            sack_wire = read_sack(b, off, olen)
        elif kind not in _NOT_CARRIED:
            extra += bytes(b[off:off + olen])  # (a malformed timestamp or SACK is left out)
    return TcpSegment(pkt, tsval, sack_wire, extra)


def note_tcp_state(conn: "Connection", seg: TcpSegment, now: float) -> None:
    """What the segment says of the TCP side: its TSval and window (echoed on our own
    segments), what it acknowledges and SACKs of the peer's data (relative), and so what
    it holds above a hole (computed once per segment)."""
    pkt = seg.pkt
    conn.ip_tos, conn.ip_ttl = ip_tos_ttl(pkt)  # (an application may change its DSCP)
    if seg.tsval is not None:
        conn.tcp_tsval = seg.tsval
    conn.tcp_win = pkt.win
    if seg.flags & TCP_ACK:
        note_tcp_ack(conn, pkt.ack)
    if seg.r_sacks:
        base = conn.tcp_rcv_base
        seg.r_sacks = [(unwrap(lft, base, conn.r_ack), unwrap(rgt, base, conn.r_ack))
                       for lft, rgt in seg.r_sacks]
    seg.held = held_ranges(conn, seg.r_sacks)


def data_fin(conn: "Connection", dfin: int) -> bool:
    """The TCP side's FIN at relative data sequence ``dfin``: our DATA_FIN (§3.3.3). True
    the first time."""
    if conn.snd_data_fin is not None:
        return False
    conn.snd_data_fin = dfin
    conn.counters.inc("DataFinTx")
    conn.proxy.emit_event(EventKind.DATA_FIN_TX, conn)
    return True


def _data(conn: "Connection", seg: TcpSegment, fin: bool, now: float):
    """A data segment: mapped onto subflows (rewritten in place when it goes whole on one
    subflow under one mapping, else sent as segments of our own)."""
    pkt = seg.pkt
    d = seg.d
    if not fin and d + seg.plen <= conn.d_una:
        # a re-send of bytes the peer already DATA_ACKed (sent before the TCP side saw
        # that DATA_ACK, on its way to it): the peer would drop it as old, and the
        # mapping it first went under may be forgotten already. The TCP side lacks that
        # DATA_ACK (the ACK that carried it was consumed or lost): it gets it from us, as
        # the peer would answer an old segment
        conn.counters.inc("RetransConsumed")
        ack_subflows(conn, None, seg.held, now)
        ack_tcp_side(conn)
        return DROP
    dfin = d + seg.plen if fin else None
    pieces = mapped(assign(conn, d, seg.plen), dfin)
    lone_fin = fin and not pieces[-1].mapping.data_fin  # an older mapping lacks it
    if len(pieces) == 1 and len(pkt.buf) + MAX_OPTION_GROWTH <= IP_MAX:
        p = pieces[0]
        seg.carrier = p.sf
        ack_subflows(conn, p.sf, seg.held, now)
        v = rewrite_onto(conn, pkt, p.sf, p.d, p.s, p.n, fin, seg.tsval, seg.held,
                         seg.extra, now, p.mapping)
        if lone_fin:
            closing.send_data_fin(conn, p.sf, now)
        return v
    send_pieces(conn, pieces, d, pkt.payload, seg.tsval, seg.held, now)
    seg.carrier = pieces[-1].sf
    if lone_fin:
        closing.send_data_fin(conn, pieces[-1].sf, now)
    ack_subflows(conn, None, seg.held, now)
    return DROP
