"""The MP_JOIN handshake of the peer's subflows: the proxy as listener B (RFC 8684 §3.2;
docs/protocol.md §3.3, §4.2), in every role — the peer of a server-role connection joins
from its other addresses (through an anchor, or to an address we announced), and a Linux
server may open joins toward a client-role proxy (``ip mptcp endpoint … subflow``).

A join SYN carrying one of our tokens is never passed to the TCP side: the path manager
accepts it (SYN/ACK with the leftmost 64 bits of HMAC(Key-B‖Key-A, R-B‖R-A) and our
nonce; the peer's third ACK must carry HMAC(Key-A‖Key-B, R-A‖R-B), 160 bits; then our
fourth ACK, a pure ACK with a DATA_ACK) or refuses it with RST + MP_TCPRST. A join left
half-open is given up after its SYN/ACK retransmissions, with a reset too. A SYN for a
token that is not ours is the path manager's to judge (it may belong to a native MPTCP
endpoint behind us).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, crypto
from .constants import (
    MPTCP_RST_EMPTCP,
    MPTCP_RST_EPROHIBIT,
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_MP_JOIN,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .emission import send_ack
from .events import EventKind
from .forge import build_segment
from .handshake import clamp_mss
from .options import MpJoinAck, MpJoinSyn, MpJoinSynAck, MpTcpRst, pull_option, push_option
from .projection import held_ranges
from .states import ConnState, SubflowInput, SubflowState
from .subflow import Subflow
from .tcp import TcpPacket, build_ts, pad_options
from .verdict import DROP, Verdict

if TYPE_CHECKING:
    from .connection import Connection
    from .proxy import Proxy

__all__ = ["join_syn", "join_segment", "after_join", "join_timer", "refuse",
           "SYNACK_RTO", "SYNACK_RETRIES"]

SYNACK_RTO = 1.0  # seconds before our SYN/ACK is sent again, doubled per retry (RFC 6298)
SYNACK_RETRIES = 3  # then the half-open join is reset


def join_syn(proxy: "Proxy", pkt: TcpPacket, join: MpJoinSyn, now: float) -> Verdict:
    """An MP_JOIN SYN at a 4-tuple the proxy does not know. For one of our tokens it is
    answered or refused here and never passed on; for another token the path manager
    decides (pass it on, or reset it)."""
    conn = proxy.tokens.get(join.token)
    if conn is None:
        return proxy.pm.unknown_join(pkt, now)
    if conn.state != ConnState.ESTABLISHED or \
            not proxy.pm.accept_join(conn, pkt.dst, pkt.dport, join, now):
        proxy.counters.inc("MPJoinRejected")
        return refuse(proxy, pkt, MPTCP_RST_EPROHIBIT)
    sf = conn.new_subflow(pkt.dst, pkt.dport, pkt.src, pkt.sport, proxy.random32(),
                          proxy.pm.local_addr_id(conn, pkt.dst))
    sf.passive = True
    sf.remote_id = join.join_id
    sf.peer_backup = join.backup
    sf.remote_nonce = join.nonce
    sf.nonce = proxy.random32()
    sf.iface = proxy.pm.iface_name(pkt.dst)
    sf.set_rcv_isn(pkt.seq)
    _read_syn(conn, sf, pkt)
    sf.join_hmac = crypto.join_ack_hmac(conn.remote_key, conn.local_key, join.nonce, sf.nonce)
    sf.transition(SubflowInput.JOIN_SYNACK)
    sf.retries = 0
    sf.rto = SYNACK_RTO
    conn.counters.inc("MPJoinSynRx")
    if join.backup:
        conn.counters.inc("MPJoinSynBackupRx")
    _send_synack(conn, sf, now)
    return DROP


def refuse(proxy: "Proxy", pkt: TcpPacket, reason: int) -> Verdict:
    """Refuse a join SYN with RST + MP_TCPRST ``reason`` (an unknown token: 1, MPTCP
    error; the policy or the connection's state: 3, administratively prohibited)."""
    opt = pad_options(push_option(MpTcpRst(0, reason)))
    proxy.send(build_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, 0, pkt.end_seq,
                             TCP_RST | TCP_ACK, 0, opt))
    proxy.counters.inc("MPRstTx")
    return DROP


def _read_syn(conn: "Connection", sf: Subflow, pkt: TcpPacket) -> None:
    """What the peer's join SYN offers, as the TCP side negotiated it on subflow 0."""
    b = pkt.buf
    ws = -1
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MSS and olen == 4:
            sf.mss = clamp_mss(conn, (b[off + 2] << 8) | b[off + 3])
        elif kind == TCPOPT_WINDOW and olen == 3:
            ws = b[off + 2]
        elif kind == TCPOPT_SACK_PERM and olen == 2:
            sf.sack_ok = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            sf.ts_ok = conn.tcp_ts_ok
            sf.ts_recent = int.from_bytes(b[off + 2:off + 6], "big")
    sf.snd_wscale = max(conn.tcp_wscale, 0)
    sf.rcv_wscale = ws if ws >= 0 and conn.tcp_wscale >= 0 else 0
    if not sf.mss:
        sf.mss = conn.sf0.mss


def _send_synack(conn: "Connection", sf: Subflow, now: float) -> None:
    """Our SYN/ACK: MSS, SACK, timestamps and window scale as the TCP side has them on
    subflow 0, and MP_JOIN with our address ID, truncated HMAC and nonce (§3.2)."""
    opts = bytearray()
    if conn.tcp_mss:
        opts += bytes((TCPOPT_MSS, 4)) + conn.tcp_mss.to_bytes(2, "big")
    if sf.sack_ok:
        opts += bytes((TCPOPT_SACK_PERM, 2))
    if sf.ts_ok:
        opts += build_ts(conn.tcp_tsval, sf.ts_recent)[2:]
    if conn.tcp_wscale >= 0:
        opts += bytes((1, TCPOPT_WINDOW, 3, conn.tcp_wscale))
    thmac = crypto.join_synack_thmac(conn.local_key, conn.remote_key, sf.nonce,
                                     sf.remote_nonce)
    opts += push_option(MpJoinSynAck(backup=sf.backup, join_id=sf.addr_id, thmac=thmac,
                                     nonce=sf.nonce))
    win = min(conn.tcp_win << max(conn.tcp_wscale, 0), 0xFFFF)
    sf.timer = now + sf.rto
    conn.rearm()
    conn.proxy.send(build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, sf.snd_isn,
                                  sf.rcv_wire(0), TCP_SYN | TCP_ACK, win,
                                  pad_options(bytes(opts))))
    conn.counters.inc("MPJoinSynAckTx")


def join_segment(conn: "Connection", sf: Subflow, pkt: TcpPacket, now: float):
    """A segment on a passive subflow whose third ACK has not come yet: the SYN again
    (our SYN/ACK was lost), a reset (taken only at exactly the next sequence number), or
    the third ACK, whose HMAC is checked. Always consumed."""
    flags = pkt.flags
    if flags & TCP_RST:
        if pkt.seq != sf.rcv_wire(0):  # RFC 5961 §3: only at exactly RCV.NXT
            conn.counters.inc("PktOutOfWindow")
            return DROP
        conn.counters.inc("MPJoinRstRx")
        closing.subflow_gone(conn, sf, now, "reset by peer during join")
        return DROP
    if flags & TCP_SYN:
        if not flags & TCP_ACK and pkt.seq == sf.rcv_isn:
            _send_synack(conn, sf, now)
        return DROP
    if not flags & TCP_ACK or pkt.ack != sf.snd_wire(0):
        return DROP
    ack = _join_ack(pkt)
    if ack is None or ack.hmac != sf.join_hmac:
        if ack is None:
            conn.counters.inc("MPJoinAckNoMPJoin")
        else:
            conn.counters.inc("MPJoinAckHMacFailure")
        closing.reset_subflow(conn, sf, now, MPTCP_RST_EMPTCP, "join failed")
        return DROP
    _established(conn, sf, pkt, now)
    return DROP


def _join_ack(pkt: TcpPacket) -> MpJoinAck | None:
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MPTCP and olen >= 3 and b[off + 2] >> 4 == MPTCPOPT_MP_JOIN:
            o = pull_option(bytes(b[off:off + olen]))
            if isinstance(o, MpJoinAck):
                return o
    return None


def _established(conn: "Connection", sf: Subflow, pkt: TcpPacket, now: float) -> None:
    """The third ACK's HMAC is right: the subflow is up; the fourth ACK (a DATA_ACK)
    tells the peer so, and it may send on it (§3.2)."""
    sf.transition(SubflowInput.HANDSHAKE_DONE)
    sf.est_once = True
    sf.timer = None
    sf.last_rx = now
    sf.join_echo = True
    if sf.ts_ok:
        for kind, off, olen in pkt.options() or ():
            if kind == TCPOPT_TIMESTAMP and olen == 10:
                sf.ts_recent = int.from_bytes(pkt.buf[off + 2:off + 6], "big")
    conn.counters.inc("MPJoinAckRx")
    _fourth_ack(conn, sf, now)
    conn.proxy.emit_event(EventKind.SF_ESTABLISHED, conn, sf)
    conn.proxy.pm.join_established(conn, sf, now)


def _fourth_ack(conn: "Connection", sf: Subflow, now: float) -> None:
    send_ack(conn, sf, now, held_ranges(conn, None))
    conn.counters.inc("MPJoinFourthAckTx")


def after_join(conn: "Connection", sf: Subflow, pkt: TcpPacket, now: float):
    """A segment on a passive subflow just established: the peer repeats its third ACK
    until our fourth ACK arrives (then it is answered again and consumed); anything else
    shows the fourth ACK arrived, and goes the usual way (None). A segment whose checksum
    fails shows nothing: it goes the usual way too, which counts and drops it."""
    if not pkt.checksum_ok():
        return None
    if not pkt.plen and pkt.flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK \
            and _join_ack(pkt) is not None:
        _fourth_ack(conn, sf, now)
        return DROP
    sf.join_echo = False
    return None


def join_timer(conn: "Connection", sf: Subflow, now: float) -> bool:
    """Our SYN/ACK again with back-off while the third ACK is missing; after
    :data:`SYNACK_RETRIES` the half-open join is reset. False when ``sf`` is not a
    passive subflow in its handshake (the timer is someone else's)."""
    if not sf.passive or sf.state != SubflowState.PRE_ESTABLISHED:
        return False
    sf.retries += 1
    if sf.retries > SYNACK_RETRIES:
        conn.counters.inc("MPJoinTimeout")
        closing.reset_subflow(conn, sf, now, MPTCP_RST_EUNSPEC, "join third ACK missing")
        return True
    sf.rto *= 2
    conn.counters.inc("Retransmits")
    _send_synack(conn, sf, now)
    return True

