"""The MP_CAPABLE handshake in the server role (RFC 8684 §3.1; docs/protocol.md §4.1,
listener side): an MPTCP peer opens a connection to a plain TCP listener behind the
proxy — a local one (``--serve``) or a server behind the router (anchor mode).

1. The peer's SYN carries MP_CAPABLE (len 4): the MSS is clamped so that our options fit
   the TCP side's segments; the option is stripped before a known plain listener sees it
   (``--serve``); an anchor leaves it, since the server may speak MPTCP itself.
2. The TCP side's SYN/ACK: without MP_CAPABLE it gets ours (len 12, our key, A bit when
   the peer asked for checksums or ``--checksum`` does); with it (anchor: a native MPTCP
   server), the proxy steps aside and forgets the connection.
3. The peer's third ACK (MP_CAPABLE len 20) or first data (len 22/24) gives its key, is
   stripped, and establishes the connection, fully (the listener has both keys). The
   first data's implied mapping (DSN = IDSN + 1, SSN 1) is rewritten in place as the DSS
   it stands for, so the one receive path takes it.

Everything after (projection, scheduling, emission, closing, signalling) is the same as
in the client role; every segment we send from here on carries a DSS with DATA_ACK, which
a Linux client needs to become fully established (docs/protocol.md §1.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, fallback, receive
from .constants import (
    MPTCP_CAP_CHECKSUM_REQD,
    MPTCP_CAP_HMAC_SHA256,
    MPTCPOPT_DSS,
    MPTCPOPT_MP_CAPABLE,
    TCP_ACK,
    TCP_FIN,
    TCP_MAX_OPTION_SPACE,
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
from .handshake import clamp_mss
from .options import MpCapable, MpJoinSyn, pack_dss, pull_option, push_option
from .seq import MASK32, MASK64
from .states import ConnInput, SubflowInput
from .tcp import TcpPacket, build_ts, pad_options, syn_option_length_ok
from .verdict import ACCEPT, DROP

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["syn_option", "read_peer_syn", "accept_syn", "tcp_side_segment", "peer_segment",
           "synack_again", "first_data"]


def syn_option(pkt: TcpPacket) -> MpCapable | MpJoinSyn | None:
    """The MPTCP option of a peer's SYN that matters: a valid MP_CAPABLE (len 4) or
    MP_JOIN (len 12); None for a plain SYN or a malformed option (Linux ignores it, and
    so the SYN is plain for it too)."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MPTCP:
            o = pull_option(bytes(b[off:off + olen]), syn=True)
            if isinstance(o, MpCapable) and o.sndr_key is None:
                return o
            if isinstance(o, MpJoinSyn):
                return o
    return None


def read_peer_syn(conn: "Connection", pkt: TcpPacket) -> None:
    """What the peer's SYN offers (MSS, window scale, SACK, timestamps, checksums); they
    hold once the TCP side's SYN/ACK agrees. Subflow 0 receives from the SYN's ISN on."""
    b = pkt.buf
    sf = conn.sf0
    conn.peer_wscale0 = -1  # (none offered, until its option says otherwise)
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MSS and olen == 4:
            sf.mss = clamp_mss(conn, (b[off + 2] << 8) | b[off + 3])
        elif kind == TCPOPT_WINDOW and olen == 3:
            conn.peer_wscale0 = b[off + 2]
        elif kind == TCPOPT_SACK_PERM and olen == 2:
            sf.sack_ok = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            sf.ts_ok = True
            sf.ts_recent = int.from_bytes(b[off + 2:off + 6], "big")
        elif kind == TCPOPT_MPTCP:
            o = pull_option(bytes(b[off:off + olen]), syn=True)
            if isinstance(o, MpCapable) and o.flags & MPTCP_CAP_CHECKSUM_REQD:
                conn.csum_requested = True
    sf.set_rcv_isn(pkt.seq)
    conn.tcp_rcv_isn = pkt.seq
    conn.tcp_rcv_base = (pkt.seq + 1) & MASK32
    conn.counters.inc("MPCapableSYNRX")


def accept_syn(conn: "Connection", pkt: TcpPacket):
    """The peer's SYN (first or retransmitted) on its way to the TCP side: MSS clamped,
    MP_CAPABLE stripped — unless an anchor waits for the server's answer: then the one
    valid MP_CAPABLE (len 4) stays, and any other MPTCP option goes (a native server
    must see the SYN the anchor judged, a plain one nothing else of MPTCP). Returns the
    verdict."""
    b = pkt.buf
    keep = bytearray()
    changed = False
    mpc_kept = False
    for kind, off, olen in pkt.options() or ():
        raw = bytes(b[off:off + olen])
        if not _length_ok(conn, kind, olen):
            changed = True
            continue
        if kind == TCPOPT_MSS and olen == 4:
            mss = (raw[2] << 8) | raw[3]
            clamped = clamp_mss(conn, mss)
            if clamped < mss:
                raw = raw[:2] + clamped.to_bytes(2, "big")
                changed = True
                conn.counters.inc("MssClamped")
        elif kind == TCPOPT_MPTCP:
            if not conn.anchor or mpc_kept or not _plain_mpc(raw):
                changed = True
                continue
            mpc_kept = True
        keep += raw
    if not changed:
        return ACCEPT
    pkt.set_options(pad_options(bytes(keep)))
    return pkt.finish()


def _length_ok(conn: "Connection", kind: int, olen: int) -> bool:
    """Whether a SYN's option of ``kind`` has its one valid length (RFC 9293, RFC 7323,
    RFC 2018); one that has not is counted and left out (Linux ignores it anyway)."""
    if syn_option_length_ok(kind, olen):
        return True
    conn.counters.inc("OptMalformed")
    return False


def _plain_mpc(raw: bytes) -> bool:
    """A valid MP_CAPABLE of a SYN (len 4, no key)."""
    o = pull_option(raw, syn=True)
    return isinstance(o, MpCapable) and o.sndr_key is None


# -- the TCP side's SYN/ACK -------------------------------------------------------------------

def tcp_side_segment(conn: "Connection", pkt: TcpPacket, now: float):
    """A segment of the TCP side while the handshake runs: its SYN/ACK gets our key (or,
    from a native MPTCP server, makes an anchor step aside); its RST closes; anything
    else is held back (the peer must see no segment without MPTCP options now)."""
    flags = pkt.flags
    if flags & TCP_RST:
        closing.close(conn, now, reset=True)
        return ACCEPT
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
        if flags & TCP_FIN:  # no SYN/ACK a stack sends: the peer must not get it
            conn.counters.inc("PktMalformed")
            return DROP
        return _synack(conn, pkt, now)
    return DROP


def _synack(conn: "Connection", pkt: TcpPacket, now: float):
    if pkt.ack != conn.tcp_rcv_base:
        return ACCEPT  # not for the peer's SYN: the peer will refuse it
    keep, tcp, native = _read_synack(conn, pkt)
    if native and conn.anchor:
        conn.proxy.step_aside(conn, now)  # a native MPTCP server: end to end, untouched
        return ACCEPT
    first = conn.syn_count == 0
    if first:
        _negotiate(conn, pkt, tcp)
    elif pkt.seq != conn.tcp_snd_isn:
        return DROP  # another ISN than the first SYN/ACK's: not the connection we convert
    conn.csum = conn.csum_requested
    flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if conn.csum else 0)
    mpc = push_option(MpCapable(flags=flags, sndr_key=conn.local_key))
    if len(keep) + len(mpc) > TCP_MAX_OPTION_SPACE:
        conn.counters.inc("MPCapableSYNACKTXDrop")
        fallback.fallback(conn, now)  # no room: the peer sees a plain SYN/ACK (and falls back)
        pkt.set_options(pad_options(bytes(keep)))
        return pkt.finish()
    conn.syn_count += 1
    conn.syn_time = now
    if first:
        conn.counters.inc("MPCapableSYNACKTX")
        if conn.anchor:
            conn.counters.inc("AnchorConverted")
    else:
        conn.counters.inc("Retransmits")
    pkt.set_options(pad_options(bytes(keep) + mpc))
    return pkt.finish()


def _read_synack(conn: "Connection", pkt: TcpPacket) -> tuple[bytearray, dict, bool]:
    """The SYN/ACK's options without any MPTCP one or malformed one (to keep), what they
    negotiate, and whether it carried a valid MP_CAPABLE (its sender speaks MPTCP)."""
    b = pkt.buf
    keep = bytearray()
    tcp = {"mss": 0, "wscale": -1, "sack": False, "ts": None}
    native = False
    for kind, off, olen in pkt.options() or ():
        raw = bytes(b[off:off + olen])
        if not _length_ok(conn, kind, olen):
            continue
        if kind == TCPOPT_MPTCP:
            o = pull_option(raw, syn=True)
            native = native or (isinstance(o, MpCapable) and o.sndr_key is not None)
            continue
        if kind == TCPOPT_MSS and olen == 4:
            tcp["mss"] = (raw[2] << 8) | raw[3]
        elif kind == TCPOPT_WINDOW and olen == 3:
            tcp["wscale"] = raw[2]
        elif kind == TCPOPT_SACK_PERM and olen == 2:
            tcp["sack"] = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            tcp["ts"] = int.from_bytes(raw[2:6], "big")
        keep += raw
    return keep, tcp, native


def _negotiate(conn: "Connection", pkt: TcpPacket, tcp: dict) -> None:
    """What both ends agreed on: the TCP side's first SYN/ACK answers the peer's SYN."""
    sf = conn.sf0
    conn.tcp_snd_isn = pkt.seq
    conn.tcp_snd_base = (pkt.seq + 1) & MASK32
    sf.set_snd_isn(pkt.seq)
    conn.tcp_mss = tcp["mss"]
    conn.tcp_win = pkt.win
    if tcp["wscale"] >= 0 and conn.peer_wscale0 >= 0:
        conn.tcp_wscale = tcp["wscale"]
        # a SYN/ACK's window is never scaled: kept in the units of later segments
        conn.tcp_win = (pkt.win + (1 << tcp["wscale"]) - 1) >> tcp["wscale"]
        sf.snd_wscale = tcp["wscale"]
        sf.rcv_wscale = conn.peer_wscale0
    else:  # scaling needs both (RFC 7323 §2.2)
        conn.tcp_wscale = -1
        sf.snd_wscale = sf.rcv_wscale = conn.peer_wscale0 = 0
    sf.sack_ok = conn.tcp_sack = sf.sack_ok and tcp["sack"]
    sf.ts_ok = conn.tcp_ts_ok = sf.ts_ok and tcp["ts"] is not None
    if sf.ts_ok:
        conn.tcp_tsval = tcp["ts"]
        conn.shown_tsval = sf.ts_recent  # the TCP side's ts_recent: the peer's SYN's
    if not sf.mss:
        sf.mss = clamp_mss(conn, 536)


def synack_again(conn: "Connection", pkt: TcpPacket):
    """The TCP side repeats its SYN/ACK after the connection was established: the peer's
    third ACK did not reach it (lost behind an anchor). The peer is past its handshake;
    the ACK the TCP side waits for is forged from what the third ACK said."""
    if pkt.seq != conn.tcp_snd_isn:
        return DROP
    la, lp, ra, rp = conn.key
    opts = b""
    if conn.tcp_ts_ok:
        opts = build_ts(conn.shown_tsval or 0, int.from_bytes(_ts_of(pkt), "big"))
    win = conn.shown_win if conn.shown_win >= 0 else 0xFFFF
    conn.proxy.send(build_segment(ra, la, rp, lp, (conn.tcp_rcv_base + conn.r_ack) & MASK32,
                                  (conn.tcp_snd_base + conn.d_una) & MASK32, TCP_ACK, win,
                                  opts))
    conn.counters.inc("Retransmits")
    return DROP


def _ts_of(pkt: TcpPacket) -> bytes:
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_TIMESTAMP and olen == 10:
            return bytes(b[off + 2:off + 6])
    return bytes(4)


# -- the peer's third ACK -----------------------------------------------------------------------

def peer_segment(conn: "Connection", pkt: TcpPacket, now: float):
    """A segment of the peer while the handshake runs: its SYN again, its RST, or the
    third ACK / first data that gives its key. Returns the verdict."""
    flags = pkt.flags
    if flags & TCP_RST:
        if flags & TCP_SYN:  # no RST a stack sends: nothing to act on or to pass
            conn.counters.inc("PktMalformed")
            return DROP
        if pkt.seq != conn.tcp_rcv_base:
            # RFC 5961 §3.2: an RST counts only at exactly RCV.NXT (the peer's ISN + 1
            # here). No challenge ACK: without the peer's key there is no DATA_ACK to
            # put on it, and a Linux client takes a first segment of the listener without
            # one for a fallback; a peer that did reset answers the server's next SYN/ACK
            # with an RST at exactly this sequence.
            conn.counters.inc("PktOutOfWindow")
            return DROP
        closing.close(conn, now, reset=True)
        return _without_mptcp(pkt)
    if flags & TCP_SYN:
        if flags & TCP_FIN:  # never a connection request (as for the first SYN)
            conn.counters.inc("PktMalformed")
            return DROP
        if flags & TCP_ACK or pkt.seq != conn.tcp_rcv_isn:
            return DROP
        return accept_syn(conn, pkt)  # the peer did not get the SYN/ACK yet
    if not flags & TCP_ACK or conn.syn_count == 0 or pkt.ack != conn.tcp_snd_base:
        return DROP  # nothing acknowledges the TCP side's SYN/ACK
    mpc = _third_ack_mpc(pkt)
    if mpc is None:
        conn.counters.inc("MPCapableFallbackACK")
        fallback.fallback(conn, now)  # the peer fell back: plain TCP from here on
        return ACCEPT
    if mpc.rcvr_key != conn.local_key:
        conn.counters.inc("MPCapableKeyMismatch")
        return DROP
    _establish(conn, pkt, mpc, now)
    if pkt.plen:
        first_data(conn, pkt)
        return receive.receive(conn, conn.sf0, pkt, now)
    return _third_ack_to_tcp_side(conn, pkt)


def _third_ack_mpc(pkt: TcpPacket) -> MpCapable | None:
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MPTCP and olen >= 3 and b[off + 2] >> 4 == MPTCPOPT_MP_CAPABLE:
            o = pull_option(bytes(b[off:off + olen]))
            if isinstance(o, MpCapable) and o.rcvr_key is not None:
                return o
    return None


def _establish(conn: "Connection", pkt: TcpPacket, mpc: MpCapable, now: float) -> None:
    """The peer's key arrived: MPTCP in use, fully established (RFC 8684 §3.1: the
    listener holds both keys now); the path manager may announce addresses."""
    conn.set_remote_key(mpc.sndr_key)
    if mpc.flags & MPTCP_CAP_CHECKSUM_REQD:
        conn.csum = True  # the A bit of the third ACK turns checksums on (§1.3)
    sf = conn.sf0
    sf.transition(SubflowInput.HANDSHAKE_DONE)
    sf.est_once = True
    sf.last_rx = now
    conn.transition(ConnInput.MPC_ANSWERED)
    conn.fully_established = True
    conn.fast = not conn.csum and sf.ts_ok
    conn.srtt = max(now - conn.syn_time, 0.0)
    conn.counters.inc("MPCapableACKRX")
    conn.counters.inc("MPFullyEstablished")
    conn.proxy.emit_event(EventKind.ESTABLISHED, conn, elapsed=conn.srtt)
    conn.open_joins(now)


def _third_ack_to_tcp_side(conn: "Connection", pkt: TcpPacket):
    """The pure third ACK completes the TCP side's handshake: it goes on without MPTCP
    options (it is what the TCP side was shown last)."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_TIMESTAMP and olen == 10 and conn.tcp_ts_ok:
            tsval = int.from_bytes(b[off + 2:off + 6], "big")
            conn.sf0.ts_recent = conn.shown_tsval = tsval
    conn.shown_win = pkt.win
    return _without_mptcp(pkt)


def _without_mptcp(pkt: TcpPacket):
    b = pkt.buf
    opts = pkt.options() or ()
    if not any(kind == TCPOPT_MPTCP for kind, _o, _n in opts):
        return ACCEPT
    keep = b"".join(bytes(b[off:off + olen]) for kind, off, olen in opts
                    if kind != TCPOPT_MPTCP)
    pkt.set_options(pad_options(keep))
    return pkt.finish()


def first_data(conn: "Connection", pkt: TcpPacket) -> None:
    """The peer's first data segment (subflow sequence 1) may carry MP_CAPABLE with a
    data-level length (len 22, or 24 with a checksum) instead of a DSS: its implied
    mapping is DSN = the peer's IDSN + 1, SSN 1 (RFC 8684 §3.1). The option is rewritten
    in place as that DSS mapping (same bytes, NOP-padded), for the receive path. Keys that
    differ from the handshake's leave it as it is (no mapping: the data is dropped)."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind != TCPOPT_MPTCP or olen < 22 or b[off + 2] >> 4 != MPTCPOPT_MP_CAPABLE:
            continue
        if not pkt.checksum_ok():
            return  # (the receive path counts and drops it; nothing changes before)
        o = pull_option(bytes(b[off:off + olen]))
        if not isinstance(o, MpCapable) or o.data_len is None:
            conn.counters.inc("OptMalformed")
            return
        if o.sndr_key != conn.remote_key or o.rcvr_key != conn.local_key:
            conn.counters.inc("MPCapableKeyMismatch")
            return
        dss = pack_dss(None, (conn.remote_idsn + 1) & MASK64, 1, o.data_len, o.checksum)
        pkt.patch_bytes(off, b"\x01" * (olen - len(dss)) + dss)
        conn.counters.inc("MPCapableDataRX")
        _drop_other_dss(conn, pkt, off, off + olen)
        return


def _drop_other_dss(conn: "Connection", pkt: TcpPacket, lo: int, hi: int) -> None:
    """A DSS beside MP_CAPABLE with data is malformed (the implied mapping, now at
    ``[lo, hi)``, is the one): NOPs in its place, counted, so that one DSS remains."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MPTCP and not lo <= off < hi and olen >= 3 and \
                b[off + 2] >> 4 == MPTCPOPT_DSS:
            pkt.patch_bytes(off, b"\x01" * olen)
            conn.counters.inc("OptMalformed")
