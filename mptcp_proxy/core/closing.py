"""Closing: DATA_FIN ↔ FIN, the subflows' own FINs, RST ↔ MP_FASTCLOSE and MP_TCPRST,
and what a closed connection still answers (RFC 8684 §3.3.3, §3.5, §3.6; paper Fig. 4;
fallback to TCP is :mod:`.fallback`). The same in both roles.

The TCP side's FIN is our DATA_FIN (it consumes one data sequence number, §3.3.3); the
peer's DATA_FIN becomes a FIN for the TCP side once every byte before it was delivered.
Subflows are closed with FINs of their own once the data level is closed; a reset of the
TCP side is an MP_FASTCLOSE on every subflow (§3.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import (
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_RST,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)
from .emission import forge_segment, option_block, send_ack
from .events import EventKind
from .forge import build_segment
from .options import MpFastclose, MpTcpRst, pull_option, push_option
from .projection import held_ranges, subflow_ack
from .seq import MASK32
from .states import ConnInput, ConnState, SubflowInput, SubflowState
from .tcp import TcpPacket, build_ts, pad_options
from .verdict import DROP

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow

__all__ = [
    "data_closed", "send_data_fin", "data_fin_elsewhere", "check_close",
    "subflow_fin_received", "maybe_finished",
    "retransmit_fin", "local_reset", "reset_local", "reset_peer", "reset_subflow", "abort",
    "close", "protocol_error", "peer_reset", "closed_segment", "subflow_gone",
    "close_subflow",
]

FIN_RETRIES = 6  # our subflow FIN's retransmissions before the subflow is given up


# -- graceful: DATA_FIN and FIN -----------------------------------------------------------

def data_closed(conn: "Connection") -> bool:
    """Both DATA_FINs sent and acknowledged (RFC 8684 §3.3.3)."""
    return (conn.data_fin_acked and conn.rcv_data_fin is not None
            and conn.r_ack > conn.rcv_data_fin)


def send_data_fin(conn: "Connection", sf: "Subflow", now: float) -> None:
    """Our DATA_FIN on its own (SSN 0, DLL 1; §3.3.3) on a pure ACK on ``sf`` (when the
    mapping of our last bytes, sent before, does not carry it)."""
    opts, san = option_block(conn, sf, conn.d_nxt, sf.snd_nxt, 0, True, None,
                             held_ranges(conn, None))
    sf.rcv_acked = san
    conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.seq_nxt), TCP_ACK, opts))


def data_fin_elsewhere(conn: "Connection", carrier: "Subflow | None", now: float) -> None:
    """Our DATA_FIN also goes on every other subflow that can send (as Linux does: a
    subflow the peer reads more slowly, or that is about to fail, must not hold back the
    close)."""
    for sf in conn.subflows:
        if sf is not carrier and sf.can_send:
            send_data_fin(conn, sf, now)


def check_close(conn: "Connection", now: float) -> None:
    """Once the data level is closed, close every subflow with a FIN of its own."""
    if not data_closed(conn):
        return
    for sf in conn.subflows:
        if sf.state in (SubflowState.ESTABLISHED, SubflowState.CLOSING) and sf.fin_sent is None:
            _send_fin(conn, sf, now)
    maybe_finished(conn, now)


def _send_fin(conn: "Connection", sf: "Subflow", now: float) -> None:
    sf.fin_sent = sf.snd_nxt
    sf.transition(SubflowInput.FIN)
    sf.retries = 0
    sf.rto = conn.proxy.config.fin_rto
    sf.timer = now + sf.rto
    _emit_fin(conn, sf)
    conn.rearm()


def close_subflow(conn: "Connection", sf: "Subflow", now: float) -> None:
    """Close ``sf`` alone with a FIN (remove-subflow): the data level goes on elsewhere."""
    if sf.state == SubflowState.ESTABLISHED:
        _send_fin(conn, sf, now)


def _emit_fin(conn: "Connection", sf: "Subflow") -> None:
    opts, san = option_block(conn, sf, conn.d_nxt, sf.snd_nxt, 0, False, None,
                             held_ranges(conn, None))
    sf.rcv_acked = san
    conn.counters.inc("SubflowFinTx")
    conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.fin_sent), TCP_FIN | TCP_ACK, opts))


def retransmit_fin(conn: "Connection", sf: "Subflow", now: float) -> None:
    """Our subflow FIN is unacknowledged after its RTO: again, with back-off; given up
    after :data:`FIN_RETRIES`."""
    sf.retries += 1
    if sf.retries > conn.proxy.config.fin_retries:
        sf.transition(SubflowInput.RESET)
        return
    conn.counters.inc("Retransmits")
    _emit_fin(conn, sf)
    sf.rto *= 2
    sf.timer = now + sf.rto


def subflow_fin_received(conn: "Connection", sf: "Subflow", now: float) -> None:
    """The peer closed subflow ``sf``: acknowledge its FIN (once the TCP side has every
    byte before it), and answer with ours when the data level is closed."""
    sf.transition(SubflowInput.FIN)
    if data_closed(conn) and sf.fin_sent is None:
        _send_fin(conn, sf, now)
    else:
        held = held_ranges(conn, None)
        if subflow_ack(sf, conn.r_ack, held)[0] > sf.rcv_acked:
            send_ack(conn, sf, now, held)
    maybe_finished(conn, now)


def maybe_finished(conn: "Connection", now: float) -> None:
    """Subflows whose FINs both went and were acknowledged are closed; the connection is
    closed when the data level is and no subflow is left."""
    for sf in conn.subflows:
        if (sf.state == SubflowState.CLOSING and sf.fin_acked
                and sf.peer_fin is not None and sf.rcv_acked > sf.peer_fin):
            sf.transition(SubflowInput.FINISHED)
            sf.timer = None
            if not data_closed(conn):  # one subflow closed alone (remove-subflow)
                sf.closed_at = now
                conn.proxy.emit_event(EventKind.SF_CLOSED, conn, sf, reason="fin")
    if data_closed(conn) and all(sf.state == SubflowState.CLOSED for sf in conn.subflows):
        close(conn, now)


# -- resets -----------------------------------------------------------------------------------

def _rst_option(reason: int) -> bytes:
    return pad_options(push_option(MpTcpRst(0, reason)))


def _reset_join(conn: "Connection", sf: "Subflow") -> None:
    """RST + MP_TCPRST for a join still in its handshake (its SYN may have reached the
    peer)."""
    seq = sf.snd_wire(0) if sf.state == SubflowState.PRE_ESTABLISHED else sf.snd_isn
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, seq, 0, TCP_RST, 0,
                                  _rst_option(MPTCP_RST_EUNSPEC), ttl=conn.ip_ttl,
                                  tos=conn.ip_tos))
    conn.counters.inc("MPRstTx")


def _fastclose_option(conn: "Connection", reason: int) -> bytes:
    return pad_options(push_option(MpFastclose(conn.remote_key))
                       + push_option(MpTcpRst(0, reason)))


def local_reset(conn: "Connection", pkt: TcpPacket, now: float):
    """The TCP side resets: MP_FASTCLOSE on RST on every subflow (RFC 8684 §3.5); its own
    RST becomes the initial subflow's."""
    opt = _fastclose_option(conn, MPTCP_RST_EUNSPEC)
    verdict = DROP
    for sf in conn.subflows:
        if sf.state == SubflowState.CLOSED:
            continue
        conn.counters.inc("MPFastcloseTx")
        if sf is conn.sf0:
            pkt.set_seq(sf.snd_wire(sf.seq_nxt))
            pkt.truncate_payload(0)  # (an RST's payload is only diagnostic text)
            pkt.set_options(opt)
            verdict = pkt.finish()
        else:
            conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.seq_nxt), TCP_RST | TCP_ACK,
                                          opt))
    close(conn, now, reset=True)
    return verdict


def reset_local(conn: "Connection") -> None:
    """Forge an RST to the TCP side (the connection is gone on the wire), at the places
    it may expect the next byte."""
    la, lp, ra, rp = conn.key
    for r in sorted({conn.r_ack, conn.r_high}):
        seq = (conn.tcp_rcv_base + r) & MASK32
        conn.proxy.send(build_segment(ra, la, rp, lp, seq, 0, TCP_RST, 0))
    conn.counters.inc("RstTx")


def reset_peer(conn: "Connection", reason: int = MPTCP_RST_EUNSPEC) -> None:
    """Reset every subflow towards the peer with MP_FASTCLOSE + MP_TCPRST (§3.5, §3.6)."""
    opt = _fastclose_option(conn, reason)
    for sf in conn.subflows:
        if sf.state == SubflowState.CLOSED:
            continue
        conn.counters.inc("MPFastcloseTx")
        conn.counters.inc("MPRstTx")
        conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.snd_nxt), TCP_RST | TCP_ACK, opt))


def reset_subflow(conn: "Connection", sf: "Subflow", now: float, reason: int,
                  why: str = "protocol error") -> None:
    """Reset one subflow with MP_TCPRST ``reason`` (§3.6); the connection goes on."""
    opt = _rst_option(reason)
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                  sf.snd_wire(sf.seq_nxt), sf.rcv_wire(sf.rcv_acked),
                                  TCP_RST | TCP_ACK, 0, opt, ttl=conn.ip_ttl, tos=conn.ip_tos))
    conn.counters.inc("MPRstTx")
    subflow_gone(conn, sf, now, why)


def subflow_gone(conn: "Connection", sf: "Subflow", now: float, why: str,
                 exclude_iface: str | None = None) -> None:
    """``sf`` ended (reset, handshake failure, path gone): closed for good, reported, and
    the path manager moves new data elsewhere if it was the active one."""
    if sf.state == SubflowState.CLOSED:
        return
    sf.transition(SubflowInput.RESET)
    sf.closed_at = now
    sf.timer = None
    conn.proxy.emit_event(EventKind.SF_CLOSED, conn, sf, reason=why)
    conn.proxy.pm.subflow_gone(conn, sf, now, exclude_iface)


def abort(conn: "Connection", now: float, reason: int = MPTCP_RST_EUNSPEC) -> None:
    """Reset both sides and close (daemon exit, fatal errors)."""
    if conn.state == ConnState.ESTABLISHED:
        reset_peer(conn, reason)
        reset_local(conn)
    close(conn, now, reset=True)


def protocol_error(conn: "Connection", sf: "Subflow", now: float, reason: int):
    """A segment broke the negotiated rules (RFC 8684 §3.3): reset the subflow with
    MP_TCPRST; with no other usable subflow, the connection."""
    if any(x is not sf and x.alive for x in conn.subflows):
        reset_subflow(conn, sf, now, reason)
        return DROP
    reset_peer(conn, reason)
    reset_local(conn)
    close(conn, now, reset=True)
    return DROP


def peer_reset(conn: "Connection", sf: "Subflow", pkt: TcpPacket, others, now: float):
    """RST from the peer on ``sf``: with MP_FASTCLOSE carrying our key, the connection is
    reset (§3.5); a plain subflow reset ends only that subflow unless it was the last.
    RFC 5961 §3.2: taken only at exactly the next expected sequence number (RCV.NXT: the
    first byte not yet received in order); in the window it earns a rate-limited
    challenge ACK (the peer answers with an exact RST)."""
    conn.counters.inc("RstRx")
    s = sf.rcv_rel(pkt.seq)
    if not (s == sf.rcv_contig or (sf.peer_fin is not None and s == sf.peer_fin + 1)):
        conn.counters.inc("RstChallenged")
        if conn.proxy.may_answer(sf, now, challenge=True, data=False):
            conn.counters.inc("ChallengeAckTx")
            send_ack(conn, sf, now, held_ranges(conn, None))
        else:
            conn.counters.inc("ChallengeAckLimited")
        return DROP
    fastclose = False
    b = pkt.buf
    for sub, off, olen in others or ():
        o = pull_option(bytes(b[off:off + olen]))
        if isinstance(o, MpFastclose):
            if o.rcvr_key == conn.local_key:
                fastclose = True
                conn.counters.inc("MPFastcloseRx")
        elif sub == MPTCPOPT_RST:
            conn.counters.inc("MPRstRx")
    sf.transition(SubflowInput.RESET)
    if fastclose or not any(x.alive for x in conn.subflows):
        return _reset_by_peer(conn, sf, pkt, now)
    sf.closed_at = now
    conn.proxy.emit_event(EventKind.SF_CLOSED, conn, sf, reason="reset by peer")
    conn.proxy.pm.subflow_gone(conn, sf, now, None)
    return DROP


def _reset_by_peer(conn: "Connection", sf: "Subflow", pkt: TcpPacket, now: float):
    """The whole connection was reset by the peer: the TCP side gets the RST."""
    close(conn, now, reset=True)
    if sf is conn.sf0:
        pkt.set_seq((conn.tcp_rcv_base + conn.r_high) & MASK32)
        pkt.set_options(b"")
        if conn.r_ack != conn.r_high:
            reset_local(conn)
        return pkt.finish()
    reset_local(conn)
    return DROP


def close(conn: "Connection", now: float, reset: bool = False) -> None:
    """The connection is closed (gracefully, or by a reset): every subflow with it; it is
    remembered ``linger`` seconds to absorb late segments."""
    if reset:
        conn.closed_by_reset = True
    if conn.state not in (ConnState.ESTABLISHED, ConnState.SYN_SENT, ConnState.SYN_RCVD):
        return
    conn.transition(ConnInput.RESET if reset else ConnInput.DATA_CLOSED)
    conn.closed_at = now
    for sf in conn.subflows:
        if sf.state in (SubflowState.SYN_SENT, SubflowState.PRE_ESTABLISHED) and sf.index:
            _reset_join(conn, sf)  # a join under way: never left half-open at the peer
        sf.transition(SubflowInput.RESET)
    conn.proxy.emit_event(EventKind.CLOSED, conn, reason="reset" if reset else "fin")
    conn.set_timer(now + conn.proxy.config.linger)


def closed_segment(conn: "Connection", pkt: TcpPacket, sf: "Subflow", now: float):
    """A segment on a closed connection. After a reset, anything but an RST is answered
    with an RST at the sequence the peer expects (as a closed socket does), so a
    challenge ACK to our reset ends the peer's side too; after a graceful close, a late
    FIN is acknowledged."""
    flags = pkt.flags
    if flags & TCP_SYN and flags & TCP_ACK and not flags & TCP_RST and sf.index:
        # a join's SYN/ACK after the close: the peer's half-open subflow is reset
        conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, pkt.ack, 0,
                                      TCP_RST, 0, _rst_option(MPTCP_RST_EUNSPEC),
                                      ttl=conn.ip_ttl, tos=conn.ip_tos))
        conn.counters.inc("MPRstTx")
        return DROP
    if conn.closed_by_reset:
        if not flags & TCP_RST and flags & TCP_ACK and conn.remote_key:
            conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, pkt.ack, 0,
                                          TCP_RST, 0, _fastclose_option(conn, MPTCP_RST_EUNSPEC),
                                          ttl=conn.ip_ttl, tos=conn.ip_tos))
            conn.counters.inc("RstTx")
        return DROP
    if flags & TCP_FIN and not flags & TCP_RST and sf.rcv_base:
        s_fin = sf.rcv_rel(pkt.seq) + pkt.plen
        opts = build_ts(conn.tcp_tsval, sf.ts_recent) if sf.ts_ok else b""
        conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport,
                                      sf.snd_wire(sf.seq_nxt), sf.rcv_wire(s_fin + 1),
                                      TCP_ACK, conn.tcp_win, opts, ttl=conn.ip_ttl,
                                      tos=conn.ip_tos))
    return DROP

