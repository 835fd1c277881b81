"""The wire → local stack path of a connection: DSS mappings into the RECV tables,
segments mapped to the local stack's sequence space, the peer's ACKs and SACKs
projected into it (paper §3.3–3.5, MPTCP → TCP), acceptability checks (RFC 9293
§3.10.7.4)."""

from __future__ import annotations

import struct

from .events import EventKind
from .constants import (
    MPTCP_DSS_DATA_FIN,
    MPTCP_RST_EMIDDLEBOX,
    MPTCP_RST_EMPTCP,
    MPTCPOPT_DSS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCPOPT_MPTCP,
    TCPOPT_MSS,
    TCPOPT_SACK,
    TCPOPT_TIMESTAMP,
)
from .fastopt import build_sack, build_ts, parse_dss, read_sack
from .mapping import merge_ranges
from .options import (
    dss_checksum_ok,
    ones_sum,
)
from .seq import MASK32, MASK64, expand_seq
from .state import ACCEPT, DROP
from .state import ts_after as _ts_after
from .subflow import Subflow, SubflowState, unwrap
from .tcp import CSUM_OK, TcpPacket, pad_options


class InboundPath:
    """Methods of :class:`~.connection.Connection` (a mixin; all state lives there)."""

    __slots__ = ()

    def _in_established(self, pkt: TcpPacket, sf: Subflow, now: float):
        b = pkt.buf
        opts = pkt.options()
        if opts is None:
            self.counters.inc("PktMalformed")
            return DROP
        counters = self.counters
        ts_off = -1
        tsval = 0
        peer_sacks = None
        dss = None
        others = None
        for kind, off, olen in opts:
            if kind == TCPOPT_MPTCP:
                if olen < 3:
                    counters.inc("OptMalformed")
                    continue
                sub = b[off + 2] >> 4
                if sub == MPTCPOPT_DSS:
                    dss = parse_dss(b, off, olen)
                    if dss is None:
                        counters.inc("OptMalformed")
                else:
                    if others is None:
                        others = []
                    others.append((sub, off, olen))
            elif kind == TCPOPT_TIMESTAMP and olen == 10:
                ts_off = off
                tsval = int.from_bytes(b[off + 2:off + 6], "big")
            elif kind == TCPOPT_SACK:
                peer_sacks = read_sack(b, off, olen)
        flags = pkt.flags
        plen = pkt.plen
        was_closed = self.data_closed()
        # RFC 9293 §3.10.7.4: only an acceptable segment may change state. The window
        # is judged against what this subflow has seen; checksums are verified (in
        # full, so only when) a segment is about to change state, since the proxy acts
        # before the local stack's own checks (RFC 1624 updates keep a bad sum bad).
        s_pkt = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
        win = self._rcv_window()
        if not (sf.rcv_acked - win <= s_pkt <= sf.rcv_high + win):
            counters.inc("PktOutOfWindow")
            return DROP
        verified = False
        if flags & (TCP_RST | TCP_FIN) or others:
            if not pkt.checksum_ok():
                counters.inc("PktBadChecksum")
                return DROP
            verified = True
        if flags & TCP_RST:
            return self._peer_reset(pkt, sf, others, now)
        sf.last_rx = now
        self.last_rx_sf = sf
        if ts_off >= 0 and sf.ts_ok:
            if sf.ts_off is None or not _ts_after(sf.ts_recent, tsval):
                sf.ts_recent = tsval
        signalling = False
        if others:
            signalling = self.proxy.handle_mptcp_options(self, sf, pkt, others, now)
        # -- subflow-level ACK of our data
        san_moved = False
        san_old = sf.snd_una
        if flags & TCP_ACK:
            san = unwrap(pkt.ack, sf.snd_base, sf.snd_una)
            top = sf.snd_nxt + (1 if sf.fin_sent is not None else 0)
            if sf.snd_una < san <= top:
                sf.snd_una = san
                sf.maps_prune()
                san_moved = True
                if sf.fin_sent is not None and san > sf.fin_sent:
                    sf.fin_acked = True
        # -- DSS: DATA_ACK and mapping
        d_una_old = self.d_una
        dfin_only = False
        if dss is not None:
            counters.inc("DSSRx")
            dflags, data_ack, ack64, data_seq, dsn64, ssn, dll, csum = dss
            if data_ack is not None:
                ref = (self.idsn_local + 1 + self.d_una) & MASK64
                dack = (expand_seq(ref, data_ack, 64 if ack64 else 32)
                        - self.idsn_local - 1) & MASK64
                if dack >= 1 << 63:
                    dack -= 1 << 64
                top = self.d_nxt + (1 if self.snd_data_fin is not None else 0)
                if self.d_una < dack <= top:
                    if not verified:
                        if not pkt.checksum_ok():
                            counters.inc("PktBadChecksum")
                            return DROP
                        verified = True
                    self.d_una = dack
                    self._prune_sent()
                    if self.snd_data_fin is not None and dack > self.snd_data_fin:
                        self.data_fin_acked = True
                if not self.fully_established:
                    self.fully_established = True
                    counters.inc("MPFullyEstablished")
                    if not self.joins_opened and self.proxy.pm is not None:
                        self.joins_opened = True
                        self.proxy.pm.on_established(self, now)
            if data_seq is not None:
                if (csum is not None) != self.csum:
                    counters.inc("DataCsumMissing")
                    return self._subflow_protocol_error(sf, now, MPTCP_RST_EMPTCP)
                if dll == 0:
                    return self._infinite_mapping(pkt, sf, now)
                ref = (self.idsn_remote + 1 + self.r_high) & MASK64
                r = (expand_seq(ref, data_seq, 64 if dsn64 else 32)
                     - self.idsn_remote - 1) & MASK64
                if r >= 1 << 63:
                    r -= 1 << 64
                nbytes = dll
                s_map = unwrap(ssn, 1, sf.rcv_high)
                if nbytes > (1 if dflags & MPTCP_DSS_DATA_FIN else 0):
                    # Linux validate_mapping: a mapping is taken only from a segment
                    # whose own data it covers
                    if not plen or s_map >= s_pkt + plen or s_map + nbytes <= s_pkt:
                        counters.inc("DSSNoMatchTCP")
                        nbytes = -1
                if nbytes >= 0 and not verified:
                    e = sf.rcv_map.lookup(s_map) if nbytes > 1 else None
                    known = e is not None and e[1] - e[0] == r - s_map
                    if not known or dflags & MPTCP_DSS_DATA_FIN:
                        if not pkt.checksum_ok():
                            counters.inc("PktBadChecksum")
                            return DROP
                        verified = True
                if nbytes >= 0 and dflags & MPTCP_DSS_DATA_FIN:
                    nbytes -= 1
                    fin_r = r + nbytes
                    if self.rcv_data_fin is None:
                        counters.inc("DataFinRx")
                        self.rcv_data_fin = fin_r
                        self.proxy.emit_event(EventKind.DATA_FIN_RX, self)
                    elif self.rcv_data_fin != fin_r:
                        counters.inc("DataFinMismatch")
                    if ssn == 0 and nbytes == 0 and self.rcv_data_fin == fin_r:
                        dfin_only = True
                if nbytes > 0:
                    if not sf.rcv_map.add(s_map, r, nbytes):
                        counters.inc("DSSNotMatching")
                        return self._subflow_protocol_error(sf, now, MPTCP_RST_EMPTCP)
                    if csum is not None and plen:
                        if not self._check_csum(pkt, sf, s_map, r, ssn, dll, nbytes, csum):
                            counters.inc("DataCsumErr")
                            return self._subflow_protocol_error(sf, now, MPTCP_RST_EMIDDLEBOX)
        elif plen and not self.fully_established and sf is self.sf0:
            # RFC 8684 §3.1 / Linux check_fully_established: the peer fell back
            counters.inc("MPCapableDataFallback")
            self._fallback(now)
            return ACCEPT
        # -- the segment's own sequence space
        local_fin = False
        if plen:
            s = s_pkt
            e = sf.rcv_map.lookup(s)
            if e is None:
                counters.inc("DSSNoMapping")
                return DROP
            r = e[1] + (s - e[0])
            avail = e[0] + e[2] - s
            if avail < plen:
                counters.inc("DSSPartialMapping")
                _truncate_payload(pkt, avail)
                plen = avail
            if s + plen > sf.rcv_high:
                sf.rcv_high = s + plen
            sf.rcv_add(s, s + plen)
            if r + plen > self.r_high:
                self.r_high = r + plen
            self._fwd_add(r, r + plen)
            if self.handover_at is not None:
                self.proxy.emit_event(EventKind.RESUMED, self, sf,
                                      elapsed=now - self.handover_at)
                self.handover_at = None
            tsn = self.tcp_rcv_base + r
            if self.rcv_data_fin is not None and self.rcv_data_fin == r + plen:
                local_fin = True
        elif dfin_only:
            tsn = self.tcp_rcv_base + self.rcv_data_fin
            local_fin = True
        else:
            tsn = self.tcp_rcv_base + max(self.r_ack, 0)
        if flags & TCP_FIN and sf.state != SubflowState.CLOSED:
            s_fin = s_pkt + plen
            if sf.peer_fin is None:
                sf.peer_fin = s_fin
                counters.inc("SubflowFinRx")
            if s_fin >= sf.rcv_high:
                sf.rcv_high = s_fin
            if sf.rcv_contig == s_fin:
                sf.rcv_contig = s_fin  # (the FIN itself is acknowledged by project_ack)
            self.proxy.subflow_fin_received(self, sf, now)
        if was_closed:
            # both directions were closed at the data level before this segment: the
            # local socket may be gone (it would answer RST); acknowledge data or a FIN
            # at the subflow level here and stop
            if plen or flags & TCP_FIN:
                san, _ = sf.project_ack(self.r_ack, self._held(None))
                if san > sf.rcv_acked:
                    self.send_ack(sf, now)
            counters.inc("LateSegmentsConsumed")
            if sf.fin_sent is not None:
                self._maybe_finished(now)
            return DROP
        # -- ACK and SACK for the local stack
        d_adv = self.d_una > d_una_old
        d_sacks = None
        if self.local_sack and (peer_sacks or (san_moved and self._subflow_ahead(sf))):
            d_sacks = self._project_peer_sacks(sf, peer_sacks)
        win = pkt.win
        if sf.rcv_wscale != self.peer_wscale0:
            win = min(0xFFFF, (win << sf.rcv_wscale) >> self.peer_wscale0)
        if peer_sacks and not san_moved and sf.snd_una < sf.snd_nxt:
            # the peer holds data above a hole in this subflow (duplicate ACK with SACK)
            self._fill_acked_hole(sf, now)
        if not plen and not local_fin:
            dup = (not san_moved and not d_adv and sf.snd_nxt > sf.snd_una
                   and not signalling and not (flags & TCP_FIN))
            if not (d_adv or win != self.win_shown or d_sacks != self.sacks_shown or dup):
                counters.inc("AcksConsumed")
                if sf.fin_sent is not None:
                    self._maybe_finished(now)
                return DROP
        self.win_shown = win
        self.sacks_shown = d_sacks
        tsv = self._ts_to_local(sf, tsval) if ts_off >= 0 and self.local_ts else tsval
        tan = (self.tcp_snd_base + self.d_una) & MASK32
        if (sf is self.sf0 and tsn & MASK32 == pkt.seq and tan == pkt.ack and tsv == tsval
                and win == pkt.win and not peer_sacks and not d_sacks and not local_fin
                and not others
                and not flags & TCP_FIN and (ts_off >= 0) == self.local_ts):
            # nothing changes for the local stack (the initial subflow still maps one to
            # one): pass the segment as it came; its DSS option is ignored by a plain TCP
            # socket, and an untouched packet keeps its checksum offload state
            if self.snd_data_fin is not None and self.rcv_data_fin is not None:
                self._check_close(now)
            return ACCEPT
        # -- rewrite for the local stack
        pkt.set_seq(tsn)
        pkt.set_ack(tan)
        if win != pkt.win:
            pkt.set_win(win)
        newflags = flags & ~TCP_FIN
        if local_fin:
            newflags |= TCP_FIN
        if newflags != flags:
            pkt.set_flags(newflags)
        if sf is not self.sf0:
            la, lp, ra, rp = self.key
            pkt.set_src(ra)
            pkt.set_dst(la)
            pkt.set_sport(rp)
            pkt.set_dport(lp)
        parts = []
        if ts_off >= 0 and self.local_ts:
            parts.append(build_ts(tsv, int.from_bytes(b[ts_off + 6:ts_off + 10], "big")))
        if d_sacks:
            room = (40 - (12 if parts else 0) - 4) // 8
            if peer_sacks:
                lft, rgt = peer_sacks[0]
                newest = (unwrap(lft, sf.snd_base, sf.snd_una),
                          unwrap(rgt, sf.snd_base, sf.snd_una))
            else:
                newest = (san_old, sf.snd_una) if san_moved else None
            blocks = self._order_sacks(sf, d_sacks, newest, room)
            parts.append(build_sack([((self.tcp_snd_base + lo) & MASK32,
                                      (self.tcp_snd_base + hi) & MASK32)
                                     for lo, hi in blocks]))
        pkt.set_options(b"".join(parts))
        if self.snd_data_fin is not None and self.rcv_data_fin is not None:
            self._check_close(now)
        return pkt.finish()

    def _strip_mptcp(self, pkt: TcpPacket):
        b = pkt.buf
        keep = bytearray()
        for kind, off, olen in pkt.options() or ():
            raw = bytes(b[off:off + olen])
            if kind == TCPOPT_MSS and olen == 4:
                mss = int.from_bytes(raw[2:4], "big")
                raw = bytes(raw[:2]) + max(mss - self.proxy.config.mss_overhead, 536).to_bytes(
                    2, "big")
            if kind != TCPOPT_MPTCP:
                keep += raw
        pkt.set_options(pad_options(bytes(keep)))
        return pkt.finish()

    def _order_sacks(self, sf: Subflow, d_sacks: list, newest, room: int) -> list:
        """At most ``room`` SACK blocks for the local stack: the one holding the most
        recently received data first (RFC 2018 §4), then the lowest ones — the holes
        closest to the cumulative ACK are the ones its recovery must see. ``newest``
        is a relative subflow range ``(lo, hi)`` or None."""
        first = None
        if newest is not None and newest[1] > newest[0]:
            proj = sf.send_map.project([newest])
            if proj:
                p0 = proj[-1][0]
                for blk in d_sacks:
                    if blk[0] <= p0 < blk[1]:
                        first = blk
                        break
        out = [first] if first is not None else []
        out += [blk for blk in d_sacks if blk is not first]
        return out[:room]

    def _fill_acked_hole(self, sf: Subflow, now: float) -> None:
        """A hole in our subflow sequence that the local stack will never fill: its
        data reached the peer by another copy (the DATA_ACK covers it), so the local
        stack does not retransmit it, yet the peer's subflow waits for those bytes.
        Fill it with zeros under the original mapping: the peer's subflow moves on and
        its MPTCP level drops the bytes as old data (DSN below its ack_seq). Not with
        DSS checksums: zeros would fail the mapping's checksum."""
        if self.csum or not sf.can_send:
            return
        e = next(iter(sf.maps_over(sf.snd_una, 1)), None)
        if e is None:
            return
        d = e[1] + (sf.snd_una - e[0])
        if d >= self.d_una or now - sf.fill_time < max(0.02, self.srtt):
            return
        sf.fill_time = now
        n = min(e[0] + e[2] - sf.snd_una, self.d_una - d, 8 * 1200)
        s = sf.snd_una
        while n > 0:
            k = min(n, 1200)
            payload = bytes(k)
            opts, san = self._out_options(sf, d, s, k, False, None, None, b"", payload, now, e)
            sf.rcv_acked = san
            self.proxy.send(self._segment(sf, sf.snd_wire(s), TCP_ACK, opts, payload))
            self.counters.inc("HoleFill")
            s += k
            d += k
            n -= k

    def _rcv_window(self) -> int:
        """Bytes of sequence space a peer segment may lie away from what this
        subflow has seen and still be acceptable: twice the local stack's window."""
        w = self.win_local << max(self.local_wscale, 0)
        return 2 * max(w, 65535)

    def _ts_to_local(self, sf: Subflow, tsval: int) -> int:
        """Map the peer's TSval on ``sf`` into one monotonic series for the local
        stack, so its PAWS check (RFC 7323 §5) never drops a segment after the peer's
        sending moves between subflows with unrelated timestamp clocks."""
        if sf.ts_off is None:
            sf.ts_off = 0 if (sf is self.sf0 or self.ts_shown is None) else \
                (self.ts_shown - tsval) & MASK32
        v = (tsval + sf.ts_off) & MASK32
        if self.ts_shown is not None and _ts_after(self.ts_shown, v):
            v = self.ts_shown
        self.ts_shown = v
        return v

    def _subflow_ahead(self, sf: Subflow) -> bool:
        """Whether the peer's subflow ACK on ``sf`` may cover data its DATA_ACK does
        not (then it is worth projecting as SACK blocks). Cheap answer for the usual
        single linear mapping: is the last subflow-acked byte above the DATA_ACK."""
        ents = sf.send_map.entries
        if len(ents) != 1:
            return True
        sa, da, n = ents[0]
        s = sf.snd_una - 1
        if s < sa or s >= sa + n:
            return True
        return da + (s - sa) >= self.d_una

    def _project_peer_sacks(self, sf: Subflow, peer_sacks) -> list:
        """The peer's subflow SACK blocks, and what its subflow ACK covers beyond
        the DATA_ACK, projected into the data space as SACK blocks for the local
        stack (paper §3.5, Fig. 5b)."""
        s_ranges = []
        if peer_sacks:
            base = sf.snd_base
            for lft, rgt in peer_sacks:
                lo = unwrap(lft, base, sf.snd_una)
                hi = unwrap(rgt, base, sf.snd_una)
                if hi > lo:
                    s_ranges.append((lo, hi))
        if sf.snd_una > 0:
            s_ranges.append((max(0, sf.snd_una - (1 << 30)), sf.snd_una))
        if not s_ranges:
            return None
        out = []
        for lo, hi in sf.send_map.project(s_ranges):
            if hi > self.d_una:
                out.append((max(lo, self.d_una), hi))
        out = merge_ranges(out)
        return out or None

    def _prune_sent(self) -> None:
        d_una = self.d_una
        for sf in self.subflows:
            ents = sf.send_map.entries
            while len(ents) > 1 and ents[0][1] + ents[0][2] <= d_una:
                del ents[0]
            if len(ents) > 8:
                sf.send_map.prune_below_value(d_una)

    def _check_csum(self, pkt: TcpPacket, sf: Subflow, s_map: int, r: int, ssn: int,
                    dll: int, nbytes: int, csum: int) -> bool:
        """Verify the DSS checksum when the mapping is carried whole by this segment;
        mappings spanning segments are not buffered (the proxy keeps no payload)."""
        s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
        if s != s_map or pkt.plen != nbytes:
            return True
        dsn = (self.idsn_remote + 1 + r) & MASK64
        return dss_checksum_ok(dsn, ssn, dll, ones_sum(pkt.payload), csum)

    def _infinite_mapping(self, pkt: TcpPacket, sf: Subflow, now: float):
        """DLL 0 (RFC 8684 §3.7): the peer falls back. Possible without corrupting the
        stream only while the initial subflow still maps one-to-one."""
        self.counters.inc("InfiniteMapRx")
        e = sf.rcv_map.entries
        identity = (sf is self.sf0 and len(self.subflows) == 1
                    and all(x[0] == x[1] for x in e)
                    and all(x[0] == x[1] for x in sf.send_map.entries))
        if identity:
            self._fallback(now)
            return ACCEPT
        return self._subflow_protocol_error(sf, now, MPTCP_RST_EMIDDLEBOX)


def _truncate_payload(pkt: TcpPacket, n: int) -> None:
    """Cut the payload to ``n`` bytes (a segment running past its mapping)."""
    b = pkt.buf
    end = pkt.th + pkt.hl + n
    removed = pkt.plen - n
    old = bytes(b[end:])
    del b[end:]
    # checksum: the removed bytes leave the sum, and the pseudo-header length shrinks
    pkt._delta -= _payload_sum_at(old, (end - pkt.th) & 1) + removed
    pkt.plen = n
    if pkt.v6:
        pl = int.from_bytes(b[4:6], "big") - removed
        b[4:6] = pl.to_bytes(2, "big")
    else:
        tot = int.from_bytes(b[2:4], "big") - removed
        b[2:4] = tot.to_bytes(2, "big")
        pkt._ipdelta -= removed


def _payload_sum_at(data: bytes, odd: int) -> int:
    """Ones'-sum contribution of ``data`` placed at an even (odd=0) or odd offset."""
    v = int.from_bytes(data, "big")
    if (len(data) + odd) & 1:
        v <<= 8
    return v


_TS_PREFIX = b"\x01\x01\x08\x0a"
_II = struct.Struct("!II")


def in_fast(conn, pkt: TcpPacket, now: float):
    """The steady state from the peer on a connection that still has only its initial
    subflow: an in-order segment (data under an already known mapping, or a pure ACK
    that moves the DATA_ACK) with timestamps and one DSS, nothing else. Everything
    still maps one to one, so the segment goes to the local stack unchanged, as the
    general path (:meth:`InboundPath._in_established`) would decide. Returns True
    when it took the segment (to be accepted unchanged), ``None`` — before changing
    any state — for any other segment."""
    b = pkt.buf
    th = pkt.th
    sf = conn.sf0
    hend = th + pkt.hl
    if pkt.flags & 0xF7 != TCP_ACK or hend - th < 40 or b[th + 20:th + 24] != _TS_PREFIX:
        return None
    o = th + 32
    while o < hend and b[o] == 1:  # NOP padding (Linux puts two before its DSS)
        o += 1
    if o + 3 > hend or b[o] != TCPOPT_MPTCP or b[o + 2] >> 4 != MPTCPOPT_DSS:
        return None
    olen = b[o + 1]
    end = o + olen
    if end > hend or any(x != 1 for x in b[end:hend]):
        return None  # other options after the DSS
    dss = parse_dss(b, o, olen)
    if dss is None or dss[1] is None or dss[0] & MPTCP_DSS_DATA_FIN \
            or conn.rcv_data_fin is not None:
        return None
    dflags, data_ack, ack64, data_seq, dsn64, ssn, dll, csum = dss
    plen = pkt.plen
    s = unwrap(pkt.seq, sf.rcv_base, sf.rcv_high)
    if s != sf.rcv_contig or sf.rcv_ooo:
        return None  # not in order (or a hole somewhere): the general path
    # DATA_ACK
    ref = (conn.idsn_local + 1 + conn.d_una) & MASK64
    dack = (expand_seq(ref, data_ack, 64 if ack64 else 32) - conn.idsn_local - 1) & MASK64
    if dack >= 1 << 63:
        dack -= 1 << 64
    top = conn.d_nxt + (1 if conn.snd_data_fin is not None else 0)
    d_adv = conn.d_una < dack <= top
    if d_adv and pkt.csum_mode == CSUM_OK and plen:
        return None  # verifying a data segment's checksum: the general path
    if plen:
        if data_seq is None or csum is not None:
            return None
        e = sf.rcv_map.lookup(s)
        s_map = unwrap(ssn, 1, sf.rcv_high)
        ref = (conn.idsn_remote + 1 + conn.r_high) & MASK64
        r_map = (expand_seq(ref, data_seq, 64 if dsn64 else 32) - conn.idsn_remote - 1) & MASK64
        if e is None or e[1] - e[0] != r_map - s_map or s + plen > e[0] + e[2]:
            return None  # a new or different mapping: the general path learns it
        r = e[1] + (s - e[0])
    else:
        if data_seq is not None or not d_adv:
            return None  # only DATA_ACK progress is passed on here
        r = conn.r_ack
    if (conn.tcp_rcv_base + r) & MASK32 != pkt.seq:
        return None
    tsval = _II.unpack_from(b, th + 24)[0]
    if conn.ts_shown is not None and ((tsval - conn.ts_shown) & MASK32) >= 0x80000000:
        return None  # would go back in time for the local stack
    san = unwrap(pkt.ack, sf.snd_base, sf.snd_una)
    if not (sf.snd_una <= san <= sf.snd_nxt):
        return None
    dan_after = dack if d_adv else conn.d_una
    if (conn.tcp_snd_base + dan_after) & MASK32 != pkt.ack or sf.ts_off not in (None, 0):
        return None
    if d_adv and pkt.csum_mode == CSUM_OK and not pkt.checksum_ok():
        return None  # (a small pure ACK: the general path counts and drops it)
    # -- accepted: the same state changes as the general path
    sf.last_rx = now
    conn.last_rx_sf = sf
    if not _ts_after(sf.ts_recent, tsval):
        sf.ts_recent = tsval
    sf.ts_off = 0
    conn.ts_shown = tsval
    if san > sf.snd_una:
        sf.snd_una = san
        maps = sf.maps
        while maps and maps[0][0] + maps[0][2] <= san:
            maps.popleft()
    counters = conn.counters
    counters["DSSRx"] += 1
    if d_adv:
        conn.d_una = dack
        conn._prune_sent()
    if plen:
        sf.rcv_high = sf.rcv_contig = s + plen
        if r + plen > conn.r_high:
            conn.r_high = r + plen
        conn._fwd_add(r, r + plen)
    conn.win_shown = pkt.win
    conn.sacks_shown = None
    return True
