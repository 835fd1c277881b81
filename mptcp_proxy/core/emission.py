"""Emission: the option blocks of our segments on a subflow, and the segments the proxy
forges itself — subflow ACKs, data it cuts into its own segments, hole fills (paper
§3.1, §3.4; RFC 8684 §3.1, §3.3).

Every segment we send on a subflow carries timestamps (when on), our MPTCP option (the
MP_CAPABLE of the handshake's end, or a DSS with our DATA_ACK and, with data, its
mapping), the subflow ACK and SACK blocks that :mod:`.projection` computes, and what is
left of the TCP side's own options where they fit. The same in both roles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checksum import dss_checksum, ones_sum
from .constants import MPTCP_CAP_CHECKSUM_REQD, MPTCP_CAP_HMAC_SHA256, TCP_ACK, TCP_FIN
from .forge import build_segment
from .options import MpCapable, pack_dss, push_option
from .projection import data_ack_wire, subflow_ack, subflows_to_ack
from .rangeset import Range
from .scheduling import segment_size, sentmaps_over
from .seq import MASK32, MASK64, data_wire
from .subflow import SentMapping, Subflow
from .tcp import NOP2, TcpPacket, build_sack, build_ts, pad_options

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "mptcp_option", "option_block", "rewrite_onto", "send_pieces", "send_ack", "ack_subflows",
    "forge_segment", "fill_acked_hole",
]

OPTION_SPACE = 40  # bytes of TCP options (data offset: 15 words)
HOLE_FILL_SEGMENT = 1200  # payload bytes per hole-filling segment
HOLE_FILL_MAX = 8 * HOLE_FILL_SEGMENT  # bytes filled per attempt


def mptcp_option(conn: "Connection", sf: Subflow, d: int, s: int, n: int, data_fin: bool,
                 payload: bytes, m: SentMapping | None = None) -> bytes:
    """Our MPTCP option (padded to 4 bytes) for a segment on ``sf`` carrying data bytes
    ``[d, d+n)`` at relative subflow sequence ``s``, under mapping ``m`` (its checksum is
    computed on first use, over ``payload``, which then is the whole mapping).

    Until the peer's first DATA_ACK, the initial subflow's first segment repeats
    MP_CAPABLE with both keys (len 20 on an ACK, 22/24 with data: RFC 8684 §3.1); every
    other segment carries a DSS with our DATA_ACK (§3.3.2), plus a mapping for data or a
    DATA_FIN (§3.3.3: alone, SSN 0 and length 1)."""
    if not conn.fully_established and sf is conn.sf0 and d == 0 and s == 0 and not data_fin:
        return _mpc_option(conn, n, payload)
    dan = data_ack_wire(conn)
    counters = conn.counters
    counters["DataAckTx"] += 1
    if n == 0 and not data_fin:
        return pack_dss(dan, None, dsn64=False)
    if n == 0:  # DATA_FIN alone
        dsn = data_wire(conn.local_idsn, conn.snd_data_fin)
        csum = dss_checksum(dsn, 0, 1, 0) if conn.csum else None
        return pad_options(pack_dss(dan, dsn, 0, 1, csum, True))
    if conn.infinite_pending:  # after MP_FAIL (§3.7): data-level length 0, checksum 0
        conn.infinite_pending = False  # (the transmit path falls back once it is out)
        counters["InfiniteMapTx"] += 1
        return pad_options(pack_dss(dan, data_wire(conn.local_idsn, d), (s + 1) & MASK32, 0,
                                    0 if conn.csum else None, data_fin))
    if m is None:  # (a segment that is its own mapping)
        m = SentMapping(s, d, n, data_fin)
    dsn = (conn.local_idsn + 1 + m.d) & MASK64  # (seq.data_wire)
    ssn = (m.s + 1) & MASK32
    dll = m.n + (1 if m.data_fin else 0)
    counters["DSSTx"] += 1
    if not conn.csum:
        return NOP2 + pack_dss(dan, dsn, ssn, dll, None, m.data_fin)  # 22 bytes + 2 NOPs
    if m.csum is None:
        m.csum = dss_checksum(dsn, ssn, dll, ones_sum(payload))
        counters["DSSChecksumTx"] += 1
    return pack_dss(dan, dsn, ssn, dll, m.csum, m.data_fin)  # 24 bytes


def _mpc_option(conn: "Connection", n: int, payload: bytes) -> bytes:
    flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if conn.csum else 0)
    if n == 0:
        conn.counters.inc("MPCapableACKTX")
        return pad_options(push_option(MpCapable(
            flags=flags, sndr_key=conn.local_key, rcvr_key=conn.remote_key)))
    conn.counters.inc("MPCapableDataTX")
    csum = dss_checksum(data_wire(conn.local_idsn, 0), 1, n, ones_sum(payload)) \
        if conn.csum else None
    return pad_options(push_option(MpCapable(
        flags=flags, sndr_key=conn.local_key, rcvr_key=conn.remote_key, data_len=n,
        checksum=csum)))


def option_block(conn: "Connection", sf: Subflow, d: int, s: int, n: int, data_fin: bool,
                 tsval: int | None, held: list[Range], extra: bytes = b"",
                 payload: bytes = b"", m: SentMapping | None = None) -> tuple[bytes, int]:
    """The whole option block (≤ 40 bytes, 4-aligned) of our segment on ``sf``, and the
    relative subflow ACK it goes with. ``tsval``: the TSval to send (None: the TCP side's
    latest); ``held``: :func:`~.projection.held_ranges`; ``extra``: the TCP side's other
    options, kept where they fit."""
    ts = build_ts(conn.tcp_tsval if tsval is None else tsval, sf.ts_recent) if sf.ts_ok else b""
    mp = mptcp_option(conn, sf, d, s, n, data_fin, payload, m)
    san, s_sacks = subflow_ack(sf, conn.r_ack, held)
    if not s_sacks and not extra:
        return ts + mp, san
    parts = [ts, mp]
    used = len(ts) + len(mp)
    if s_sacks and sf.sack_ok:
        room = (OPTION_SPACE - used - 4) // 8
        if room > 0:
            blocks = s_sacks[-room:] if len(s_sacks) > room else s_sacks
            parts.append(build_sack([(sf.rcv_wire(lo), sf.rcv_wire(hi))
                                     for lo, hi in reversed(blocks)]))
            used += len(parts[-1])
        if len(s_sacks) > room:
            conn.counters.inc("SackBlocksDropped", len(s_sacks) - max(room, 0))
    if extra and used + len(extra) <= OPTION_SPACE:
        parts.append(pad_options(extra))
    return b"".join(parts), san


def rewrite_onto(conn: "Connection", pkt: TcpPacket, sf: Subflow, d: int, s: int, n: int,
                 data_fin: bool, tsval: int | None, held: list[Range], extra: bytes,
                 now: float, m: SentMapping | None = None):
    """Rewrite the TCP side's own segment in place to go out on ``sf`` at ``s``: sequence,
    ACK, FIN flag (a DATA_FIN is no subflow FIN), 4-tuple, options. Returns the verdict."""
    payload = pkt.payload if (n and conn.csum) else b""
    opts, san = option_block(conn, sf, d, s, n, data_fin, tsval, held, extra, payload, m)
    seq = (sf.snd_base + s) & MASK32
    if seq != pkt.seq:
        pkt.set_seq(seq)
    if pkt.flags & TCP_ACK:
        ack = (sf.rcv_base + san) & MASK32
        if ack != pkt.ack:
            pkt.set_ack(ack)
        sf.rcv_acked = san
    if data_fin:
        pkt.set_flags(pkt.flags & ~TCP_FIN)
    if sf is not conn.sf0:
        pkt.set_src(sf.laddr)
        pkt.set_dst(sf.raddr)
        pkt.set_sport(sf.lport)
        pkt.set_dport(sf.rport)
    pkt.set_options(opts)
    sf.last_tx = now
    if n and sf.tx_at <= sf.answer_at:
        _unanswered_from(conn, sf, now)
    ents = sf.rcv_map.entries
    if ents and ents[0][0] + ents[0][2] <= san:
        sf.rcv_map.prune_below_key(san)
    return pkt.finish()


def send_pieces(conn: "Connection", pieces: list, d: int, payload: bytes,
                tsval: int | None, held: list[Range], now: float) -> None:
    """Send the TCP side's data bytes ``[d, d+len(payload))`` as segments of our own, one
    or more per :class:`~.scheduling.Piece` (cut to the path's segment size; every
    segment carries its piece's mapping, as GSO would copy it)."""
    for p in pieces:
        part = payload[p.d - d:p.d - d + p.n]
        sf, m = p.sf, p.mapping
        if conn.csum and m.csum is None:
            mptcp_option(conn, sf, p.d, p.s, p.n, False, part, m)  # (its checksum)
        step = segment_size(conn, sf)
        for off in range(0, p.n, step):
            chunk = part[off:off + step]
            opts, san = option_block(conn, sf, p.d + off, p.s + off, len(chunk), False,
                                     tsval, held, b"", chunk, m)
            sf.rcv_acked = san
            conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(p.s + off), TCP_ACK, opts,
                                          chunk))
        if sf.tx_at <= sf.answer_at:
            _unanswered_from(conn, sf, now)


def _unanswered_from(conn: "Connection", sf: Subflow, now: float) -> None:
    """Our data goes out on ``sf`` after the peer's last answer: the clock of
    :mod:`.liveness` starts, and the connection's path timer is armed."""
    sf.tx_at = now
    if conn.paths.timer is None:
        conn.proxy.pm.watch(conn, now)


def forge_segment(conn: "Connection", sf: Subflow, seq_wire: int, flags: int, opts: bytes,
                  payload: bytes = b"") -> bytearray:
    """A whole packet on ``sf``'s 4-tuple with our subflow ACK and the TCP side's window,
    TTL and TOS/traffic class (its DSCP carries over to every packet of the connection)."""
    sf.last_tx = conn.proxy.now
    return build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, seq_wire,
                         sf.rcv_wire(sf.rcv_acked), flags, conn.tcp_win, opts, payload,
                         ttl=conn.ip_ttl, tos=conn.ip_tos)


def send_ack(conn: "Connection", sf: Subflow, now: float, held: list[Range],
             flags: int = TCP_ACK, extra: bytes = b"") -> None:
    """Forge a pure ACK (with our DATA_ACK) on ``sf``; ``extra``: a signalling option to
    carry (it wins over the DSS when both do not fit, as Linux drops other suboptions)."""
    opts, san = option_block(conn, sf, conn.d_nxt, sf.snd_nxt, 0, False, None, held)
    if extra:
        if len(opts) + len(extra) > OPTION_SPACE:
            opts = build_ts(conn.tcp_tsval, sf.ts_recent) if sf.ts_ok else b""
        opts += pad_options(extra)
    sf.rcv_acked = san
    conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.seq_nxt), flags, opts))


def ack_subflows(conn: "Connection", carrier: Subflow | None, held: list[Range],
                 now: float, dupack: bool = False) -> None:
    """Forge subflow ACKs on the subflows the TCP side's ACK moves, other than
    ``carrier`` (None: no segment of the TCP side carries it; paper §3.4)."""
    for sf in subflows_to_ack(conn, carrier, held, dupack):
        send_ack(conn, sf, now, held)


def fill_acked_hole(conn: "Connection", sf: Subflow, now: float) -> None:
    """Fill a hole in our subflow sequence that the TCP side will never fill: its data
    reached the peer by another copy (the DATA_ACK covers it), so the TCP side does not
    retransmit it, yet the peer's subflow waits for those bytes. Zeros under the original
    mapping: the peer's subflow moves on and its MPTCP level drops the bytes as old data
    (below its DATA_ACK). Not with DSS checksums: zeros would fail the mapping's."""
    if conn.csum or not sf.can_send:
        return
    m = next(iter(sentmaps_over(sf, sf.snd_una, 1)), None)
    if m is None:
        return
    d = m.d + (sf.snd_una - m.s)
    if d >= conn.d_una or now - sf.fill_time < max(0.02, conn.srtt):
        return
    sf.fill_time = now
    n = min(m.end - sf.snd_una, conn.d_una - d, HOLE_FILL_MAX)
    s = sf.snd_una
    while n > 0:
        k = min(n, HOLE_FILL_SEGMENT)
        payload = bytes(k)
        opts, san = option_block(conn, sf, d, s, k, False, None, [], b"", payload, m)
        sf.rcv_acked = san
        conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(s), TCP_ACK, opts, payload))
        conn.counters.inc("HoleFill")
        s += k
        d += k
        n -= k


def ack_tcp_side(conn: "Connection", win: int | None = None) -> None:
    """An ACK to the TCP side from the peer's side of its 4-tuple: acknowledging what the
    peer has (DATA_ACK), at the next byte it expects (RFC 9293 acceptable), with the
    timestamp it last saw (PAWS); ``win``: the window shown (bytes, unscaled as on the
    wire; default: the one last shown)."""
    la, lp, ra, rp = conn.key
    top = conn.r_ack
    fwd = conn.r_fwd
    if fwd and fwd[0][0] <= top:
        top = max(top, fwd[0][1])
    if win is None:
        win = conn.shown_win if conn.shown_win >= 0 else 0xFFFF
    opts = b""
    if conn.tcp_ts_ok and conn.shown_tsval is not None:
        opts = build_ts(conn.shown_tsval, conn.tcp_tsval)
    conn.shown_win = win
    conn.proxy.send(build_segment(ra, la, rp, lp, (conn.tcp_rcv_base + top) & MASK32,
                                  (conn.tcp_snd_base + conn.d_una) & MASK32, TCP_ACK, win,
                                  opts))
