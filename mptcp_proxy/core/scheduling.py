"""Scheduling: which subflow, which subflow sequence numbers and which DSS mapping carry
the TCP side's bytes (paper §3.3; RFC 8684 §3.3.1).

New data goes to the active subflow, contiguous in its sequence space; a retransmission
goes where the original went while that subflow lives, else to the active one (so
mappings may be non-monotonic: the SEND tables say where each byte went). A mapping, once
sent, is fixed: a retransmission of any of its bytes carries it again, whatever way the
TCP side re-segments (with GSO one mapping covers a whole super-packet). The same in both
roles. Pure bookkeeping: nothing here sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .liveness import forget_timing, note_new_data
from .states import SubflowState
from .subflow import SentMapping, Subflow

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Piece", "assign", "pick_sender", "mapped", "find_sent", "sentmaps_over",
           "record_mapping", "forget_acked_mappings", "segment_size"]

MIN_SEGMENT = 500  # bytes: the least payload per forged segment
DEFAULT_MSS = 536  # bytes: RFC 9293 §3.7.1, the send MSS without an MSS option
# bytes: the most, a jumbo frame's payload (9,000-byte MTU less the IPv6 header and a TCP
# header with options): no link the proxy serves carries more, so a larger MSS announced
# by either side is not believed for segments we forge
MAX_SEGMENT = 9000 - 40 - 60
SEND_BURST = 16384  # bytes a sender may be ahead of another before new data moves


class Piece(NamedTuple):
    """Data bytes ``[d, d+n)`` carried on ``sf`` at relative subflow sequence ``s``, under
    ``mapping`` (None until :func:`mapped` chose it)."""

    sf: Subflow
    d: int
    s: int
    n: int
    mapping: SentMapping | None = None


def assign(conn: "Connection", d: int, n: int) -> list[Piece]:
    """Choose subflows and subflow sequence numbers for data bytes ``[d, d+n)``, updating
    the SEND tables and ``d_nxt``.

    New data that starts above ``d_nxt`` (the bytes between were never seen: the TCP side
    sent them while no subflow could carry them and they were dropped) is mapped where it
    is, with no subflow space reserved for the skipped bytes: they get a mapping of their
    own when re-sent. A reserved gap would be a subflow hole that only the very same
    bytes could fill; re-sent otherwise (or never, once the peer had them by another
    path) the peer's subflow would wait at the hole for good."""
    pieces: list[Piece] = []
    cur = d
    end = d + n
    while cur < end:
        if cur >= conn.d_nxt:
            pieces.append(_new_data(conn, pick_sender(conn), cur, end - cur))
            conn.d_nxt = end
            break
        if cur == d:
            forget_timing(conn)  # a retransmission (Karn)
        piece, lim = _where_sent(conn, cur, min(end, conn.d_nxt) - cur)
        if piece is None:
            piece = _new_data(conn, conn.active, cur, lim)
        _append(pieces, piece)
        cur += piece.n
    return pieces


def pick_sender(conn: "Connection") -> Subflow:
    """The subflow for the TCP side's next new data: the active one, or with several
    subflows sending at once (``--subflows active``, paper §5.5) the one with the fewest
    bytes in flight — the shortest queue: a slower path keeps its bytes in flight longer
    and so gets fewer new ones; the TCP side's one congestion window covers the sum."""
    senders = conn.proxy.pm.senders(conn)
    if len(senders) < 2:
        return conn.active
    best = min(senders, key=lambda sf: (sf.snd_nxt - sf.snd_una, sf.index))
    cur = conn.paths.sender
    # in bursts (as Linux's scheduler): the data level then holds long runs from each
    # path, and the peer's SACK blocks on one subflow map to few data ranges
    if cur in senders and (cur.snd_nxt - cur.snd_una) - (best.snd_nxt - best.snd_una) \
            < SEND_BURST:
        return cur
    conn.paths.sender = best
    return best


def _new_data(conn: "Connection", sf: Subflow, d: int, n: int) -> Piece:
    s0 = sf.snd_nxt
    sf.send_map.add(s0, d, n)
    sf.snd_nxt = s0 + n
    _watch(conn, sf, s0, s0 + n)
    return Piece(sf, d, s0, n)


def _watch(conn: "Connection", sf: Subflow, s: int, end: int) -> None:
    """New subflow bytes go out: one may be timed (RTT, :mod:`.liveness`)."""
    note_new_data(sf, s, end, conn.proxy.now)


def assign_new(conn: "Connection", d: int, n: int) -> SentMapping:
    """In-order new data ``[d, d+n)`` (``d == d_nxt``) on the active subflow, under a new
    mapping of exactly these bytes: :func:`assign` and :func:`mapped` for the one case
    of the steady state."""
    sf = conn.active
    s0 = sf.snd_nxt
    sf.send_map.add(s0, d, n)
    sf.snd_nxt = s0 + n
    conn.d_nxt = d + n
    _watch(conn, sf, s0, s0 + n)
    m = SentMapping(s0, d, n)
    sf.sent.append(m)  # (above every mapping sent: in subflow order)
    return m


def _where_sent(conn: "Connection", d: int, limit: int) -> tuple[Piece | None, int]:
    """A retransmission: the live subflow and place where data byte ``d`` went (or None),
    and how many bytes from ``d`` that answer covers.

    Subflow bytes the peer already acknowledged at the subflow level but not at the data
    level (a data-level hole below them, or it pruned them) would be dropped unread as
    old if re-sent at their old place: they go as new subflow data instead (as Linux's
    data-level retransmission does)."""
    for sf in conn.subflows:
        if sf.state != SubflowState.ESTABLISHED and sf.state != SubflowState.CLOSING:
            continue
        f = find_sent(sf, d, limit)
        if f is None:
            continue
        if f[0] + f[1] <= sf.snd_una and d >= conn.d_una:
            limit = f[1]
            continue
        return Piece(sf, d, f[0], f[1]), f[1]
    return None, limit


def _append(pieces: list[Piece], p: Piece) -> None:
    """Append ``p``, merging it with the last piece when contiguous on the same subflow."""
    if pieces:
        last = pieces[-1]
        if last.sf is p.sf and last.s + last.n == p.s:
            pieces[-1] = last._replace(n=last.n + p.n)
            return
    pieces.append(p)


def find_sent(sf: Subflow, d: int, limit: int) -> tuple[int, int] | None:
    """Where data byte ``d`` was sent on ``sf``: ``(s, n)`` with ``n`` ≤ ``limit``
    contiguous bytes mapped linearly from there, or None."""
    for sa, da, n in reversed(sf.send_map.entries):
        if da <= d < da + n:
            return sa + (d - da), min(limit, da + n - d)
    return None


def mapped(pieces: list[Piece], data_fin_d: int | None) -> list[Piece]:
    """Each piece cut at the boundaries of the mappings already sent for its subflow
    bytes, with its :class:`SentMapping`: a retransmission keeps its original mapping;
    bytes never sent get a new one, exactly their piece (carrying our DATA_FIN when it
    ends at ``data_fin_d``)."""
    out = []
    for p in pieces:
        sf, d, s, n = p.sf, p.d, p.s, p.n
        end = s + n
        cur = s
        for m in sentmaps_over(sf, s, n):
            if m.s > cur:  # bytes whose mapping was forgotten: a new one
                k = m.s - cur
                out.append(Piece(sf, d + (cur - s), cur, k,
                                 record_mapping(sf, cur, d + (cur - s), k)))
                cur += k
            hi = min(end, m.end)
            out.append(Piece(sf, d + (cur - s), cur, hi - cur, m))
            cur = hi
        if cur < end:
            k = end - cur
            dd = d + (cur - s)
            out.append(Piece(sf, dd, cur, k, record_mapping(sf, cur, dd, k,
                                                             dd + k == data_fin_d)))
    return out


def record_mapping(sf: Subflow, s: int, d: int, n: int, data_fin: bool = False) -> SentMapping:
    """Remember a mapping sent on ``sf`` (kept in subflow order until acknowledged)."""
    m = SentMapping(s, d, n, data_fin)
    sent = sf.sent
    if not sent or sent[-1].s < s:
        sent.append(m)
    else:
        i = len(sent)
        while i and sent[i - 1].s > s:
            i -= 1
        sent.insert(i, m)
    return m


def sentmaps_over(sf: Subflow, s: int, n: int) -> list[SentMapping]:
    """The remembered mappings overlapping subflow bytes ``[s, s+n)``, in order."""
    sent = sf.sent
    if not sent or sent[-1].end <= s:
        return []
    end = s + n
    return [m for m in sent if m.s < end and m.end > s]


def forget_acked_mappings(sf: Subflow) -> None:
    """Forget the mappings of subflow bytes the peer acknowledged."""
    sent = sf.sent
    una = sf.snd_una
    k = 0
    for m in sent:
        if m.s + m.n > una:
            break
        k += 1
    if k:
        del sent[:k]


def segment_size(conn: "Connection", sf: Subflow) -> int:
    """Payload bytes per segment we forge on ``sf``: the path's MSS (already lowered by
    our option overhead, never above the TCP side's own MSS, which its link allows) minus
    the timestamps option. A TCP side that announced no MSS (or 0) counts as announcing
    the RFC 9293 §3.7.1 default of 536: nothing tells what its links carry."""
    mss = sf.mss or conn.sf0.mss or 1200
    # the TCP side's own MSS tells what the local links carry
    mss = min(mss, conn.tcp_mss or DEFAULT_MSS)
    return min(max(mss - (12 if sf.ts_ok else 0), MIN_SEGMENT), MAX_SEGMENT)
