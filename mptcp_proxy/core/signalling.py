"""Signalling: the MPTCP options that manage paths and the connection rather than carry
data — ADD_ADDR (with its echo), REMOVE_ADDR, MP_PRIO, MP_FAIL and MP_FASTCLOSE
(RFC 8684 §3.3.8, §3.4, §3.5, §3.7) — received and sent. The same in both roles.

What a received signal means for the paths (switching, joining an announced address) is
the path manager's decision (:mod:`.policy`); this module checks and acknowledges the
signals. Signals we send ride on forged duplicate ACKs (paper §3.1); the ones that are
not acknowledged at all (REMOVE_ADDR) are sent twice, an RTO apart, and ADD_ADDR until
its echo comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing, crypto, fallback
from .constants import (
    MPTCP_RST_EUNSPEC,
    MPTCPOPT_ADD_ADDR,
    MPTCPOPT_MP_FAIL,
    MPTCPOPT_MP_FASTCLOSE,
    MPTCPOPT_MP_PRIO,
    MPTCPOPT_RM_ADDR,
    TCP_ACK,
)
from .emission import forge_segment, send_ack
from .events import EventKind
from .options import AddAddr, Malformed, MpPrio, RemoveAddr, pull_option, push_option
from .projection import held_ranges
from .tcp import build_ts

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow
    from .tcp import TcpPacket

__all__ = ["receive_options", "send_signal", "queue_signal", "flush_signals", "announce",
           "remove_addr", "send_prio", "PendingSignal", "probe_answered", "probe_expired"]

SIGNAL_REPEATS = 2  # times an unacknowledged signal (REMOVE_ADDR) is sent
SIGNAL_RTO_MIN = 0.2  # seconds between repeats at least
MAX_PENDING_SIGNALS = 16  # per connection
MAX_REMOTE_ADDRS = 8  # addresses of the peer remembered per connection (Linux: 8 IDs)
RM_PROBE_TIMEOUT = 1.0  # s: a REMOVE_ADDR probe unanswered this long ends the subflow


class PendingSignal:
    """A connection-level signal waiting for a usable subflow or its next repeat."""

    __slots__ = ("option", "counter", "left", "echoed_by", "removes", "sent_at")

    def __init__(self, option: bytes, counter: str, left: int, echoed_by: int | None,
                 removes: tuple[int, ...] = ()) -> None:
        self.option = option  # the whole MPTCP option
        self.counter = counter  # the counter bumped per transmission
        self.left = left  # transmissions left (ADD_ADDR: until echoed)
        self.echoed_by = echoed_by  # ADD_ADDR: its address ID, cancelled by the echo
        self.removes = removes  # REMOVE_ADDR: the address IDs it carries
        self.sent_at: float | None = None  # its last copy went out then


def receive_options(conn: "Connection", sf: "Subflow", pkt: "TcpPacket", others: list,
                    now: float) -> bool:
    """ADD_ADDR, REMOVE_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE from the peer on ``sf``
    (already acceptable). Returns True when the segment carried signalling only, to be
    consumed (paper §3.1)."""
    b = pkt.buf
    signal = False
    for sub, off, olen in others:
        o = pull_option(bytes(b[off:off + olen]))
        if isinstance(o, Malformed):
            conn.counters.inc("OptMalformed")
            continue
        handler = _HANDLERS.get(sub)
        if handler is None:
            conn.counters.inc("OptUnexpected")
            continue
        handler(conn, sf, o, now)
        signal = True
        if conn.state_closed():
            break
    return signal and not pkt.plen


def _add_addr(conn: "Connection", sf: "Subflow", o: AddAddr, now: float) -> None:
    """ADD_ADDR (§3.4.1): an echo ends our retransmissions; an announcement with a valid
    HMAC is echoed and handed to the path manager (a wrong HMAC is ignored, as Linux
    does: silently)."""
    if o.echo:
        conn.counters.inc("EchoAddRx")
        conn.pending_signals = [p for p in conn.pending_signals if p.echoed_by != o.addr_id]
        return
    expect = crypto.add_addr_hmac(conn.remote_key, conn.local_key, o.addr_id, o.addr,
                                  o.port or 0)
    if o.hmac != expect:
        conn.counters.inc("AddAddrHMacFailure")
        return
    conn.counters.inc("AddAddrRx")
    echo = push_option(AddAddr(echo=True, addr_id=o.addr_id, addr=o.addr, port=o.port))
    send_signal(conn, sf, echo, now)
    conn.counters.inc("EchoAddTx")
    known = conn.remote_addrs.get(o.addr_id)
    if known is None and len(conn.remote_addrs) >= MAX_REMOTE_ADDRS:
        conn.counters.inc("AddAddrLimit")  # echoed (the peer stops repeating it), not kept
        return
    conn.remote_addrs[o.addr_id] = (o.addr, o.port)
    conn.proxy.emit_event(EventKind.ANNOUNCED, conn, remid=o.addr_id)
    if known != (o.addr, o.port):
        conn.proxy.pm.peer_announced(conn, sf, o.addr_id, o.addr, o.port, now)


def _remove_addr(conn: "Connection", sf: "Subflow", o: RemoveAddr, now: float) -> None:
    """REMOVE_ADDR (§3.4.2): the subflows to those address IDs are gone. The last usable
    one is first probed (§3.4.2: the path may still work, and the option is not
    authenticated): it ends only if the probe goes unanswered (:func:`probe_expired`)."""
    conn.counters.inc("RmAddrRx")
    for rid in o.addr_ids:
        conn.proxy.emit_event(EventKind.REMOVED, conn, remid=rid)
    for s in list(conn.subflows):
        if s.gone or s.remote_id not in o.addr_ids:
            continue
        if any(x is not s and x.alive for x in conn.subflows) or not s.can_send:
            closing.subflow_gone(conn, s, now, "peer removed its address")
        elif s.rm_probe_at is None:
            _probe(conn, s, now)
    conn.remote_addrs = {k: v for k, v in conn.remote_addrs.items() if k not in o.addr_ids}


def _probe(conn: "Connection", sf: "Subflow", now: float) -> None:
    """A keepalive on ``sf`` (one byte below what the peer expects: it answers with an
    ACK, RFC 9293 §3.8.4); the subflow ends at :data:`RM_PROBE_TIMEOUT` if nothing comes."""
    sf.rm_probe_at = now + max(RM_PROBE_TIMEOUT, 3 * conn.srtt)
    sf.timer = sf.rm_probe_at if sf.timer is None else min(sf.timer, sf.rm_probe_at)
    conn.counters.inc("RmAddrProbe")
    conn.proxy.send(forge_segment(conn, sf, sf.snd_wire(sf.seq_nxt - 1), TCP_ACK,
                                  build_ts(conn.tcp_tsval, sf.ts_recent) if sf.ts_ok else b""))
    conn.rearm()


def probe_answered(conn: "Connection", sf: "Subflow") -> None:
    """A segment came on ``sf`` while a REMOVE_ADDR probe was out: the path works."""
    sf.rm_probe_at = None
    conn.counters.inc("RmAddrProbeAnswered")


def probe_expired(conn: "Connection", sf: "Subflow", now: float) -> bool:
    """The REMOVE_ADDR probe on ``sf`` went unanswered: the address is really gone."""
    if sf.rm_probe_at is None or now < sf.rm_probe_at - 1e-9:
        return False
    sf.rm_probe_at = None
    closing.subflow_gone(conn, sf, now, "peer removed its address")
    return True


def _mp_prio(conn: "Connection", sf: "Subflow", o: MpPrio, now: float) -> None:
    """MP_PRIO (§3.3.8): the peer's backup flag for the subflow it arrives on."""
    conn.counters.inc("MPPrioRx")
    sf.peer_backup = o.backup
    conn.proxy.emit_event(EventKind.SF_PRIO, conn, sf,
                          reason="peer backup" if o.backup else "peer regular")
    conn.proxy.pm.peer_priority(conn, sf, o.backup, now)


def _fastclose(conn: "Connection", sf: "Subflow", o, now: float) -> None:
    """MP_FASTCLOSE (§3.5) with our key: answer with RST on every subflow; a wrong key is
    ignored (Linux acts only on its own key)."""
    if o.rcvr_key == conn.local_key:
        conn.counters.inc("MPFastcloseRx")
        closing.reset_peer(conn, MPTCP_RST_EUNSPEC)
        closing.reset_local(conn)
        closing.close(conn, now, reset=True)


def _mp_fail(conn: "Connection", sf: "Subflow", o, now: float) -> None:
    """MP_FAIL (§3.7): the peer found a bad DSS checksum (:mod:`.fallback`)."""
    fallback.mp_fail_received(conn, sf, now)


_HANDLERS = {
    MPTCPOPT_ADD_ADDR: _add_addr,
    MPTCPOPT_RM_ADDR: _remove_addr,
    MPTCPOPT_MP_PRIO: _mp_prio,
    MPTCPOPT_MP_FASTCLOSE: _fastclose,
    MPTCPOPT_MP_FAIL: _mp_fail,
}


# -- sending ------------------------------------------------------------------------------

def send_signal(conn: "Connection", sf: "Subflow", option: bytes, now: float) -> None:
    """Forge a duplicate ACK carrying ``option`` on ``sf`` (paper §3.1)."""
    send_ack(conn, sf, now, held_ranges(conn, None), extra=option)


def queue_signal(conn: "Connection", option: bytes, now: float, counter: str,
                 repeats: int = SIGNAL_REPEATS, echoed_by: int | None = None) -> None:
    """Send a connection-level signal on a usable subflow, or keep it until one exists;
    repeated ``repeats`` times, an RTO apart (or, with ``echoed_by``, until the ADD_ADDR
    echo for that address ID arrives)."""
    if len(conn.pending_signals) >= MAX_PENDING_SIGNALS:
        conn.counters.inc("SignalsDropped")
        del conn.pending_signals[0]
    conn.pending_signals.append(PendingSignal(option, counter, repeats, echoed_by))
    flush_signals(conn, now)


def flush_signals(conn: "Connection", now: float) -> None:
    """Send the pending signals now, on the active subflow if usable."""
    live = conn.proxy.pm.usable(conn)
    if not live:
        return
    sf = conn.active if conn.active in live else live[0]
    keep = []
    gap = max(SIGNAL_RTO_MIN, sf.rto)
    due = None
    for p in conn.pending_signals:
        if p.sent_at is not None and now < p.sent_at + gap - 1e-9:
            keep.append(p)  # (a repeat is due an RTO after the last copy, not sooner)
            due = p.sent_at + gap if due is None else min(due, p.sent_at + gap)
            continue
        send_signal(conn, sf, p.option, now)
        conn.counters.inc(p.counter)
        p.sent_at = now
        p.left -= 1
        if p.left > 0:
            keep.append(p)
            due = now + gap if due is None else min(due, now + gap)
    conn.pending_signals = keep
    if due is not None:
        sf.timer = due if sf.timer is None else min(sf.timer, due)
        conn.rearm()


def cancel_remove(conn: "Connection", addr_id: int) -> None:
    """The address is back: a queued REMOVE_ADDR for its ID would kill a new join there."""
    keep = []
    for p in conn.pending_signals:
        if addr_id in p.removes:
            p.removes = tuple(i for i in p.removes if i != addr_id)
            if not p.removes:
                continue
            p.option = push_option(RemoveAddr(p.removes))
        keep.append(p)
    conn.pending_signals = keep


def remove_addr(conn: "Connection", addr_id: int, now: float) -> None:
    """Tell the peer our address ``addr_id`` is gone (it reinjects what was in flight
    there, §3.4.2). IDs removed together go in one option: Linux drops a REMOVE_ADDR
    that arrives while it still handles the previous one (``RmAddrDrop``)."""
    for p in conn.pending_signals:
        if p.removes and addr_id not in p.removes:
            p.removes = (*p.removes, addr_id)
            p.option = push_option(RemoveAddr(p.removes))
            p.left = SIGNAL_REPEATS
            p.sent_at = None  # (the new ID goes out now)
            flush_signals(conn, now)
            return
    conn.pending_signals.append(PendingSignal(push_option(RemoveAddr((addr_id,))), "RmAddrTx",
                                              SIGNAL_REPEATS, None, (addr_id,)))
    flush_signals(conn, now)


def announce(conn: "Connection", addr_id: int, addr: bytes, now: float, port: int = 0) -> None:
    """ADD_ADDR for our address (HMAC over our key first, §3.4.1), sent until echoed."""
    h = crypto.add_addr_hmac(conn.local_key, conn.remote_key, addr_id, addr, port)
    opt = push_option(AddAddr(echo=False, addr_id=addr_id, addr=addr, port=port or None,
                              hmac=h))
    queue_signal(conn, opt, now, "AddAddrTx", repeats=SIGNAL_REPEATS, echoed_by=addr_id)


def send_prio(conn: "Connection", sf: "Subflow", backup: bool, now: float) -> None:
    """MP_PRIO on ``sf`` (§3.3.8): our backup flag for that subflow."""
    sf.backup = backup
    send_signal(conn, sf, push_option(MpPrio(backup=backup)), now)
    conn.counters.inc("MPPrioTx")
    conn.proxy.emit_event(EventKind.SF_PRIO, conn, sf, reason="ours")
