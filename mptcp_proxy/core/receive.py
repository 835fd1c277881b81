"""The receive path: a segment from the peer on an established subflow, in named stages
like Linux's (``tcp_validate_incoming``, then ``subflow.c``: subflow ACK, DATA_ACK,
mapping status, delivery), ending in what the TCP side sees (paper §3.3–3.5: MPTCP →
TCP). The same in both roles.

Stages, in order (each may end the segment with a verdict):

1. :func:`parse_segment` — its options, once (a fast branch for the steady-state layout:
   timestamps and one DSS).
2. :func:`acceptable` — inside the window and with a good checksum, or nothing else
   happens (RFC 9293 §3.10.7.4; verify before acting).
3. :func:`note_arrival` — timestamps, liveness; then the signalling options.
4. :func:`subflow_ack` — the peer's subflow ACK of our data.
5. :func:`data_ack` — its DATA_ACK (RFC 8684 §3.3.2); the connection becomes fully
   established.
6. :func:`mapping_status` — its DSS mapping into the RECV table, DATA_FIN, checksum
   rules, infinite mapping (§3.3.1, §3.3.3, §3.7).
7. :func:`delivery` — where its payload goes in the TCP side's sequence space.
8. :func:`to_tcp_side` — the TCP side's ACK, SACK, window and timestamps projected from
   the subflow (:mod:`.projection`): the segment rewritten, passed unchanged, or
   consumed.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import closing, fallback, signalling
from .checksum import dss_checksum_ok, ones_sum
from .constants import (
    MPTCP_RST_EMPTCP,
    MPTCPOPT_DSS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCPOPT_MPTCP,
    TCPOPT_SACK,
    TCPOPT_TIMESTAMP,
)
from .emission import fill_acked_hole, send_ack
from .events import EventKind
from .liveness import note_acked, note_rx_data
from .options import Dss, parse_dss
from .projection import (
    held_ranges,
    note_forwarded,
    order_sacks,
    subflow_ahead,
    tcp_sacks,
    ts_to_tcp,
    window_to_tcp,
)
from .projection import subflow_ack as project_subflow_ack
from .scheduling import forget_acked_mappings
from .seq import MASK32, data_rel, data_wire, unwrap
from .states import ConnState, SubflowState, ts_after
from .tcp import CSUM_UNVERIFIED, TcpPacket, build_sack, build_ts, read_sack, walk_options
from .verdict import ACCEPT, DROP

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow

__all__ = ["Segment", "receive", "parse_segment", "acceptable", "note_arrival", "subflow_ack",
           "data_ack", "mapping_status", "delivery", "to_tcp_side"]

_TS_PREFIX = b"\x01\x01\x08\x0a"
_TS_HALF = 0x80000000
MAX_RECV_MAPPINGS = 1024  # distinct mappings kept per subflow (merged when contiguous)
_II = struct.Struct("!II")


class Segment:
    """One received segment as the stages see it: its options, parsed once, and what the
    stages found (relative numbers; see :mod:`.seq`)."""

    __slots__ = ("pkt", "flags", "plen", "s", "ts_off", "tsval", "peer_sacks", "dss",
                 "others", "malformed", "signalling", "san_old", "san_moved", "d_adv",
                 "dfin_only", "tsn", "tcp_fin")

    def __init__(self, pkt: TcpPacket, ts_off: int, tsval: int, peer_sacks, dss: Dss | None,
                 others: list | None) -> None:
        self.pkt = pkt
        self.flags = pkt.flags
        self.plen = pkt.plen
        self.s = 0  # relative subflow sequence of the first byte
        self.ts_off = ts_off  # offset of the timestamps option in the buffer, -1: none
        self.tsval = tsval
        self.peer_sacks = peer_sacks  # 32-bit wire (left, right) pairs, or None
        self.dss = dss
        self.others = others  # MPTCP options other than DSS: (subtype, offset, length)
        self.malformed = 0  # MPTCP options too short, or a DSS of a bad length (ignored)
        self.signalling = False  # it carried signalling only (to be consumed)
        self.san_old = 0
        self.san_moved = False
        self.d_adv = False  # the DATA_ACK moved
        self.dfin_only = False  # a DATA_FIN alone (no data)
        self.tsn = 0  # where it goes in the TCP side's space (unwrapped)
        self.tcp_fin = False  # the TCP side gets a FIN with it


def receive(conn: "Connection", sf: "Subflow", pkt: TcpPacket, now: float):
    """A segment from the peer on ``sf`` (established, closing, or abandoned but once
    established). Returns the verdict."""
    if conn.fast and sf is conn.sf0:
        v = steady(conn, sf, pkt, now)
        if v is not None:
            return v
    seg = parse_segment(pkt)
    if seg is None:
        conn.counters.inc("PktMalformed")
        return DROP
    if not acceptable(conn, sf, seg, now):
        return DROP
    if seg.flags & TCP_RST:
        return closing.peer_reset(conn, sf, pkt, seg.others, now)
    note_arrival(conn, sf, seg, now)
    was_closed = conn.rcv_data_fin is not None and closing.data_closed(conn)
    if seg.others:
        seg.signalling = signalling.receive_options(conn, sf, pkt, seg.others, now)
        if conn.state != ConnState.ESTABLISHED:
            return DROP  # (the signal closed it: MP_FASTCLOSE, MP_FAIL)
    subflow_ack(conn, sf, seg)
    v = data_ack(conn, sf, seg, now)
    if v is None:
        v = mapping_status(conn, sf, seg, now)
    if v is None:
        v = delivery(conn, sf, seg, now)
    if v is not None:
        return v
    if seg.flags & TCP_FIN and sf.state != SubflowState.CLOSED:
        _subflow_fin(conn, sf, seg, now)
    if was_closed:
        return _late_segment(conn, sf, seg, now)
    return to_tcp_side(conn, sf, seg, now)


def steady(conn: "Connection", sf: "Subflow", pkt: TcpPacket, now: float):
    """The steady state in one pass, on a connection that has only its initial subflow:
    an in-order segment with timestamps and one DSS carrying a DATA_ACK — data under a
    mapping already known, or a pure ACK that moves the DATA_ACK — that still maps one
    to one, so it goes to the TCP side unchanged. The guard of the stages above: it
    checks everything first and returns None (nothing changed) for any other segment,
    then takes the subflow ACK, DATA_ACK and payload with the stages' own helpers (worth
    ~25 % of the core's time per segment, ``tools/microbench.py``)."""
    b = pkt.buf
    th = pkt.th
    hend = th + pkt.hl
    if pkt.flags & 0xF7 != TCP_ACK or hend - th < 40 or b[th + 20:th + 24] != _TS_PREFIX \
            or conn.rcv_data_fin is not None or not conn.fully_established:
        return None
    o = th + 32
    while o < hend and b[o] == 1:
        o += 1
    if o + 3 >= hend or b[o] != TCPOPT_MPTCP or b[o + 2] >> 4 != MPTCPOPT_DSS:
        return None
    end = o + b[o + 1]
    if end > hend or b[end:hend].strip(b"\x01"):
        return None  # other options after the DSS
    dss = parse_dss(b, o, end - o)
    if dss is None or dss.data_ack is None or dss.data_fin:
        return None
    plen = pkt.plen
    s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
    if s != sf.rcv_contig or sf.rcv_ooo:
        return None  # not in order, or a hole somewhere
    dack = data_rel(conn.local_idsn, conn.d_una, dss.data_ack, 64 if dss.ack64 else 32)
    d_adv = conn.d_una < dack <= conn.d_nxt + (1 if conn.snd_data_fin is not None else 0)
    if plen:
        r = _known_mapping(conn, sf, dss, s, plen)
        if r is None:
            return None
    elif dss.data_seq is not None or not d_adv:
        return None  # only DATA_ACK progress is passed on here
    else:
        r = conn.r_ack
    if (conn.tcp_rcv_base + r) & MASK32 != pkt.seq or sf.ts_off not in (None, 0):
        return None
    tsval = _II.unpack_from(b, th + 24)[0]
    shown = conn.shown_tsval
    if shown is not None and ((tsval - shown) & MASK32) >= _TS_HALF:  # (ts_after)
        return None  # it would go back in time for the TCP side
    san = unwrap(pkt.ack, sf.snd_base, sf.snd_una)
    if not sf.snd_una <= san <= sf.snd_nxt or \
            (conn.tcp_snd_base + (dack if d_adv else conn.d_una)) & MASK32 != pkt.ack:
        return None
    if pkt.csum_mode == CSUM_UNVERIFIED and not pkt.checksum_ok():
        return None  # (the stages count and drop it)
    # -- accepted: the stages' state changes
    sf.last_rx = conn.last_activity = now
    conn.last_rx_sf = sf
    wnd = pkt.win << sf.rcv_wscale
    if wnd > sf.max_snd_wnd:
        sf.max_snd_wnd = wnd
    if ((tsval - sf.ts_recent) & MASK32) < _TS_HALF:  # (not ts_after(ts_recent, tsval))
        sf.ts_recent = tsval
    sf.ts_off = 0
    conn.shown_tsval = tsval
    take_subflow_ack(sf, san)
    if not plen:
        sf.answer_at = now  # (a pure ACK answers our data: :mod:`.liveness`)
    conn.counters["DSSRx"] += 1
    if d_adv:
        take_data_ack(conn, dack)
    if plen:
        take_payload(conn, sf, s, r, plen, now)
    conn.shown_win = pkt.win
    conn.shown_sacks = None
    return ACCEPT


def _known_mapping(conn: "Connection", sf: "Subflow", dss: Dss, s: int, plen: int):
    """The relative data sequence of the payload at ``s``, if the segment lies whole in a
    mapping already in the RECV table and its DSS (if any) repeats that mapping."""
    if dss.checksum is not None:
        return None
    e = sf.rcv_map.lookup(s)
    if e is None or s + plen > e[0] + e[2]:
        return None
    if dss.data_seq is not None:
        r_map = data_rel(conn.remote_idsn, conn.r_high, dss.data_seq, 64 if dss.dsn64 else 32)
        if e[1] - e[0] != r_map - unwrap(dss.subflow_seq, 1, sf.rcv_high):
            return None  # a new or different mapping: the stages learn it
    return e[1] + (s - e[0])


# -- 1. options ------------------------------------------------------------------------------

def parse_segment(pkt: TcpPacket) -> Segment | None:
    """The segment's options (None: a malformed option list). The steady state — NOP,
    NOP, timestamps, NOPs, one DSS, nothing else — is recognised without a walk."""
    b = pkt.buf
    th = pkt.th
    end = th + pkt.hl
    if end - th >= 40 and b[th + 20:th + 24] == _TS_PREFIX:
        o = th + 32
        while o < end and b[o] == 1:
            o += 1
        if o + 3 < end and b[o] == TCPOPT_MPTCP and b[o + 2] >> 4 == MPTCPOPT_DSS:
            olen = b[o + 1]
            if o + olen <= end and not b[o + olen:end].strip(b"\x01"):
                dss = parse_dss(b, o, olen)
                if dss is not None:  # (else the walk below counts it malformed)
                    return Segment(pkt, th + 22, _II.unpack_from(b, th + 24)[0], None, dss,
                                   None)
    opts = walk_options(b, th + 20, end)
    if opts is None:
        return None
    ts_off = -1
    tsval = 0
    peer_sacks = None
    dss = None
    others = None
    malformed = 0
    for kind, off, olen in opts:
        if kind == TCPOPT_MPTCP:
            if olen < 3:
                malformed += 1
            elif b[off + 2] >> 4 == MPTCPOPT_DSS:
                dss = parse_dss(b, off, olen)
                malformed += dss is None
            else:
                (others := others or []).append((b[off + 2] >> 4, off, olen))
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            ts_off = off
            tsval = int.from_bytes(b[off + 2:off + 6], "big")
        elif kind == TCPOPT_SACK:
            peer_sacks = read_sack(b, off, olen)
    seg = Segment(pkt, ts_off, tsval, peer_sacks, dss, others)
    seg.malformed = malformed
    return seg


# -- 2. acceptability ------------------------------------------------------------------------

def acceptable(conn: "Connection", sf: "Subflow", seg: Segment, now: float) -> bool:
    """Only an acceptable segment may change state (RFC 9293 §3.10.7.4, RFC 5961):

    - its checksum is good — verified here unless the queue says the kernel or NIC did
      (the proxy acts before the TCP side's own checks, and RFC 1624 updates keep a bad
      sum bad);
    - its sequence range lies in the receive window we advertised on this subflow: it
      ends at or after our last ACK and starts at or before the window's right edge (as
      Linux ``tcp_sequence``); otherwise it is answered with an ACK and dropped;
    - its ACK field acknowledges nothing we did not send and nothing older than the
      peer's largest window below what it acknowledged (RFC 5961 §5:
      SND.UNA − MAX.SND.WND ≤ SEG.ACK ≤ SND.NXT); otherwise a challenge ACK, drop.

    The answers are rate-limited (:meth:`~.proxy.Proxy.may_challenge`). An RST is
    judged by :func:`~.closing.peer_reset` (exact sequence) once in the window."""
    pkt = seg.pkt
    if pkt.csum_mode == CSUM_UNVERIFIED and not pkt.checksum_ok():
        conn.counters.inc("PktBadChecksum")
        return False
    seg.s = s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
    flags = seg.flags
    end = s + seg.plen + (flags & TCP_FIN)
    edge = sf.rcv_acked + (conn.tcp_win << sf.snd_wscale)
    if edge > sf.rcv_wnd_edge:
        sf.rcv_wnd_edge = edge
    if end < sf.rcv_acked or s > sf.rcv_wnd_edge:
        conn.counters.inc("PktOutOfWindow")
        if not flags & TCP_RST:
            _answer(conn, sf, now, challenge=False, data=bool(seg.plen))
        return False
    if flags & TCP_ACK and not flags & TCP_RST and not _ack_acceptable(sf, pkt.ack):
        conn.counters.inc("PktAckUnacceptable")
        _answer(conn, sf, now, challenge=True, data=False)
        return False
    if seg.malformed:
        conn.counters.inc("OptMalformed", seg.malformed)
    return True


def _ack_acceptable(sf: "Subflow", ack_wire: int) -> bool:
    """RFC 5961 §5: SND.UNA − MAX.SND.WND ≤ SEG.ACK ≤ SND.NXT (our FIN counts one)."""
    san = unwrap(ack_wire, sf.snd_base, sf.snd_una)
    top = sf.snd_nxt + (1 if sf.fin_sent is not None else 0)
    return sf.snd_una - sf.max_snd_wnd <= san <= top


def _answer(conn: "Connection", sf: "Subflow", now: float, challenge: bool,
            data: bool) -> None:
    """An ACK for an unacceptable segment (RFC 9293 §3.10.7.4), or a challenge ACK (RFC
    5961), unless the rate limits say no (then counted)."""
    if conn.proxy.may_answer(sf, now, challenge, data):
        if challenge:
            conn.counters.inc("ChallengeAckTx")
        send_ack(conn, sf, now, held_ranges(conn, None))
    else:
        conn.counters.inc("ChallengeAckLimited")


# -- 3. arrival ------------------------------------------------------------------------------

def note_arrival(conn: "Connection", sf: "Subflow", seg: Segment, now: float) -> None:
    """The subflow is alive; its timestamp is recent (RFC 7323 §4.3); the peer's largest
    window (MAX.SND.WND, RFC 5961 §5)."""
    sf.last_rx = conn.last_activity = now
    conn.last_rx_sf = sf
    wnd = seg.pkt.win << sf.rcv_wscale
    if wnd > sf.max_snd_wnd:
        sf.max_snd_wnd = wnd
    if sf.rm_probe_at is not None and not seg.others:
        signalling.probe_answered(conn, sf)
    if seg.ts_off >= 0 and sf.ts_ok:
        if sf.ts_off is None or not ts_after(sf.ts_recent, seg.tsval):
            sf.ts_recent = seg.tsval


# -- 4. subflow ACK --------------------------------------------------------------------------

def subflow_ack(conn: "Connection", sf: "Subflow", seg: Segment) -> None:
    """The peer's cumulative subflow ACK of our bytes on ``sf`` (and of our FIN)."""
    seg.san_old = sf.snd_una
    if not seg.flags & TCP_ACK:
        return
    seg.san_moved = take_subflow_ack(sf, unwrap(seg.pkt.ack, sf.snd_base, sf.snd_una))
    if not seg.plen:
        sf.answer_at = sf.last_rx  # (a pure ACK answers our data: :mod:`.liveness`)


def take_subflow_ack(sf: "Subflow", san: int) -> bool:
    """Take subflow ACK ``san`` (relative) if it moves forward within what we sent (our
    FIN counts one); True when it did."""
    top = sf.snd_nxt + (1 if sf.fin_sent is not None else 0)
    if not sf.snd_una < san <= top:
        return False
    sf.snd_una = san
    note_acked(sf, san)
    forget_acked_mappings(sf)
    if sf.fin_sent is not None and san > sf.fin_sent:
        sf.fin_acked = True
    return True


# -- 5. DATA_ACK -----------------------------------------------------------------------------

def data_ack(conn: "Connection", sf: "Subflow", seg: Segment, now: float):
    """The DATA_ACK (RFC 8684 §3.3.2): our data the peer has at the data level; the first
    one makes the connection fully established (and lets the path manager open joins)."""
    dss = seg.dss
    if dss is None:
        if seg.plen and not conn.fully_established and sf is conn.sf0:
            # §3.1 / Linux check_fully_established: the peer fell back to TCP
            conn.counters.inc("MPCapableDataFallback")
            fallback.fallback(conn, now)
            return ACCEPT
        return None
    conn.counters["DSSRx"] += 1
    if dss.data_ack is None:
        return None
    seg.d_adv = take_data_ack(conn, data_rel(conn.local_idsn, conn.d_una, dss.data_ack,
                                             64 if dss.ack64 else 32))
    if not conn.fully_established:
        conn.fully_established = True
        conn.counters.inc("MPFullyEstablished")
        conn.open_joins(now)
    return None


def take_data_ack(conn: "Connection", dack: int) -> bool:
    """Take DATA_ACK ``dack`` (relative) if it moves forward within what we sent (our
    DATA_FIN counts one); True when it did."""
    if not conn.d_una < dack <= conn.d_nxt + (1 if conn.snd_data_fin is not None else 0):
        return False
    conn.d_una = dack
    _forget_acked_data(conn, dack)
    if conn.snd_data_fin is not None and dack > conn.snd_data_fin:
        conn.data_fin_acked = True
    return True


def _forget_acked_data(conn: "Connection", d_una: int) -> None:
    """Prune the SEND tables of data the peer DATA_ACKed."""
    for sf in conn.subflows:
        ents = sf.send_map.entries
        while len(ents) > 1 and ents[0][1] + ents[0][2] <= d_una:
            del ents[0]
        if len(ents) > 8:
            sf.send_map.prune_below_value(d_una)


# -- 6. mapping ------------------------------------------------------------------------------

def mapping_status(conn: "Connection", sf: "Subflow", seg: Segment, now: float):
    """The segment's DSS mapping (§3.3.1) into the RECV table: checksum presence as
    negotiated (§3.3), data-level length 0 = infinite mapping (§3.7), taken only from a
    segment whose own data it covers (Linux ``validate_mapping``), DATA_FIN recorded
    (§3.3.3), conflicting mappings refused (``DSSNotMatching``), DSS checksum checked."""
    dss = seg.dss
    if dss is None or dss.data_seq is None:
        return None
    if (dss.checksum is not None) != conn.csum:
        conn.counters.inc("DataCsumMissing")
        return closing.protocol_error(conn, sf, now, MPTCP_RST_EMPTCP)
    if dss.data_len == 0:
        return fallback.infinite_mapping(conn, sf, seg.plen, now)
    r = data_rel(conn.remote_idsn, conn.r_high, dss.data_seq, 64 if dss.dsn64 else 32)
    nbytes = dss.data_len
    s_map = unwrap(dss.subflow_seq, 1, sf.rcv_high)
    plen = seg.plen
    if nbytes > (1 if dss.data_fin else 0):
        if not plen or s_map >= seg.s + plen or s_map + nbytes <= seg.s:
            conn.counters.inc("DSSNoMatchTCP")
            return None
    if dss.data_fin:
        nbytes -= 1
        _data_fin(conn, r + nbytes, dss.subflow_seq == 0 and nbytes == 0, seg)
    if nbytes > 0:
        if len(sf.rcv_map.entries) >= MAX_RECV_MAPPINGS:
            conn.counters.inc("RecvMapLimit")  # (the peer's mappings are never this many)
            return DROP
        if not sf.rcv_map.add(s_map, r, nbytes):
            conn.counters.inc("DSSNotMatching")
            return closing.protocol_error(conn, sf, now, MPTCP_RST_EMPTCP)
        if dss.checksum is not None and plen and \
                not _checksum_ok(conn, seg, s_map, r, dss, nbytes):
            return fallback.checksum_failed(conn, sf, r, now)
    return None


def _data_fin(conn: "Connection", fin_r: int, alone: bool, seg: Segment) -> None:
    """The peer's DATA_FIN at relative data sequence ``fin_r`` (§3.3.3), taken in sequence:
    never below data already received (it would cap our DATA_ACK and stall the transfer
    for good), and the first one stays (a different one later is only counted)."""
    if fin_r < conn.r_high:
        conn.counters.inc("DataFinBelowData")
        return
    if conn.rcv_data_fin is None:
        conn.counters.inc("DataFinRx")
        conn.rcv_data_fin = fin_r
        conn.proxy.emit_event(EventKind.DATA_FIN_RX, conn)
    elif conn.rcv_data_fin != fin_r:
        conn.counters.inc("DataFinMismatch")
    if alone and conn.rcv_data_fin == fin_r:
        seg.dfin_only = True


def _checksum_ok(conn: "Connection", seg: Segment, s_map: int, r: int, dss: Dss,
                 nbytes: int) -> bool:
    """The DSS checksum, when the segment carries the whole mapping (mappings spanning
    segments are not checked: the proxy keeps no payload)."""
    if seg.s != s_map or seg.plen != nbytes:
        return True
    return dss_checksum_ok(data_wire(conn.remote_idsn, r), dss.subflow_seq, dss.data_len,
                           ones_sum(seg.pkt.payload), dss.checksum)


# -- 7. delivery -----------------------------------------------------------------------------

def delivery(conn: "Connection", sf: "Subflow", seg: Segment, now: float):
    """Where the segment's payload goes in the TCP side's space (``seg.tsn``), by the
    RECV table; data no mapping covers is dropped (``DSSNoMapping``), a payload running
    past its mapping is cut to it."""
    plen = seg.plen
    if plen:
        s = seg.s
        e = sf.rcv_map.lookup(s)
        if e is None:
            if conn.fully_established and (s == sf.rcv_contig or not _any_mptcp(seg)):
                # options stripped on the path: in order with no mapping, or with no MPTCP
                # option at all (Linux puts a DSS on every data segment; out of order, one
                # with a DSS may have its mapping in an earlier segment still to come)
                return fallback.unmapped_data(conn, sf, now)
            conn.counters.inc("DSSNoMapping")
            return DROP
        r = e[1] + (s - e[0])
        avail = e[0] + e[2] - s
        if avail < plen:
            conn.counters.inc("DSSPartialMapping")
            seg.pkt.truncate_payload(avail)
            seg.plen = plen = avail
        take_payload(conn, sf, s, r, plen, now)
        seg.tsn = conn.tcp_rcv_base + r
        seg.tcp_fin = conn.rcv_data_fin is not None and conn.rcv_data_fin == r + plen
    elif seg.dfin_only:
        seg.tsn = conn.tcp_rcv_base + conn.rcv_data_fin
        seg.tcp_fin = True
    else:
        seg.tsn = conn.tcp_rcv_base + max(conn.r_ack, 0)
    return None


def _any_mptcp(seg: Segment) -> bool:
    return seg.dss is not None or seg.others is not None or seg.malformed > 0


def take_payload(conn: "Connection", sf: "Subflow", s: int, r: int, n: int,
                 now: float) -> None:
    """Subflow bytes ``[s, s+n)`` carrying data ``[r, r+n)`` go to the TCP side."""
    if s + n > sf.rcv_high:
        sf.rcv_high = s + n
    sf.rcv_add(s, s + n)
    if r + n > conn.r_high:
        conn.r_high = r + n
    note_forwarded(conn, r, r + n)
    note_rx_data(sf, now)
    if conn.paths.timer is None:
        conn.proxy.pm.watch(conn, now)
    if conn.handover_at is not None:
        conn.proxy.emit_event(EventKind.RESUMED, conn, sf, elapsed=now - conn.handover_at)
        conn.handover_at = None


def _subflow_fin(conn: "Connection", sf: "Subflow", seg: Segment, now: float) -> None:
    """The peer's FIN on this subflow (not a DATA_FIN): recorded, acknowledged when the
    TCP side has every byte before it."""
    s_fin = seg.s + seg.plen
    if sf.peer_fin is None:
        sf.peer_fin = s_fin
        conn.counters.inc("SubflowFinRx")
    if s_fin >= sf.rcv_high:
        sf.rcv_high = s_fin
    closing.subflow_fin_received(conn, sf, now)


def _late_segment(conn: "Connection", sf: "Subflow", seg: Segment, now: float):
    """Both directions were closed at the data level before this segment: the TCP side's
    socket may be gone (it would answer RST); data or a FIN is acknowledged at the
    subflow level here, and nothing more reaches the TCP side."""
    if seg.plen or seg.flags & TCP_FIN:
        held = held_ranges(conn, None)
        if project_subflow_ack(sf, conn.r_ack, held)[0] > sf.rcv_acked:
            send_ack(conn, sf, now, held)
    conn.counters.inc("LateSegmentsConsumed")
    if sf.fin_sent is not None:
        closing.maybe_finished(conn, now)
    return DROP


# -- 8. what the TCP side sees ---------------------------------------------------------------

def to_tcp_side(conn: "Connection", sf: "Subflow", seg: Segment, now: float):
    """Project the segment for the TCP side (paper §3.4–3.5): its ACK is our DATA_ACK's
    TAN, subflow ACKs and SACKs become SACK blocks, the window is rescaled, the timestamp
    mapped. A segment with nothing new for the TCP side is consumed; one that maps one to
    one on the initial subflow passes unchanged (and keeps its checksum offload state)."""
    pkt = seg.pkt
    d_sacks = None
    if conn.tcp_sack and (seg.peer_sacks or (seg.san_moved and subflow_ahead(conn, sf))):
        d_sacks = tcp_sacks(conn, sf, seg.peer_sacks)
    win = pkt.win if sf.rcv_wscale == conn.peer_wscale0 else window_to_tcp(conn, sf, pkt.win)
    if seg.peer_sacks and not seg.san_moved and sf.snd_una < sf.snd_nxt:
        fill_acked_hole(conn, sf, now)  # the peer holds data above a hole in this subflow
    if not seg.plen and not seg.tcp_fin and _nothing_new(conn, sf, seg, win, d_sacks):
        conn.counters.inc("AcksConsumed")
        if sf.fin_sent is not None:
            closing.maybe_finished(conn, now)
        return DROP
    conn.shown_win = win
    conn.shown_sacks = d_sacks
    has_ts = seg.ts_off >= 0
    tsv = ts_to_tcp(conn, sf, seg.tsval) if has_ts and conn.tcp_ts_ok else seg.tsval
    tan = (conn.tcp_snd_base + conn.d_una) & MASK32
    if (sf is conn.sf0 and seg.tsn & MASK32 == pkt.seq and tan == pkt.ack and tsv == seg.tsval
            and win == pkt.win and not seg.peer_sacks and not d_sacks and not seg.tcp_fin
            and not seg.others and not seg.flags & TCP_FIN and has_ts == conn.tcp_ts_ok):
        if conn.snd_data_fin is not None and conn.rcv_data_fin is not None:
            closing.check_close(conn, now)
        return ACCEPT
    v = _rewrite(conn, sf, seg, tan, win, tsv, d_sacks)
    if conn.snd_data_fin is not None and conn.rcv_data_fin is not None:
        closing.check_close(conn, now)
    return v


def _nothing_new(conn: "Connection", sf: "Subflow", seg: Segment, win: int, d_sacks) -> bool:
    """A pure ACK that tells the TCP side nothing: no DATA_ACK progress, same window and
    SACK blocks, and not a duplicate ACK it should count. An answer to our liveness probe,
    or anything pure on a stale subflow, is consumed whatever it carries (taken in by the
    stages already): its timestamp echo is as old as our last in-order segment there (a
    probe is old data), and an ACK of new data with it would give the TCP side an RTT
    sample as long as the silence (:mod:`.liveness`)."""
    if sf.probe_at is not None or sf.stale:
        return True
    dup = (not seg.san_moved and not seg.d_adv and sf.snd_nxt > sf.snd_una
           and not seg.signalling and not seg.flags & TCP_FIN)
    return not (seg.d_adv or win != conn.shown_win or d_sacks != conn.shown_sacks or dup)


def _rewrite(conn: "Connection", sf: "Subflow", seg: Segment, tan: int, win: int, tsv: int,
             d_sacks):
    """The segment rewritten into the TCP side's connection."""
    pkt = seg.pkt
    flags = seg.flags
    pkt.set_seq(seg.tsn)
    pkt.set_ack(tan)
    if win != pkt.win:
        pkt.set_win(win)
    newflags = (flags & ~TCP_FIN) | (TCP_FIN if seg.tcp_fin else 0)
    if newflags != flags:
        pkt.set_flags(newflags)
    if sf is not conn.sf0:
        la, lp, ra, rp = conn.key
        pkt.set_src(ra)
        pkt.set_dst(la)
        pkt.set_sport(rp)
        pkt.set_dport(lp)
    parts = []
    if seg.ts_off >= 0 and conn.tcp_ts_ok:
        tsecr = int.from_bytes(pkt.buf[seg.ts_off + 6:seg.ts_off + 10], "big")
        parts.append(build_ts(tsv, tsecr))
    if d_sacks:
        room = (40 - (12 if parts else 0) - 4) // 8
        blocks = order_sacks(sf, d_sacks, _newest(sf, seg), room)
        parts.append(build_sack([((conn.tcp_snd_base + lo) & MASK32,
                                  (conn.tcp_snd_base + hi) & MASK32) for lo, hi in blocks]))
    pkt.set_options(b"".join(parts))
    return pkt.finish()


def _newest(sf: "Subflow", seg: Segment):
    """The relative subflow range holding the most recently received data, for SACK
    order: the peer's first SACK block, else what its ACK just covered."""
    if seg.peer_sacks:
        lft, rgt = seg.peer_sacks[0]
        return unwrap(lft, sf.snd_base, sf.snd_una), unwrap(rgt, sf.snd_base, sf.snd_una)
    return (seg.san_old, sf.snd_una) if seg.san_moved else None
