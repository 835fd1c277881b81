"""Fallback to TCP and the errors that lead to it (RFC 8684 §3.7; Linux ``subflow.c``
``subflow_check_data_avail``, its measured reactions in docs/platform.md §5).

A connection may fall back to plain TCP — the proxy then passes it untouched — only
while it still maps one to one: the initial subflow alone, every sequence number the
same in all spaces. Otherwise an error on a subflow resets that subflow (MP_TCPRST), or
the connection when it has no other. The events that decide:

- the peer's SYN/ACK without MP_CAPABLE, its first data without DSS (:mod:`.handshake`,
  :mod:`.receive`);
- an infinite mapping (data-level length 0) on a segment with payload; on a pure ACK it
  is ignored, as Linux does;
- in-order data that no mapping covers (a middlebox stripped the options): fallback, or
  the subflow reset with reason 6 (middlebox interference);
- a DSS checksum failure here: MP_FAIL to the peer (it answers with an infinite mapping
  and both fall back), or a reset with reason 6;
- MP_FAIL from the peer: fallback, or a reset with reason 6.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import closing
from .constants import MPTCP_RST_EMIDDLEBOX, MPTCP_RST_EMPTCP
from .emission import send_ack
from .events import EventKind
from .options import MpFail, push_option
from .projection import held_ranges
from .seq import data_wire
from .states import ConnInput, ConnState, SubflowState
from .verdict import ACCEPT, DROP

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow

__all__ = ["fallback", "can_fall_back", "infinite_mapping", "unmapped_data",
           "checksum_failed", "mp_fail_received", "infinite_sent"]


def fallback(conn: "Connection", now: float) -> None:
    """Plain TCP from now on, untouched (RFC 8684 §3.7). The proxy keeps nothing for it:
    the entry stays visible for ``linger`` seconds, then packets of the 4-tuple pass as
    unknown, and a new SYN on it starts a new connection."""
    conn.transition(ConnInput.PEER_FELL_BACK if conn.state == ConnState.ESTABLISHED
                    else ConnInput.NOT_ANSWERED)
    conn.counters.inc("FallbackConnections")
    conn.proxy.emit_event(EventKind.FALLBACK, conn)
    conn.closed_at = now
    for sf in conn.subflows[1:]:
        if sf.state != SubflowState.CLOSED:
            closing.reset_subflow(conn, sf, now, MPTCP_RST_EMPTCP)
    conn.set_timer(now + conn.proxy.config.linger)


def can_fall_back(conn: "Connection", sf: "Subflow") -> bool:
    """Whether the connection can become plain TCP without corrupting either stream: the
    initial subflow alone, and everything on it mapped one to one."""
    return (sf is conn.sf0 and len(conn.subflows) == 1
            and all(x[0] == x[1] for x in sf.rcv_map.entries)
            and all(x[0] == x[1] for x in sf.send_map.entries))


def infinite_mapping(conn: "Connection", sf: "Subflow", plen: int, now: float):
    """A DSS with data-level length 0 (§3.7): the peer falls back. Only a mapping that
    covers payload counts; returns None (the segment goes on) for one that does not."""
    if not plen:
        conn.counters.inc("InfiniteMapIgnored")
        return None
    conn.counters.inc("InfiniteMapRx")
    if can_fall_back(conn, sf):
        fallback(conn, now)
        return ACCEPT
    return closing.protocol_error(conn, sf, now, MPTCP_RST_EMIDDLEBOX)


def unmapped_data(conn: "Connection", sf: "Subflow", now: float):
    """In-order data on ``sf`` that no mapping covers, once MPTCP is in use: something on
    the path strips the options (§3.7). Like Linux: fall back when it can, else reset this
    subflow with reason 6 (its data is sent again on another)."""
    conn.counters.inc("DssFallback" if can_fall_back(conn, sf) else "DSSNoMapping")
    if can_fall_back(conn, sf):
        fallback(conn, now)
        return ACCEPT
    return closing.protocol_error(conn, sf, now, MPTCP_RST_EMIDDLEBOX)


def checksum_failed(conn: "Connection", sf: "Subflow", data_seq_rel: int, now: float):
    """Our check of a DSS checksum failed (§3.3.1): the segment is dropped; when the
    connection can fall back, MP_FAIL tells the peer where (it answers with an infinite
    mapping, then both run plain TCP), else the subflow is reset with reason 6."""
    conn.counters.inc("DataCsumErr")
    if not can_fall_back(conn, sf):
        return closing.protocol_error(conn, sf, now, MPTCP_RST_EMIDDLEBOX)
    opt = push_option(MpFail(data_wire(conn.remote_idsn, data_seq_rel)))
    send_ack(conn, sf, now, held_ranges(conn, None), extra=opt)
    conn.counters.inc("MPFailTx")
    return DROP


def mp_fail_received(conn: "Connection", sf: "Subflow", now: float) -> None:
    """MP_FAIL from the peer (§3.7): its check of our data failed. When the connection
    can fall back, our next data segment carries an infinite mapping (as Linux answers
    MP_FAIL) and the connection is plain TCP from then on (:func:`infinite_sent`); else
    the subflow is reset with reason 6."""
    conn.counters.inc("MPFailRx")
    if can_fall_back(conn, sf):
        conn.infinite_pending = True
        conn.fast = False  # (the steady-state guard knows no infinite mapping)
    else:
        closing.protocol_error(conn, sf, now, MPTCP_RST_EMIDDLEBOX)


def infinite_sent(conn: "Connection", now: float) -> None:
    """Our infinite mapping went out on a data segment: plain TCP from now on."""
    fallback(conn, now)
