"""Path liveness: is the path of a subflow still carrying anything? The proxy sees every
segment and ACK of its subflows, so it can tell a path that died silently (a blackhole
upstream: the link stays up, no rtnetlink event) sooner than the peer's stale-subflow
logic (Linux marks a subflow stale after ``stale_loss_cnt`` RTOs) — and must, or a
connection without a second subflow hangs (RFC 8684 §3.3.6 leaves the detection to the
implementation).

Two signals, per established subflow:

- **our data unanswered**: a data segment went out on the subflow (new data or the TCP
  side's retransmission) and for ``stale_rtos`` RTOs (at least ``stale_min`` seconds)
  nothing answered it — no ACK that moved, no pure ACK (a duplicate ACK proves the path
  too). Silence while nothing was sent is no sign: the TCP side may be waiting out its
  own RTO after a loss. If the peer's data kept arriving meanwhile (its ACK riding on it
  without moving: a retransmission of ours lost again, not a dead path), probes decide,
  as below;
- **silence after the peer's data**: the peer was sending here (a burst of
  :data:`BUSY_SEGMENTS` data segments or more) and then nothing came for about two RTTs:
  a probe goes out, a one-byte segment below the subflow ACK (old data: a TCP receiver
  answers it at once with an ACK, not rate-limited as a zero-length one is, RFC 9293
  §3.8.4's keep-alive with one garbage octet); ``stale_probes`` probes unanswered, one
  RTO apart, and the path is stale.

A stale subflow is the path manager's to handle (:mod:`.policy`); one that is kept (there
was nowhere to go) goes on being probed, with back-off, so that traffic can return.

Per-subflow round-trip time: RFC 6298 over samples from the join's handshake, from our
data's subflow ACKs (one timed byte at a time, none across a retransmission: Karn) and
from answered probes. Bookkeeping only here; nothing sends but :func:`send_probe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import TCP_ACK

if TYPE_CHECKING:
    from .connection import Connection
    from .subflow import Subflow

__all__ = ["RTO_MIN", "BUSY_SEGMENTS", "rtt_sample", "path_rto", "note_new_data",
           "note_acked", "note_rx_data", "forget_timing", "check", "send_probe"]

RTO_MIN = 0.2  # seconds: the floor of a path's RTO (Linux tcp_rto_min)
RTO_MAX = 10.0
PROBE_MAX_INTERVAL = 1.0  # seconds between probes of a kept stale path, at most
BUSY_SEGMENTS = 4  # data segments from the peer that make its silence suspicious
EPS = 1e-9


def rtt_sample(sf: "Subflow", rtt: float) -> None:
    """One round-trip sample (seconds) into the subflow's estimate (RFC 6298 §2)."""
    if rtt <= 0:
        return
    if sf.srtt == 0.0:
        sf.srtt = rtt
        sf.rttvar = rtt / 2
    else:
        sf.rttvar = 0.75 * sf.rttvar + 0.25 * abs(sf.srtt - rtt)
        sf.srtt = 0.875 * sf.srtt + 0.125 * rtt


def path_rto(conn: "Connection", sf: "Subflow") -> float:
    """The path's retransmission timeout (seconds, RFC 6298 §2: SRTT + 4·RTTVAR, at
    least :data:`RTO_MIN`); before any sample of its own, from the connection's handshake
    RTT."""
    srtt = sf.srtt or conn.srtt
    var = sf.rttvar if sf.srtt else srtt / 2
    return min(max(RTO_MIN, srtt + 4 * var), RTO_MAX)


def note_new_data(sf: "Subflow", s: int, end: int, now: float) -> None:
    """Our new subflow bytes ``[s, end)`` are going out on ``sf``: one byte is timed if
    none is (the unanswered-data clock is :mod:`.emission`'s, per segment sent)."""
    if sf.rtt_seq is None:
        sf.rtt_seq = end
        sf.rtt_t = now


def note_acked(sf: "Subflow", san: int) -> None:
    """The peer's subflow ACK moved to ``san`` (at ``sf.last_rx``): an answer, and an RTT
    sample if it covers the timed byte."""
    now = sf.last_rx
    sf.answer_at = now
    if sf.rtt_seq is not None and san >= sf.rtt_seq:
        rtt_sample(sf, now - sf.rtt_t)
        sf.rtt_seq = None


def note_rx_data(sf: "Subflow", now: float) -> None:
    """A data segment of the peer arrived on ``sf``."""
    sf.rx_data_at = now
    sf.rx_count += 1


def forget_timing(conn: "Connection") -> None:
    """The TCP side retransmits: no RTT sample may cover a re-sent byte (Karn)."""
    for sf in conn.subflows:
        sf.rtt_seq = None


def check(conn: "Connection", sf: "Subflow", now: float, stale_rtos: float,
          stale_min: float, stale_probes: int) -> tuple[str | None, float | None]:
    """Judge ``sf`` (established, its link up) at ``now``. Returns ``(verdict, due)``:
    the verdict is None, ``"alive"`` (a stale subflow answered: its path is back) or why
    its path is stale now; ``due`` is when to look again (None: nothing to watch)."""
    rto = path_rto(conn, sf)
    if sf.probe_at is not None:
        if sf.answer_at > sf.probe_at:  # answered
            rtt_sample(sf, sf.answer_at - sf.probe_at)
            sf.probe_at = None
            sf.probes = 0
            sf.rx_seen = sf.rx_count
            if sf.stale:
                return "alive", None
            return None, _watch(conn, sf, now, stale_rtos, stale_min)
        interval = min(rto * 2 ** max(sf.probes - stale_probes, 0), PROBE_MAX_INTERVAL) \
            if sf.stale else rto
        due = sf.probe_at + interval
        if now < due - EPS:
            return None, due
        if not sf.stale and sf.probes >= stale_probes:
            return f"{sf.probes} probes unanswered", None
        send_probe(conn, sf, now)
        return None, now + interval
    if sf.stale:
        send_probe(conn, sf, now)
        return None, now + rto
    if _unanswered(sf) and now >= sf.tx_at + max(stale_min, stale_rtos * rto) - EPS:
        if sf.rx_data_at > sf.tx_at:
            # the peer still sends here (its ACK piggybacked, not moving: our bytes may
            # just have been lost twice): a probe asks for a pure ACK before judging
            send_probe(conn, sf, now)
            return None, now + rto
        return f"data unanswered for {now - sf.tx_at:.2f} s", None
    return None, _watch(conn, sf, now, stale_rtos, stale_min)


def _watch(conn: "Connection", sf: "Subflow", now: float, stale_rtos: float,
           stale_min: float) -> float | None:
    """The next moment ``sf`` needs a look: its no-progress deadline, or the end of a
    silence after the peer's data (then a probe goes out if the peer was busy here: a
    small burst followed by quiet, a keystroke's echo, is not suspicious); None when
    there is nothing to watch."""
    rto = path_rto(conn, sf)
    due = None
    if _unanswered(sf):
        due = sf.tx_at + max(stale_min, stale_rtos * rto)
    if sf.rx_count > sf.rx_seen and sf.rx_data_at >= sf.last_rx - EPS:
        quiet = sf.last_rx + max(RTO_MIN / 2, 2 * (sf.srtt or conn.srtt))
        if now >= quiet - EPS:
            if sf.rx_count - sf.rx_seen >= BUSY_SEGMENTS and _unexplained(conn, sf):
                send_probe(conn, sf, now)
                quiet = now + rto
            else:
                sf.rx_seen = sf.rx_count
                quiet = None
        if quiet is not None:
            due = quiet if due is None else min(due, quiet)
    return due


def _unanswered(sf: "Subflow") -> bool:
    """Our data went out on ``sf`` after the peer's last answer, and is outstanding."""
    return sf.tx_at > sf.answer_at and sf.snd_nxt > sf.snd_una


def _unexplained(conn: "Connection", sf: "Subflow") -> bool:
    """The peer's data stopped on ``sf`` and nothing explains it: no other subflow got
    its data since (it moved its sending elsewhere: a handover), or the TCP side waits
    for missing data (a data-level hole: something is stuck somewhere)."""
    for other in conn.subflows:
        if other is not sf and other.rx_data_at > sf.rx_data_at:
            fwd = conn.r_fwd
            return bool(fwd) and fwd[0][0] > conn.r_ack
    return True


def send_probe(conn: "Connection", sf: "Subflow", now: float) -> None:
    """A one-byte segment of old data (the byte below the peer's subflow ACK, a zero:
    the peer drops it as a duplicate) that the peer answers at once with an ACK; with our
    DATA_ACK, no mapping."""
    from . import emission  # (scheduling imports this module: emission imports scheduling)
    from .projection import held_ranges
    sf.probes += 1
    sf.probe_at = now
    conn.counters.inc("PathProbeTx")
    opts, san = emission.option_block(conn, sf, conn.d_nxt, sf.snd_nxt, 0, False, None,
                             held_ranges(conn, None))
    sf.rcv_acked = san
    conn.proxy.send(emission.forge_segment(conn, sf, sf.snd_wire(sf.snd_una - 1), TCP_ACK, opts,
                                  b"\0"))
