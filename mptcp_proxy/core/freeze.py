"""TCP freeze: the TCP side of a connection that no path can carry (every link down,
every path stale, a join not up yet) is kept waiting, neither giving up nor backing its
retransmission timer off into seconds of dead time, and restarted the moment a path
returns (TCP Freeze: the receiver-side zero window of Goff et al.; the RTO back-off
reversal of RFC 6069). The proxy holds no payload, so the two cases differ:

- **nothing in flight** (the TCP side idle, or only receiving): it is shown a zero
  receive window. If it has data to send it enters persist mode and sends window probes,
  which are answered (zero window again): Linux never gives up on answered probes, and
  a window update restarts it within microseconds (docs/platform.md §4);
- **data in flight** (its bytes were lost with the path): a zero window would make its
  retransmissions zero-window probes whose back-off nothing reverts
  (docs/platform.md §10), so its window is left open; each retransmission of its oldest
  byte is answered with an ICMP destination unreachable quoting it, which makes Linux
  revert one step of the back-off (RFC 6069): it goes on retransmitting every RTO, and
  the first one after the path returns goes through. It gives up only after
  ``tcp_retries2``'s time (about 15 minutes with the defaults). When every link is down
  the host has no route at all and its retransmissions die in routing, before the
  proxy's queue (docs/platform.md §3): then the ICMPs go unsolicited, every
  :data:`ICMP_INTERVAL`, quoting its oldest unacknowledged byte (the proxy knows it: the
  DATA_ACK it last showed).

A configurable bound (``freeze_max``, seconds) ends a connection frozen for longer:
both sides are reset. Who decides that no path is left is :mod:`.policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import TCP_ACK, TCP_FIN, TCPOPT_TIMESTAMP
from .emission import ack_tcp_side
from .events import EventKind
from .forge import build_segment, build_unreachable
from .projection import note_tcp_ack
from .seq import MASK32, unwrap
from .verdict import DROP

if TYPE_CHECKING:
    from .connection import Connection
    from .tcp import TcpPacket

__all__ = ["freeze", "thaw", "frozen_segment", "is_frozen", "tick"]

QUOTE_TCP = 20  # bytes of the TCP header an ICMP error quotes
ICMP_INTERVAL = 0.2  # seconds between unsolicited ICMPs while data is in flight


def is_frozen(conn: "Connection") -> bool:
    return conn.paths.frozen_at is not None


def freeze(conn: "Connection", now: float, why: str) -> None:
    """No path can carry new data of ``conn`` from now on (until :func:`thaw`)."""
    p = conn.paths
    if p.frozen_at is not None:
        return
    p.frozen_at = now
    p.head_retx = 0
    conn.counters.inc("ConnFrozen")
    conn.proxy.emit_event(EventKind.FROZEN, conn, reason=why)
    if conn.d_nxt <= conn.d_una and conn.snd_data_fin is None:
        _zero_window(conn, True)
    p.icmp_at = now + ICMP_INTERVAL
    if p.timer is None or p.timer > p.icmp_at:  # (the path timer: ICMPs, the bound)
        p.timer = p.icmp_at
        conn.rearm()


def tick(conn: "Connection", now: float, icmp: bool) -> float | None:
    """The freeze's timer: an unsolicited ICMP to a TCP side with data in flight (its
    retransmissions may never reach the proxy); returns when to tick again, or None."""
    p = conn.paths
    if p.frozen_at is None or not icmp or p.zero_window or conn.d_nxt <= conn.d_una:
        return None
    if now >= p.icmp_at - 1e-9:
        _unreachable(conn, _quote(conn))
        p.icmp_at = now + ICMP_INTERVAL
    return p.icmp_at


def _quote(conn: "Connection") -> bytes:
    """The start of a segment of the TCP side carrying its oldest unacknowledged byte, as
    an ICMP error quotes it (IP header, then the TCP header up to its flags)."""
    la, lp, ra, rp = conn.key
    seq = (conn.tcp_snd_base + conn.d_una) & MASK32
    ack = (conn.tcp_rcv_base + conn.r_ack) & MASK32
    return bytes(build_segment(la, ra, lp, rp, seq, ack, TCP_ACK, conn.tcp_win))


def thaw(conn: "Connection", now: float, icmp: bool = True) -> None:
    """A path carries new data again: a window update for a TCP side shown a zero
    window; for one with data in flight, one more ICMP quoting its oldest byte (it may
    clock out that retransmission at once)."""
    p = conn.paths
    if p.frozen_at is None:
        return
    conn.proxy.emit_event(EventKind.THAWED, conn, elapsed=now - p.frozen_at)
    p.frozen_at = None
    if p.zero_window:
        _zero_window(conn, False)
    elif icmp and conn.d_nxt > conn.d_una:
        _unreachable(conn, p.quoted or _quote(conn))


def frozen_segment(conn: "Connection", pkt: "TcpPacket", now: float, icmp: bool):
    """A segment of the TCP side while frozen: what it acknowledges is kept; a window
    probe is answered; a retransmission of its oldest byte earns an ICMP; nothing goes to
    the wire. Returns the verdict (always DROP)."""
    p = conn.paths
    if pkt.flags & TCP_ACK:
        note_tcp_ack(conn, pkt.ack)
    conn.tcp_win = pkt.win
    tsval = _tsval(pkt)
    if tsval is not None:
        # (its clock goes on: our joins and ACKs echo a fresh value, or the peer's echo
        # of a stale one would give it an RTT sample as long as the outage)
        conn.tcp_tsval = tsval
    d = unwrap(pkt.seq, conn.tcp_snd_base, conn.d_nxt)
    seq_len = pkt.plen + (1 if pkt.flags & TCP_FIN else 0)
    conn.counters.inc("FrozenSegments")
    if not seq_len:
        if p.zero_window and d < conn.d_una:  # a zero-window probe (SND.UNA - 1)
            ack_tcp_side(conn, 0)
        return DROP
    if p.zero_window:
        # it sent before our zero window reached it: data in flight now, so back to an
        # open window (its RTO then runs normally and the ICMPs below revert it)
        _zero_window(conn, False)
    if d <= conn.d_una < d + seq_len:  # its oldest byte again: an RTO retransmission
        p.head_retx += 1
        p.quoted = bytes(pkt.buf[:pkt.th + QUOTE_TCP])
        if icmp:
            _unreachable(conn, p.quoted)
    return DROP


def _tsval(pkt: "TcpPacket") -> int | None:
    """The segment's TSval (None: no timestamps option)."""
    b = pkt.buf
    for kind, off, olen in pkt.options() or ():
        if kind == TCPOPT_TIMESTAMP and olen == 10:
            return int.from_bytes(b[off + 2:off + 6], "big")
    return None


def _zero_window(conn: "Connection", zero: bool) -> None:
    """Show the TCP side a zero window, or give it back the window it had."""
    p = conn.paths
    if zero:
        p.saved_win = conn.shown_win if conn.shown_win >= 0 else 0xFFFF
        p.zero_window = True
        ack_tcp_side(conn, 0)
        conn.counters.inc("ZeroWindowTx")
    else:
        p.zero_window = False
        ack_tcp_side(conn, p.saved_win)


def _unreachable(conn: "Connection", quoted: bytes) -> None:
    la, _lp, ra, _rp = conn.key
    conn.proxy.send(build_unreachable(quoted, ra, la))
    conn.paths.icmp_sent += 1
    conn.counters.inc("UnreachableTx")
