"""ACK projection between the sequence spaces (paper §3.4–3.5, Fig. 5): what the TCP side
acknowledged becomes subflow ACKs and SACK blocks for the peer, and what the peer
acknowledged on its subflows becomes the TCP side's ACK and SACK blocks. Also the other
per-subflow header spaces the TCP side must see as one: timestamps and windows.

Pure: nothing here sends or forges; the functions compute from the connection's state
and update only the bookkeeping they own (what was forwarded to the TCP side, what it
acknowledged, what it was shown). The same in both roles.

Spaces (all relative, unwrapped, see :mod:`.seq`): ``d`` our data direction, ``r`` the
peer's, ``s`` one subflow's. The TCP side's TSN/TAN are ``d``/``r`` at a constant offset
(paper §3.3: the TCP side's ISN maps to IDSN + 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .rangeset import Range, merge_ranges
from .seq import MASK32, MASK64, unwrap
from .states import SubflowState, ts_after

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow

__all__ = [
    "subflow_ack", "held_ranges", "note_forwarded", "note_tcp_ack", "data_ack_wire",
    "tcp_sacks", "in_flight_elsewhere", "order_sacks", "subflow_ahead", "pick_ack_subflow",
    "subflows_to_ack",
    "ts_to_tcp", "window_to_tcp",
]

_FAR = 1 << 30  # how far below a subflow ACK its projection looks (bytes)


# -- the TCP side's acknowledgements -> the peer's subflows (TCP -> MPTCP) ---------------

def note_tcp_ack(conn: "Connection", ack_wire: int) -> None:
    """The TCP side acknowledged up to ``ack_wire`` (its 32-bit ACK field): advance
    ``r_ack``, never beyond what it was given (plus the peer's DATA_FIN)."""
    r = unwrap(ack_wire, conn.tcp_rcv_base, conn.r_ack)
    if r > conn.r_ack:
        limit = conn.r_high + (1 if conn.rcv_data_fin is not None else 0)
        conn.r_ack = min(r, max(limit, conn.r_ack))


def note_forwarded(conn: "Connection", lo: int, hi: int) -> None:
    """Data ``[lo, hi)`` of the peer went to the TCP side (bounded: the set keeps its
    lowest ranges, those that move subflow ACKs forward). A segment that starts at or
    beyond the TCP side's right edge (its last ACK plus its last window) is dropped by it
    (RFC 9293 §3.10.7.4; Linux ``tcp_data_queue`` keeps one that only ends beyond), so it
    does not count: no subflow ACK may cover it, and the peer sends it again. (Observed: a
    Linux 6.18 client sending on two subflows through an anchor sent beyond the server's
    window, which counted ``TcpExtBeyondWindow``.)"""
    if lo >= conn.r_ack + (conn.tcp_win << (conn.tcp_wscale if conn.tcp_wscale > 0 else 0)):
        conn.counters["DataBeyondWindow"] += 1
        return
    if hi > conn.r_ack:
        conn.r_fwd.add(lo, hi)


def held_ranges(conn: "Connection", r_sacks: list[Range] | None) -> list[Range]:
    """Data ranges the TCP side holds above a data-level hole: what was forwarded to it
    beyond its ACK, plus what it SACKs (``r_sacks``, relative), merged and sorted.

    Data contiguous with the TCP side's ACK is left to that ACK: following it keeps
    subflow ACKs from running ahead and turning its next ACKs into duplicates; only data
    held above a hole counts, so that subflows that delivered it are not starved into
    timeouts (paper §5.5)."""
    fwd = conn.r_fwd
    r_ack = conn.r_ack
    fwd.discard_below(r_ack)
    ranges = fwd.ranges()
    if ranges and ranges[0][0] <= r_ack:
        ranges = ranges[1:]
    if not r_sacks:
        return ranges
    return merge_ranges(ranges + [x for x in r_sacks if x[1] > r_ack])


def subflow_ack(sf: "Subflow", r_ack: int, held: list[Range]) -> tuple[int, list[Range]]:
    """Subflow ACK and SACK blocks (relative ``s``) for the peer's data on ``sf``.

    ``r_ack``: what the TCP side acknowledged (data level); ``held``: data ranges above it
    that it holds (:func:`held_ranges`). The ACK covers subflow bytes whose data is
    acknowledged or held, in subflow order; it never goes below the last ACK sent
    (``rcv_acked``) nor beyond what arrived without a gap (``rcv_contig``), and covers
    the peer's subflow FIN once every byte before it is covered. The SACK blocks (only
    with SACK on, and only when the TCP side holds data above a data-level hole or the
    subflow has one: otherwise there is no loss to report) are the arrived subflow bytes
    above the ACK whose data the TCP side acknowledged or holds — data it acknowledged
    counts too: a peer re-sending old data on this subflow must see what arrived above a
    loss, or it recovers one segment per round trip.
    """
    s = sf.rcv_acked
    ents = sf.rcv_map.entries
    for sa, ra, n in ents:
        if sa + n <= s:
            continue
        if sa > s:
            break
        d0 = ra + (s - sa)
        hi = r_ack if r_ack > d0 else d0
        for lo_h, hi_h in held:  # extend through held ranges starting at or below hi
            if lo_h <= hi < hi_h:
                hi = hi_h
        if hi <= d0:
            break
        s += min(ra + n, hi) - d0
        if s < sa + n:
            break
    if s > sf.rcv_contig:
        s = sf.rcv_contig
    if sf.peer_fin is not None and s >= sf.peer_fin:
        s = sf.peer_fin + 1
    if not (sf.sack_ok and (held or sf.rcv_ooo) and s < sf.rcv_high):
        return s, []
    return s, _subflow_sacks(sf, s, r_ack, held)


def _subflow_sacks(sf: "Subflow", s: int, r_ack: int, held: list[Range]) -> list[Range]:
    # (arrived bytes from s up to rcv_contig count as acknowledged here: data contiguous
    # with the TCP side's ACK that it has not acknowledged yet would otherwise be a hole
    # below the blocks, and the peer would resend it: subflow bytes arrive in subflow
    # order, but the data they carry may lie below others' at the data level)
    if sf.rcv_contig > s:
        rc = sf.rcv_map.map_range(s, sf.rcv_contig - s)
        held = merge_ranges(list(held) + [(ra, ra + n) for _sa, ra, n in rc])
    acked_or_held = [(-(1 << 64), r_ack), *held]
    sacks = []
    for sa, ra, n in sf.rcv_map.entries:
        if sa + n <= s:
            continue
        for lo, hi in acked_or_held:
            a = lo if lo > ra else ra
            b = hi if hi < ra + n else ra + n
            if a < b:
                sh = min(sa + (b - ra), sf.rcv_high)
                if sh > s:
                    sacks.append((max(sa + (a - ra), s), sh))
    got = sf.arrived()
    out = [(max(lo, g0), min(hi, g1)) for lo, hi in merge_ranges(sacks)
           for g0, g1 in got if lo < g1 and g0 < hi]
    return [x for x in out if x[1] > x[0]]


def data_ack_wire(conn: "Connection") -> int:
    """Our DATA_ACK (64-bit wire value) from what the TCP side acknowledged; the peer's
    DATA_FIN counts one (RFC 8684 §3.3.3), nothing beyond it."""
    r = conn.r_ack
    if conn.rcv_data_fin is not None and r > conn.rcv_data_fin + 1:
        r = conn.rcv_data_fin + 1
    return (conn.remote_idsn + 1 + r) & MASK64


def pick_ack_subflow(conn: "Connection", held: list[Range]) -> tuple["Subflow", bool]:
    """Subflow for a pure ACK of the TCP side (paper §3.4): where the ACK advances most;
    else where the peer has a hole (a real duplicate ACK: second value True); else where
    the peer sent last."""
    if len(conn.subflows) == 1:
        return conn.sf0, False
    best = None
    best_adv = 0
    for sf in conn.subflows:
        if sf.state != SubflowState.ESTABLISHED:
            continue
        adv = subflow_ack(sf, conn.r_ack, held)[0] - sf.rcv_acked
        if adv > best_adv:
            best, best_adv = sf, adv
    if best is not None:
        return best, False
    for sf in conn.subflows:
        if sf.state == SubflowState.ESTABLISHED and sf.rcv_high > sf.rcv_acked:
            return sf, True
    sf = conn.last_rx_sf
    return (sf if sf.state == SubflowState.ESTABLISHED else conn.active), False


def subflows_to_ack(conn: "Connection", carrier: "Subflow | None", held: list[Range],
                    dupack: bool) -> list["Subflow"]:
    """Subflows (other than ``carrier``, the one whose segment carries the TCP side's
    ACK) whose subflow ACK the TCP side's ACK advances, or, for a duplicate ACK, that
    have data above it (paper §3.4)."""
    if carrier is not None and len(conn.subflows) == 1:
        return []
    out = []
    for sf in conn.subflows:
        if sf is carrier or sf.state not in (SubflowState.ESTABLISHED, SubflowState.CLOSING):
            continue
        san = subflow_ack(sf, conn.r_ack, held)[0]
        if san > sf.rcv_acked or (dupack and sf.rcv_high > san):
            out.append(sf)
    return out


# -- the peer's acknowledgements on a subflow -> the TCP side (MPTCP -> TCP) ---------------

def subflow_ahead(conn: "Connection", sf: "Subflow") -> bool:
    """Whether the peer's subflow ACK on ``sf`` may cover data its DATA_ACK does not
    (then it is worth projecting as SACK blocks). Cheap for the usual single linear
    mapping: is the last subflow-acknowledged byte at or above the DATA_ACK."""
    ents = sf.send_map.entries
    if len(ents) != 1:
        return True
    sa, da, n = ents[0]
    s = sf.snd_una - 1
    if s < sa or s >= sa + n:
        return True
    return da + (s - sa) >= conn.d_una


def tcp_sacks(conn: "Connection", sf: "Subflow", peer_sacks) -> list[Range] | None:
    """The peer's subflow SACK blocks (32-bit wire pairs), and what its subflow ACK
    covers beyond the DATA_ACK, projected into our data space as SACK blocks for the TCP
    side (paper §3.5, Fig. 5b); None when there are none."""
    s_ranges = []
    if peer_sacks:
        base = sf.snd_base
        for lft, rgt in peer_sacks:
            lo = unwrap(lft, base, sf.snd_una)
            hi = unwrap(rgt, base, sf.snd_una)
            if hi > lo:
                s_ranges.append((lo, hi))
    if sf.snd_una > 0:
        s_ranges.append((max(0, sf.snd_una - _FAR), sf.snd_una))
    if not s_ranges:
        return None
    top = in_flight_elsewhere(conn, sf)
    out = [(max(lo, conn.d_una), min(hi, top)) for lo, hi in sf.send_map.project(s_ranges)
           if hi > conn.d_una and lo < top]
    return merge_ranges(out) or None


def in_flight_elsewhere(conn: "Connection", sf: "Subflow") -> int:
    """The lowest data byte (relative) still in flight on another live subflow that no
    longer takes new data (sent, not acknowledged there: it drains after a handover); no
    SACK block from ``sf`` may go above it. Those bytes are
    not lost, only on a slower path: a SACK above them would make the TCP side count them
    as lost after its reordering window and resend them (every make-before-break upload
    did, at the queue's delay: ~120 spurious retransmissions here). If that path is dead,
    its subflow is abandoned (:mod:`.liveness`) and the SACK blocks come back. Without
    another subflow in flight: no limit."""
    top = 1 << 62
    if len(conn.subflows) == 1:
        return top
    d_una = conn.d_una
    senders = conn.proxy.pm.senders(conn)
    for o in conn.subflows:
        if o is sf or o.stale or o.snd_nxt <= o.snd_una or not o.can_send or o in senders:
            continue
        for _s, d, n in o.send_map.map_range(o.snd_una, o.snd_nxt - o.snd_una):
            if d + n > d_una:
                top = min(top, max(d, d_una))
    return top


def order_sacks(sf: "Subflow", d_sacks: list[Range], newest: Range | None,
                room: int) -> list[Range]:
    """At most ``room`` SACK blocks for the TCP side: the one holding the most recently
    received data first (RFC 2018 §4), then the lowest — the holes closest to the
    cumulative ACK are the ones its recovery must see. ``newest``: a relative subflow
    range of ``sf`` or None."""
    first = None
    if newest is not None and newest[1] > newest[0]:
        proj = sf.send_map.project([newest])
        if proj:
            p0 = proj[-1][0]
            first = next((b for b in d_sacks if b[0] <= p0 < b[1]), None)
    out = [first] if first is not None else []
    out += [b for b in d_sacks if b is not first]
    return out[:room]


def ts_to_tcp(conn: "Connection", sf: "Subflow", tsval: int) -> int:
    """The peer's TSval on ``sf`` mapped into one monotonic series for the TCP side, so
    its PAWS check (RFC 7323 §5) never drops a segment after the peer's sending moved
    between subflows with unrelated timestamp clocks."""
    if sf.ts_off is None:
        sf.ts_off = 0 if (sf is conn.sf0 or conn.shown_tsval is None) else \
            (conn.shown_tsval - tsval) & MASK32
    v = (tsval + sf.ts_off) & MASK32
    if conn.shown_tsval is not None and ts_after(conn.shown_tsval, v):
        v = conn.shown_tsval
    conn.shown_tsval = v
    return v


def window_to_tcp(conn: "Connection", sf: "Subflow", win: int) -> int:
    """The peer's raw window field on ``sf``, rescaled to the initial subflow's scale
    (the one the TCP side negotiated, RFC 7323 §2)."""
    if sf.rcv_wscale != conn.peer_wscale0:
        return min(0xFFFF, (win << sf.rcv_wscale) >> conn.peer_wscale0)
    return win
