"""The local stack on the multihomed client (:class:`LocalTcp`): a real (simplified)
TCP that checks everything the proxy hands it and never acknowledges bytes it did
not get."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from lockstep.decode import parse_seg
from lockstep.wire import ACK, FIN, M32, PSH, SYN, opt_mss, opt_sack, opt_ts, sdiff, ts_before

from mpnet.ranges import RangeSet
from mpnet.tcp_sender import TcpSender
from mpnet.timer import Timer
from mptcp_proxy.core.forge import build_segment

if TYPE_CHECKING:
    from mpnet.network import MpNet


# Linux tcp_model_timeout(15 retries, 200 ms): 0.2 s doubled up to 120 s
RETRIES2_TIMEOUT = sum(min(0.2 * 2 ** k, 120.0) for k in range(16))
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
