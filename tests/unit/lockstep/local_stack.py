"""The scripted plain TCP client with Linux's habits (:class:`LocalStack`), the proxy's
local side in :class:`~lockstep.pair.ProxyPair`."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from lockstep.wire import ACK, FIN, M32, PSH, RST, SYN, opt_mss, opt_sack, opt_ts, sdiff, ts_before
from mptcp_proxy.core.forge import build_segment

if TYPE_CHECKING:
    from lockstep.decode import Seg
    from lockstep.pair import ProxyPair


class LocalStack:
    """A scripted plain TCP client with Linux's habits (the proxy's local side).

    Sequence state is kept relative: byte ``k`` of what the app wrote has
    sequence ``iss + 1 + k``; received byte ``k`` has ``irs + 1 + k``.
    """

    def __init__(self, pair: "ProxyPair", addr: bytes, port: int, raddr: bytes, rport: int,
                 isn: int, mss: int = 1460, wscale: int | None = 7, sack: bool = True,
                 ts: bool = True, ts_base: int = 100000, win: int = 1024, tos: int = 0,
                 ttl: int = 64) -> None:
        self.pair = pair
        self.tos, self.ttl = tos, ttl  # its IP TOS byte / traffic class and TTL
        self.addr, self.port, self.raddr, self.rport = addr, port, raddr, rport
        self.iss = isn & M32
        self.mss, self.ws, self.sack_perm, self.ts_on = mss, wscale, sack, ts
        self.ts_base = ts_base
        self.win = win
        self.state = "CLOSED"
        self.sndbuf = bytearray()
        self.segs: list[tuple[int, int, bool]] = []  # (rel, len, fin) as first sent
        self.snd_nxt = 0
        self.snd_una = 0
        self.fin_queued = False
        self.fin_rel: int | None = None
        self.fin_acked = False
        self.irs = 0
        self.rcv = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.ooo_fin: int | None = None
        self.fin_rcvd = False
        self.peer_mss = None
        self.peer_ws = None
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = None
        self.tsvals_seen: list[int] = []
        self.sacks_seen: list[list[tuple[int, int]]] = []
        self.acks_seen: list[int] = []
        self.violations: list[str] = []
        self.reset = False
        self.challenge_acks = 0
        self.last_tsval = 0
        self.rcv_wup = 0  # the ACK last sent (relative)
        self.gone = False  # the socket vanished silently (answers nothing)

    # -- sequence helpers
    def swire(self, rel: int) -> int:
        return (self.iss + 1 + rel) & M32

    def rwire(self, rel: int) -> int:
        return (self.irs + 1 + rel) & M32

    @property
    def rcv_nxt(self) -> int:
        return len(self.rcv) + (1 if self.fin_rcvd else 0)

    @property
    def eff_mss(self) -> int:
        m = min(self.mss, self.peer_mss or 536)
        return m - (12 if self.ts_ok else 0)

    def tsval(self) -> int:
        v = (self.ts_base + int(self.pair.now * 1000)) & M32
        self.last_tsval = v
        return v

    def _seg(self, flags: int, seq_rel: int, payload: bytes = b"", sack: bool = True,
             ack: bool = True, extra: bytes = b"") -> bytes:
        opts = b""
        if self.ts_ok:
            opts += opt_ts(self.tsval(), self.ts_recent or 0)
        if sack and self.sack_ok and self.ooo:
            room = (40 - len(opts) - 4) // 8
            opts += opt_sack(self._sack_blocks()[:room])
        opts += extra
        if ack:
            self.rcv_wup = self.rcv_nxt  # (Linux tp->rcv_wup: the ACK last sent)
        return bytes(build_segment(self.addr, self.raddr, self.port, self.rport,
                                   self.swire(seq_rel), self.rwire(self.rcv_nxt) if ack else 0,
                                   flags | (ACK if ack else 0), self.win, opts, payload,
                                   ttl=self.ttl, tos=self.tos))

    def _sack_blocks(self) -> list[tuple[int, int]]:
        ranges = []
        for r in sorted(self.ooo):
            e = r + len(self.ooo[r])
            if ranges and r <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], e)
            else:
                ranges.append([r, e])
        ranges.reverse()  # most recent-ish first (RFC 2018 wants the latest first)
        return [(self.rwire(lo), self.rwire(hi)) for lo, hi in ranges]

    # -- actions (each returns the packets the stack emits)
    def syn(self) -> list[bytes]:
        """The SYN in Linux's option order: MSS, SACK_PERM, TS, NOP, WS."""
        opts = opt_mss(self.mss)
        if self.ts_on:
            opts += (b"\x04\x02" if self.sack_perm else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, self.tsval(), 0)
        elif self.sack_perm:
            opts += b"\x01\x01\x04\x02"
        if self.ws is not None:
            opts += b"\x01" + bytes((3, 3, self.ws))
        self.state = "SYN_SENT"
        self.syn_opts = opts
        return [bytes(build_segment(self.addr, self.raddr, self.port, self.rport, self.iss, 0,
                                    SYN, 0xFFFF, opts))]

    def write(self, data: bytes) -> None:
        self.sndbuf += data

    def close(self) -> None:
        self.fin_queued = True

    def push(self, window: int | None = None, fin_with_data: bool = True) -> list[bytes]:
        """Segment new data (and the FIN) while fewer than ``window`` segments are in
        flight."""
        out = []
        if self.state not in ("ESTABLISHED",):
            return out
        mss = self.eff_mss
        while self.snd_nxt < len(self.sndbuf):
            if window is not None and self.snd_nxt - self.snd_una >= window * mss:
                return out
            n = min(mss, len(self.sndbuf) - self.snd_nxt)
            rel = self.snd_nxt
            last = rel + n == len(self.sndbuf)
            fin = self.fin_queued and last and fin_with_data and self.fin_rel is None
            self.segs.append((rel, n, fin))
            self.snd_nxt += n
            if fin:
                self.fin_rel = self.snd_nxt
            out.append(self._seg(PSH | (FIN if fin else 0), rel,
                                 bytes(self.sndbuf[rel:rel + n])))
        if self.fin_queued and self.fin_rel is None:
            self.fin_rel = self.snd_nxt
            self.segs.append((self.snd_nxt, 0, True))
            out.append(self._seg(FIN, self.snd_nxt))
        return out

    def ack_pkt(self) -> bytes:
        return self._seg(0, self.snd_nxt + (1 if self.fin_rel is not None else 0))

    def rst(self) -> list[bytes]:
        """An active reset as Linux sends it (RST|ACK, seq = snd_nxt)."""
        self.state = "CLOSED"
        seq = self.snd_nxt + (1 if self.fin_rel is not None else 0)
        return [self._seg(RST, seq, sack=False)]

    def retransmit(self, only_first: bool = False) -> list[bytes]:
        """Resend what is unacknowledged, with the original segment boundaries."""
        out = []
        for rel, n, fin in self.segs:
            end = rel + n + (1 if fin else 0)
            if end <= self.snd_una:
                continue
            out.append(self._seg((PSH if n else 0) | (FIN if fin else 0), rel,
                                 bytes(self.sndbuf[rel:rel + n])))
            if only_first:
                break
        return out

    @property
    def all_acked(self) -> bool:
        top = self.snd_nxt + (1 if self.fin_rel is not None else 0)
        return self.snd_una >= top and self.snd_nxt >= len(self.sndbuf)

    # -- input
    def receive(self, s: Seg) -> list[bytes]:
        v = self.violations
        if self.gone:  # the socket vanished without a word: nothing answers any more
            return []
        if not s.csum_ok:
            v.append(f"local: bad checksum {s!r}")
            return []
        if any(k == 30 and (len(o) < 3 or o[2] >> 4 != 2) for k, o in s.opts):
            # a DSS left in a segment passed on unchanged is ignored by a plain TCP
            # socket; anything else (a key, signalling) must not reach it
            v.append(f"local: MPTCP option reached the local stack {s!r}")
        if not s.opts_ok:
            v.append(f"local: malformed option list {s!r}")
        if (s.src, s.sport, s.dst, s.dport) != (self.raddr, self.rport, self.addr, self.port):
            v.append(f"local: wrong 4-tuple {s!r}")
            return []
        if self.state == "SYN_SENT":
            if s.rst:
                if s.ackf and s.ack == self.swire(0):
                    self.reset = True
                    self.state = "CLOSED"
                return []
            if s.flags & (SYN | ACK) != SYN | ACK or s.ack != self.swire(0):
                return []
            self.irs = s.seq
            self.peer_mss = s.mss or 536
            self.peer_ws = s.wscale
            self.sack_ok = self.sack_perm and s.option(4) is not None
            self.ts_ok = self.ts_on and s.ts is not None
            if self.ts_ok:
                self.ts_recent = s.ts[0]
                self.tsvals_seen.append(s.ts[0])
            self.synack = s
            self.state = "ESTABLISHED"
            return [self.ack_pkt()]
        if self.state == "CLOSED":
            return []
        r = sdiff(s.seq, self.rwire(0))
        if s.rst:
            # RFC 5961 §3.2 as Linux does it (tcp_validate_incoming, tcp_reset_check)
            if r == self.rcv_nxt or (self.fin_rcvd and r == self.rcv_nxt - 1):
                self.reset = True
                self.state = "CLOSED"
                return []
            self.challenge_acks += 1
            return [self.ack_pkt()]
        if s.syn:
            if s.ackf and s.seq == self.irs:
                if s.mss is not None:
                    self.resyn_mss = s.mss
                return [self.ack_pkt()]  # retransmitted SYN/ACK: ACK it again
            v.append(f"local: unexpected SYN {s!r}")
            return []
        # an old pure ACK (below the ACK last sent: Linux tcp_sequence) is answered with an
        # ACK (a keepalive's answer); unlike Linux, its ACK field is still used: the model's
        # queue can hold the local stack's own ACK back while a later segment overtakes it
        answer = not s.plen and not s.fin and r < self.rcv_wup
        if self.ts_ok:
            if s.ts is None:
                v.append(f"local: segment without timestamps after TS negotiated {s!r}")
            else:
                tv = s.ts[0]
                self.tsvals_seen.append(tv)
                if self.ts_recent is not None and ts_before(tv, self.ts_recent):
                    v.append(f"local: PAWS would drop {s!r} (TSval {tv} < {self.ts_recent})")
                    return [self.ack_pkt()]
                if r <= self.rcv_nxt:
                    self.ts_recent = tv
        if s.ackf:
            a = sdiff(s.ack, self.swire(0))
            top = self.snd_nxt + (1 if self.fin_rel is not None else 0)
            self.acks_seen.append(a)
            if a > top:
                v.append(f"local: ACK of unsent data ({a} > {top}) {s!r}")
            elif a > self.snd_una:
                self.snd_una = a
                if self.fin_rel is not None and a > self.fin_rel:
                    self.fin_acked = True
        if s.sack:
            self.sacks_seen.append([(sdiff(lo, self.swire(0)), sdiff(hi, self.swire(0)))
                                    for lo, hi in s.sack])
        if not s.plen and not s.fin:
            return [self.ack_pkt()] if answer else []
        self._store(r, s.payload, s.fin)
        return [self.ack_pkt()]

    def _store(self, r: int, data: bytes, fin: bool) -> None:
        if fin:
            f = r + len(data)
            if self.ooo_fin is not None and self.ooo_fin != f:
                self.violations.append(f"local: FIN moved from {self.ooo_fin} to {f}")
            self.ooo_fin = f
        if data:
            have = len(self.rcv)
            # compare overlap with what was already received
            lo, hi = max(r, 0), min(r + len(data), have)
            if lo < hi and bytes(self.rcv[lo:hi]) != data[lo - r:hi - r]:
                self.violations.append(f"local: different bytes at offset {lo}")
            if r + len(data) > have:
                if r <= have:
                    if self.fin_rcvd:
                        self.violations.append("local: data after FIN")
                    self.rcv += data[have - r:]
                else:
                    old = self.ooo.get(r)
                    if old is not None and old[:len(data)] != data[:len(old)]:
                        self.violations.append(f"local: different out-of-order bytes at {r}")
                    if old is None or len(data) > len(old):
                        self.ooo[r] = data
        # drain
        changed = True
        while changed:
            changed = False
            for k in sorted(self.ooo):
                d = self.ooo[k]
                if k <= len(self.rcv):
                    del self.ooo[k]
                    if k + len(d) > len(self.rcv):
                        self.rcv += d[len(self.rcv) - k:]
                    changed = True
                    break
        if self.ooo_fin is not None and not self.fin_rcvd and len(self.rcv) == self.ooo_fin:
            self.fin_rcvd = True
