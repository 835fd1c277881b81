"""A fake network around a :class:`~mptcp_proxy.core.proxy.Proxy` in the server role
(``--serve`` on an end host, or an anchor on a router), for tests/unit/test_server_role.py
and test_joins_listener.py.

Two parties, built on the independent models of :mod:`lockstep`:

- :class:`PlainServer`: a plain TCP listener with Linux's habits (the TCP side): it answers
  the SYN with MSS, SACK_PERM, timestamps and window scale in Linux's order, then behaves as
  :class:`~lockstep.local_stack.LocalStack` (checks checksums, no MPTCP option reaching it, PAWS,
  RFC 5961 exact RSTs, the bytes themselves). With ``mpc_answer`` it answers an MP_CAPABLE
  SYN with MP_CAPABLE itself (a native MPTCP server behind an anchor).
- :class:`LinuxClient`: a native MPTCP v1 client modelled on Linux 6.18 (docs/protocol.md
  §4.1, client side): SYN with MP_CAPABLE len 4; the SYN/ACK's key taken (a SYN/ACK without
  MP_CAPABLE: fallback); third ACK with both keys (len 20), repeated on every segment at
  ISN + 1 until fully established, its first data with MP_CAPABLE and a data-level length
  (len 22/24) instead of a DSS; fully established only by a DATA_ACK or an ADD_ADDR on the
  first in-sequence segment from the listener — anything else is recorded as the fallback
  Linux would make (``MPCapableDataFallback``). Its data level and its checks of every
  DSS, DATA_ACK and DATA_FIN are :class:`~lockstep.linux_peer.LinuxPeer`'s.

:class:`ServerPair` wires them like :class:`~lockstep.pair.ProxyPair`: the plain server is
``pair.local`` (its segments go to ``proxy.outbound``: from the TCP side), the client is
``pair.peer`` (its segments to ``proxy.inbound``: from the MPTCP side).

Also here: :class:`JoinOpener`, host A of one MP_JOIN subflow toward the proxy, scripted
(tests/unit/test_joins_listener.py, the fuzzer's traces), and :class:`ProxyProxyPair`, a
plain client behind a client-role proxy talking to a plain server behind a server-role
proxy (proxy↔proxy: neither end host speaks MPTCP).
"""

from __future__ import annotations

import struct
from collections import deque

from lockstep.decode import Mpc, OtherMp, Seg, parse_seg
from lockstep.linux_peer import LinuxPeer, PeerSeg
from lockstep.local_stack import LocalStack
from lockstep.pair import V4, V6, ProxyPair, seeded_random_bytes, verdict_output
from lockstep.wire import (
    ACK,
    CAP_A,
    CAP_H,
    M32,
    PSH,
    RST,
    SYN,
    dss_opt,
    key_sha,
    mpc_opt,
    opt_mss,
    opt_ts,
    pad4,
)
from mpnet.options import decode_other, join_ack_hmac, join_synack_thmac

from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.proxy import Proxy, ProxyConfig

SERVER_PORT = 8080
CLIENT_PORT = 50000


class PlainServer(LocalStack):
    """A plain TCP listener on ``addr:port`` for one connection from ``raddr:rport``."""

    def __init__(self, pair, addr: bytes, port: int, raddr: bytes, rport: int, isn: int,
                 allow_mpc_syn: bool = False, mpc_answer: bool = False, **kw) -> None:
        super().__init__(pair, addr, port, raddr, rport, isn, **kw)
        self.allow_mpc_syn = allow_mpc_syn  # an anchor leaves MP_CAPABLE in the SYN
        self.mpc_answer = mpc_answer
        self.syns: list[Seg] = []
        self.key = 0x5E5E5E5E12345678
        self.beyond_window = 0  # segments dropped beyond the receive window

    def listen(self) -> None:
        self.state = "LISTEN"

    def synack(self) -> bytes:
        s = self.syns[-1]
        opts = opt_mss(self.mss)
        if self.ts_ok:
            opts += (b"\x04\x02" if self.sack_ok else b"\x01\x01") + \
                struct.pack("!BBII", 8, 10, self.tsval(), self.ts_recent)
        elif self.sack_ok:
            opts += b"\x01\x01\x04\x02"
        if s.wscale is not None and self.ws is not None:
            opts += b"\x01" + bytes((3, 3, self.ws))
        if self.mpc_answer and s.mpc is not None:
            opts += mpc_opt(flags=CAP_H, sndr_key=self.key)
        win = min(self.win << (self.ws or 0), 0xFFFF)  # (a SYN/ACK's window is unscaled)
        return bytes(build_segment(self.addr, self.raddr, self.port, self.rport, self.iss,
                                   (self.irs + 1) & M32, SYN | ACK, win, pad4(opts)))

    def receive(self, s: Seg) -> list[bytes]:
        if self.state == "LISTEN" or (self.state == "SYN_RCVD" and s.syn and not s.ackf):
            return self._on_syn(s)
        if self.state == "SYN_RCVD":
            if s.rst:
                self.state = "CLOSED"
                return []
            if not s.ackf or s.syn or s.ack != self.swire(0):
                return []
            self.state = "ESTABLISHED"
        if s.syn and not s.ackf and self.state == "ESTABLISHED":
            return [self.ack_pkt()]  # (challenge ACK)
        if self.state == "ESTABLISHED" and s.plen and not s.rst:
            # tcp_data_queue: a segment starting at or beyond the right edge is dropped
            r = (s.seq - self.irs - 1) & M32
            if r >= self.rcv_nxt + (self.win << (self.ws or 0)):
                self.beyond_window += 1
                return [self.ack_pkt()]
        return super().receive(s)

    def _on_syn(self, s: Seg) -> list[bytes]:
        if not s.syn or s.ackf:
            return []
        if not s.csum_ok:
            self.violations.append(f"server: bad checksum on SYN {s!r}")
            return []
        if s.has_mptcp and not self.allow_mpc_syn:
            self.violations.append(f"server: MPTCP option in the SYN {s!r}")
        self.syns.append(s)
        self.irs = s.seq
        self.peer_mss = s.mss or 536
        self.peer_ws = s.wscale
        self.sack_ok = self.sack_perm and s.option(4) is not None
        self.ts_ok = self.ts_on and s.ts is not None
        if self.ts_ok:
            self.ts_recent = s.ts[0]
        self.state = "SYN_RCVD"
        return [self.synack()]


class LinuxClient(LinuxPeer):
    """A native MPTCP v1 client on ``addr:port`` connecting to ``pair.local``."""

    def __init__(self, pair, addr: bytes, port: int, key: int, isn: int, **kw) -> None:
        super().__init__(pair, addr, port, key, isn, **kw)
        self.state = "CLOSED"
        self.fully_est = False
        self.synack_seg: Seg | None = None
        self.synacks = 0
        self.syn_mss = self.mss

    # -- the handshake
    def connect(self) -> list[bytes]:
        self.state = "SYN_SENT"
        return [self.syn()]

    def syn(self) -> bytes:
        opts = opt_mss(self.syn_mss) + b"\x04\x02" + struct.pack("!BBII", 8, 10, self.tsval(), 0)
        opts += b"\x01" + bytes((3, 3, self.ws))
        opts += mpc_opt(flags=CAP_H | (CAP_A if self.checksum else 0))
        return bytes(build_segment(self.addr, self.pair.local.addr, self.port,
                                   self.pair.local.port, self.iss, 0, SYN, 0xFFFF, pad4(opts)))

    def _mpc_keys(self, data_len=None, csum=None) -> bytes:
        flags = CAP_H | (CAP_A if self.csum_enabled else 0)
        return mpc_opt(flags=flags, sndr_key=self.key, rcvr_key=self.remote_key,
                       data_len=data_len, csum=csum)

    def dss_ack(self) -> bytes:
        # options.c mptcp_established_options_mp: until fully established, a segment at
        # ISN + 1 (nothing sent yet) repeats MP_CAPABLE with both keys
        if self.mptcp and not self.fully_est and self.s_alloc == 0:
            return self._mpc_keys()
        return super().dss_ack()

    def _emit(self, seg: PeerSeg) -> bytes:
        if self.mptcp and not self.fully_est and seg.s == 0 and seg.mapping is not None:
            _drel, _ssn, dll, _fin, cs, _d64 = seg.mapping
            return self._build(0x08, 0, self._mpc_keys(dll, cs), seg.payload, sack=False)
        return super()._emit(seg)

    def receive(self, s: Seg) -> list[bytes]:
        if self.state == "SYN_SENT":
            return self._on_synack(s)
        if self.state == "ESTABLISHED" and s.syn and s.ackf:
            return [self.ack_pkt()]  # a SYN/ACK again: ACK it (tcp_validate_incoming)
        if self.state == "ESTABLISHED" and self.mptcp and not self.fully_est:
            self._check_fully_established(s)
        return super().receive(s)

    def _on_synack(self, s: Seg) -> list[bytes]:
        if s.rst or s.flags & (SYN | ACK) != SYN | ACK or s.ack != (self.iss + 1) & M32:
            return []
        if not s.csum_ok:
            self.violate("client: bad checksum on SYN/ACK", s)
            return []
        self.synacks += 1
        self.synack_seg = s
        self.irs = s.seq
        self.ts_ok = s.ts is not None
        if self.ts_ok:
            self.ts_recent = s.ts[0]
        self.sack_ok = s.option(4) is not None
        m = s.mpc
        if m is None or m.sndr_key is None or m.length != 12:
            self.mptcp = False
            self.fallback_reason = "MPCapableFallbackSYNACK"
        else:
            self.remote_key = m.sndr_key
            self.remote_idsn = key_sha(m.sndr_key)[1]
            self.csum_enabled = self.checksum or bool(m.flags & CAP_A)
        self.state = "ESTABLISHED"
        return [self.ack_pkt()]

    def _check_fully_established(self, s: Seg) -> None:
        """options.c check_fully_established: the first in-sequence segment from the
        listener after the SYN/ACK must carry a DATA_ACK or an ADD_ADDR."""
        if s.syn or s.rst:
            return
        r = ((s.seq - self.irs - 1) & M32)
        if r != self.rcv_nxt:
            if s.plen:
                self.violate("client: out-of-order data before fully established "
                             "(Linux resets the subflow)", s)
            return
        dss = s.dss
        add_addr = any(isinstance(x, OtherMp) and x.subtype == 3 and not x.raw[2] & 1
                       for x in s.mp)
        if (dss is not None and dss.data_ack is not None) or add_addr:
            self.fully_est = True
            return
        self.violate("client: first segment from the listener without DATA_ACK or "
                     "ADD_ADDR (MPCapableDataFallback)", s)
        self.fallback_reason = "MPCapableDataFallback"


class ElsewhereMixin:
    """Packets the proxy sends to an address that is neither party's (the peer's other
    addresses: joins), forged or passed, are kept, parsed, in ``elsewhere`` instead of
    reaching a party or failing the pair."""

    def _elsewhere(self, buf) -> bool:
        s = parse_seg(buf)
        if s.dst in (self.peer.addr, self.local.addr):
            return False
        if not hasattr(self, "elsewhere"):
            self.elsewhere: list[Seg] = []
        self.elsewhere.append(s)
        return True

    def _wire(self, direction: str, buf: bytes) -> None:
        if direction == "from_peer" or not self._elsewhere(buf):
            super()._wire(direction, buf)

    def flush(self) -> None:
        """Deliver what the proxy forged outside a packet (a command's signals)."""
        self._forged()
        self.pump()

    def _forged(self) -> None:
        for p in self.proxy.packets_to_send():
            s = parse_seg(p)
            if s.dst == self.local.addr:
                self._wire("to_local", bytes(p))
            else:
                self._wire("to_peer", bytes(p))
        self.events.extend(self.proxy.events())


class ServerPair(ElsewhereMixin, ProxyPair):
    """Plain server ↔ Proxy (server role) ↔ wire ↔ Linux MPTCP client, on a fake clock.

    ``anchor``: the proxy runs as an anchor (the server may speak MPTCP: ``native``);
    else it serves port 8080 (``--serve``)."""

    def __init__(self, checksum: bool = False, client_checksum: bool = False,
                 anchor: bool = False, native: bool = False, v6: bool = False, seed: int = 1,
                 config: ProxyConfig | None = None, client_kw: dict | None = None,
                 server_kw: dict | None = None, pm=None) -> None:
        if config is None:
            config = ProxyConfig(checksum=checksum, client=False, anchor=anchor,
                                 serve=frozenset() if anchor else frozenset({SERVER_PORT}))
        super().__init__(config=config, seed=seed, v6=v6)
        if pm is not None:
            self.proxy = Proxy(config, seeded_random_bytes(seed), pm=pm)
        sa, ca = V6 if v6 else V4
        mss = 1440 if v6 else 1460  # (the 40-byte IPv6 header)
        self.local = PlainServer(self, sa, SERVER_PORT, ca, CLIENT_PORT, 0x7000F000,
                                 allow_mpc_syn=anchor, mpc_answer=native,
                                 **{"mss": mss, **(server_kw or {})})
        self.peer = LinuxClient(self, ca, CLIENT_PORT, 0x1FDB5DF328BC3DEF, 0xFFFFFF00,
                                checksum=client_checksum, **{"mss": mss, **(client_kw or {})})

    def handshake(self) -> None:
        self.local.listen()
        self.emit_peer(self.peer.connect())
        self.pump()

    @property
    def conn(self):
        conns = list(self.proxy.connections.values())
        assert len(conns) == 1, conns
        return conns[0]


class JoinOpener:
    """Host A of one MP_JOIN subflow, scripted (Linux's option layout)."""

    def __init__(self, pair, src: bytes, sport: int, dst: bytes, dport: int, key_a: int,
                 key_b: int, isn: int = 0x40000000, nonce: int = 0x0BADCAFE,
                 backup: bool = False, join_id: int = 2) -> None:
        self.pair = pair
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.key_a, self.key_b = key_a, key_b
        self.iss, self.nonce, self.backup, self.join_id = isn, nonce, backup, join_id
        self.irs = 0
        self.r_b = 0
        self.ts_peer = 0

    def _seg(self, flags, seq, ack, opts, payload=b"") -> bytes:
        return bytes(build_segment(self.src, self.dst, self.sport, self.dport, seq, ack, flags,
                                   0x2000, pad4(opts), payload))

    def syn(self) -> bytes:
        token = key_sha(self.key_b)[0]
        mpj = bytes((30, 12, 0x10 | (1 if self.backup else 0), self.join_id)) + \
            struct.pack("!II", token, self.nonce)
        opts = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + \
            struct.pack("!BBII", 8, 10, 5000, 0) + b"\x01\x03\x03\x07" + mpj
        return self._seg(SYN, self.iss, 0, opts)

    def take_synack(self, s) -> tuple:
        """The SYN/ACK's MP_JOIN, checked like subflow_thmac_valid."""
        assert s.syn and s.ackf and s.ack == (self.iss + 1) & M32, s
        assert s.csum_ok and s.opts_ok
        (mp,) = [x for x in s.mp if isinstance(x, OtherMp)]
        d = decode_other(mp)
        assert d[0] == "join_synack", d
        _name, backup, addr_id, thmac, r_b = d
        assert thmac == join_synack_thmac(self.key_b, self.key_a, r_b, self.nonce)
        self.irs, self.r_b = s.seq, r_b
        self.ts_peer = s.ts[0] if s.ts else 0
        return backup, addr_id

    def third_ack(self, good: bool = True) -> bytes:
        h = join_ack_hmac(self.key_a, self.key_b, self.nonce, self.r_b)
        if not good:
            h = bytes([h[0] ^ 1]) + h[1:]
        opts = opt_ts(5001, self.ts_peer) + bytes((30, 24, 0x10, 0)) + h
        return self._seg(ACK, self.iss + 1, self.irs + 1, opts)

    def data(self, dsn: int, ssn: int, payload: bytes, data_ack: int | None = None) -> bytes:
        opts = opt_ts(5002, self.ts_peer) + dss_opt(data_ack=data_ack, dsn=dsn, ssn=ssn,
                                                    dll=len(payload))
        return self._seg(ACK | PSH, self.iss + ssn, self.irs + 1, opts, payload)

    def rst(self) -> bytes:
        return self._seg(RST, self.iss + 1, 0, b"")

    def ack_with(self, mp: bytes, ack_rel: int = 1) -> bytes:
        return self._seg(ACK, self.iss + 1, self.irs + ack_rel, opt_ts(5003, self.ts_peer) + mp)


class _ServerHost:
    """The far end of :class:`ProxyProxyPair` as the pair's ``peer``: a plain server behind
    a server-role proxy. Packets from the wire go through that proxy's ``inbound`` to the
    server, the server's through its ``outbound`` back to the wire; what the proxy forges
    goes to the server or to the wire by address."""

    def __init__(self, pair: "ProxyProxyPair", proxy: Proxy, server: PlainServer) -> None:
        self.pair, self.proxy, self.server = pair, proxy, server
        self.addr = server.addr

    @property
    def violations(self) -> list[str]:
        return self.server.violations

    @property
    def all_acked(self) -> bool:
        return self.server.all_acked

    def write(self, data: bytes, **_kw) -> None:
        self.server.write(data)

    def push(self, window: int | None = None) -> list[bytes]:
        return self.run([("out", p) for p in self.server.push(window)])

    def retransmit(self, only_first: bool = False) -> list[bytes]:
        return self.run([("out", p) for p in self.server.retransmit(only_first)])

    def receive(self, s: Seg) -> list[bytes]:
        return self.run([("in", s.raw)])

    def run(self, items) -> list[bytes]:
        """Run ``items`` ("in": from the wire, "out": from the server, "srv": to the
        server) until quiet; the packets for the wire."""
        q = deque(items)
        wire: list[bytes] = []
        now = self.pair.now
        self._forged(q, wire)
        while q:
            kind, buf = q.popleft()
            if kind == "srv":
                q.extend(("out", r) for r in self.server.receive(parse_seg(buf)))
                continue
            b = bytearray(buf)
            if kind == "in":
                res = verdict_output(buf, self.proxy.inbound(b, now), b)
                if res is not None:
                    q.append(("srv", res))
            else:
                res = verdict_output(buf, self.proxy.outbound(b, now), b)
                if res is not None:
                    wire.append(res)
            self._forged(q, wire)
        return wire

    def _forged(self, q: deque, wire: list) -> None:
        for p in self.proxy.packets_to_send():
            if parse_seg(p).dst == self.server.addr:
                q.append(("srv", bytes(p)))
            else:
                wire.append(bytes(p))
        for _e in self.proxy.events():
            pass


class ProxyProxyPair(ProxyPair):
    """Plain client ↔ Proxy (client role) ↔ wire ↔ Proxy (server role, ``--serve 8080``) ↔
    plain server, on a fake clock (issue 10: proxy↔proxy). ``pair.proxy`` is the client's
    proxy, ``pair.server_proxy`` the server's; ``pair.local`` the plain client,
    ``pair.server`` the plain server; ``pair.peer`` stands for the server's whole host."""

    def __init__(self, seed: int = 1, v6: bool = False, config: ProxyConfig | None = None,
                 server_config: ProxyConfig | None = None, local_kw: dict | None = None,
                 server_kw: dict | None = None) -> None:
        super().__init__(seed=seed, v6=v6, config=config, local_kw=local_kw)
        la, ra = V6 if v6 else V4
        mss = 1440 if v6 else 1460
        self.server_config = server_config or ProxyConfig(client=False,
                                                          serve=frozenset({SERVER_PORT}))
        self.server_proxy = Proxy(self.server_config, seeded_random_bytes(seed + 1000))
        self.server = PlainServer(self, ra, SERVER_PORT, la, self.local.port, 0x7000F000,
                                  **{"mss": mss, **(server_kw or {})})
        self.peer = _ServerHost(self, self.server_proxy, self.server)

    def handshake(self) -> None:
        self.server.listen()
        super().handshake()

    def advance(self, dt: float) -> None:
        """Move the clock, firing both proxies' timers at their exact times."""
        end = self.now + dt
        while True:
            due = [(t, i) for i, p in enumerate((self.proxy, self.server_proxy))
                   if (t := p.get_timer()) is not None and t <= end]
            if not due:
                break
            t, i = min(due)
            self.now = max(self.now, t)
            if i == 0:
                self.proxy.handle_timer(self.now)
                self._forged()
            else:
                self.server_proxy.handle_timer(self.now)
                self.emit_peer(self.peer.run([]))
            self.pump()
        self.now = end


__all__ = ["PlainServer", "LinuxClient", "ServerPair", "ElsewhereMixin", "JoinOpener",
           "ProxyProxyPair", "SERVER_PORT", "CLIENT_PORT", "Mpc", "dss_opt"]
