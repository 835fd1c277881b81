"""A multipath fake network around a :class:`~mptcp_proxy.core.proxy.Proxy` and its
:class:`~mptcp_proxy.core.policy.PathManager`, on a fake clock with a seeded RNG, for
tests/unit/test_multipath.py.

Parties (all event driven on one heap of ``(time, seq, callback)``):

- :class:`LocalTcp`: the local stack on the multihomed client, a real (simplified)
  TCP: cumulative ACKs, optional delayed ACKs, SACK on/off as negotiated in its SYN,
  timestamps, RTO with backoff, fast retransmit on three duplicate ACKs, SACK-based
  loss recovery (holes below the highest SACKed byte) or NewReno partial-ACK
  retransmission, a send window bounded by a cwnd and the peer's window. It checks
  what the proxy hands it (checksums, no MPTCP option, its own 4-tuple only, PAWS,
  RFC 5961 exact RSTs, ACKs of unsent data, the bytes themselves) and never
  acknowledges bytes it did not get.
- :class:`MpPeer`: a native MPTCP v1 server with several subflows, modelled on Linux
  6.18 (MP_CAPABLE; MP_JOIN with token lookup and both HMACs, the fourth ACK;
  per-subflow ISN, SACK, timestamp clock offset and window scale; a scheduler that
  prefers non-backup subflows and may use several at once; reinjection when a
  subflow is removed or reset, and a data-level retransmission timer; DATA_ACK and
  SACK processing; reassembly from DSNs with Linux's mapping rules; ADD_ADDR /
  REMOVE_ADDR / MP_PRIO on command).
- the network: per path (= per local address of the client) and direction a delay,
  random extra delay (reordering), random loss, duplication, scripted cuts and
  link down/up (which also call the PathManager's ``link_down``/``link_up`` as the
  daemon does).
- the proxy sits between the local stack and the wire exactly like the NFQUEUE
  hooks: local segments → ``proxy.outbound``; wire segments to the client →
  ``proxy.inbound``; forged packets from ``proxy.packets_to_send`` to the wire or
  the local stack; its timers through ``get_timer``/``handle_timer``.

Oracles that look across parties (they are what makes the projection testable):

- every ACK and SACK block the proxy shows the local stack covers only data the
  peer has (ACK: received in order at the data level; SACK: received at all);
- every subflow ACK/SACK the proxy sends the peer covers only subflow bytes that
  reached the proxy on that subflow, whose data the local stack has;
- every DATA_ACK the proxy sends covers only data the local stack received;
- no data leaves on an MP_JOIN subflow before the peer's fourth ACK reached the proxy.

Violations are collected in ``net.violations`` (``net.assert_clean()``). The option
encoders/decoders for MP_JOIN, ADD_ADDR, REMOVE_ADDR and MP_PRIO are written here
independently of the proxy's codec; MP_CAPABLE/DSS decoding comes from
``peer_model`` (also independent of the proxy).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import random
import struct
from bisect import bisect_left, bisect_right
from typing import Callable

from peer_model import (
    DSS_M,
    M32,
    M64,
    PSH,
    DssOpt,
    Fastclose,
    Ignored,
    OtherMp,
    TcpRst,
    dss_opt,
    key_sha,
    mpc_opt,
    opt_mss,
    opt_sack,
    opt_ts,
    pad4,
    parse_seg,
    sdiff,
    seeded_random_bytes,
    ts_before,
    verdict_output,
)

from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.policy import LocalIface, PathManager, PmConfig
from mptcp_proxy.core.proxy import Proxy, ProxyConfig

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

A0 = bytes([10, 0, 0, 1])  # client, interface c0 (path 0)
A1 = bytes([10, 0, 1, 1])  # client, interface c1 (path 1)
P0 = bytes([10, 9, 0, 2])  # server, main address (address ID 0)
P1 = bytes([10, 9, 1, 2])  # server, second address (announced with ADD_ADDR)
LOCAL_PORT = 40000
# Linux tcp_model_timeout(15 retries, 200 ms): 0.2 s doubled up to 120 s
RETRIES2_TIMEOUT = sum(min(0.2 * 2 ** k, 120.0) for k in range(16))
SERVER_PORT = 8080


# ================================================================== range sets
class RangeSet:
    """Sorted disjoint half-open integer ranges ``[lo, hi)`` (two parallel lists)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.lo)

    def __len__(self) -> int:
        return len(self.lo)

    def __iter__(self):
        return iter(zip(self.lo, self.hi))

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"

    def total(self) -> int:
        return sum(h - lo for lo, h in zip(self.lo, self.hi))

    def add(self, a: int, b: int) -> bool:
        """Add ``[a, b)``; True if anything new was covered."""
        if b <= a:
            return False
        lo, hi = self.lo, self.hi
        if lo and a >= lo[-1]:  # fast path: at or after the last range
            if a <= hi[-1]:
                if b > hi[-1]:
                    hi[-1] = b
                    return True
                return False
            lo.append(a)
            hi.append(b)
            return True
        i = bisect_left(hi, a)  # first range ending at or after a
        j = bisect_right(lo, b)  # ranges i..j-1 touch [a, b]
        if i == j:
            lo.insert(i, a)
            hi.insert(i, b)
            return True
        na, nb = min(a, lo[i]), max(b, hi[j - 1])
        new = not (i == j - 1 and lo[i] <= a and b <= hi[i])
        lo[i:j] = [na]
        hi[i:j] = [nb]
        return new

    def remove_below(self, x: int) -> None:
        lo, hi = self.lo, self.hi
        k = bisect_right(hi, x)
        if k:
            del lo[:k]
            del hi[:k]
        if lo and lo[0] < x:
            lo[0] = x

    def remove(self, a: int, b: int) -> None:
        if b <= a or not self.lo:
            return
        out_lo, out_hi = [], []
        for x, y in zip(self.lo, self.hi):
            if y <= a or x >= b:
                out_lo.append(x)
                out_hi.append(y)
                continue
            if x < a:
                out_lo.append(x)
                out_hi.append(a)
            if y > b:
                out_lo.append(b)
                out_hi.append(y)
        self.lo, self.hi = out_lo, out_hi

    def covers(self, a: int, b: int) -> bool:
        """Is ``[a, b)`` entirely inside one range?"""
        if b <= a:
            return True
        i = bisect_right(self.lo, a) - 1
        return i >= 0 and self.hi[i] >= b

    def contig_from(self, x: int) -> int:
        """End of the run covering ``x`` (``x`` itself if ``x`` is not covered)."""
        i = bisect_right(self.lo, x) - 1
        if i >= 0 and self.hi[i] > x:
            return self.hi[i]
        return x

    def missing(self, a: int, b: int) -> list[tuple[int, int]]:
        """Parts of ``[a, b)`` not covered."""
        out = []
        cur = a
        i = bisect_right(self.hi, a)
        while cur < b and i < len(self.lo):
            x, y = self.lo[i], self.hi[i]
            if x >= b:
                break
            if x > cur:
                out.append((cur, x))
            cur = max(cur, y)
            i += 1
        if cur < b:
            out.append((cur, b))
        return out

    def max(self) -> int | None:
        return self.hi[-1] if self.hi else None


# ============================================================ generic TCP sender
class TcpSender:
    """Send-side state of one TCP (relative sequence numbers, 0 = first byte after
    the SYN): cwnd/ssthresh, SACK scoreboard, loss marking (three duplicate ACKs,
    SACK holes below the highest SACKed byte, NewReno partial ACKs, RTO), Karn RTT
    sampling and an RFC 6298 RTO with exponential backoff."""

    def __init__(self, mss: int, sack: bool, *, init_cwnd: int = 10, max_cwnd: int = 64,
                 min_rto: float = 0.2, init_rto: float = 1.0, max_rto: float = 60.0) -> None:
        self.mss = mss
        self.sack = sack
        self.una = 0
        self.nxt = 0
        self.cwnd = init_cwnd * mss
        self.max_cwnd = max_cwnd * mss
        self.ssthresh = 1 << 40
        self.sacked = RangeSet()
        self.lost = RangeSet()
        self.rexmit = RangeSet()
        self.dupacks = 0
        self.reno_sacked = 0  # without SACK, Linux counts dup ACKs as SACKed packets
        self.state = "open"  # open | recovery (fast) | loss (after an RTO)
        self.recover = 0
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.base_rto = init_rto
        self.rto = init_rto
        self.backoff = 0
        self.rtt_seq: int | None = None
        self.rtt_t = 0.0
        self.deadline: float | None = None
        self.rto_count = 0
        self.fast_recoveries = 0
        self.rexmit_segs = 0
        self.consecutive_rtos = 0
        self.reneged = 0
        self.rto_at = 0.0
        self.first_rto_at = 0.0

    # -- accounting
    @property
    def outstanding(self) -> int:
        return self.nxt - self.una

    def pipe(self) -> int:
        return self.outstanding - self.sacked.total() - self.lost.total() + \
            self.rexmit.total() - self.reno_sacked

    def room(self) -> int:
        """Bytes that may enter the network now (cwnd minus pipe)."""
        return self.cwnd - self.pipe()

    def _mark_holes_lost(self) -> None:
        """SACK (RFC 6675 IsLost): a hole is lost once DupThresh segments' worth of
        data above it is SACKed."""
        top = self.sacked.max()
        if top is None:
            return
        need = 3 * self.mss
        for a, b in self.sacked.missing(self.una, top):
            above = sum(max(0, h - max(lo, b)) for lo, h in self.sacked)
            if above >= need:
                self.lost.add(a, b)

    def _mark_first_lost(self) -> None:
        a = self.una
        b = min(self.nxt, a + self.mss)
        for x, y in self.sacked.missing(a, b):
            self.lost.add(x, y)
            self.rexmit.remove(x, y)

    def next_retransmit(self) -> tuple[int, int] | None:
        """``(start, length)`` of the next lost range still to retransmit (at most one
        MSS), if cwnd allows."""
        if not self.lost or self.room() <= 0:
            return None
        for a, b in self.lost:
            for x, y in self.rexmit.missing(a, b):
                return x, min(y - x, self.mss)
        return None

    # -- events
    def on_sent(self, s: int, n: int, now: float, rexmit: bool) -> None:
        end = s + n
        if rexmit:
            self.rexmit.add(s, end)
            self.rexmit_segs += 1
            if self.rtt_seq is not None and s <= self.rtt_seq < end:
                self.rtt_seq = None
        else:
            if end > self.nxt:
                self.nxt = end
            if self.rtt_seq is None:
                self.rtt_seq = end - 1
                self.rtt_t = now
        if self.deadline is None:
            self.deadline = now + self.rto

    def _rtt_sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.base_rto = max(self.min_rto, self.srtt + max(0.001, 4 * self.rttvar))
        self.rto = min(self.max_rto, self.base_rto)

    def on_ack(self, ack: int, blocks: list[tuple[int, int]], now: float, dup_candidate: bool
               ) -> bool:
        """Process a cumulative ACK and SACK blocks (relative, already validated).
        ``dup_candidate``: no data, no window change (RFC 5681 duplicate ACK test).
        Returns True if the ACK advanced."""
        new_sack = False
        if self.sack:
            for a, b in blocks:
                a = max(a, ack, self.una)
                b = min(b, self.nxt)
                if b > a and self.sacked.add(a, b):
                    new_sack = True
                    self.lost.remove(a, b)
                    self.rexmit.remove(a, b)
        if ack > self.una:
            acked = ack - self.una
            if self.rtt_seq is not None and ack > self.rtt_seq:
                self._rtt_sample(now - self.rtt_t)
                self.rtt_seq = None
            self.una = ack
            self.sacked.remove_below(ack)
            self.lost.remove_below(ack)
            self.rexmit.remove_below(ack)
            self.dupacks = 0
            self.reno_sacked = 0
            self.backoff = 0
            self.consecutive_rtos = 0
            self.rto = self.base_rto
            if self.state != "open":
                if ack >= self.recover:
                    if self.state == "recovery":
                        self.cwnd = max(self.ssthresh, self.mss)
                    self.state = "open"
                    self.lost = RangeSet()
                    self.rexmit = RangeSet()
                elif self.state == "recovery":
                    if self.sack:
                        self._mark_holes_lost()
                    else:  # NewReno partial ACK: retransmit the next hole at once
                        self._mark_first_lost()
                        self.cwnd = max(self.cwnd - acked + self.mss, self.mss)
                else:  # loss: slow start while retransmitting
                    self.cwnd = min(self.cwnd + min(acked, self.mss), self.max_cwnd)
                    if self.sack:
                        self._mark_holes_lost()
            else:
                if self.cwnd < self.ssthresh:
                    self.cwnd += acked  # Linux tcp_slow_start: every newly acked packet
                else:
                    self.cwnd += max(1, self.mss * self.mss // self.cwnd)
                self.cwnd = min(self.cwnd, self.max_cwnd)
            self.deadline = now + self.rto if self.outstanding > 0 else None
            return True
        if self.outstanding <= 0:
            return False
        # RFC 6675 / Linux: with SACK only ACKs carrying new SACK information count
        # (sacked_out); without SACK every duplicate ACK does (Reno emulation)
        if new_sack or (dup_candidate and not self.sack):
            self.dupacks += 1
        if self.state == "open":
            sacked_bytes = self.sacked.total() if self.sack else 0
            if self.dupacks >= 3 or sacked_bytes >= 3 * self.mss:
                self.state = "recovery"
                self.fast_recoveries += 1
                self.recover = self.nxt
                self.ssthresh = max(self.outstanding // 2, 2 * self.mss)
                if self.sack:
                    self.cwnd = self.ssthresh
                    self._mark_holes_lost()
                    self._mark_first_lost()
                else:
                    self.cwnd = self.ssthresh + 3 * self.mss
                    self._mark_first_lost()
        elif self.state == "recovery":
            if self.sack:
                self._mark_holes_lost()
            elif dup_candidate:
                self.cwnd += self.mss  # NewReno inflation
        elif self.state == "loss":
            if self.sack:
                self._mark_holes_lost()
            elif dup_candidate and self.reno_sacked + self.mss <= self.outstanding:
                # Linux tcp_process_loss (Reno): a dup ACK is tcp_add_reno_sack, one
                # packet out of the network, so one more lost packet may go again
                self.reno_sacked += self.mss
        return False

    def on_rto(self, now: float) -> None:
        self.rto_count += 1
        if not self.consecutive_rtos:
            self.first_rto_at = now
        self.consecutive_rtos += 1
        if self.sacked.covers(self.una, self.una + 1):
            # Linux tcp_timeout_mark_lost: a SACKed head means the receiver reneged;
            # forget the SACK scoreboard and retransmit everything
            self.sacked = RangeSet()
            self.reneged += 1
        self.ssthresh = max(self.pipe() // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.state = "loss"
        self.recover = self.nxt
        self.dupacks = 0
        self.reno_sacked = 0
        self.lost = RangeSet()
        for a, b in self.sacked.missing(self.una, self.nxt):
            self.lost.add(a, b)
        self.rexmit = RangeSet()
        self.rtt_seq = None
        self.backoff += 1
        self.rto = min(self.max_rto, self.rto * 2)
        self.deadline = now + self.rto if self.outstanding > 0 else None
        self.rto_at = now

    def revert_backoff(self, now: float) -> bool:
        """RFC 6069 as Linux ``tcp_ld_RTO_revert``: an ICMP unreachable for the oldest
        byte during back-off undoes one doubling; True when the retransmission is due."""
        if self.backoff <= 0 or self.outstanding <= 0:
            return False
        self.backoff -= 1
        self.rto = min(self.max_rto, self.base_rto * 2 ** self.backoff)
        self.deadline = self.rto_at + self.rto
        return self.deadline <= now


class Timer:
    """A lazily re-armed timer on the network's event heap: ``arm(t)`` may be called
    often; only one heap event is pending, re-pushed when the deadline moved later."""

    __slots__ = ("net", "fn", "deadline", "_at")

    def __init__(self, net: "MpNet", fn: Callable[[], None]) -> None:
        self.net = net
        self.fn = fn
        self.deadline: float | None = None
        self._at: float | None = None

    def arm(self, when: float | None) -> None:
        self.deadline = when
        if when is not None and (self._at is None or when < self._at):
            self._at = when
            self.net.at(when, self._fire)

    def _fire(self) -> None:
        if self._at is not None and self._at > self.net.now + 1e-12:
            return  # an older, superseded event
        self._at = None
        d = self.deadline
        if d is None:
            return
        if d > self.net.now + 1e-12:
            self._at = d
            self.net.at(d, self._fire)
            return
        self.deadline = None
        self.fn()


# ==================================================================== local stack
class LocalTcp:
    """The client's plain TCP stack (the proxy's local side). Sequence numbers are
    relative: byte ``k`` the app wrote is ``iss + 1 + k``; received byte ``k`` is
    ``irs + 1 + k``. ``expect`` is the byte stream the peer's app sends (oracle)."""

    def __init__(self, net: "MpNet", addr: bytes, port: int, raddr: bytes, rport: int,
                 isn: int, *, mss: int = 1460, wscale: int = 7, sack: bool = True,
                 ts: bool = True, ts_base: int = 100000, rcv_buf: int = 1 << 22,
                 delack: bool = True, max_cwnd: int = 64, init_cwnd: int = 10,
                 min_rto: float = 0.2) -> None:
        self.net = net
        self.addr, self.port, self.raddr, self.rport = addr, port, raddr, rport
        self.iss = isn & M32
        self.irs = 0
        self.mss, self.ws, self.sack_perm, self.ts_on = mss, wscale, sack, ts
        self.ts_base = ts_base
        self.rcv_buf = rcv_buf
        self.delack = delack
        self.sender_kw = dict(max_cwnd=max_cwnd, init_cwnd=init_cwnd, min_rto=min_rto)
        self.state = "CLOSED"
        self.app = bytearray()  # what the app wrote
        self.fin_queued = False
        self.tx: TcpSender | None = None
        self.snd_wnd_edge = 0
        self.peer_ws = 0
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.last_win_raw = -1
        self.peer_mss = 536
        # receive side
        self.expect = b""
        self.rcv_nxt = 0  # relative, counts the FIN
        self.ooo = RangeSet()
        self.last_ooo: tuple[int, int] | None = None
        self.fin_at: int | None = None
        self.fin_rcvd = False
        self.pending_acks = 0
        self.delack_timer = Timer(net, self._delack_fire)
        self.rto_timer = Timer(net, self._rto_fire)
        self.syn_timer = Timer(net, self._syn_fire)
        self.persist_timer = Timer(net, self._persist_fire)
        self.persist_backoff = 0
        self.window_probes = 0
        self.syn_tries = 0
        # observations
        self.progress: list[tuple[float, int]] = []  # (time, rcv_nxt) on in-order progress
        self.acks_rcvd = 0
        self.dup_acks_rcvd = 0
        self.challenge_acks = 0
        self.reset = False
        self.paws_drops = 0
        self.sacks_seen = 0
        self.icmp_rcvd = 0

    # -- helpers
    def swire(self, rel: int) -> int:
        return (self.iss + 1 + rel) & M32

    def rwire(self, rel: int) -> int:
        return (self.irs + 1 + rel) & M32

    def tsval(self) -> int:
        return (self.ts_base + int(self.net.now * 1000)) & M32

    def violate(self, msg: str, kind: str = "local") -> None:
        self.net.violate(f"local t={self.net.now:.4f}: {msg}", kind)

    @property
    def eff_mss(self) -> int:
        return min(self.mss, self.peer_mss) - (12 if self.ts_ok else 0)

    @property
    def data_end(self) -> int:
        """Sequence end of what the app wrote, plus the FIN once queued."""
        return len(self.app) + (1 if self.fin_queued else 0)

    @property
    def all_acked(self) -> bool:
        return self.tx is not None and self.tx.una >= self.data_end

    def received(self, a: int, b: int) -> bool:
        """Oracle: does this stack hold received bytes ``[a, b)``?"""
        if b <= self.rcv_nxt:
            return True
        lo = max(a, self.rcv_nxt)
        return self.ooo.covers(lo, b)

    # -- app interface
    def write(self, data: bytes) -> None:
        self.app += data
        self.output()

    def close(self) -> None:
        self.fin_queued = True
        self.output()

    # -- segments
    def _sack_blocks(self) -> list[tuple[int, int]]:
        if not self.sack_ok or not self.ooo:
            return []
        blocks = list(self.ooo)
        first = None
        if self.last_ooo is not None:
            for b in blocks:
                if b[0] <= self.last_ooo[0] < b[1]:
                    first = b
                    break
        rest = [b for b in reversed(blocks) if b is not first]
        return ([first] if first else []) + rest

    def _send(self, flags: int, seq_rel: int, payload: bytes = b"") -> None:
        opts = b""
        if self.ts_ok:
            opts += opt_ts(self.tsval(), self.ts_recent)
        blocks = self._sack_blocks()
        if blocks:
            room = (40 - len(opts) - 4) // 8
            opts += opt_sack([(self.rwire(a), self.rwire(b)) for a, b in blocks[:room]])
        win = min(0xFFFF, self.rcv_buf >> self.ws)
        pkt = build_segment(self.addr, self.raddr, self.port, self.rport, self.swire(seq_rel),
                            self.rwire(self.rcv_nxt), flags | ACK, win, opts, payload)
        self.pending_acks = 0
        self.delack_timer.arm(None)
        self.net.local_out(bytes(pkt))

    def syn(self) -> None:
        opts = opt_mss(self.mss)
        if self.ts_on:
            opts += (b"\x04\x02" if self.sack_perm else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, self.tsval(), 0)
        elif self.sack_perm:
            opts += b"\x01\x01\x04\x02"
        opts += b"\x01" + bytes((3, 3, self.ws))
        self.state = "SYN_SENT"
        self.syn_tries += 1
        self.syn_timer.arm(self.net.now + 1.0 * (2 ** (self.syn_tries - 1)))
        self.net.local_out(bytes(build_segment(self.addr, self.raddr, self.port, self.rport,
                                               self.iss, 0, SYN, 0xFFFF, opts)))

    def _syn_fire(self) -> None:
        if self.state == "SYN_SENT" and self.syn_tries < 6:
            self.syn()

    def _emit_range(self, s: int, n: int, rexmit: bool) -> None:
        """Send sequence range ``[s, s+n)`` (data, and the FIN if it is inside)."""
        L = len(self.app)
        end = s + n
        fin = self.fin_queued and s <= L < end
        dend = min(end, L)
        payload = bytes(self.app[s:dend]) if dend > s else b""
        self._send((PSH if payload else 0) | (FIN if fin else 0), s, payload)
        self.tx.on_sent(s, n, self.net.now, rexmit)
        self.rto_timer.arm(self.tx.deadline)

    def output(self) -> None:
        if self.state != "ESTABLISHED" or self.tx is None:
            return
        tx = self.tx
        mss = self.eff_mss
        while True:
            r = tx.next_retransmit()
            if r is None:
                break
            s, n = r
            # a retransmission never crosses into never-sent space, nor past the FIN
            self._emit_range(s, n, True)
        end = self.data_end
        while tx.nxt < end and tx.room() > 0 and tx.nxt < self.snd_wnd_edge:
            s = tx.nxt
            n = min(mss, end - s, self.snd_wnd_edge - s)
            self._emit_range(s, n, False)
        if tx.outstanding <= 0 and tx.nxt < end and tx.nxt >= self.snd_wnd_edge:
            if self.persist_timer.deadline is None:  # persist mode (RFC 9293 §3.8.6.1)
                self.persist_timer.arm(self.net.now + tx.base_rto * 2 ** self.persist_backoff)
        else:
            self.persist_timer.arm(None)
            self.persist_backoff = 0

    def _persist_fire(self) -> None:
        """A zero-window probe, as Linux tcp_send_probe0: no data, SND.UNA - 1."""
        tx = self.tx
        if self.state != "ESTABLISHED" or tx is None or tx.nxt < self.snd_wnd_edge:
            return
        self.window_probes += 1
        self._send(0, tx.una - 1)
        self.persist_backoff = min(self.persist_backoff + 1, 9)
        self.persist_timer.arm(self.net.now + min(tx.base_rto * 2 ** self.persist_backoff,
                                                  120.0))

    def ack_now(self) -> None:
        seq = self.tx.nxt if self.tx is not None else 0
        self._send(0, seq)

    def _delack_fire(self) -> None:
        if self.pending_acks and self.state == "ESTABLISHED":
            self.ack_now()

    def _rto_fire(self) -> None:
        tx = self.tx
        if tx is None or tx.outstanding <= 0 or self.state != "ESTABLISHED":
            return
        if tx.consecutive_rtos and self.net.now - tx.first_rto_at >= RETRIES2_TIMEOUT:
            # Linux retransmits_timed_out: the time 15 backed-off RTOs would take from the
            # first retransmission (tcp_retries2), however many there really were
            self.violate("connection timed out (tcp_retries2's time without progress)")
            self.state = "DEAD"
            return
        tx.on_rto(self.net.now)
        self.net.note("local_rto", tx.rto)
        self.rto_timer.arm(tx.deadline)
        self.output()

    # -- input
    def receive(self, buf: bytes) -> None:
        if buf[0] >> 4 == 4 and buf[9] == 1:
            self._on_icmp(buf)
            return
        s = parse_seg(buf)
        if not s.csum_ok:
            self.violate(f"bad checksum {s!r}")
            return
        if any(k == 30 and (len(o) < 3 or o[2] >> 4 != 2) for k, o in s.opts):
            # a DSS left in a segment passed on unchanged is ignored by a plain TCP
            # socket; anything else (a key, signalling) must not reach it
            self.violate(f"an MPTCP option reached the local stack {s!r}")
        if not s.opts_ok:
            self.violate(f"malformed option list {s!r}")
        if (s.src, s.sport, s.dst, s.dport) != (self.raddr, self.rport, self.addr, self.port):
            self.violate(f"segment for a 4-tuple the local stack does not know (it would "
                         f"answer RST): {s.src.hex()}:{s.sport}->{s.dst.hex()}:{s.dport} {s!r}")
            return
        if self.state == "SYN_SENT":
            self._on_synack(s)
            return
        if self.state != "ESTABLISHED":
            return
        r = sdiff(s.seq, self.rwire(0))
        if s.rst:
            # RFC 5961 §3.2: exact match resets; in the window earns a challenge ACK
            if r == self.rcv_nxt:
                self.reset = True
                self.state = "RESET"
                self.net.note("local_reset")
            elif self.rcv_nxt <= r < self.rcv_nxt + self.rcv_buf:
                self.challenge_acks += 1
                self.ack_now()
            return
        if s.syn:
            if s.ackf and s.seq == self.irs:
                self.ack_now()  # retransmitted SYN/ACK
                return
            self.violate(f"unexpected SYN {s!r}")
            return
        if self.ts_ok:
            ts = s.ts
            if ts is None:
                self.violate(f"no timestamps after they were negotiated {s!r}")
            else:
                tv = ts[0]
                if ts_before(tv, self.ts_recent):
                    # the proxy maps every subflow's TS clock into one series: a
                    # backwards TSval means a wrong mapping (PAWS would drop it)
                    self.paws_drops += 1
                    self.violate(f"PAWS: TSval {tv} < ts_recent {self.ts_recent} {s!r}", "paws")
                    self.ack_now()
                    return
                if r <= self.rcv_nxt:
                    self.ts_recent = tv
        if s.ackf:
            self._on_ack(s)
        if s.plen or s.fin:
            self._on_data(s, r)
        self.output()

    def _on_icmp(self, buf: bytes) -> None:
        """An ICMP error: only destination unreachable quoting our oldest byte matters
        (Linux tcp_v4_err → tcp_ld_RTO_revert); anything else is a model violation."""
        ihl = (buf[0] & 15) * 4
        icmp = buf[ihl:]
        q = icmp[8:]
        qihl = (q[0] & 15) * 4
        self.icmp_rcvd += 1
        if icmp[0] != 3 or q[12:16] != self.addr or q[16:20] != self.raddr or \
                struct.unpack_from("!HH", q, qihl) != (self.port, self.rport):
            self.violate(f"unexpected ICMP {icmp[:2].hex()} quoting {q[:qihl + 8].hex()}")
            return
        seq = struct.unpack_from("!I", q, qihl + 4)[0]
        tx = self.tx
        if tx is None or self.state != "ESTABLISHED" or seq != self.swire(tx.una):
            return
        if tx.revert_backoff(self.net.now):
            self.net.note("local_rto_reverted_now")
            self._rto_fire()
        else:
            self.rto_timer.arm(tx.deadline)

    def _on_synack(self, s) -> None:
        if s.rst or s.flags & (SYN | ACK) != SYN | ACK or s.ack != self.swire(0):
            return
        self.irs = s.seq
        self.peer_mss = s.mss or 536
        self.peer_ws = s.wscale or 0
        self.sack_ok = self.sack_perm and s.option(4) is not None
        self.ts_ok = self.ts_on and s.ts is not None
        if self.ts_ok:
            self.ts_recent = s.ts[0]
        self.state = "ESTABLISHED"
        self.syn_timer.arm(None)
        self.tx = TcpSender(self.eff_mss, self.sack_ok, **self.sender_kw)
        self.snd_wnd_edge = s.win  # SYN/ACK windows are never scaled
        self.ack_now()
        self.net.note("local_established")
        self.output()

    def _on_ack(self, s) -> None:
        tx = self.tx
        a = sdiff(s.ack, self.swire(0))
        self.acks_rcvd += 1
        if a > tx.nxt:
            self.violate(f"ACK of unsent data ({a} > {tx.nxt}) {s!r}")
            return
        if a < tx.una - (1 << 30):
            return
        # oracle: the ACK and SACK blocks shown to the local stack must be true
        self.net.check_local_ack(a, s)
        blocks = []
        for lo, hi in s.sack:
            bl, bh = sdiff(lo, self.swire(0)), sdiff(hi, self.swire(0))
            self.sacks_seen += 1
            if not (tx.una - (1 << 20) <= bl < bh <= tx.nxt):
                self.violate(f"SACK block [{bl},{bh}) outside [{tx.una},{tx.nxt}] {s!r}")
                continue
            blocks.append((bl, bh))
        win = s.win << self.peer_ws
        dup = (not s.plen and not s.fin and a == tx.una and s.win == self.last_win_raw)
        self.last_win_raw = s.win
        if dup:
            self.dup_acks_rcvd += 1
        tx.on_ack(max(a, tx.una), blocks, self.net.now, dup)
        edge = max(a, tx.una) + win
        if edge > self.snd_wnd_edge or win == 0:  # (a zero window closes it: Linux
            self.snd_wnd_edge = edge              # tcp_ack_update_window takes any)
        self.rto_timer.arm(tx.deadline)

    def _on_data(self, s, r: int) -> None:
        data = s.payload
        n = len(data)
        L = len(self.expect)
        if n:
            if r + n > L or r < 0:
                self.violate(f"data beyond what the peer sends ({r}+{n} > {L})")
                return
            if self.expect[r:r + n] != data:
                self.violate(f"wrong bytes at stream offset {r}..{r + n}")
                return
        if r + n > self.rcv_nxt + self.rcv_buf:
            self.violate(f"data beyond the advertised window at {r}")
            return
        if s.fin:
            f = r + n
            if self.fin_at is not None and self.fin_at != f:
                self.violate(f"FIN moved from {self.fin_at} to {f}")
            self.fin_at = f
        before = self.rcv_nxt
        had_ooo = bool(self.ooo)
        end = r + n
        if n:
            if r <= self.rcv_nxt:
                if end > self.rcv_nxt:
                    self.rcv_nxt = self.ooo.contig_from(end) if self.ooo else end
                    if self.ooo:
                        self.ooo.remove_below(self.rcv_nxt)
            else:
                self.ooo.add(r, end)
                self.last_ooo = (r, end)
        if self.fin_at is not None and not self.fin_rcvd and self.rcv_nxt == self.fin_at:
            self.fin_rcvd = True
            self.rcv_nxt += 1
        advanced = self.rcv_nxt > before
        if advanced:
            self.progress.append((self.net.now, self.rcv_nxt))
        # ACK policy: immediately for out-of-order / hole filling / FIN / duplicates,
        # else every second segment or after 40 ms
        if not self.delack or not advanced or had_ooo or self.ooo or s.fin or \
                self.pending_acks >= 1:
            self.ack_now()
        else:
            self.pending_acks += 1
            self.delack_timer.arm(self.net.now + 0.04)


# ================================================ independent option codecs / HMACs
def hmac256(k1: int, k2: int, msg: bytes) -> bytes:
    """HMAC-SHA256 keyed with two big-endian u64s (RFC 8684 §3.2, §3.4.1)."""
    return hmac.new(struct.pack("!QQ", k1 & M64, k2 & M64), msg, hashlib.sha256).digest()


def join_synack_thmac(key_listener: int, key_init: int, r_listener: int, r_init: int) -> bytes:
    """SYN/ACK: leftmost 64 bits of HMAC(KeyB‖KeyA, R_B‖R_A); B = listener."""
    return hmac256(key_listener, key_init, struct.pack("!II", r_listener, r_init))[:8]


def join_ack_hmac(key_init: int, key_listener: int, r_init: int, r_listener: int) -> bytes:
    """Third ACK: leftmost 160 bits of HMAC(KeyA‖KeyB, R_A‖R_B); A = initiator."""
    return hmac256(key_init, key_listener, struct.pack("!II", r_init, r_listener))[:20]


def add_addr_hmac8(key_sender: int, key_receiver: int, addr_id: int, addr: bytes,
                   port: int | None) -> bytes:
    """ADD_ADDR: rightmost 64 bits of HMAC(Key_sender‖Key_receiver, id‖addr‖port16)."""
    msg = bytes((addr_id,)) + bytes(addr) + struct.pack("!H", port or 0)
    return hmac256(key_sender, key_receiver, msg)[-8:]


def mpj_synack_opt(backup: bool, addr_id: int, thmac: bytes, nonce: int) -> bytes:
    return bytes((30, 16, 0x10 | (1 if backup else 0), addr_id)) + thmac + \
        struct.pack("!I", nonce)


def add_addr_opt(addr_id: int, addr: bytes, port: int | None = None,
                 hmac8: bytes | None = None, echo: bool = False) -> bytes:
    body = bytes(addr) + (struct.pack("!H", port) if port is not None else b"") + \
        (b"" if echo else hmac8)
    return bytes((30, 4 + len(body), 0x30 | (1 if echo else 0), addr_id)) + body


def rm_addr_opt(ids) -> bytes:
    return bytes((30, 3 + len(ids), 0x40)) + bytes(ids)


def prio_opt(backup: bool) -> bytes:
    return bytes((30, 3, 0x50 | (1 if backup else 0)))


def decode_other(x):
    """MP_JOIN / ADD_ADDR / REMOVE_ADDR / MP_PRIO / MP_FAIL as Linux 6.18 accepts them
    (``mptcp_parse_option``: strict lengths). Returns a tuple ``(name, fields...)`` or
    an :class:`Ignored`."""
    o = x.raw
    n = len(o)
    sub = x.subtype
    if sub == 1:
        if n == 12:
            return ("join_syn", bool(o[2] & 1), o[3], struct.unpack_from("!I", o, 4)[0],
                    struct.unpack_from("!I", o, 8)[0])
        if n == 16:
            return ("join_synack", bool(o[2] & 1), o[3], bytes(o[4:12]),
                    struct.unpack_from("!I", o, 12)[0])
        if n == 24:
            return ("join_ack", bytes(o[4:24]))
        return Ignored(1, o, f"MP_JOIN len {n}")
    if sub == 3:
        echo = bool(o[2] & 1)
        forms = {8: (True, False), 10: (True, True), 16: (False, False), 18: (False, True)}
        f = forms.get(n)
        if f is None or f[0] != echo:
            return Ignored(3, o, f"ADD_ADDR len {n} echo={echo}")
        port = struct.unpack_from("!H", o, 8)[0] if f[1] else None
        h = None if echo else bytes(o[-8:])
        return ("add_addr", echo, o[3], bytes(o[4:8]), port, h)
    if sub == 4:
        if not 4 <= n <= 11:
            return Ignored(4, o, f"REMOVE_ADDR len {n}")
        return ("rm_addr", tuple(o[3:n]))
    if sub == 5:
        if n != 3:
            return Ignored(5, o, f"MP_PRIO len {n} (Linux accepts only 3)")
        return ("prio", bool(o[2] & 1))
    if sub == 6:
        if n != 12:
            return Ignored(6, o, f"MP_FAIL len {n}")
        return ("fail", struct.unpack_from("!Q", o, 4)[0])
    return ("unknown", sub, o)


# =================================================================== the MPTCP peer
class PSub:
    """One subflow as the native peer runs it (relative seqs: 0 = first byte after
    the SYN in each direction)."""

    def __init__(self, peer: "MpPeer", idx: int, laddr: bytes, lport: int, raddr: bytes,
                 rport: int, iss: int, ts_off: int, ws: int, is_join: bool) -> None:
        self.peer = peer
        self.idx = idx
        self.laddr, self.lport, self.raddr, self.rport = laddr, lport, raddr, rport
        self.tuple = (laddr, lport, raddr, rport)
        self.client_tuple = (raddr, rport, laddr, lport)
        self.iss = iss & M32
        self.irs = 0
        self.ts_off = ts_off & M32
        self.ts_first: int | None = None
        self.ws = ws
        self.rcv_ws = 0
        self.is_join = is_join
        self.state = "SYN_RCVD"
        self.remote_id = 0
        self.local_id = 0
        self.backup = False  # the proxy asked us not to send here (join B, MP_PRIO)
        self.nonce = 0
        self.remote_nonce = 0
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.mss = 1400
        self.tx: TcpSender | None = None
        self.groups: list[list[int]] = []  # [s0, dsn0, n] send mappings, by s0
        self.cur: list[int] | None = None  # [s0, dsn0, n, next_s] being sent
        self.s_alloc = 0
        self.fin_s: int | None = None
        self.fin_acked = False
        self.close_pending = False  # the other side closed it: FIN after ``cur``
        self.rcv_nxt = 0
        self.ooo: dict[int, tuple] = {}
        self.ooo_r = RangeSet()
        self.last_ooo: tuple[int, int] | None = None
        self.map: dict | None = None
        self.pending_map: tuple | None = None
        self.known: list[tuple[int, int, int]] = []
        self.fin_rcvd = False
        self.arrived_at_proxy = RangeSet()  # oracle, filled by the network
        self.synack_tries = 0
        self.synack: bytes = b""
        self.rto_timer = Timer(peer.net, lambda: peer._rto_fire(self))
        self.synack_timer = Timer(peer.net, lambda: peer._synack_fire(self))
        # observations
        self.data_segs_rcvd = 0
        self.bytes_rcvd = 0
        self.bytes_sent = 0
        self.dupacks_rcvd = 0
        self.dupacks_no_hole = 0
        self.dup_arrivals_at_proxy = 0
        self.last_win = -1
        self.dupacks_sent = 0
        self.prio_rx: list[tuple[float, bool]] = []
        self.acks_rcvd = 0
        self.closed_why = ""
        self.established_at: float | None = None

    def swire(self, rel: int) -> int:
        return (self.iss + 1 + rel) & M32

    def rwire(self, rel: int) -> int:
        return (self.irs + 1 + rel) & M32

    def tsval(self) -> int:
        v = (self.ts_off + int(self.peer.net.now * 1000)) & M32
        if self.ts_first is None:
            self.ts_first = v
        return v

    @property
    def usable(self) -> bool:
        return self.state == "ESTABLISHED" and self.fin_s is None and not self.close_pending

    @property
    def stale(self) -> bool:
        return self.tx is not None and self.tx.consecutive_rtos >= 2

    def group_at(self, s: int) -> list[int] | None:
        g = self.groups
        i = bisect_right(g, [s, 1 << 62]) - 1
        if i >= 0 and g[i][0] <= s < g[i][0] + g[i][2]:
            return g[i]
        return None

    def __repr__(self) -> str:
        return (f"<PSub {self.idx} {self.state} join={self.is_join} rid={self.remote_id} "
                f"lid={self.local_id} backup={self.backup}>")


class MpPeer:
    """A native MPTCP v1 server on Linux 6.18 (validating everything the proxy sends)."""

    def __init__(self, net: "MpNet", key: int, isn: int, *, mss: int = 1460, wscale: int = 7,
                 join_wscale: int | None = None, sack: bool = True, mtu: int = 1500,
                 rcv_buf: int = 1 << 22, map_segs: int = 1, init_cwnd: int = 10,
                 max_cwnd: int = 64, add_addr_timeout: float = 1.0, min_rto: float = 0.2,
                 dl_rto_min: float = 0.5, bad_join_hmac: bool = False,
                 join_backup: bool = False, join_limit: int | None = None) -> None:
        self.net = net
        self.rng = random.Random(net.seed * 7919 + 1)
        self.addrs: dict[bytes, int] = {P0: 0}
        self.removed_addrs: set[bytes] = set()
        self.port = SERVER_PORT
        self.key = key
        self.token, self.idsn = key_sha(key)
        self.iss0 = isn
        self.mss, self.ws = mss, wscale
        self.join_ws = wscale if join_wscale is None else join_wscale
        self.sack_on = sack
        self.mtu = mtu
        self.rcv_buf = rcv_buf
        self.map_segs = map_segs
        self.sender_kw = dict(init_cwnd=init_cwnd, max_cwnd=max_cwnd, min_rto=min_rto)
        self.add_addr_timeout = add_addr_timeout
        self.dl_rto_min = dl_rto_min
        self.bad_join_hmac = bad_join_hmac
        self.join_backup = join_backup  # B flag of our SYN/ACKs
        self.join_limit = join_limit  # joins accepted at most (live ones), then RST
        self.joins_refused = 0
        self.state = "LISTEN"
        self.remote_key = 0
        self.remote_idsn = 0
        self.subs: list[PSub] = []
        self.by_tuple: dict[tuple, PSub] = {}
        # data level, sending
        self.app = bytearray()
        self.expect = b""
        self.d_nxt = 0
        self.d_una = 0
        self.reinject = RangeSet()
        self.snd_wnd_edge = 0
        self.dfin_queued = False
        self.dfin_acked = False
        self.dl_timer = Timer(net, self._dl_rto)
        self.dl_backoff = 0
        self.dfin_timer = Timer(net, self._dfin_fire)
        # data level, receiving
        self.dl = RangeSet()
        self.dl_contig = 0
        self.got = RangeSet()
        self.rcv_dfin: int | None = None
        self.dfin_rcvd = False
        self.max_edge = rcv_buf
        self.use_64bit_ack = False
        self.fastclosed = False
        # signalling
        self.pending_add: dict[int, list] = {}
        self.add_addr_timers: dict[int, Timer] = {}
        # observations
        self.progress: list[tuple[float, int]] = []
        self.joins_ok = 0
        self.join_resets = 0
        self.echo_rx: list[int] = []
        self.rm_addr_rx: list[tuple] = []
        self.reinjected = 0
        self.dl_rtx = 0
        self.data_acks_rcvd = 0
        self.resets_rcvd: list[tuple] = []

    # ---------------------------------------------------------------- helpers
    def violate(self, msg: str, s=None, kind: str = "peer") -> None:
        self.net.violate(f"peer t={self.net.now:.4f}: {msg}" + (f" {s!r}" if s is not None
                                                                 else ""), kind)

    def data_ack_value(self) -> int:
        return self.dl_contig + (1 if self.dfin_rcvd else 0)

    def received(self, a: int, b: int) -> bool:
        """Oracle: has the peer received data bytes ``[a, b)`` at all (data level or
        sitting in a subflow's out-of-order queue with a known mapping)?"""
        return self.got.covers(a, b)

    @property
    def all_acked(self) -> bool:
        return self.d_una >= len(self.app) and (not self.dfin_queued or self.dfin_acked)

    def write(self, data: bytes) -> None:
        self.app += data
        self.output()

    def close(self) -> None:
        self.dfin_queued = True
        self.output()

    def _send_raw(self, sub: PSub, flags: int, seq_rel: int, mp: bytes = b"",
                  payload: bytes = b"", sack: bool = True, ts: bool = True) -> bytes:
        opts = b""
        if sub.ts_ok and ts:
            opts += opt_ts(sub.tsval(), sub.ts_recent)
        opts += pad4(mp)
        if sack and sub.sack_ok and sub.ooo_r:
            room = (40 - len(opts) - 4) // 8
            if room > 0:
                blocks = list(sub.ooo_r)
                first = None
                if sub.last_ooo is not None:
                    first = next((b for b in blocks if b[0] <= sub.last_ooo[0] < b[1]), None)
                order = ([first] if first else []) + [b for b in reversed(blocks)
                                                      if b is not first]
                opts += opt_sack([(sub.rwire(a), sub.rwire(b)) for a, b in order[:room]])
        win = min(0xFFFF, self.rcv_buf >> sub.ws)
        pkt = bytes(build_segment(sub.laddr, sub.raddr, sub.lport, sub.rport,
                                  sub.swire(seq_rel), sub.rwire(sub.rcv_nxt) if flags & ACK
                                  else 0, flags, win, opts, payload))
        self.net.peer_out(pkt)
        return pkt

    def _dss_ack(self) -> bytes:
        v = (self.remote_idsn + 1 + self.data_ack_value()) & M64
        return dss_opt(data_ack=v, ack64=self.use_64bit_ack)

    def ack(self, sub: PSub, extra: bytes = b"", dss: bool = True) -> bytes:
        seq = sub.tx.nxt if sub.tx is not None else 0
        return self._send_raw(sub, ACK, seq, (self._dss_ack() if dss else b"") + extra)

    # --------------------------------------------------------------- input
    def receive(self, buf: bytes) -> None:
        s = parse_seg(buf)
        if not s.csum_ok:
            self.violate("bad IP/TCP checksum", s)
            return
        if len(s.raw) > self.mtu:
            self.violate(f"packet of {len(s.raw)} bytes exceeds the MTU {self.mtu}", s)
        if not s.opts_ok:
            self.violate("malformed TCP option list", s)
        if s.dst not in self.addrs or s.dport != self.port:
            if s.dst in self.removed_addrs:
                self.net.note("peer_rx_for_removed_addr")  # in flight when it was removed
            elif not s.rst:
                self.violate("segment to an address/port the peer does not listen on", s)
            return
        other = []
        for x in s.mp:
            if isinstance(x, Ignored):
                self.violate(f"Linux ignores this option: {x.reason}", s)
            elif isinstance(x, OtherMp):
                d = decode_other(x)
                if isinstance(d, Ignored):
                    self.violate(f"Linux ignores this option: {d.reason}", s)
                else:
                    other.append(d)
        tup = (s.dst, s.dport, s.src, s.sport)
        sub = self.by_tuple.get(tup)
        if s.syn and not s.ackf:
            if sub is None or sub.state == "CLOSED":
                join = next((d for d in other if d[0] == "join_syn"), None)
                if join is not None:
                    self._on_join_syn(s, join)
                elif s.mpc is not None and self.state == "LISTEN":
                    self._on_mpc_syn(s)
                else:
                    self.violate("SYN without MP_CAPABLE/MP_JOIN", s)
            elif sub.state == "SYN_RCVD":
                self.net.peer_out(sub.synack)  # SYN retransmitted: SYN/ACK again
            else:
                self.violate("SYN on an established subflow", s)
            return
        if sub is None:
            if not s.rst:
                self.violate("segment for a subflow the peer never accepted (Linux: RST)", s)
            return
        if sub.state == "CLOSED":
            return
        if sub.state == "SYN_RCVD":
            if not self._on_third_ack(sub, s, other):
                return
        self._on_established(sub, s, other)

    # -------------------------------------------------------------- handshakes
    def _new_sub(self, s, is_join: bool) -> PSub:
        iss = self.iss0 if not is_join else self.rng.getrandbits(32)
        ts_off = 7_000_000 if not is_join else self.rng.getrandbits(32)
        sub = PSub(self, len(self.subs), s.dst, s.dport, s.src, s.sport, iss, ts_off,
                   self.join_ws if is_join else self.ws, is_join)
        sub.irs = s.seq
        sub.local_id = self.addrs[s.dst]
        sub.sack_ok = self.sack_on and s.option(4) is not None
        sub.ts_ok = s.ts is not None
        if sub.ts_ok:
            sub.ts_recent = s.ts[0]
        sub.rcv_ws = s.wscale or 0
        mss = min(self.mss, s.mss or 536)
        # room for TS and the largest DSS Linux sends (DATA_ACK64 + mapping64: 28 with NOPs)
        sub.mss = mss - (12 if sub.ts_ok else 0) - 28
        self.subs.append(sub)
        self.by_tuple[sub.tuple] = sub
        return sub

    def _synack_opts(self, sub: PSub, s) -> bytes:
        opts = opt_mss(self.mss)
        if sub.ts_ok:
            opts += (b"\x04\x02" if sub.sack_ok else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, sub.tsval(), sub.ts_recent)
        elif sub.sack_ok:
            opts += b"\x01\x01\x04\x02"
        if s.wscale is not None:
            opts += b"\x01" + bytes((3, 3, sub.ws))
        else:
            sub.ws = 0
        return opts

    def _on_mpc_syn(self, s) -> None:
        m = s.mpc
        if m.length != 4:
            self.violate(f"MP_CAPABLE on SYN has len {m.length}", s)
        sub = self._new_sub(s, False)
        opts = self._synack_opts(sub, s) + mpc_opt(flags=0x01, sndr_key=self.key)
        self.state = "SYN_RCVD"
        sub.synack = bytes(build_segment(sub.laddr, sub.raddr, sub.lport, sub.rport, sub.iss,
                                         (s.seq + 1) & M32, SYN | ACK, 0xFFFF, opts))
        self.net.peer_out(sub.synack)

    def _on_join_syn(self, s, join) -> None:
        _, backup, addr_id, token, nonce = join
        if self.state != "ESTABLISHED" or token != self.token:
            self.violate(f"MP_JOIN SYN with unknown token {token:#x} (MPJoinNoTokenFound)", s)
            self.net.peer_out(bytes(build_segment(s.dst, s.src, s.dport, s.sport, 0,
                                                  (s.seq + 1) & M32, RST | ACK, 0,
                                                  pad4(bytes((30, 4, 0x80, 1))))))
            return
        if s.mpc is not None:
            self.violate("MP_CAPABLE and MP_JOIN on one SYN", s)
        if self.join_limit is not None and sum(
                1 for x in self.subs if x.is_join and x.state != "CLOSED") >= self.join_limit:
            self.joins_refused += 1  # (Linux: limits reached, the join is reset)
            self.net.peer_out(bytes(build_segment(s.dst, s.src, s.dport, s.sport, 0,
                                                  (s.seq + 1) & M32, RST | ACK, 0)))
            return
        sub = self._new_sub(s, True)
        sub.remote_id = addr_id
        sub.backup = backup
        sub.remote_nonce = nonce
        sub.nonce = self.rng.getrandbits(32)
        thmac = join_synack_thmac(self.key, self.remote_key, sub.nonce, nonce)
        if self.bad_join_hmac:
            thmac = bytes(b ^ 0x5A for b in thmac)
        opts = self._synack_opts(sub, s) + mpj_synack_opt(self.join_backup, sub.local_id, thmac,
                                                          sub.nonce)
        sub.synack = bytes(build_segment(sub.laddr, sub.raddr, sub.lport, sub.rport, sub.iss,
                                         (s.seq + 1) & M32, SYN | ACK, 0xFFFF, opts))
        self.net.join_pending.add(sub.client_tuple)
        self.net.note("join_syn_rx")
        sub.synack_tries = 1
        sub.synack_timer.arm(self.net.now + 1.0)
        self.net.peer_out(sub.synack)

    def _synack_fire(self, sub: PSub) -> None:
        if sub.state != "SYN_RCVD":
            return
        if sub.synack_tries >= 5:
            sub.state = "CLOSED"
            sub.closed_why = "SYN/ACK unanswered"
            return
        sub.synack_tries += 1
        sub.synack_timer.arm(self.net.now + 2.0 ** (sub.synack_tries - 1))
        self.net.peer_out(sub.synack)

    def _on_third_ack(self, sub: PSub, s, other) -> bool:
        if s.rst:
            sub.state = "CLOSED"
            sub.closed_why = "reset during handshake"
            self.join_resets += 1
            self.resets_rcvd.append((sub.idx, [x for x in s.mp if isinstance(x, TcpRst)]))
            return False
        if not s.ackf or s.ack != sub.swire(0):
            self.violate("bad ACK in SYN_RCVD", s)
            return False
        sub.synack_timer.arm(None)
        if not sub.is_join:
            m = s.mpc
            if m is None or m.rcvr_key is None:
                self.violate("first ACK without a valid MP_CAPABLE -> Linux falls back", s)
                return False
            if m.rcvr_key != self.key:
                self.violate("MP_CAPABLE rcvr_key is not our key", s)
            self.remote_key = m.sndr_key
            self.remote_idsn = key_sha(m.sndr_key)[1]
            self.state = "ESTABLISHED"
            self._established(sub)
            return True
        ja = next((d for d in other if d[0] == "join_ack"), None)
        if ja is None:
            self.violate("MP_JOIN third ACK without MP_JOIN ACK option (Linux resets)", s)
            return False
        expect = join_ack_hmac(self.remote_key, self.key, sub.remote_nonce, sub.nonce)
        if ja[1] != expect:
            self.violate("MP_JOIN third ACK HMAC wrong (MPJoinAckHMacFailure)", s)
            self._send_raw(sub, RST | ACK, 0, bytes((30, 4, 0x80, 3)), sack=False)
            sub.state = "CLOSED"
            return False
        if s.plen:
            self.violate("data on the MP_JOIN third ACK", s)
        self.joins_ok += 1
        self._established(sub)
        self.ack(sub)  # the fourth ACK (a pure ACK with DSS)
        self.output()
        return False

    def _established(self, sub: PSub) -> None:
        sub.state = "ESTABLISHED"
        sub.established_at = self.net.now
        sub.tx = TcpSender(sub.mss, sub.sack_ok, **self.sender_kw)
        self.net.note("peer_subflow_established")

    # ---------------------------------------------------------- established
    def _on_established(self, sub: PSub, s, other) -> None:
        net = self.net
        r = sdiff(s.seq, sub.rwire(0))
        if s.rst:
            if r != sub.rcv_nxt:
                self.net.note("peer_challenge_ack")
                self.ack(sub)
                return
            self.resets_rcvd.append((sub.idx, [x for x in s.mp if isinstance(x, TcpRst)]))
            if any(isinstance(x, Fastclose) and x.key == self.key for x in s.mp):
                self.fastclosed = True
                for x in self.subs:
                    x.state = "CLOSED"
                self.state = "CLOSED"
                return
            self._close_sub(sub, "reset by the proxy")
            self.output()
            return
        if sub.ts_ok:
            ts = s.ts
            if ts is None:
                self.violate("no timestamps after they were negotiated", s)
            else:
                tv, te = ts
                if ts_before(tv, sub.ts_recent):
                    if sdiff(sub.ts_recent, tv) > 5000:
                        self.violate(f"PAWS: TSval {tv} far behind ts_recent {sub.ts_recent}",
                                     s)
                    net.note("peer_paws_drop")
                    self.ack(sub)
                    return
                if sub.ts_first is not None and s.ackf and not (
                        sdiff(te, sub.ts_first) >= 0 and sdiff(sub.tsval(), te) >= 0):
                    self.violate(f"TSecr {te} is not a TSval sent on subflow {sub.idx}", s)
                if r <= sub.rcv_nxt:
                    sub.ts_recent = tv
        # -- subflow ACK and SACK (oracles: only bytes that reached the proxy there, and
        #    whose data the local stack holds)
        tx = sub.tx
        if s.ackf:
            a = sdiff(s.ack, sub.swire(0))
            sub.acks_rcvd += 1
            if a > tx.nxt:
                self.violate(f"subflow ACK of unsent data on subflow {sub.idx} ({a} > {tx.nxt})",
                             s)
                a = tx.una
            if a > tx.una:
                self._check_covered(sub, tx.una, a, "subflow ACK", s)
            blocks = []
            for lo, hi in s.sack:
                bl, bh = sdiff(lo, sub.swire(0)), sdiff(hi, sub.swire(0))
                if not (0 <= bl < bh <= tx.nxt):
                    self.violate(f"SACK block [{bl},{bh}) outside [0,{tx.nxt}] on subflow "
                                 f"{sub.idx}", s)
                    continue
                self._check_covered(sub, bl, bh, "subflow SACK block", s)
                blocks.append((bl, bh))
            dss = s.dss
            dup = not s.plen and not s.fin and a == tx.una and not other and \
                (dss is None or not dss.flags & DSS_M) and s.win == sub.last_win
            sub.last_win = s.win
            if dup and tx.outstanding > 0:
                sub.dupacks_rcvd += 1
                # paper §3.4: a duplicate subflow ACK only where the proxy has a hole
                top = sub.arrived_at_proxy.max()
                if top is None or top <= a:
                    sub.dupacks_no_hole += 1
                    net.note("dupack_without_hole")
            if tx.on_ack(max(a, tx.una), blocks, net.now, dup):
                while sub.groups and sub.groups[0][0] + sub.groups[0][2] <= tx.una:
                    del sub.groups[0]
            if sub.fin_s is not None and tx.una > sub.fin_s:
                sub.fin_acked = True
            sub.rto_timer.arm(tx.deadline)
            edge = self.d_una + (s.win << sub.rcv_ws)
            if edge > self.snd_wnd_edge:
                self.snd_wnd_edge = edge
        mpc = s.mpc
        dss = s.dss
        if sum(isinstance(x, DssOpt) for x in s.mp) > 1:
            self.violate("two DSS options", s)
        if mpc is not None and dss is not None:
            self.violate("MP_CAPABLE and DSS on one segment", s)
        if mpc is not None and (mpc.sndr_key != self.remote_key or mpc.rcvr_key != self.key):
            self.violate("MP_CAPABLE keys differ from the handshake's", s)
        if mpc is not None and sub.is_join:
            self.violate("MP_CAPABLE on a join subflow", s)
        if dss is not None and dss.data_ack is not None:
            self._on_data_ack(dss, s)
        for d in other:
            self._on_signal(sub, d, s)
        if not s.plen and not s.fin:
            if dss is not None and dss.flags & DSS_M:
                self._on_dfin_alone(dss, s)
            self.output()
            return
        # -- data or a subflow FIN
        mapping = None
        if mpc is not None and s.plen:
            if mpc.data_len is None:
                self.violate("MP_CAPABLE without data-level length on data", s)
            mapping = (0, 1, mpc.data_len or 0, False)
            if r != 0 or sub.is_join:
                self.violate("MP_CAPABLE with data on a segment other than the first", s)
            self.use_64bit_ack = True
        elif dss is not None and dss.flags & DSS_M:
            if dss.dll == 0:
                self.violate("infinite mapping from the proxy", s)
            if dss.csum is not None:
                self.violate("DSS checksum present although not negotiated", s)
            drel = self._expand_dsn(dss)
            mapping = (drel, dss.ssn, dss.dll, dss.fin)
            self.use_64bit_ack = dss.dsn64
        if mapping is not None:
            self._check_known(sub, mapping, s)
            m0, mssn, mdll, mfin = mapping
            mlen = mdll - (1 if mfin else 0)
            if s.plen and mssn - 1 <= r and r + s.plen <= mssn - 1 + mlen:
                self._arrived(m0 + r - (mssn - 1), s.payload, s)
        if sub.is_join and sub.client_tuple in net.join_pending and s.plen:
            self.violate("data on a join subflow before the fourth ACK reached the proxy", s)
        sub.data_segs_rcvd += 1
        end = r + s.plen + (1 if s.fin else 0)
        if end <= sub.rcv_nxt:
            self.ack(sub)  # duplicate: (D)SACK-style immediate ACK
            sub.dupacks_sent += 1
            return
        if r > sub.rcv_nxt:
            sub.ooo[r] = (s, mapping)
            sub.ooo_r.add(r, end)
            sub.last_ooo = (r, end)
            self.ack(sub)
            sub.dupacks_sent += 1
            self.output()
            return
        self._consume(sub, s, r, mapping)
        while sub.ooo:
            k = min(sub.ooo)
            if k > sub.rcv_nxt:
                break
            seg, mp = sub.ooo.pop(k)
            if k + seg.plen + (1 if seg.fin else 0) > sub.rcv_nxt:
                self._consume(sub, seg, k, mp)
        sub.ooo_r.remove_below(sub.rcv_nxt)
        self.ack(sub)
        self.output()

    def _check_covered(self, sub: PSub, a: int, b: int, what: str, s) -> None:
        """Oracle for a subflow ACK/SACK of ``[a, b)`` on ``sub``: every byte reached the
        proxy on this subflow, and the local stack holds its data."""
        fin = sub.fin_s
        db = b if fin is None or b <= fin else fin
        miss = sub.arrived_at_proxy.missing(a, b)
        if miss:
            self.violate(f"{what} covers subflow bytes {miss} of subflow {sub.idx} that never "
                         f"reached the proxy", s, kind="ack_not_arrived")
        for g in sub.groups:
            s0, dsn0, n = g
            lo, hi = max(a, s0), min(db, s0 + n)
            if lo < hi and not self.net.local.received(dsn0 + lo - s0, dsn0 + hi - s0):
                self.violate(f"{what} on subflow {sub.idx} covers data "
                             f"[{dsn0 + lo - s0},{dsn0 + hi - s0}) the local stack does not "
                             f"have", s)
                return

    def _expand_dsn(self, dss: DssOpt) -> int:
        if dss.dsn64:
            v = (dss.dsn - self.remote_idsn - 1) & M64
        else:
            ref = (self.remote_idsn + 1 + self.dl_contig) & M64
            v = (ref + sdiff(dss.dsn, ref & M32) - self.remote_idsn - 1) & M64
        return v - (1 << 64) if v >= 1 << 63 else v

    def _check_known(self, sub: PSub, mapping, s) -> None:
        drel, ssn, dll, fin = mapping
        n = dll - (1 if fin else 0)
        s0 = ssn - 1
        for ks, kr, kn in sub.known[-64:]:
            lo, hi = max(ks, s0), min(ks + kn, s0 + n)
            if lo < hi and kr - ks != drel - s0:
                self.violate(f"mapping s={s0} r={drel} n={n} conflicts with s={ks} r={kr} "
                             f"n={kn} on subflow {sub.idx} (DSSNotMatching)", s)
                return
        if n > 0 and (not sub.known or sub.known[-1] != (s0, drel, n)):
            sub.known.append((s0, drel, n))
            if len(sub.known) > 256:
                del sub.known[:128]

    def _on_data_ack(self, dss: DssOpt, s) -> None:
        if dss.ack64:
            v = (dss.data_ack - self.idsn - 1) & M64
        else:
            ref = (self.idsn + 1 + self.d_una) & M64
            v = (ref + sdiff(dss.data_ack, ref & M32) - self.idsn - 1) & M64
        if v >= 1 << 63:
            v -= 1 << 64
        self.data_acks_rcvd += 1
        top = self.d_nxt + (1 if self.dfin_queued and self.d_nxt >= len(self.app) else 0)
        if v > top:
            self.violate(f"DATA_ACK {v} beyond what was sent ({top})", s)
            return
        if not self.net.local.received(0, min(v, len(self.app))) or \
                (v > len(self.app) and not self.net.local.fin_rcvd):
            self.violate(f"DATA_ACK {v} covers data the local stack has not received "
                         f"(rcv_nxt {self.net.local.rcv_nxt})", s)
        if v > self.d_una:
            self.d_una = v
            self.reinject.remove_below(v)
            self.dl_backoff = 0
            if self.dfin_queued and v > len(self.app):
                self.dfin_acked = True
                self.dfin_timer.arm(None)
                self._maybe_close_subflows()
            self._arm_dl_timer()

    def _on_signal(self, sub: PSub, d, s) -> None:
        name = d[0]
        net = self.net
        if name == "prio":
            sub.backup = d[1]
            sub.prio_rx.append((net.now, d[1]))
            net.note("peer_mp_prio_rx")
        elif name == "rm_addr":
            self.rm_addr_rx.append((net.now, d[1]))
            for x in self.subs:
                if x.state != "CLOSED" and x.remote_id in d[1]:
                    # Linux closes them (tcp_disconnect: RST) and reinjects their data
                    if x.state == "ESTABLISHED":
                        self._send_raw(x, RST | ACK, x.tx.nxt, bytes((30, 4, 0x80, 0)),
                                       sack=False)
                    self._close_sub(x, f"REMOVE_ADDR {d[1]}")
        elif name == "add_addr":
            _, echo, aid, addr, port, h = d
            if echo:
                self.echo_rx.append(aid)
                if aid in self.pending_add:
                    del self.pending_add[aid]
                    self.add_addr_timers.pop(aid).arm(None)
            else:
                self.violate("the proxy announced an address (not expected here)", s)
        elif name == "join_ack":
            self.ack(sub)  # third ACK retransmitted after our fourth ACK: ACK again
        elif name == "fail":
            self.violate("MP_FAIL from the proxy", s)
        elif name in ("join_syn", "join_synack"):
            self.violate(f"{name} on an established subflow", s)

    def _on_dfin_alone(self, dss: DssOpt, s) -> None:
        if not dss.fin or dss.dll != 1 or dss.ssn != 0:
            self.violate("mapping on a data-less segment that is not a DATA_FIN "
                         "(SSN 0, DLL 1)", s)
            return
        self._set_rcv_dfin(self._expand_dsn(dss), s)

    def _set_rcv_dfin(self, drel: int, s) -> None:
        if self.rcv_dfin is not None and self.rcv_dfin != drel:
            self.violate(f"DATA_FIN moved from {self.rcv_dfin} to {drel}", s)
        self.rcv_dfin = drel
        self._check_dfin()

    def _check_dfin(self) -> None:
        if self.rcv_dfin is not None and not self.dfin_rcvd and self.dl_contig == self.rcv_dfin:
            self.dfin_rcvd = True
            for x in self.subs:
                if x.usable:
                    self.ack(x)
                    break
            self._maybe_close_subflows()

    # Linux get_mapping_status / validate_mapping, one in-order segment at a time
    def _install(self, sub: PSub, mapping, pos: int, n: int, s) -> None:
        drel, ssn, dll, fin = mapping
        plen = dll - (1 if fin else 0)
        cur = sub.map
        if cur is not None:
            if (cur["dsn"], cur["ssn"], cur["dll"], cur["fin"]) == (drel, ssn, dll, fin):
                return
            if cur["s"] <= pos and pos + n <= cur["s"] + cur["len"]:
                self.violate("new mapping on a segment fully covered by the current one "
                             "(DSSNoMatch)", s)
                return
            sub.pending_map = mapping
            return
        s0 = ssn - 1
        if not (s0 <= pos < s0 + plen):
            self.violate(f"mapping s={s0}..{s0 + plen} does not cover subflow seq {pos} on "
                         f"subflow {sub.idx} (DSSNoMatchTCP)", s)
            return
        sub.map = {"dsn": drel, "ssn": ssn, "dll": dll, "fin": fin, "s": s0, "len": plen}

    def _consume(self, sub: PSub, s, r: int, mapping) -> None:
        data = s.payload
        pos = r
        if pos < sub.rcv_nxt:
            data = data[sub.rcv_nxt - pos:]
            pos = sub.rcv_nxt
        if mapping is not None and data:
            self._install(sub, mapping, pos, len(data), s)
        while data:
            m = sub.map
            if m is None and sub.pending_map is not None:
                pm, sub.pending_map = sub.pending_map, None
                self._install(sub, pm, pos, len(data), s)
                m = sub.map
            if m is None:
                self.violate(f"data at subflow seq {pos} of subflow {sub.idx} without a "
                             f"mapping", s)
                sub.rcv_nxt = pos + len(data)
                data = b""
                break
            off = pos - m["s"]
            take = min(len(data), m["len"] - off)
            if take <= 0:
                self.violate("mapping exhausted inside a segment", s)
                sub.map = None
                continue
            self._deliver(m["dsn"] + off, data[:take], s)
            pos += take
            data = data[take:]
            sub.rcv_nxt = pos
            sub.bytes_rcvd += take
            if pos >= m["s"] + m["len"]:
                sub.map = None
                if m["fin"]:
                    self._set_rcv_dfin(m["dsn"] + m["len"], s)
        if s.fin:
            sub.rcv_nxt += 1
            sub.fin_rcvd = True
            self.net.note("peer_subflow_fin_rx")
            if sub.state == "ESTABLISHED" and sub.fin_s is None and not self.dfin_rcvd:
                # the proxy closed this subflow alone (remove-subflow): Linux closes
                # it too, with a FIN after the mapping it is sending
                sub.close_pending = True
                self._fin_if_idle(sub)
            self._maybe_close_subflows()

    def _arrived(self, dsn: int, data: bytes, s) -> None:
        n = len(data)
        if dsn >= 0 and dsn + n <= self.dl_contig:
            return  # old data: Linux drops it unread (DuplicateData); e.g. a hole fill
        L = len(self.expect)
        if dsn < 0 or dsn + n > L:
            self.violate(f"data [{dsn},{dsn + n}) beyond what the local app wrote ({L})", s)
            return
        if self.expect[dsn:dsn + n] != data:
            self.violate(f"wrong bytes at data offset {dsn}..{dsn + n}", s)
            return
        self.got.add(dsn, dsn + n)

    def _deliver(self, dsn: int, data: bytes, s) -> None:
        n = len(data)
        if not n or (dsn >= 0 and dsn + n <= self.dl_contig):
            return  # nothing, or old data Linux drops unread
        L = len(self.expect)
        if dsn < 0 or dsn + n > L or self.expect[dsn:dsn + n] != data:
            self.violate(f"wrong or unexpected bytes at data offset {dsn}..{dsn + n}", s)
            return
        if dsn + n > self.max_edge + 65536:
            self.violate(f"data at {dsn}+{n} beyond the receive window edge {self.max_edge}", s)
        self.got.add(dsn, dsn + n)
        if self.dfin_rcvd and dsn + n > self.dl_contig:
            self.violate("data beyond the DATA_FIN", s)
        self.dl.add(dsn, dsn + n)
        if dsn <= self.dl_contig < dsn + n:
            self.dl_contig = self.dl.contig_from(self.dl_contig)
            self.dl.remove_below(self.dl_contig - 1)
            self.progress.append((self.net.now, self.dl_contig))
            edge = self.dl_contig + self.rcv_buf
            if edge > self.max_edge:
                self.max_edge = edge
            self._check_dfin()

    # ------------------------------------------------------------- signalling
    def announce(self, addr: bytes, addr_id: int, port: int | None = None,
                 bad_hmac: bool = False) -> None:
        """ADD_ADDR (retransmitted every ``add_addr_timeout`` until echoed)."""
        self.addrs[addr] = addr_id
        h = add_addr_hmac8(self.key, self.remote_key, addr_id, addr, port)
        if bad_hmac:
            h = bytes(b ^ 0xFF for b in h)
        opt = add_addr_opt(addr_id, addr, port, h)
        self.pending_add[addr_id] = [opt, 0]
        t = Timer(self.net, lambda: self._send_add_addr(addr_id))
        self.add_addr_timers[addr_id] = t
        self._send_add_addr(addr_id)

    def _send_add_addr(self, addr_id: int) -> None:
        item = self.pending_add.get(addr_id)
        if item is None:
            return
        if item[1] >= 4:
            del self.pending_add[addr_id]
            return
        sub = next((x for x in self.subs if x.usable and not x.backup), None) or \
            next((x for x in self.subs if x.usable), None)
        if sub is None:
            return
        item[1] += 1
        # Linux sends ADD_ADDR on a pure ACK with the other suboptions dropped
        self.ack(sub, extra=item[0], dss=False)
        self.net.note("peer_add_addr_tx")
        self.add_addr_timers[addr_id].arm(self.net.now + self.add_addr_timeout)

    def remove_addr(self, addr_id: int) -> None:
        """REMOVE_ADDR for our address ``addr_id``, then close our subflows using it."""
        carrier = next((x for x in self.subs if x.usable and x.local_id != addr_id), None)
        if carrier is not None:
            self.ack(carrier, extra=rm_addr_opt([addr_id]))
        for x in self.subs:
            if x.state == "ESTABLISHED" and x.local_id == addr_id:
                self._send_raw(x, RST | ACK, x.tx.nxt, bytes((30, 4, 0x80, 0)), sack=False)
                self._close_sub(x, "our address removed")
        for a, i in list(self.addrs.items()):
            if i == addr_id and a != P0:
                del self.addrs[a]
                self.removed_addrs.add(a)
        self.output()

    def reset_subflow(self, sub: PSub, reason: int = 0) -> None:
        """Reset one subflow (RST + MP_TCPRST) and reinject what it carried."""
        if sub.state == "ESTABLISHED":
            self._send_raw(sub, RST | ACK, sub.tx.nxt, bytes((30, 4, 0x80, reason)), sack=False)
        self._close_sub(sub, "reset by the peer")
        self.output()

    def set_prio(self, sub: PSub, backup: bool) -> None:
        """MP_PRIO on ``sub``: ask the proxy to treat it as (non-)backup."""
        self.ack(sub, extra=prio_opt(backup))
        self.net.note("peer_mp_prio_tx")

    # ------------------------------------------------------------- sending
    def _close_sub(self, sub: PSub, why: str) -> None:
        if sub.state == "CLOSED":
            return
        sub.state = "CLOSED"
        sub.closed_why = why
        sub.rto_timer.arm(None)
        sub.synack_timer.arm(None)
        # reinject what it carried that is not DATA_ACKed (Linux
        # __mptcp_retransmit_pending_data / mptcp_subflow_reset)
        for s0, dsn0, n in sub.groups:
            lo = max(dsn0, self.d_una)
            if lo < dsn0 + n:
                self.reinject.add(lo, dsn0 + n)
                self.reinjected += dsn0 + n - lo
        if sub.cur is not None:
            sub.cur = None
        self.net.note("peer_subflow_closed")

    def _senders(self) -> list[PSub]:
        """Linux mptcp_subflow_get_send: active (non-stale) non-backup subflows; backup
        ones only when no non-backup subflow is active."""
        act = [x for x in self.subs if x.usable and not x.stale]
        nonb = [x for x in act if not x.backup]
        pool = nonb if nonb else act
        if not pool:
            pool = [x for x in self.subs if x.usable]
        return pool

    def _emit(self, sub: PSub, s: int, n: int, rexmit: bool) -> None:
        if sub.fin_s is not None and s >= sub.fin_s:
            self._send_raw(sub, FIN | ACK, sub.fin_s, self._dss_ack(), sack=False)
            sub.tx.on_sent(sub.fin_s, 1, self.net.now, rexmit)
            sub.rto_timer.arm(sub.tx.deadline)
            return
        g = sub.group_at(s)
        if g is None:
            self.violate(f"model: no mapping for subflow {sub.idx} seq {s}")
            return
        s0, dsn0, gn = g
        n = min(n, s0 + gn - s)
        dsn = dsn0 + (s - s0)
        payload = bytes(self.app[dsn:dsn + n])
        dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
        mp = dss_opt(data_ack=dack, ack64=self.use_64bit_ack,
                     dsn=(self.idsn + 1 + dsn0) & M64, dsn64=True, ssn=(s0 + 1) & M32, dll=gn)
        self._send_raw(sub, ACK | PSH, s, mp, payload, sack=False)
        sub.tx.on_sent(s, n, self.net.now, rexmit)
        sub.bytes_sent += n
        sub.rto_timer.arm(sub.tx.deadline)

    def output(self) -> None:
        if self.state != "ESTABLISHED":
            return
        for sub in self.subs:
            if sub.state != "ESTABLISHED" or sub.tx is None:
                continue
            while True:
                r = sub.tx.next_retransmit()
                if r is None:
                    break
                self._emit(sub, r[0], r[1], True)
        while True:
            for sub in self.subs:  # finish groups already mapped to a subflow
                g = sub.cur
                while g is not None and sub.state == "ESTABLISHED" and sub.fin_s is None \
                        and sub.tx.room() > 0:
                    n = min(sub.mss, g[0] + g[2] - g[3])
                    self._emit(sub, g[3], n, False)
                    g[3] += n
                    if g[3] >= g[0] + g[2]:
                        sub.cur = g = None
                        self._fin_if_idle(sub)
            # the next chunk: reinjection first, then new data
            self.reinject.remove_below(self.d_una)
            chunk = None
            if self.reinject:
                a, b = next(iter(self.reinject))
                chunk = (a, b, True)
            elif self.d_nxt < len(self.app) and self.d_nxt < max(self.snd_wnd_edge,
                                                                 self.d_una + 65535):
                chunk = (self.d_nxt, min(len(self.app), max(self.snd_wnd_edge,
                                                              self.d_una + 65535)), False)
            if chunk is None:
                break
            cands = [x for x in self._senders() if x.cur is None and x.tx.room() > 0]
            if not cands:
                break
            sub = min(cands, key=lambda x: (x.tx.backoff, x.tx.pipe() / max(x.tx.cwnd, 1),
                                            x.idx))
            a, b, reinj = chunk
            n = min(b - a, self.map_segs * sub.mss)
            s0 = sub.s_alloc
            sub.groups.append([s0, a, n])
            sub.cur = [s0, a, n, s0]
            sub.s_alloc += n
            if reinj:
                self.reinject.remove(a, a + n)
            else:
                self.d_nxt = a + n
        self._arm_dl_timer()
        if self.dfin_queued and not self.dfin_acked and self.d_nxt >= len(self.app) and \
                self.dfin_timer.deadline is None:
            self._dfin_fire()

    def _rto_fire(self, sub: PSub) -> None:
        tx = sub.tx
        if sub.state != "ESTABLISHED" or tx is None or tx.outstanding <= 0:
            return
        was_stale = sub.stale
        tx.on_rto(self.net.now)
        self.net.note("peer_rto")
        sub.rto_timer.arm(tx.deadline)
        if sub.stale and not was_stale and any(x.usable and not x.stale for x in self.subs):
            # Linux mptcp_pm_subflows_chk_stale: a stale subflow's pending data is pushed
            # on the other subflows (__mptcp_retransmit_pending_data)
            self.net.note("peer_subflow_stale")
            for s0, dsn0, n in sub.groups:
                lo = max(dsn0, self.d_una)
                if lo < dsn0 + n:
                    self.reinject.add(lo, dsn0 + n)
                    self.reinjected += dsn0 + n - lo
        self.output()

    def _arm_dl_timer(self) -> None:
        if self.d_una < self.d_nxt:
            if self.dl_timer.deadline is None:
                srtt = max((x.tx.srtt or 0.2) for x in self.subs if x.tx is not None) \
                    if any(x.tx is not None for x in self.subs) else 0.2
                self.dl_timer.arm(self.net.now + max(self.dl_rto_min, 3 * srtt)
                                  * (2 ** min(self.dl_backoff, 6)))
        else:
            self.dl_timer.arm(None)

    def _dl_rto(self) -> None:
        """MPTCP-level retransmission (Linux __mptcp_retrans): the first unacknowledged
        data goes again on another subflow if the data level made no progress."""
        if self.state != "ESTABLISHED" or self.d_una >= self.d_nxt:
            return
        self.dl_rtx += 1
        self.dl_backoff += 1
        mss = max((x.mss for x in self.subs if x.usable), default=1000)
        self.reinject.add(self.d_una, min(self.d_nxt, self.d_una + 4 * mss))
        self.net.note("peer_dl_retransmit")
        self.output()
        self._arm_dl_timer()

    def _dfin_fire(self) -> None:
        if self.dfin_acked or self.state != "ESTABLISHED":
            return
        sub = next((x for x in self._senders()), None)
        if sub is not None:
            dsn = (self.idsn + 1 + len(self.app)) & M64
            dack = (self.remote_idsn + 1 + self.data_ack_value()) & M64
            self._send_raw(sub, ACK, sub.tx.nxt, dss_opt(data_ack=dack, ack64=self.use_64bit_ack,
                                                         dsn=dsn, ssn=0, dll=1, fin=True))
        self.dfin_timer.arm(self.net.now + 0.5)

    def _fin_if_idle(self, sub: PSub) -> None:
        if sub.close_pending and sub.cur is None and sub.fin_s is None \
                and sub.state == "ESTABLISHED":
            sub.fin_s = sub.tx.nxt
            self._emit(sub, sub.fin_s, 1, False)

    def _maybe_close_subflows(self) -> None:
        """Both DATA_FINs done: close every subflow with a FIN (after Linux)."""
        if not (self.dfin_rcvd and (self.dfin_acked or not self.dfin_queued)):
            return
        if not self.dfin_queued:
            return
        for x in self.subs:
            if x.state == "ESTABLISHED" and x.fin_s is None and x.cur is None:
                x.fin_s = x.tx.nxt
                self._emit(x, x.fin_s, 1, False)


# ====================================================================== the network
class PathDir:
    """One direction of one path: base delay, reordering (with probability
    ``reorder`` a packet gets up to ``jitter`` extra delay), loss, duplication."""

    __slots__ = ("delay", "jitter", "reorder", "loss", "dup", "rate", "busy_until", "drop_fn")

    def __init__(self, delay: float = 0.015, jitter: float = 0.0, reorder: float = 0.0,
                 loss: float = 0.0, dup: float = 0.0, rate: float | None = 2.5e6) -> None:
        self.delay, self.jitter, self.reorder, self.loss, self.dup = delay, jitter, reorder, \
            loss, dup
        self.rate = rate  # bytes per second (serialization, FIFO); None = infinite
        self.busy_until = 0.0
        self.drop_fn: Callable[[bytes], bool] | None = None


IFACE = {0: "c0", 1: "c1"}


class MpNet:
    """Local stack ↔ Proxy(+PathManager) ↔ two paths ↔ native MPTCP peer, on a fake clock."""

    def __init__(self, seed: int = 1, *, subflows: str = "backup", pm_kw: dict | None = None,
                 proxy_config: ProxyConfig | None = None, local_kw: dict | None = None,
                 peer_kw: dict | None = None, delay: float = 0.015,
                 peer_key: int = 0x29A6C86981AD933C, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.heap: list = []
        self._seq = 0
        self.violations: list[tuple[str, str]] = []
        self.kinds: dict[str, int] = {}
        self.notes: dict[str, int] = {}
        self.trace: list | None = [] if trace else None
        self.paths = {i: {"up": PathDir(delay), "down": PathDir(delay)} for i in (0, 1)}
        self.cut_at: dict[int, float | None] = {0: None, 1: None}
        self.down: dict[int, bool] = {0: False, 1: False}
        self.addr_path = {A0: 0, A1: 1}
        self.ifaces = [LocalIface("c0", 1, v4=[A0]), LocalIface("c1", 2, v4=[A1])]
        self._port = 50000
        pm_kw = {"join_announced": "any", **(pm_kw or {})}  # (the model's addresses: 10/8)
        self.pm = PathManager(self.ifaces, PmConfig(subflows=subflows, **pm_kw),
                              alloc_port=self._alloc_port)
        self.proxy = Proxy(proxy_config or ProxyConfig(), seeded_random_bytes(seed),
                           pm=self.pm)
        self.join_pending: set[tuple] = set()
        self.local = LocalTcp(self, A0, LOCAL_PORT, P0, SERVER_PORT,
                              self.rng.getrandbits(32), **(local_kw or {}))
        self.peer = MpPeer(self, peer_key, self.rng.getrandbits(32), **(peer_kw or {}))
        self.local.expect = self.peer.app
        self.peer.expect = self.local.app
        self.events: list[tuple] = []
        self.wire_log: list[tuple] = []  # (t, dir, path, bytes) when trace
        self.taps: list[Callable] = []
        self.stall_guard = 0
        self.pkts = 0

    # -------------------------------------------------------------- plumbing
    def _alloc_port(self, addr: bytes) -> int:
        self._port += 1
        return self._port

    def at(self, t: float, fn: Callable, *args) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, fn, args))

    def violate(self, msg: str, kind: str = "general") -> None:
        """Record a deviation. ``kind`` lets a test set aside one known, separately
        tested defect (``assert_clean(allow=...)``)."""
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.violations) < 300:
            self.violations.append((kind, msg))

    def note(self, name: str, value=None) -> None:
        self.notes[name] = self.notes.get(name, 0) + 1

    def problems(self, allow: tuple[str, ...] = ()) -> list[str]:
        return [f"[{k}] {m}" for k, m in self.violations if k not in allow]

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        bad = self.problems(allow)
        assert not bad, f"{len(bad)} violations:\n" + "\n".join(bad[:15])

    def _log(self, hop: str, pkt: bytes) -> None:
        if self.trace is not None:
            self.trace.append((self.now, hop, pkt))
        for t in self.taps:
            t(hop, pkt, self.now)

    def _verdict(self, buf: bytes, v, b: bytearray):
        return verdict_output(buf, v, b)

    def _forged(self) -> None:
        for p in self.proxy.packets_to_send():
            assert isinstance(p, (bytes, bytearray)), type(p)
            p = bytes(p)
            src, dst = p[12:16], p[16:20]
            self._log("forged", p)
            if dst in self.peer.addrs or dst in (P0, P1):
                self._client_to_wire(p)
            elif dst == self.local.addr and src in (P0, P1):
                self.at(self.now, self._to_local, p)
            else:
                self.violate(f"proxy forged a packet to an unknown address {dst.hex()}")
        for ev in self.proxy.events():
            self.events.append((self.now, ev))

    # -- local stack -> proxy (OUTPUT) -> wire
    def local_out(self, buf: bytes) -> None:
        self.pkts += 1
        self._log("out", buf)
        b = bytearray(buf)
        v = self.proxy.outbound(b, self.now)
        out = self._verdict(buf, v, b)
        if out is not None:
            self._client_to_wire(out)
        self._forged()

    def _client_to_wire(self, p: bytes) -> None:
        src = p[12:16]
        path = self.addr_path.get(src)
        self._log("to_peer", p)
        if path is None:
            self.violate(f"a packet leaves from an address that is not ours: {src.hex()}")
            return
        ihl = (p[0] & 15) * 4
        plen = len(p) - ihl - (p[ihl + 12] >> 4) * 4
        if plen:
            tup = (src, int.from_bytes(p[ihl:ihl + 2], "big"), p[16:20],
                   int.from_bytes(p[ihl + 2:ihl + 4], "big"))
            if tup in self.join_pending:
                self.violate(f"t={self.now:.4f}: proxy sends data on join subflow {tup} before "
                             f"the fourth ACK reached it")
        self._transmit(path, "up", p, self.peer.receive)

    def _transmit(self, path: int, direction: str, p: bytes, deliver: Callable) -> None:
        if self.down[path] or (self.cut_at[path] is not None and self.now >= self.cut_at[path]):
            self.note(f"drop_cut_{path}")
            return
        pd = self.paths[path][direction]
        rng = self.rng
        if pd.drop_fn is not None and pd.drop_fn(p):
            self.note(f"drop_scripted_{path}_{direction}")
            return
        if pd.loss and rng.random() < pd.loss:
            self.note(f"drop_random_{path}_{direction}")
            return
        t = self.now
        if pd.rate:
            t = max(t, pd.busy_until) + len(p) / pd.rate
            pd.busy_until = t
        d = pd.delay
        if pd.reorder and rng.random() < pd.reorder:
            d += rng.uniform(0, pd.jitter)
        self.at(t + d, self._arrive, path, deliver, p)
        if pd.dup and rng.random() < pd.dup:
            self.at(t + d + rng.uniform(0, 0.002), self._arrive, path, deliver, p)

    def _arrive(self, path: int, deliver: Callable, p: bytes) -> None:
        if self.down[path] or (self.cut_at[path] is not None and self.now >= self.cut_at[path]):
            self.note(f"drop_cut_{path}")
            return
        deliver(p)

    # -- peer -> wire -> proxy (PREROUTING) -> local stack
    def peer_out(self, p: bytes) -> None:
        self.pkts += 1
        self._log("from_peer", p)
        path = self.addr_path.get(p[16:20])
        if path is None:
            self.violate(f"peer sends to an unknown address {p[16:20].hex()}")
            return
        self._transmit(path, "down", p, self._proxy_in)

    def _proxy_in(self, p: bytes) -> None:
        ihl = (p[0] & 15) * 4
        tup = (p[12:16], int.from_bytes(p[ihl:ihl + 2], "big"), p[16:20],
               int.from_bytes(p[ihl + 2:ihl + 4], "big"))
        sub = self.peer.by_tuple.get(tup)
        flags = p[ihl + 13]
        if sub is not None and not flags & (SYN | RST):
            if sub.client_tuple in self.join_pending and sub.state == "ESTABLISHED":
                self.join_pending.discard(sub.client_tuple)
            plen = len(p) - ihl - (p[ihl + 12] >> 4) * 4
            if plen or flags & FIN:
                s = sdiff(int.from_bytes(p[ihl + 4:ihl + 8], "big"), sub.iss + 1)
                if not sub.arrived_at_proxy.add(s, s + plen + (1 if flags & FIN else 0)):
                    sub.dup_arrivals_at_proxy += 1
        self._log("in", p)
        b = bytearray(p)
        v = self.proxy.inbound(b, self.now)
        out = self._verdict(p, v, b)
        # as the NFQUEUE driver does it: the verdict, then the forged packets; the local
        # stack reacts to the accepted packet later (its output is another callback)
        if out is not None:
            self._log("accepted_in", out)
            self.at(self.now, self._to_local, out)
        self._forged()

    def _to_local(self, p: bytes) -> None:
        self._log("to_local", p)
        self.local.receive(p)

    # ------------------------------------------------------------ oracles
    def check_local_ack(self, a: int, s) -> None:
        """The ACK and SACK blocks the proxy shows the local stack must be true."""
        peer = self.peer
        L = len(self.local.app)
        data_top = min(a, L)
        if data_top > peer.dl_contig:
            self.violate(f"t={self.now:.4f}: ACK {a} shown to the local stack, but the peer "
                         f"has only {peer.dl_contig} bytes in order at the data level", "oracle")
        if a > L and not peer.dfin_rcvd:
            self.violate(f"t={self.now:.4f}: ACK {a} covers the FIN but the peer has no "
                         f"DATA_FIN", "oracle")
        base = self.local.swire(0)
        for lo, hi in s.sack:
            bl, bh = sdiff(lo, base), sdiff(hi, base)
            bh_d = min(bh, L)
            if bl < bh_d and not peer.received(bl, bh_d):
                self.violate(f"t={self.now:.4f}: SACK block [{bl},{bh}) shown to the local "
                             f"stack, but the peer has not received "
                             f"{peer.got.missing(bl, bh_d)[:3]}", "oracle")

    # ---------------------------------------------------------------- driving
    def run(self, until: float, stop: Callable[[], bool] | None = None,
            max_events: int = 5_000_000) -> bool:
        """Run events up to time ``until`` (or until ``stop()``); True if stopped."""
        heap = self.heap
        proxy = self.proxy
        last_pt = None
        same = 0
        if stop is not None and stop():
            return True
        for _ in range(max_events):
            pt = proxy.get_timer()
            ht = heap[0][0] if heap else None
            if pt is not None and (ht is None or pt <= ht):
                if pt > until:
                    self.now = max(self.now, until)
                    return False
                if pt == last_pt:
                    same += 1
                    assert same < 1000, f"proxy timer stuck at {pt}"
                else:
                    same = 0
                last_pt = pt
                self.now = max(self.now, pt)
                proxy.handle_timer(self.now)
                self._forged()
            else:
                if ht is None or ht > until:
                    self.now = max(self.now, until)
                    return False
                t, _, fn, args = heapq.heappop(heap)
                self.now = max(self.now, t)
                fn(*args)
            if stop is not None and stop():
                return True
        raise AssertionError("event limit reached")

    def connect(self, timeout: float = 5.0) -> None:
        self.local.syn()
        ok = self.run(self.now + timeout, lambda: self.local.state == "ESTABLISHED"
                      and self.peer.state == "ESTABLISHED")
        assert ok, "handshake did not complete"

    @property
    def conn(self):
        conns = list(self.proxy.connections.values())
        assert len(conns) == 1, conns
        return conns[0]

    def subflows_up(self) -> list:
        from mptcp_proxy.core.subflow import SubflowState
        return [sf for sf in self.conn.subflows if sf.state == SubflowState.ESTABLISHED]

    def wait_subflows(self, n: int, timeout: float = 5.0) -> None:
        ok = self.run(self.now + timeout, lambda: len(self.subflows_up()) >= n and
                      sum(1 for x in self.peer.subs if x.state == "ESTABLISHED") >= n)
        assert ok, f"{n} subflows did not come up: {self.conn.subflows} {self.peer.subs}"

    def transfer_done(self) -> bool:
        lo, pe = self.local, self.peer
        return (lo.rcv_nxt >= len(pe.app) and pe.dl_contig >= len(lo.app)
                and lo.all_acked and pe.all_acked)

    def run_transfer(self, up: bytes = b"", down: bytes = b"", timeout: float = 60.0) -> float:
        """Write ``up`` (local → peer) and ``down`` (peer → local); run until both
        arrived and are acknowledged. Returns the fake time it took."""
        t0 = self.now
        if up:
            self.local.write(up)
        if down:
            self.peer.write(down)
        ok = self.run(t0 + timeout, self.transfer_done)
        assert ok, (f"transfer incomplete after {timeout}s: local got {self.local.rcv_nxt}/"
                    f"{len(self.peer.app)}, peer got {self.peer.dl_contig}/{len(self.local.app)}"
                    f"; violations: {self.violations[:5]}")
        return self.now - t0

    def stream_ok(self) -> None:
        """Byte-for-byte integrity both ways (every delivered byte was compared with
        the sender's stream on arrival; here: everything arrived)."""
        assert self.local.rcv_nxt >= len(self.peer.app)
        assert self.peer.dl_contig >= len(self.local.app)

    # -- scripted network events
    def set_path(self, i: int, direction: str = "both", **kw) -> None:
        for d in ("up", "down") if direction == "both" else (direction,):
            for k, v in kw.items():
                setattr(self.paths[i][d], k, v)

    def cut(self, i: int, at: float | None = None) -> None:
        """Drop everything on path ``i`` from time ``at`` (default: now), in flight too."""
        self.cut_at[i] = self.now if at is None else at

    def uncut(self, i: int) -> None:
        self.cut_at[i] = None

    def link_down(self, i: int) -> None:
        """The interface of path ``i`` goes down: the path drops everything and the
        daemon tells the PathManager."""
        self.down[i] = True
        self.pm.link_down(IFACE[i], self.now)
        self._forged()

    def link_up(self, i: int) -> None:
        self.down[i] = False
        self.cut_at[i] = None
        addr = A0 if i == 0 else A1
        self.pm.link_up(IFACE[i], self.now, [addr], [])
        self._forged()

    def handover(self, i: int, break_: bool = False):
        sf = self.pm.handover(self.conn, self.pm.ifaces[IFACE[i]], self.now, break_=break_)
        self._forged()
        return sf

    def gap(self, series: list[tuple[float, int]], t0: float, t1: float) -> float:
        """Longest time without in-order progress in ``[t0, t1]``."""
        last = t0
        worst = 0.0
        for t, _ in series:
            if t < t0:
                continue
            if t > t1:
                break
            worst = max(worst, t - last)
            last = t
        return max(worst, 0.0)

    def recovery_time(self, series: list[tuple[float, int]], t_event: float, mark: int) -> float:
        """Time from ``t_event`` until in-order delivery reached ``mark`` (typically
        the highest byte the sender had sent when the path broke: everything in flight
        then is recovered). ``inf`` if never."""
        for t, v in series:
            if t >= t_event and v >= mark:
                return t - t_event
        return float("inf")
