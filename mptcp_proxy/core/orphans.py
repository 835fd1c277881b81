"""Orphans: segments of MPTCP connections the proxy does not know (what a killed daemon
left), reset cleanly on both sides instead of left to crawl.

After a ``kill -9`` the queue rules stay with ``--queue-bypass``: the local socket's
segments reach the server without their DSS, the server's DSS is passed to a plain TCP
socket that ignores it, and the connection stalls (it cannot be resumed: the mapping
state died with the daemon). When a daemon runs again on the queues, these segments
come to :meth:`Orphans.inbound`/:meth:`Orphans.outbound` because their 4-tuple is not a
known connection.

Recognising one without harming anything else:

- *Suspect*: a segment from the network on an unknown 4-tuple that carries an MPTCP
  option (a DSS, or an RST with MP_TCPRST): the peer treats the tuple as an MPTCP
  subflow. Plain TCP connections the proxy never converted, and connections that fell
  back to TCP, carry no MPTCP option and never get here. The segment is dropped and the
  local stack is *probed*: a bare ACK far below its receive window, which a TCP socket
  answers with a duplicate ACK showing its RCV.NXT (RFC 9293 §3.10.7.4), and to which a
  host without such a socket answers with an RST.
- The local stack's next segment on the tuple decides (:meth:`Orphans.outbound`):
  with an MPTCP option it is a native MPTCP socket of a local app: left alone for good
  (``OrphanNative``); an RST says no local socket exists (the dead daemon's own
  subflow); anything else is a plain socket under a connection the peer runs as MPTCP:
  an orphan. The local socket gets an RST at exactly its RCV.NXT (its segment's ACK
  field: RFC 5961 §3 acceptable), the peer an RST with MP_TCPRST at exactly the sequence
  its own segment acknowledged; the local segment is dropped. Later segments of the
  peer on the tuple get the same RST at the sequence they acknowledge.

A SYN with an MPTCP option seen either way (a native MPTCP socket's connection, which
the proxy leaves alone) marks its tuple native at once. The table is bounded
(:data:`MAX_ENTRIES`, oldest first out; entries expire after :data:`TTL` s); a new plain
SYN on a tuple forgets it. Sans-I/O: packets go out through
``proxy.send``. Nothing is done while no daemon runs: then the connection hangs until
its own timeouts (see docs/recovery.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from .constants import MPTCP_RST_EUNSPEC, TCP_ACK, TCP_RST, TCP_SYN, TCPOPT_MPTCP
from .forge import build_segment
from .options import MpTcpRst, RemoveAddr, push_option
from .seq import MASK32
from .tcp import CSUM_UNVERIFIED, TcpPacket, pad_options
from .verdict import DROP

if TYPE_CHECKING:
    from .proxy import Proxy

MAX_ENTRIES = 4096
TTL = 120.0  # seconds an entry is kept after its last segment
PROBE_GAP = 0.5  # seconds between two probes of one tuple (Linux answers one per 0.5 s)
PROBE_OFFSET = 1 << 30  # how far below the peer's sequence the probe is (out of window)

SUSPECT, ORPHAN, NATIVE = "suspect", "orphan", "native"
_RST_OPT = pad_options(push_option(MpTcpRst(0, MPTCP_RST_EUNSPEC)))
_RM_ALL_OPT = pad_options(push_option(RemoveAddr(tuple(range(1, 9)))))  # IDs 1..8 (max 8)


class _Entry:
    __slots__ = ("state", "peer_ack", "peer_seq", "probed", "seen", "removed")

    def __init__(self, now: float) -> None:
        self.state = SUSPECT
        self.peer_ack: int | None = None  # 32-bit: the sequence the peer expects from us
        self.peer_seq = 0
        self.probed = -PROBE_GAP
        self.seen = now
        self.removed = False  # the REMOVE_ADDR of the daemon's other addresses went out


def has_mptcp_option(pkt: TcpPacket) -> bool:
    """Whether the segment carries any MPTCP option (kind 30)."""
    if pkt.hl <= 20:
        return False
    opts = pkt.options()
    return bool(opts) and any(kind == TCPOPT_MPTCP for kind, _o, _n in opts)


class Orphans:
    """The tuples under suspicion, keyed by the local view ``(laddr, lport, raddr, rport)``
    (addresses as bytes, ports as ints)."""

    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.table: OrderedDict[tuple, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ decisions
    def inbound(self, pkt: TcpPacket, now: float):
        """A segment from the network on an unknown tuple. Returns a verdict, or None
        when it is none of this module's business (the caller goes on as before)."""
        if pkt.csum_mode == CSUM_UNVERIFIED and not pkt.checksum_ok():
            return None  # nothing is decided on a segment that may be corrupt
        key = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        e = self.table.get(key)
        flags = pkt.flags
        if flags & TCP_SYN:  # a new connection: native MPTCP if it says so
            if has_mptcp_option(pkt):
                self.note_native(key, now)
            elif e is not None:
                del self.table[key]
            return None
        if e is None:
            if not has_mptcp_option(pkt):
                return None
            e = self._add(key, now)
            self.proxy.counters.inc("OrphanSuspect")
        elif e.state == NATIVE:
            e.seen = now
            return None
        e.seen = now
        self.table.move_to_end(key)
        if flags & TCP_RST:  # the peer reset it already: only the local side is left
            e.peer_ack = None
        elif flags & TCP_ACK:
            e.peer_ack = pkt.ack
        e.peer_seq = pkt.seq
        if e.state == ORPHAN:
            self._reset_peer(key, e)
        elif now - e.probed >= PROBE_GAP:
            self._probe_local(key, e)
            e.probed = now
        return DROP

    def outbound(self, pkt: TcpPacket, now: float):
        """A segment of the local stack on an unknown tuple. Returns a verdict, or None
        when it is none of this module's business."""
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        e = self.table.get(key)
        if e is None:
            return None
        flags = pkt.flags
        if flags & TCP_SYN:  # a new connection on the tuple
            del self.table[key]
            return None
        if e.state == NATIVE:
            return None
        e.seen = now
        if has_mptcp_option(pkt):  # a native MPTCP socket of a local application
            e.state = NATIVE
            self.proxy.counters.inc("OrphanNative")
            return None
        if not flags & TCP_RST:  # a local socket: reset it at exactly its RCV.NXT
            la, lp, ra, rp = key
            self.proxy.send(build_segment(ra, la, rp, lp, pkt.ack, 0, TCP_RST, 0))
            self.proxy.counters.inc("OrphanRstLocal")
        if e.state != ORPHAN:
            e.state = ORPHAN
            self._reset_peer(key, e)
        return DROP

    def note_native(self, key: tuple, now: float) -> None:
        """A SYN with an MPTCP option on ``key`` (local view) that the proxy leaves alone:
        the connection is a native MPTCP one of a local socket, never an orphan, so its
        first segments are not held back for a probe."""
        e = self.table.get(key) or self._add(key, now)
        e.state = NATIVE
        e.seen = now

    # ------------------------------------------------------------------ packets
    def _reset_peer(self, key: tuple, e: _Entry) -> None:
        """RST + MP_TCPRST at exactly the sequence the peer expects. The dead daemon may
        also have had subflows of its own on the connection, idle ones the peer sends
        nothing on (so they never come here): a REMOVE_ADDR for every address ID it can
        have used (it numbers its interfaces from 1) goes first, so that the peer closes
        them too instead of keeping the connection half alive (RFC 8684 §3.4.2)."""
        if e.peer_ack is None:
            return
        la, lp, ra, rp = key
        if e.state == ORPHAN and not e.removed and not self._serving(ra, rp):
            e.removed = True
            self.proxy.send(build_segment(la, ra, lp, rp, e.peer_ack, e.peer_seq, TCP_ACK, 0,
                                          _RM_ALL_OPT))
        self.proxy.send(build_segment(la, ra, lp, rp, e.peer_ack, 0, TCP_RST, 0, _RST_OPT))
        self.proxy.counters.inc("OrphanRstPeer")

    def _serving(self, raddr: bytes, rport: int) -> bool:
        """A live connection of ours has a subflow to ``raddr:rport``: the orphan may be
        one of its own retired subflows (closed while its link was down, forgotten after
        the linger, and the peer still sends there), so no REMOVE_ADDR may go to that
        peer — its address IDs name the live connection's subflows too. The RST alone
        closes the tuple."""
        return any(sf.raddr == raddr and sf.rport == rport
                   for conn in self.proxy.connections.values() for sf in conn.subflows)

    def _probe_local(self, key: tuple, e: _Entry) -> None:
        la, lp, ra, rp = key
        seq = (e.peer_seq - PROBE_OFFSET) & MASK32
        self.proxy.send(build_segment(ra, la, rp, lp, seq, e.peer_ack or 0, TCP_ACK, 0))
        self.proxy.counters.inc("OrphanProbe")

    # ------------------------------------------------------------------ bounds
    def _add(self, key: tuple, now: float) -> _Entry:
        t = self.table
        while t:
            old_key, old = next(iter(t.items()))
            if len(t) < MAX_ENTRIES and now - old.seen < TTL:
                break
            del t[old_key]
        e = t[key] = _Entry(now)
        return e
