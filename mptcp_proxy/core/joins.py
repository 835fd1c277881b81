"""The MP_JOIN handshake of the proxy's own subflows (RFC 8684 §3.2), initiator side.

Extra subflows have no socket on the TCP side: the proxy forges their SYN (token of the
peer, our nonce), checks the SYN/ACK's truncated HMAC, sends the third ACK with the full
HMAC and retransmits it until the peer's fourth ACK, and sends no data before that.
Failures end the subflow with RST + MP_TCPRST (a join never falls back to TCP).
Who opens subflows, and when, is the path manager's decision (:mod:`.policy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, crypto, joins_listener, liveness
from .constants import (
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EUNSPEC,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .events import EventKind
from .forge import build_segment
from .handshake import MAX_WSCALE, clamp_mss
from .options import MpJoinAck, MpJoinSyn, MpJoinSynAck, MpTcpRst, pull_option, push_option
from .states import SubflowInput, SubflowState
from .subflow import Subflow
from .tcp import TcpPacket, build_ts, pad_options
from .verdict import DROP

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["JOIN_SYN_RTO", "JOIN_ACK_RTO", "start_join", "join_segment", "join_timer"]

JOIN_SYN_RTO = 1.0  # seconds, doubled per retry (RFC 6298 initial RTO)
JOIN_SYN_RETRIES = 3
JOIN_ACK_RTO = liveness.RTO_MIN  # third-ACK retransmission (at least; the path's RTO)
JOIN_ACK_RETRIES = 5


def start_join(conn: "Connection", sf: Subflow, now: float) -> None:
    """Send the MP_JOIN SYN of the new subflow ``sf`` (registered, in SYN_SENT): our MSS,
    window scale, SACK and timestamps as the TCP side negotiated them."""
    sf.nonce = conn.proxy.random32()
    sf.snd_wscale = max(conn.tcp_wscale, 0)
    sf.retries = 0
    sf.rto = JOIN_SYN_RTO
    sf.syn_at = now
    _send_syn(conn, sf, now)
    conn.counters.inc("MPJoinSynTx")
    conn.proxy.emit_event(EventKind.SF_OPENING, conn, sf)


def _send_syn(conn: "Connection", sf: Subflow, now: float) -> None:
    opts = bytearray()
    if conn.tcp_mss:
        opts += bytes((TCPOPT_MSS, 4)) + conn.tcp_mss.to_bytes(2, "big")
    opts += bytes((TCPOPT_SACK_PERM, 2))
    if conn.tcp_ts_ok:
        opts += bytes((TCPOPT_TIMESTAMP, 10)) + conn.tcp_tsval.to_bytes(4, "big") + bytes(4)
    if conn.tcp_wscale >= 0:
        opts += bytes((1, TCPOPT_WINDOW, 3, conn.tcp_wscale))
    opts += push_option(MpJoinSyn(backup=sf.backup, join_id=sf.addr_id,
                                  token=conn.remote_token, nonce=sf.nonce))
    sf.timer = now + sf.rto
    conn.rearm()
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_isn, 0,
                                  TCP_SYN, 0xFFFF, pad_options(bytes(opts)), ttl=conn.ip_ttl,
                                  tos=conn.ip_tos))


def _send_third_ack(conn: "Connection", sf: Subflow, now: float) -> None:
    opts = build_ts(conn.tcp_tsval, sf.ts_recent) if sf.ts_ok else b""
    opts += push_option(MpJoinAck(sf.join_hmac))
    sf.timer = now + sf.rto
    conn.rearm()
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_wire(0),
                                  sf.rcv_wire(0), TCP_ACK, conn.tcp_win, pad_options(opts),
                                  ttl=conn.ip_ttl, tos=conn.ip_tos))


def join_segment(conn: "Connection", sf: Subflow, pkt: TcpPacket, now: float):
    """A segment on a subflow still in its MP_JOIN handshake. Returns the verdict: the
    handshake is consumed; the fourth ACK establishes the subflow and is then handled as
    any segment (``None`` is returned for it, so the caller goes on)."""
    flags = pkt.flags
    if flags & TCP_RST:
        # RFC 9293 §3.10.7.3 / RFC 5961 §3: in SYN_SENT only an RST acknowledging our SYN,
        # after it only one at exactly RCV.NXT, is taken
        ok = (flags & TCP_ACK and pkt.ack == sf.snd_wire(0)) \
            if sf.state == SubflowState.SYN_SENT else pkt.seq == sf.rcv_wire(0)
        if not ok:
            conn.counters.inc("PktAckUnacceptable")
            return DROP
        conn.counters.inc("MPJoinRstRx")
        closing.subflow_gone(conn, sf, now, "reset by peer during join")
        return DROP
    if sf.state == SubflowState.SYN_SENT:
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK or pkt.ack != sf.snd_wire(0):
            return DROP
        return _synack(conn, sf, pkt, now)
    if flags & TCP_SYN:  # the SYN/ACK again: our third ACK was lost
        _send_third_ack(conn, sf, now)
        return DROP
    if flags & TCP_ACK and pkt.ack == sf.snd_wire(0):
        sf.transition(SubflowInput.HANDSHAKE_DONE)
        sf.est_once = True
        sf.timer = None
        sf.last_rx = sf.answer_at = now
        conn.counters.inc("MPJoinEstab")
        conn.proxy.emit_event(EventKind.SF_ESTABLISHED, conn, sf)
        conn.proxy.pm.join_established(conn, sf, now)
        return None
    return DROP


def _synack(conn: "Connection", sf: Subflow, pkt: TcpPacket, now: float):
    """The SYN/ACK of our join: the truncated HMAC must be HMAC(KeyB‖KeyA, R_B‖R_A)'s
    leftmost 64 bits, B being the peer (§3.2); then the third ACK with our full HMAC."""
    join, peer = _read_synack(conn, sf, pkt)
    sf.set_rcv_isn(pkt.seq)
    if join is None:
        conn.counters.inc("MPJoinSynAckNoMPJoin")
        _reset_join(conn, sf, now, MPTCP_RST_EMPTCP)
        return DROP
    expect = crypto.join_synack_thmac(conn.remote_key, conn.local_key, join.nonce, sf.nonce)
    if join.thmac != expect:
        conn.counters.inc("MPJoinSynAckHMacFailure")
        _reset_join(conn, sf, now, MPTCP_RST_EMPTCP)
        return DROP
    conn.counters.inc("MPJoinSynAckRx")
    sf.remote_nonce = join.nonce
    sf.peer_backup = join.backup
    sf.rcv_wscale = peer["wscale"] if conn.tcp_wscale >= 0 else 0
    sf.sack_ok = peer["sack"]
    sf.ts_ok = peer["ts"] and conn.tcp_ts_ok
    sf.join_hmac = crypto.join_ack_hmac(conn.local_key, conn.remote_key, sf.nonce, join.nonce)
    sf.transition(SubflowInput.JOIN_SYNACK)
    if sf.retries == 0:  # (Karn: not from a retransmitted SYN)
        liveness.rtt_sample(sf, now - sf.syn_at)
    sf.retries = 0
    sf.rto = max(JOIN_ACK_RTO, liveness.path_rto(conn, sf))
    sf.last_rx = now
    _send_third_ack(conn, sf, now)
    conn.counters.inc("MPJoinAckTx")
    return DROP


def _read_synack(conn: "Connection", sf: Subflow, pkt: TcpPacket):
    b = pkt.buf
    join = None
    peer = {"wscale": 0, "sack": False, "ts": False}
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MPTCP:
            o = pull_option(bytes(b[off:off + olen]), syn=True)
            if isinstance(o, MpJoinSynAck):
                join = o
        elif kind == TCPOPT_WINDOW and olen == 3:
            peer["wscale"] = min(b[off + 2], MAX_WSCALE)
        elif kind == TCPOPT_SACK_PERM:
            peer["sack"] = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            peer["ts"] = True
            sf.ts_recent = int.from_bytes(b[off + 2:off + 6], "big")
        elif kind == TCPOPT_MSS and olen == 4:  # what we may send on this subflow
            sf.mss = clamp_mss(conn, (b[off + 2] << 8) | b[off + 3])
    return join, peer


def _reset_join(conn: "Connection", sf: Subflow, now: float, reason: int) -> None:
    opt = pad_options(push_option(MpTcpRst(0, reason)))
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_wire(0), 0,
                                  TCP_RST, 0, opt, ttl=conn.ip_ttl, tos=conn.ip_tos))
    conn.counters.inc("MPRstTx")
    closing.subflow_gone(conn, sf, now, "join failed")
    if reason == MPTCP_RST_EMPTCP:  # a protocol failure (HMAC): not tried again
        if conn.paths.retry is not None:
            conn.paths.retry.pop(sf.iface, None)


def join_timer(conn: "Connection", sf: Subflow, now: float) -> bool:
    """Retransmissions of the handshake (SYN with back-off, third ACK until the fourth
    ACK); gives the join up after its retries. Returns False when ``sf`` is not in its
    handshake (the timer is someone else's). The peer's joins run their own
    (:func:`.joins_listener.join_timer`)."""
    if sf.passive:
        return joins_listener.join_timer(conn, sf, now)
    if sf.state == SubflowState.SYN_SENT:
        sf.retries += 1
        if sf.retries > JOIN_SYN_RETRIES:
            conn.counters.inc("MPJoinTimeout")
            closing.subflow_gone(conn, sf, now, "join SYN unanswered")
            return True
        sf.rto *= 2
        conn.counters.inc("Retransmits")
        _send_syn(conn, sf, now)
        return True
    if sf.state == SubflowState.PRE_ESTABLISHED:
        sf.retries += 1
        if sf.retries > JOIN_ACK_RETRIES:
            conn.counters.inc("MPJoinTimeout")
            _reset_join(conn, sf, now, MPTCP_RST_EUNSPEC)
            return True
        sf.rto *= 2
        conn.counters.inc("Retransmits")
        _send_third_ack(conn, sf, now)
        return True
    return False
