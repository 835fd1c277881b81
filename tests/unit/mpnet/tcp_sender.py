"""The generic TCP sender of the multipath models (:class:`TcpSender`): cwnd, RTT and
RTO with backoff, fast retransmit, SACK-based or NewReno loss recovery. The local
stack and each subflow of the MPTCP peer use one."""

from __future__ import annotations

from mpnet.ranges import RangeSet


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
