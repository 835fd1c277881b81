"""The native MPTCP v1 server of the multipath network (:class:`MpPeer`, one
:class:`PSub` per subflow), modelled on Linux 6.18: its state, input dispatch and
handshakes (MP_CAPABLE, MP_JOIN with token lookup and both HMACs, the fourth ACK).
What it does with established subflows is in :mod:`mpnet.peer_receive` and
:mod:`mpnet.peer_send`."""

from __future__ import annotations

import random
import struct
from bisect import bisect_right
from typing import TYPE_CHECKING

from lockstep.decode import Ignored, OtherMp, TcpRst, parse_seg
from lockstep.wire import (
    ACK,
    M32,
    M64,
    RST,
    SYN,
    dss_opt,
    key_sha,
    mpc_opt,
    opt_mss,
    opt_sack,
    opt_ts,
    pad4,
)

from mpnet.addresses import P0, SERVER_PORT
from mpnet.options import decode_other, join_ack_hmac, join_synack_thmac, mpj_synack_opt
from mpnet.peer_receive import PeerReceive
from mpnet.peer_send import PeerSend
from mpnet.ranges import RangeSet
from mpnet.tcp_sender import TcpSender
from mpnet.timer import Timer
from mptcp_proxy.core.forge import build_segment

if TYPE_CHECKING:
    from mpnet.network import MpNet


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


class MpPeer(PeerReceive, PeerSend):
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
