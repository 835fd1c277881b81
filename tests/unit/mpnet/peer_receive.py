"""What :class:`~mpnet.peer.MpPeer` does with segments on established subflows, checked
as Linux 6.18 would (mixed into :class:`~mpnet.peer.MpPeer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lockstep.decode import DssOpt, Fastclose, TcpRst
from lockstep.wire import ACK, DSS_M, M32, M64, RST, sdiff, ts_before

if TYPE_CHECKING:
    from mpnet.peer import PSub


class PeerReceive:
    """Input on established subflows of :class:`~mpnet.peer.MpPeer`: subflow ACKs and
    SACKs, DATA_ACK, signalling, DATA_FIN, and Linux's mapping rules
    (``get_mapping_status``/``validate_mapping``) with reassembly from DSNs."""

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
