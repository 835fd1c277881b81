"""The local stack → wire path of a connection: data assigned to subflows (SEND
tables, paper §3.3), options built (MP_CAPABLE, DSS), ACKs projected onto each subflow
(paper §3.4–3.5, TCP → MPTCP)."""

from __future__ import annotations

import struct

from .events import EventKind
from .constants import (
    MPTCP_CAP_CHECKSUM_REQD,
    MPTCP_CAP_HMAC_SHA256,
    MPTCP_DSS_DSN64,
    MPTCP_DSS_HAS_ACK,
    MPTCP_DSS_HAS_MAP,
    TCP_ACK,
    TCP_FIN,
    TCPOPT_MPTCP,
    TCPOPT_SACK,
    TCPOPT_TIMESTAMP,
)
from .fastopt import build_dss_ack, build_dss_map, build_sack, build_ts, read_sack
from .mapping import merge_ranges
from .options import (
    MpCapable,
    dss_checksum,
    ones_sum,
    push_option,
)
from .seq import MASK32, MASK64
from .state import DROP
from .subflow import Subflow, SubflowState, unwrap
from .tcp import TcpPacket, pad_options


class OutboundPath:
    """Methods of :class:`~.connection.Connection` (a mixin; all state lives there)."""

    __slots__ = ()

    def _out_established(self, pkt: TcpPacket, now: float):
        b = pkt.buf
        opts = pkt.options()
        if opts is None:
            self.counters.inc("PktMalformed")
            return DROP
        ts = None
        sack_wire = None
        extra = b""
        for kind, off, olen in opts:
            if kind == TCPOPT_TIMESTAMP and olen == 10:
                ts = int.from_bytes(b[off + 2:off + 6], "big")
            elif kind == TCPOPT_SACK:
                sack_wire = read_sack(b, off, olen)
            elif kind != TCPOPT_MPTCP:
                extra += bytes(b[off:off + olen])
        if ts is not None:
            self.ts_local = ts
            self.ts_local_time = now
        self.win_local = pkt.win
        flags = pkt.flags
        # -- what the local stack acknowledges (peer -> local direction)
        if flags & TCP_ACK:
            r = unwrap(pkt.ack, self.tcp_rcv_base, self.r_ack)
            if r > self.r_ack:
                limit = self.r_high + (1 if self.rcv_data_fin is not None else 0)
                self.r_ack = min(r, max(limit, self.r_ack))
        r_sacks = None
        if sack_wire:
            base = self.tcp_rcv_base
            r_sacks = [(unwrap(lft, base, self.r_ack), unwrap(rgt, base, self.r_ack))
                       for lft, rgt in sack_wire]
        held = self._held(r_sacks)  # (fixed for this segment: computed once)
        # -- what the local stack sends
        plen = pkt.plen
        fin = flags & TCP_FIN
        d = unwrap(pkt.seq, self.tcp_snd_base, self.d_nxt)
        if fin:
            dfin = d + plen
            if self.snd_data_fin is None:
                self.snd_data_fin = dfin
                self.counters.inc("DataFinTx")
                self.proxy.emit_event(EventKind.DATA_FIN_TX, self)
        if plen and not fin and d + plen <= self.d_una:
            # a re-send of bytes the peer already DATA_ACKed (the local stack sent it
            # before it saw that DATA_ACK, which is on its way to it: a go-back-N
            # retransmission racing a cumulative ACK that jumped over a filled hole):
            # the peer would drop it as old, and the mapping it was first sent under
            # may be forgotten already
            self.counters.inc("RetransConsumed")
            self._ack_other_subflows(None, held, ts, now, dupack=False)
            return DROP
        if plen:
            dfin = d + plen if fin else None
            pieces = self._mapped(self._assign(d, plen), dfin)
            # a DATA_FIN the (older) mapping of the last bytes does not carry goes alone
            lone_fin = fin and not pieces[-1][4][3]
            if len(pieces) == 1 and len(pkt.buf) + 28 <= 0xFFFF:
                sf, pd, ps, n, m = pieces[0]
                self._ack_other_subflows(sf, held, ts, now, dupack=False)
                v = self._rewrite_out(pkt, sf, pd, ps, n, bool(fin), ts, held, extra, now, m)
                if lone_fin:
                    self._send_data_fin(sf, now)
                return v
            payload = pkt.payload
            for sf, pd, ps, n, m in pieces:
                part = payload[pd - d:pd - d + n]
                self._forge_data(sf, pd, ps, part, ts, held, now, m)
            if lone_fin:
                self._send_data_fin(pieces[-1][0], now)
            self._ack_other_subflows(None, held, ts, now, dupack=False)
            return DROP
        # pure ACK or FIN-only
        sf, dupack = self._pick_ack_subflow(held)
        self._ack_other_subflows(sf, held, ts, now, dupack=dupack)
        verdict = self._rewrite_out(pkt, sf, d, sf.seq_nxt, 0, bool(fin), ts, held, extra, now)
        if not self.joins_opened and self.join_at is None and self.proxy.pm is not None:
            # joins wait until the peer has surely processed our third ACK, else the
            # token is unknown to it (MPJoinNoTokenFound); the first DATA_ACK also
            # triggers them
            self.join_at = now + max(0.02, 1.5 * self.srtt)
            self._rearm()
        if self.snd_data_fin is not None and self.rcv_data_fin is not None:
            self._check_close(now)
        return verdict

    def _held(self, r_sacks) -> list:
        """Data ranges above the local stack's ACK that it holds: what the proxy
        forwarded to it, plus what it SACKs (merged, sorted)."""
        fwd = self.r_fwd
        r_ack = self.r_ack
        while fwd and fwd[0][1] <= r_ack:
            del fwd[0]
        # data contiguous with the local stack's ACK is left to that ACK (following
        # it keeps subflow ACKs from running ahead and turning the local stack's next
        # ACKs into duplicates); only data held above a data-level hole counts here,
        # so subflows that delivered it are not starved into timeouts (paper §5.5)
        start = 1 if fwd and fwd[0][0] <= r_ack else 0
        if not r_sacks:
            return [(lo, hi) for lo, hi in fwd[start:]]
        return merge_ranges([(lo, hi) for lo, hi in fwd[start:]]
                            + [x for x in r_sacks if x[1] > r_ack])

    def _fwd_add(self, lo: int, hi: int) -> None:
        fwd = self.r_fwd
        if hi <= self.r_ack:
            return
        if fwd and fwd[-1][0] <= lo <= fwd[-1][1]:
            if hi > fwd[-1][1]:
                fwd[-1][1] = hi
            return
        fwd.append([lo, hi])
        if len(fwd) > 1:
            merged = merge_ranges([tuple(x) for x in fwd if x[1] > self.r_ack])
            # bounded: keep the lowest ranges, the ones that move subflow ACKs forward
            self.r_fwd = [list(x) for x in merged[:64]]

    def _assign(self, d: int, n: int) -> list[tuple[Subflow, int, int, int]]:
        """Choose subflow and subflow sequence for data bytes ``[d, d+n)`` (paper §3.3):
        new data goes to the active subflow, contiguous in its sequence space; a
        retransmission goes where the original went while that subflow lives, else to
        the active one.

        New data that starts above ``d_nxt`` (the bytes between were never seen: the
        local stack sent them while no subflow could carry them, and the proxy dropped
        them) is mapped where it is, with no subflow space reserved for the bytes
        skipped: they get a mapping of their own when the local stack re-sends them.
        A reserved gap would be a subflow hole that only the exact same bytes could
        fill; if the local stack re-sent them differently (or never, once the peer had
        them by another path) the peer's subflow would stall at the hole for good."""
        pieces = []
        cur = d
        end = d + n
        while cur < end:
            if cur >= self.d_nxt:
                sf = self.active
                s0 = sf.snd_nxt
                sf.send_map.add(s0, cur, end - cur)
                sf.snd_nxt = s0 + (end - cur)
                self.d_nxt = end
                pieces.append((sf, cur, s0, end - cur))
                break
            lim = min(end, self.d_nxt) - cur
            hit = None
            for sf in self.subflows:
                if sf.state == SubflowState.ESTABLISHED or sf.state == SubflowState.CLOSING:
                    f = sf.find_sent(cur, lim)
                    if f is not None:
                        if f[0] + f[1] <= sf.snd_una and cur >= self.d_una:
                            # the peer has these subflow bytes but no DATA_ACK for them
                            # (a data-level hole below, or it pruned them): re-sent at
                            # the old subflow sequence numbers it would drop them
                            # unread as old, so they go as new subflow data (Linux's
                            # data-level retransmission does the same)
                            lim = f[1]
                            continue
                        hit = (sf, f[0], f[1])
                        break
            if hit is None:
                sf = self.active
                s0 = sf.snd_nxt
                sf.send_map.add(s0, cur, lim)
                sf.snd_nxt = s0 + lim
                hit = (sf, s0, lim)
            sf, s, k = hit
            if pieces and pieces[-1][0] is sf and pieces[-1][2] + pieces[-1][3] == s:
                p = pieces[-1]
                pieces[-1] = (sf, p[1], p[2], p[3] + k)
            else:
                pieces.append((sf, cur, s, k))
            cur += k
        return pieces

    def _mapped(self, pieces, dfin: int | None) -> list:
        """Each piece ``(sf, d, s, n)`` of :meth:`_assign` cut at the boundaries of the
        mappings already sent for its subflow bytes, with its mapping entry (see
        :meth:`Subflow.map_add`): a retransmission keeps its original mapping; bytes
        never sent get a new one, exactly their piece (with the DATA_FIN if it ends
        at ``dfin``)."""
        out = []
        for sf, d, s, n in pieces:
            end = s + n
            cur = s
            for e in sf.maps_over(s, n):
                if e[0] > cur:  # (bytes whose mapping was forgotten: a new one)
                    k = e[0] - cur
                    out.append((sf, d + (cur - s), cur, k,
                                sf.map_add(cur, d + (cur - s), k, False)))
                    cur += k
                hi = min(end, e[0] + e[2])
                out.append((sf, d + (cur - s), cur, hi - cur, e))
                cur = hi
            if cur < end:
                k = end - cur
                dd = d + (cur - s)
                out.append((sf, dd, cur, k, sf.map_add(cur, dd, k, dd + k == dfin)))
        return out

    def _send_data_fin(self, sf: Subflow, now: float) -> None:
        """A DATA_FIN on its own (SSN 0, DLL 1; RFC 8684 §3.3.3) on a pure ACK."""
        opts, san = self._out_options(sf, self.d_nxt, sf.snd_nxt, 0, True, None, None, b"",
                                      b"", now)
        sf.rcv_acked = san
        self.proxy.send(self._segment(sf, sf.snd_wire(sf.seq_nxt), TCP_ACK, opts))

    def _mptcp_out_option(self, sf: Subflow, d: int, s: int, n: int, data_fin: bool,
                          payload, m: list | None = None) -> bytes:
        """The MPTCP option for a segment of ours on ``sf`` carrying data bytes
        ``[d, d+n)`` at relative subflow sequence ``s`` (RFC 8684 §3.1, §3.3), under the
        mapping entry ``m`` (see :meth:`_mapped`; its checksum is computed on first use,
        over ``payload``, which then is the whole mapping)."""
        if not self.fully_established and sf is self.sf0 and d == 0 and s == 0 \
                and not data_fin:
            flags = MPTCP_CAP_HMAC_SHA256 | (MPTCP_CAP_CHECKSUM_REQD if self.csum else 0)
            if n == 0:
                self.counters.inc("MPCapableACKTX")
                return pad_options(push_option(MpCapable(
                    flags=flags, sndr_key=self.local_key, rcvr_key=self.remote_key)))
            self.counters.inc("MPCapableDataTX")
            csum = None
            if self.csum:
                csum = dss_checksum(self._dsn_l(0), 1, n, ones_sum(payload))
            return pad_options(push_option(MpCapable(
                flags=flags, sndr_key=self.local_key, rcvr_key=self.remote_key,
                data_len=n, checksum=csum)))
        dan = self._dan()
        self.counters.inc("DataAckTx")
        if n == 0 and not data_fin:
            return build_dss_ack(dan)
        if n == 0:  # DATA_FIN alone: SSN 0, DLL 1 (RFC 8684 §3.3.3)
            dsn = self._dsn_l(self.snd_data_fin)
            csum = dss_checksum(dsn, 0, 1, 0) if self.csum else None
            return build_dss_map(dan, dsn, 0, 1, csum, True)
        if m is None:  # (callers without an entry: the segment is its own mapping)
            m = [s, d, n, data_fin, None]
        dsn = self._dsn_l(m[1])
        ssn = (m[0] + 1) & MASK32
        dll = m[2] + (1 if m[3] else 0)
        self.counters.inc("DSSTx")
        csum = None
        if self.csum:
            if m[4] is None:
                m[4] = dss_checksum(dsn, ssn, dll, ones_sum(payload))
                self.counters.inc("DSSChecksumTx")
            csum = m[4]
        return build_dss_map(dan, dsn, ssn, dll, csum, m[3])

    def _out_options(self, sf: Subflow, d: int, s: int, n: int, data_fin: bool, ts,
                     held, extra: bytes, payload, now: float,
                     m: list | None = None) -> tuple[bytes, int]:
        """Full option block and subflow ACK (relative) for a segment on ``sf``;
        ``held`` is :meth:`_held` of the local stack's SACK blocks (None: none)."""
        parts = []
        if sf.ts_ok:
            tsval = ts if ts is not None else self.ts_now(now)
            parts.append(build_ts(tsval, sf.ts_recent))
        parts.append(self._mptcp_out_option(sf, d, s, n, data_fin, payload, m))
        if held is None:
            held = self._held(None)
        san, s_sacks = sf.project_ack(self.r_ack, held)
        used = sum(len(p) for p in parts)
        if s_sacks and sf.sack_ok:
            room = (40 - used - 4) // 8
            if room > 0:
                blocks = s_sacks[-room:] if len(s_sacks) > room else s_sacks
                parts.append(build_sack([(sf.rcv_wire(lo), sf.rcv_wire(hi)) for lo, hi in
                                         reversed(blocks)]))
                if len(s_sacks) > room:
                    self.counters.inc("SackBlocksDropped", len(s_sacks) - room)
            else:
                self.counters.inc("SackBlocksDropped", len(s_sacks))
            used = sum(len(p) for p in parts)
        if extra and used + len(extra) <= 40:
            parts.append(pad_options(extra))
        return b"".join(parts), san

    def _rewrite_out(self, pkt: TcpPacket, sf: Subflow, d: int, s: int, n: int,
                     data_fin: bool, ts, held, extra: bytes, now: float,
                     m: list | None = None):
        payload = pkt.payload if (n and self.csum) else b""
        opts, san = self._out_options(sf, d, s, n, data_fin, ts, held, extra, payload, now,
                                      m)
        pkt.set_seq(sf.snd_wire(s))
        if pkt.flags & TCP_ACK:
            pkt.set_ack(sf.rcv_wire(san))
            sf.rcv_acked = san
        if data_fin:
            pkt.set_flags(pkt.flags & ~TCP_FIN)
        if sf is not self.sf0:
            pkt.set_src(sf.laddr)
            pkt.set_dst(sf.raddr)
            pkt.set_sport(sf.lport)
            pkt.set_dport(sf.rport)
        pkt.set_options(opts)
        sf.last_tx = now
        sf.rcv_map.prune_below_key(san)
        return pkt.finish()

    def _forge_data(self, sf: Subflow, d: int, s: int, payload: bytes, ts, held,
                    now: float, m: list) -> None:
        """Send data bytes ``[d, d+len)`` on ``sf`` at ``s`` under mapping ``m``, in
        segments of our own (a raw socket sends no GSO super-packet: cut to the path's
        segment size; every segment carries the mapping, as GSO would copy it)."""
        if self.csum and m[4] is None:
            self._mptcp_out_option(sf, d, s, len(payload), False, payload, m)  # its checksum
        step = self._seg_size(sf)
        total = len(payload)
        for off in range(0, total, step):
            part = payload[off:off + step]
            n = len(part)
            opts, san = self._out_options(sf, d + off, s + off, n, False, ts, held, b"",
                                          part, now, m)
            sf.rcv_acked = san
            self.proxy.send(self._segment(sf, sf.snd_wire(s + off), TCP_ACK, opts, part))

    def _seg_size(self, sf: Subflow) -> int:
        """Payload bytes per forged segment: the MSS of the path (already lowered by
        our option overhead) minus the timestamps option."""
        mss = sf.mss or self.sf0.mss or 1200
        return max(mss - (12 if sf.ts_ok else 0), 500)

    def _segment(self, sf: Subflow, seq_wire: int, flags: int, opts: bytes,
                 payload: bytes = b""):
        from .forge import build_segment
        sf.last_tx = self.proxy.now
        return build_segment(sf.laddr, sf.raddr, sf.lport, sf.rport, seq_wire,
                             sf.rcv_wire(sf.rcv_acked), flags, self.win_local, opts, payload)

    def _pick_ack_subflow(self, held: list) -> tuple[Subflow, bool]:
        """Subflow for a pure ACK of the local stack: where the ACK advances most,
        else where the peer has a hole (a real duplicate ACK), else where the peer
        sent last (paper §3.4)."""
        if len(self.subflows) == 1:
            return self.sf0, False
        best = None
        best_adv = 0
        for sf in self.subflows:
            if sf.state != SubflowState.ESTABLISHED:
                continue
            san, _ = sf.project_ack(self.r_ack, held)
            adv = san - sf.rcv_acked
            if adv > best_adv:
                best, best_adv = sf, adv
        if best is not None:
            return best, False
        for sf in self.subflows:
            if sf.state == SubflowState.ESTABLISHED and sf.rcv_high > sf.rcv_acked:
                return sf, True
        sf = self.last_rx_sf
        if sf.state != SubflowState.ESTABLISHED:
            sf = self.active
        return sf, False

    def _ack_other_subflows(self, carrier: Subflow | None, held: list, ts, now: float,
                            dupack: bool) -> None:
        """Forge subflow ACKs on subflows that contributed to the local stack's ACK
        but do not carry this segment (``carrier`` None: no segment carries it; paper
        §3.4)."""
        if carrier is not None and len(self.subflows) == 1:
            return
        for sf in self.subflows:
            if sf is carrier or sf.state not in (SubflowState.ESTABLISHED, SubflowState.CLOSING):
                continue
            san, _ = sf.project_ack(self.r_ack, held)
            if san > sf.rcv_acked or (dupack and sf.rcv_high > san):
                self.send_ack(sf, now, held)

    def send_ack(self, sf: Subflow, now: float, held: list | None = None,
                 flags: int = TCP_ACK, extra: bytes = b"") -> None:
        """Forge a pure ACK (with DATA_ACK) on ``sf``; ``extra`` adds options."""
        opts, san = self._out_options(sf, self.d_nxt, sf.snd_nxt, 0, False, None,
                                      held, b"", b"", now)
        if extra:
            if len(opts) + len(extra) > 40:
                # signalling wins over the DATA_ACK (Linux drops other suboptions too)
                ts_part = build_ts(self.ts_now(now), sf.ts_recent) if sf.ts_ok else b""
                opts = ts_part
            opts += pad_options(extra)
        sf.rcv_acked = san
        self.proxy.send(self._segment(sf, sf.snd_wire(sf.seq_nxt), flags, opts))
        if sf.state == SubflowState.CLOSING and sf.peer_fin is not None \
                and san > sf.peer_fin:
            # this ACK covers the peer's FIN (late: the local stack had not yet taken the
            # data before it when the FIN came): the subflow may be finished now
            self._maybe_finished(now)


# NOP,NOP,TS(10) + NOP,NOP,DSS(22: DATA_ACK 32-bit, 64-bit mapping): 36 bytes at once
_TS_DSS = struct.Struct("!BBBBIIBBBBBBIQIH")
_II = struct.Struct("!II")
# NOP,NOP,TS(10) + DSS(8: DATA_ACK 32-bit only): 20 bytes
_TS_DACK = struct.Struct("!BBBBIIBBBBI")
_TS_PREFIX = b"\x01\x01\x08\x0a"
_FAST_DSS_FLAGS = MPTCP_DSS_HAS_ACK | MPTCP_DSS_HAS_MAP | MPTCP_DSS_DSN64


def out_fast(conn, pkt: TcpPacket, now: float):
    """The steady state of an upload, in one pass: new in-order data from the local
    stack on a connection that still has only its initial subflow (no checksums, no
    SACK, no FIN, timestamps). Same result as the general path
    (:meth:`OutboundPath._out_established`) — TSN→DSN→SSN identity plus a DSS with
    DATA_ACK and mapping — without its generality. Returns ``None`` when the packet
    is not of this kind (the caller then takes the general path)."""
    b = pkt.buf
    th = pkt.th
    plen = pkt.plen
    sf = conn.sf0
    if (pkt.hl != 32 or pkt.flags & 0xF7 != TCP_ACK  # ACK, maybe PSH
            or conn.snd_data_fin is not None or conn.rcv_data_fin is not None
            or conn.active is not sf or sf.state != SubflowState.ESTABLISHED
            or b[th + 20:th + 24] != _TS_PREFIX
            or pkt.seq != (conn.tcp_snd_base + conn.d_nxt) & MASK32):
        return None
    r = unwrap(pkt.ack, conn.tcp_rcv_base, conn.r_ack)
    if r > conn.r_ack:
        limit = conn.r_high + (1 if conn.rcv_data_fin is not None else 0)
        conn.r_ack = min(r, max(limit, conn.r_ack))
    fwd = conn.r_fwd
    while fwd and fwd[0][1] <= conn.r_ack:
        del fwd[0]
    if fwd and (fwd[0][0] > conn.r_ack or len(fwd) > 1):
        return None  # the local stack holds data above a hole: general path
    tsval, _tsecr = _II.unpack_from(b, th + 24)
    conn.ts_local = tsval
    conn.ts_local_time = now
    conn.win_local = pkt.win
    d = conn.d_nxt
    s = sf.snd_nxt
    san, _ = sf.project_ack(conn.r_ack, ())
    c = conn.counters
    if not plen:  # a pure ACK: TS + DSS with the DATA_ACK only
        opts = _TS_DACK.pack(1, 1, 8, 10, tsval, sf.ts_recent, 30, 8, 0x20, MPTCP_DSS_HAS_ACK,
                             conn._dan() & MASK32)
    else:
        sf.send_map.add(s, d, plen)
        sf.maps.append([s, d, plen, False, None])
        sf.snd_nxt = s + plen
        conn.d_nxt = d + plen
        c["DSSTx"] += 1
        opts = _TS_DSS.pack(1, 1, 8, 10, tsval, sf.ts_recent, 1, 1, 30, 22, 0x20, _FAST_DSS_FLAGS,
                            conn._dan() & MASK32, (conn.idsn_local + 1 + d) & MASK64,
                            (s + 1) & MASK32, plen)
    wire = (sf.snd_base + s) & MASK32
    if wire != pkt.seq:
        pkt.set_seq(wire)
    ack = (sf.rcv_base + san) & MASK32
    if ack != pkt.ack:
        pkt.set_ack(ack)
    sf.rcv_acked = san
    pkt.set_options(opts)
    sf.last_tx = now
    c["DataAckTx"] += 1
    if sf.rcv_map.entries and sf.rcv_map.entries[0][0] + sf.rcv_map.entries[0][2] <= san:
        sf.rcv_map.prune_below_key(san)
    return pkt.finish()
