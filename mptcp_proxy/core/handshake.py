"""The MP_CAPABLE handshake (RFC 8684 §3.1), client role: the TCP side's SYN goes out
with MP_CAPABLE, the peer's key is taken from its SYN/ACK and stripped before the TCP
side sees it, the MSS is clamped so that our options fit (the third ACK and first data
segment, which repeat both keys, are built by :mod:`.emission`).

Only the handshake and who may open subflows differ between the roles; everything after
it (projection, scheduling, emission, closing) is shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import (
    MPTCP_CAP_CHECKSUM_REQD,
    MPTCP_CAP_DENY_JOIN_ID0,
    MPTCP_CAP_HMAC_SHA256,
    MPTCPOPT_MP_CAPABLE,
    TCP_MAX_OPTION_SPACE,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
)
from .events import EventKind
from .fallback import fallback
from .options import MpCapable, pull_option, push_option
from .states import ConnInput, SubflowInput
from .tcp import TcpPacket, pad_options, syn_option_length_ok
from .verdict import ACCEPT

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["read_tcp_syn", "send_syn", "receive_synack", "strip_mptcp", "clamp_mss",
           "used_options"]

MIN_MSS = 536  # RFC 9293 §3.7.1 default; the clamp never goes below it
MAX_WSCALE = 14  # RFC 7323 §2.3: a larger shift counts as 14


def clamp_mss(conn: "Connection", mss: int) -> int:
    """The MSS to announce for a peer MSS of ``mss``: lowered by our option overhead
    (MP_CAPABLE with data length, or DSS with DATA_ACK and a 64-bit mapping)."""
    return max(mss - conn.proxy.config.mss_overhead, MIN_MSS)


def read_tcp_syn(conn: "Connection", pkt: TcpPacket) -> None:
    """What the TCP side's SYN negotiates (MSS, window scale, SACK, timestamps); the
    initial subflow starts with the same."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_MSS and olen == 4:
            conn.tcp_mss = (b[off + 2] << 8) | b[off + 3]
        elif kind == TCPOPT_WINDOW and olen == 3:
            conn.tcp_wscale = min(b[off + 2], MAX_WSCALE)
        elif kind == TCPOPT_SACK_PERM and olen == 2:
            conn.tcp_sack = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            conn.tcp_ts_ok = True
            conn.tcp_tsval = int.from_bytes(b[off + 2:off + 6], "big")
    sf = conn.sf0
    sf.snd_wscale = max(conn.tcp_wscale, 0)
    sf.ts_ok = conn.tcp_ts_ok
    sf.mss = conn.tcp_mss


def send_syn(conn: "Connection", pkt: TcpPacket, now: float):
    """The TCP side's SYN (first or retransmitted): add MP_CAPABLE (len 4, flags A per
    ``--checksum`` and H). Like Linux, a SYN with MP_CAPABLE retransmitted twice goes out
    without it (middleboxes that drop unknown options); the answer then decides."""
    conn.syn_count += 1
    conn.syn_time = now
    if conn.syn_count > conn.proxy.config.syn_mpc_retries + 1 and conn.syn_mpc:
        conn.syn_mpc = False
        conn.counters.inc("MPCapableSYNTXDrop")
    if not conn.syn_mpc:
        return ACCEPT
    if any(kind == TCPOPT_MPTCP for kind, _o, _n in pkt.options() or ()):
        conn.counters.inc("PktAlreadyMptcp")  # the socket speaks MPTCP itself: add nothing
        return ACCEPT
    flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if conn.csum_requested else 0)
    mpc = push_option(MpCapable(flags=flags))
    old = _valid_syn_options(conn, pkt)
    if len(old) + len(mpc) > TCP_MAX_OPTION_SPACE:
        conn.syn_mpc = False
        conn.counters.inc("MPCapableSYNTXDrop")
        return ACCEPT
    pkt.set_options(pad_options(old + mpc))
    conn.counters.inc("MPCapableSYNTX")
    return pkt.finish()


def receive_synack(conn: "Connection", pkt: TcpPacket, now: float):
    """The peer's SYN/ACK on the initial subflow: with a valid MP_CAPABLE (len 12, v1)
    take its key, strip it, clamp the MSS; without, the connection falls back to TCP
    (Linux ``MPCapableFallbackSYNACK``) and passes untouched."""
    if pkt.ack != conn.tcp_snd_base:
        return ACCEPT  # not for this SYN; the TCP side will answer it
    mpc, keep, peer = _split_synack(conn, pkt)
    if mpc is None or not conn.syn_mpc or mpc.version != 1:
        conn.counters.inc("MPCapableFallbackSYNACK")
        fallback(conn, now)
        return ACCEPT
    conn.set_remote_key(mpc.sndr_key)
    conn.csum = conn.csum_requested or bool(mpc.flags & MPTCP_CAP_CHECKSUM_REQD)
    conn.deny_join0 = bool(mpc.flags & MPTCP_CAP_DENY_JOIN_ID0)
    conn.tcp_rcv_isn = pkt.seq
    conn.tcp_rcv_base = (pkt.seq + 1) & 0xFFFFFFFF
    _establish_sf0(conn, pkt, peer, now)
    if peer["mss_off"] >= 0:
        off = peer["mss_off"]
        mss = (keep[off + 2] << 8) | keep[off + 3]
        clamped = clamp_mss(conn, mss)
        if clamped < mss:
            keep[off + 2:off + 4] = clamped.to_bytes(2, "big")
            conn.counters.inc("MssClamped")
        conn.sf0.mss = clamped
    conn.transition(ConnInput.MPC_ANSWERED)
    conn.fast = not conn.csum and conn.sf0.ts_ok  # the steady-state path may be taken
    conn.srtt = max(now - conn.syn_time, 0.0)
    conn.counters.inc("MPCapableSYNACKRX")
    conn.proxy.emit_event(EventKind.ESTABLISHED, conn, elapsed=conn.srtt)
    pkt.set_options(pad_options(bytes(keep)))
    return pkt.finish()


def _split_synack(conn: "Connection", pkt: TcpPacket):
    """The SYN/ACK's MP_CAPABLE (or None), its other options (to keep), and what they
    negotiate."""
    b = pkt.buf
    mpc = None
    keep = bytearray()
    peer = {"mss_off": -1, "wscale": 0, "sack": False, "ts": False, "tsval": 0}
    for kind, off, olen in pkt.options() or ():
        raw = bytes(b[off:off + olen])
        if not syn_option_length_ok(kind, olen):  # (left out, as Linux ignores it)
            conn.counters.inc("OptMalformed")
            continue
        if kind == TCPOPT_MPTCP:
            o = pull_option(raw, syn=True)
            if isinstance(o, MpCapable) and o.sndr_key is not None and o.rcvr_key is None:
                mpc = o
            elif olen < 3 or (raw[2] >> 4) == MPTCPOPT_MP_CAPABLE:
                conn.counters.inc("OptMalformed")
            continue
        if kind == TCPOPT_MSS and olen == 4:
            peer["mss_off"] = len(keep)
        elif kind == TCPOPT_WINDOW and olen == 3:
            peer["wscale"] = min(raw[2], MAX_WSCALE)
        elif kind == TCPOPT_SACK_PERM:
            peer["sack"] = True
        elif kind == TCPOPT_TIMESTAMP and olen == 10:
            peer["ts"] = True
            peer["tsval"] = int.from_bytes(raw[2:6], "big")
        keep += raw
    return mpc, keep, peer


def _establish_sf0(conn: "Connection", pkt: TcpPacket, peer: dict, now: float) -> None:
    sf = conn.sf0
    sf.set_rcv_isn(pkt.seq)
    if peer["ts"]:
        sf.ts_recent = peer["tsval"]
    sf.rcv_wscale = peer["wscale"] if conn.tcp_wscale >= 0 else 0
    conn.peer_wscale0 = sf.rcv_wscale
    sf.sack_ok = peer["sack"] and conn.tcp_sack
    sf.ts_ok = peer["ts"] and conn.tcp_ts_ok
    if sf.ts_ok:
        conn.shown_tsval = sf.ts_recent  # the TCP side's ts_recent from now on
    sf.transition(SubflowInput.HANDSHAKE_DONE)
    sf.est_once = True
    sf.last_rx = now
    conn.tcp_sack = sf.sack_ok
    conn.tcp_ts_ok = sf.ts_ok


def strip_mptcp(conn: "Connection", pkt: TcpPacket):
    """A retransmitted SYN/ACK (our third ACK was lost): the TCP side answers it again
    (and its ACK gets MP_CAPABLE again), so it goes on with the key stripped and the MSS
    clamped as the first time."""
    b = pkt.buf
    keep = bytearray()
    for kind, off, olen in pkt.options() or ():
        raw = bytes(b[off:off + olen])
        if kind == TCPOPT_MSS and olen == 4:
            mss = int.from_bytes(raw[2:4], "big")
            raw = raw[:2] + clamp_mss(conn, mss).to_bytes(2, "big")
        if kind != TCPOPT_MPTCP:
            keep += raw
    pkt.set_options(pad_options(bytes(keep)))
    return pkt.finish()


def _valid_syn_options(conn: "Connection", pkt: TcpPacket) -> bytes:
    """The TCP side's SYN options as they are, or without those of a wrong length
    (counted ``OptMalformed``: Linux would ignore them, the peer need not see them)."""
    opts = pkt.options() or ()
    if all(syn_option_length_ok(k, n) for k, _o, n in opts):
        return used_options(pkt)
    conn.counters.inc("OptMalformed")
    b = pkt.buf
    return b"".join(bytes(b[o:o + n]) for k, o, n in opts if syn_option_length_ok(k, n))


def used_options(pkt: TcpPacket) -> bytes:
    """The option bytes up to the end of the last real option (no EOL/padding), so more
    options can be appended; NOPs between options are kept."""
    opts = pkt.options()
    if not opts:
        return b""
    _kind, off, olen = opts[-1]
    return bytes(pkt.buf[pkt.th + 20:off + olen])
