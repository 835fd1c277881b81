"""How :class:`~lockstep.linux_peer.LinuxPeer` receives and validates the proxy's
segments, as Linux 6.18 would (mixed into :class:`~lockstep.linux_peer.LinuxPeer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lockstep.decode import DssOpt, Fastclose, Ignored, Mpc, TcpRst
from lockstep.wire import CAP_A, DSS_M, M32, M64, MTU, dss_csum_ok, key_sha, sdiff, ts_before

if TYPE_CHECKING:
    from lockstep.decode import Seg


class LinuxPeerReceive:
    """Input of :class:`~lockstep.linux_peer.LinuxPeer`: the handshake, subflow ACKs,
    DATA_ACK, DATA_FIN, Linux's mapping rules (``get_mapping_status``/
    ``validate_mapping``), reassembly from DSNs and resets; every deviation from what
    Linux accepts is recorded in ``violations``."""

    def receive(self, s: Seg) -> list[bytes]:
        if not s.csum_ok:
            self.violate("peer: bad IP/TCP checksum", s)
            return []
        if len(s.raw) > MTU:
            self.violate(f"peer: packet of {len(s.raw)} bytes exceeds the MTU", s)
        if not s.opts_ok:
            self.violate("peer: malformed TCP option list", s)
        if (s.dst, s.dport) != (self.addr, self.port):
            self.violate("peer: wrong destination", s)
            return []
        if self.state == "LISTEN" or (self.state == "SYN_RCVD" and s.syn and not s.ackf):
            return self._on_syn(s)
        if self.state == "CLOSED":
            return []
        for x in s.mp:
            if isinstance(x, Ignored):
                if self.mptcp:
                    self.violate(f"peer: Linux ignores this option: {x.reason}", s)
        if self.state == "SYN_RCVD":
            return self._on_third_ack(s)
        return self._on_established(s)

    def _on_syn(self, s: Seg) -> list[bytes]:
        if not s.syn or s.ackf:
            return []
        self.syn_count += 1
        self.syn_seg = s
        self.irs = s.seq
        mpcs = [x for x in s.mp if isinstance(x, Mpc)]
        for x in s.mp:
            if not isinstance(x, Mpc):
                self.violate(f"peer: unexpected MPTCP option on SYN: {x}", s)
        self.mptcp_syn = bool(mpcs) and self.mode == "mptcp"
        if mpcs:
            m = mpcs[0]
            if m.length != 4:
                self.violate(f"peer: MP_CAPABLE on SYN has len {m.length}", s)
            self.client_csum = bool(m.flags & CAP_A)
            self.syn_mpc_flags = m.flags
        self.mptcp = self.mptcp_syn
        self.sack_ok = s.option(4) is not None
        self.ts_ok = s.ts is not None
        if self.ts_ok:
            self.ts_recent = s.ts[0]
        self.state = "SYN_RCVD"
        return [self.syn_ack()]

    def _on_third_ack(self, s: Seg) -> list[bytes]:
        if s.rst:
            self.state = "CLOSED"
            return []
        if not s.ackf or s.ack != (self.iss + 1) & M32:
            self.violate("peer: bad ACK in SYN_RCVD", s)
            return []
        if not self.mptcp:
            self.state = "ESTABLISHED"
            return self._on_established(s)
        m = s.mpc
        # subflow_syn_recv_sock: the packet creating the child must carry MPC ACK/DATA
        if m is None or m.rcvr_key is None:
            self.fallback_reason = "MPCapableFallbackACK"
            self.violate("peer: first ACK without a valid MP_CAPABLE -> Linux falls back", s)
            self.mptcp = False
            self.state = "ESTABLISHED"
            return self._on_established(s)
        self.third_ack = s
        if m.rcvr_key != self.key:
            self.violate(f"peer: MP_CAPABLE rcvr_key {m.rcvr_key:#x} != our key", s)
        self.remote_key = m.sndr_key
        self.remote_idsn = key_sha(m.sndr_key)[1]
        self.ack_mpc_flags = m.flags
        # Linux listener: checksum if its sysctl or the A bit of the 3rd ACK/MPC data
        self.csum_enabled = self.checksum or bool(m.flags & CAP_A)
        self.state = "ESTABLISHED"
        return self._on_established(s)

    def _on_established(self, s: Seg) -> list[bytes]:
        if s.syn:
            self.violate("peer: SYN on an established subflow", s)
            return []
        r = sdiff(s.seq, self.rwire(0))
        if s.rst:
            return self._on_rst(s, r)
        if not self.mptcp:
            if s.has_mptcp:
                self.mptcp_opts_in_fallback += 1
        # PAWS and TSecr
        if self.ts_ok:
            if s.ts is None:
                self.violate("peer: no timestamp option after TS negotiated", s)
            else:
                tv, te = s.ts
                if ts_before(tv, self.ts_recent):
                    self.violate(f"peer: PAWS drop (TSval {tv} < ts_recent {self.ts_recent})", s)
                    return [self.ack_pkt()]
                if self.tsvals_sent and te not in self.tsvals_sent:
                    self.violate(f"peer: TSecr {te} is not a TSval we sent", s)
                if r <= self.rcv_nxt:
                    self.ts_recent = tv
        # subflow ACK
        if s.ackf:
            a = sdiff(s.ack, self.swire(0))
            top = self.snd_nxt + (1 if self.fin_s is not None else 0)
            if a > top:
                self.violate(f"peer: subflow ACK of unsent data ({a} > {top})", s)
            elif a > self.snd_una:
                self.snd_una = a
                if self.fin_s is not None and a > self.fin_s:
                    self.fin_acked = True
        if s.sack:
            self.sacks_seen.append([(sdiff(lo, self.swire(0)), sdiff(hi, self.swire(0)))
                                    for lo, hi in s.sack])
        mpc = s.mpc
        dss = s.dss
        if self.mptcp:
            if sum(isinstance(x, DssOpt) for x in s.mp) > 1:
                self.violate("peer: two DSS options", s)
            if mpc is not None and dss is not None:
                self.violate("peer: MP_CAPABLE and DSS on one segment", s)
            if mpc is not None and (mpc.sndr_key != self.remote_key or mpc.rcvr_key != self.key):
                self.violate("peer: MP_CAPABLE keys differ from the handshake's", s)
            if dss is not None and dss.data_ack is not None:
                self._on_data_ack(dss, s)
        # a pure ACK / DATA_FIN alone
        if not s.plen and not s.fin:
            if self.mptcp and dss is not None and dss.flags & DSS_M:
                had = self.dfin_rcvd
                self._on_dfin_alone(dss, s)
                if self.dfin_rcvd and not had:
                    return [self.ack_pkt()]  # mptcp_check_data_fin -> mptcp_send_ack
            return []
        # a segment with data or a subflow FIN: find its mapping
        mapping = None
        if self.mptcp:
            if mpc is not None and s.plen:
                mapping = (0, 1, mpc.data_len, False, mpc.csum, True)
                if r != 0:
                    self.violate("peer: MP_CAPABLE with data on a segment that is not the "
                                 "first one (implied SSN 1 does not cover it)", s)
                self.use_64bit_ack = True
            elif dss is not None and dss.flags & DSS_M:
                drel = self._expand_dsn(dss)
                mapping = (drel, dss.ssn, dss.dll, dss.fin, dss.csum, dss.dsn64)
                if dss.dll == 0 and not self.sent_mp_fail:
                    self.violate("peer: infinite mapping from the proxy", s)
                elif dss.dll == 0:  # RFC 8684 §3.7: the rest of the subflow, unchecked
                    self.infinite_rcvd = True
                    mapping = (drel, dss.ssn, 1 << 40, False, None, dss.dsn64)
                self.use_64bit_ack = dss.dsn64
            if mapping is not None:
                self.mappings.append((r,) + mapping)
                self._check_known(mapping, s)
                if (mapping[4] is not None) != self.csum_enabled:
                    self.violate("peer: DSS checksum presence differs from negotiation "
                                 "(Linux resets)", s)
        self.rcvd_any = True
        end = r + s.plen + (1 if s.fin else 0)
        if end <= self.rcv_nxt:
            return [self.ack_pkt()]  # duplicate: Linux sends a (D)SACK ACK
        if r > self.rcv_nxt:
            self.ooo[r] = (s, mapping)
            return [self.ack_pkt()]
        self._consume(s, r, mapping)
        while True:
            k = next((k for k in sorted(self.ooo) if k <= self.rcv_nxt), None)
            if k is None:
                break
            seg, mp = self.ooo.pop(k)
            kend = k + seg.plen + (1 if seg.fin else 0)
            if kend > self.rcv_nxt:
                self._consume(seg, k, mp)
        return [self.ack_pkt()]

    def _expand_dsn(self, dss: DssOpt) -> int:
        if dss.dsn64:
            v = (dss.dsn - self.remote_idsn - 1) & M64
        else:
            ref = (self.remote_idsn + 1 + len(self.data)) & M64
            v = (ref + sdiff(dss.dsn, ref & M32) - self.remote_idsn - 1) & M64
        return v - (1 << 64) if v >= 1 << 63 else v

    def _check_known(self, mapping, s: Seg) -> None:
        drel, ssn, dll, fin, cs, _ = mapping
        n = dll - (1 if fin else 0)
        s0 = ssn - 1
        for ks, kr, kn in self.known:
            lo, hi = max(ks, s0), min(ks + kn, s0 + n)
            if lo < hi and kr - ks != drel - s0:
                self.violate(f"peer: mapping s={s0} r={drel} n={n} conflicts with "
                             f"s={ks} r={kr} n={kn} (DSSNotMatching)", s)
                return
        if n > 0:
            self.known.append((s0, drel, n))

    def _on_data_ack(self, dss: DssOpt, s: Seg) -> None:
        if dss.ack64:
            v = (dss.data_ack - self.idsn - 1) & M64
        else:
            ref = (self.idsn + 1 + self.d_una) & M64
            v = (ref + sdiff(dss.data_ack, ref & M32) - self.idsn - 1) & M64
        if v >= 1 << 63:
            v -= 1 << 64
        self.data_acks.append(v)
        top = self.d_nxt + (1 if self.dfin is not None else 0)
        if v > top:
            self.violate(f"peer: DATA_ACK {v} beyond what was sent ({top})", s)
        elif v > self.d_una:
            self.d_una = v
            if self.dfin is not None and v > self.dfin:
                self.dfin_acked = True

    def _on_dfin_alone(self, dss: DssOpt, s: Seg) -> None:
        # mptcp_incoming_options: on a data-less segment only DATA_FIN with DLL 1 counts
        if not dss.fin or dss.dll != 1:
            self.violate("peer: mapping on a data-less segment that is not a DATA_FIN "
                         "with DLL 1 (ignored by Linux)", s)
            return
        if dss.ssn != 0:
            self.violate("peer: DATA_FIN alone must have SSN 0 (RFC 8684 §3.3.3)", s)
        if (dss.csum is not None) != self.csum_enabled:
            self.violate("peer: DATA_FIN checksum presence differs from negotiation", s)
        drel = self._expand_dsn(dss)
        if dss.csum is not None and not dss_csum_ok(self.remote_idsn + 1 + drel, dss.ssn, 1,
                                                    b"", dss.csum):
            self.violate("peer: bad DSS checksum on DATA_FIN", s)
        self._set_rcv_dfin(drel, s)

    def _set_rcv_dfin(self, drel: int, s: Seg) -> None:
        if self.rcv_dfin is not None and self.rcv_dfin != drel:
            self.violate(f"peer: DATA_FIN moved from {self.rcv_dfin} to {drel}", s)
        self.rcv_dfin = drel
        self._check_dfin()

    def _check_dfin(self) -> None:
        if self.rcv_dfin is not None and not self.dfin_rcvd and len(self.data) == self.rcv_dfin:
            self.dfin_rcvd = True

    # Linux get_mapping_status / validate_mapping, one in-order skb at a time
    def _install(self, mapping, pos: int, n: int, s: Seg) -> None:
        drel, ssn, dll, fin, cs, _ = mapping
        plen = dll - (1 if fin else 0)
        cur = self.map
        if cur is not None:
            same = (cur["dsn"], cur["ssn"], cur["dll"], cur["fin"]) == (drel, ssn, dll, fin)
            if same:
                return
            if cur["s"] <= pos and pos + n <= cur["s"] + cur["len"]:
                self.violate("peer: new mapping on a segment fully covered by the current "
                             "one (DSSNoMatch)", s)
                return
            self.pending_map = mapping  # validated once the current one is consumed
            return
        s0 = ssn - 1
        if not (s0 <= pos < s0 + plen):
            self.violate(f"peer: mapping s={s0}..{s0 + plen} does not cover subflow seq {pos} "
                         "(DSSNoMatchTCP)", s)
            return
        self.map = {"dsn": drel, "ssn": ssn, "dll": dll, "fin": fin, "csum": cs,
                    "s": s0, "len": plen, "buf": bytearray()}

    def _consume(self, s: Seg, r: int, mapping) -> None:
        data = s.payload
        pos = r
        if pos < self.rcv_nxt:  # trim what was already received
            data = data[self.rcv_nxt - pos:]
            pos = self.rcv_nxt
        if not self.mptcp:
            self._deliver(pos, data, s)
            self.rcv_nxt = pos + len(data)
        else:
            if mapping is not None:
                self._install(mapping, pos, len(data), s)
            while data:
                m = self.map
                if m is None and self.pending_map is not None:
                    pm, self.pending_map = self.pending_map, None
                    self._install(pm, pos, len(data), s)
                    m = self.map
                if m is None:
                    self.violate(f"peer: data at subflow seq {pos} without a mapping", s)
                    self.rcv_nxt = pos + len(data)
                    data = b""
                    break
                off = pos - m["s"]
                take = min(len(data), m["len"] - off)
                self._deliver(m["dsn"] + off, data[:take], s)
                m["buf"] += data[:take]
                pos += take
                data = data[take:]
                self.rcv_nxt = pos
                if pos >= m["s"] + m["len"]:
                    self._map_done(m, s)
        if s.fin:
            self.rcv_nxt += 1
            self.fin_rcvd = True
            self.subflow_fin_rcvd = True
            if self.mptcp and not self.dfin_rcvd:
                self.violate("peer: subflow FIN before the DATA_FIN", s)

    def _map_done(self, m, s: Seg) -> None:
        self.map = None
        if m["csum"] is not None and self.csum_enabled:
            if not dss_csum_ok(self.remote_idsn + 1 + m["dsn"], m["ssn"], m["dll"],
                               bytes(m["buf"]), m["csum"]):
                self.violate(f"peer: bad DSS checksum on mapping dsn={m['dsn']} "
                             f"len={m['dll']} (DataCsumErr)", s)
        if m["fin"]:
            self._set_rcv_dfin(m["dsn"] + m["len"], s)

    def _deliver(self, r: int, data: bytes, s: Seg) -> None:
        if not data:
            return
        have = len(self.data)
        lo, hi = max(r, 0), min(r + len(data), have)
        if lo < hi and bytes(self.data[lo:hi]) != data[lo - r:hi - r]:
            self.violate(f"peer: different bytes at data offset {lo}", s)
        if self.dfin_rcvd and r + len(data) > have:
            self.violate("peer: data beyond the DATA_FIN", s)
        if r + len(data) > have:
            if r <= have:
                self.data += data[have - r:]
                while True:
                    k = next((k for k in sorted(self.data_ooo) if k <= len(self.data)), None)
                    if k is None:
                        break
                    d = self.data_ooo.pop(k)
                    if k + len(d) > len(self.data):
                        self.data += d[len(self.data) - k:]
            else:
                self.data_ooo[r] = data
        self._check_dfin()

    def _on_rst(self, s: Seg, r: int) -> list[bytes]:
        # tcp_validate_incoming (RFC 5961 §3.2): exact match, else a challenge ACK
        if r != self.rcv_nxt:
            self.challenge_acks += 1
            self.notes.append(f"RST at {r}, rcv_nxt {self.rcv_nxt}: challenge ACK")
            return [self.ack_pkt()]
        self.resets.append(s)
        for x in s.mp:  # tcp_reset -> mptcp_incoming_options
            if isinstance(x, Fastclose):
                if x.key != self.key:
                    self.violate(f"peer: MP_FASTCLOSE carries key {x.key:#x}, not ours", s)
                else:
                    self.fastclosed = True
            elif isinstance(x, TcpRst):
                self.rst_reason = x.reason
        self.state = "CLOSED"
        return []
