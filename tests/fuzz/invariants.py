"""The invariants checked around every call into the core.

:class:`Checker` drives one proxy (and path manager) the way the NFQUEUE driver does —
a verdict per packet, then the forged packets and events are pulled — and checks:

``exception``
    nothing raises out of ``outbound``/``inbound``/``handle_timer``/``get_timer``/
    ``packets_to_send``/``events`` (or a path-manager command).
``verdict_type``
    a verdict is ``None`` (ACCEPT), ``False`` (DROP) or a ``bytearray``.
``verdict_malformed`` / ``forged_malformed``
    a rewritten or forged packet decodes strictly (:func:`.wire.decode`; a forged ICMP
    unreachable, :func:`.wire.decode_unreachable`, must quote a known connection): IP length
    equal to the buffer and at most 65535, header lengths, a well-formed option list
    of at most 40 bytes, TCP and MPTCP option lengths, no duplicate MP_CAPABLE/MP_JOIN/
    DSS, and valid checksums — for a rewritten packet as the csum state allows (GSO: the
    kernel computes the TCP checksum; a corrupt input must stay detectably corrupt).
``input_defect_carried``
    (low severity) a defect of the input packet (a bad option length, odd flags) that
    the proxy carried over into its rewritten packet.
``csum_laundered``
    a rewritten packet whose (received) input had a bad TCP checksum leaves with a valid
    one (the local stack would then take corrupted bytes).
``accept_modified``
    ACCEPT means the driver passes the original bytes: the core must not have changed
    the buffer (beyond trimming bytes past the IP length).
``bad_csum_state_change`` / ``bad_csum_output``
    a received segment with a bad TCP checksum that nothing verified before the queue
    (``CSUM_OK`` before the restructuring, ``CSUM_UNVERIFIED`` after it; the checker
    feeds a corrupt segment in that state) changes no state (:mod:`.snapshot`) and makes
    the proxy send nothing and report no event. Received: inbound segments in every role,
    and on an anchor also the servers' (outbound: its TCP side is across a link).
``unconverted_passthrough``
    a packet of an MPTCP connection the proxy carries (IPv4 fragment, IPv6 extension
    headers, BIG TCP length 0, ...) is not passed on unconverted.
``forged_unknown_tuple`` / ``forged_oversize``
    forged packets belong to a known subflow or go to the local socket (or answer the
    packet just fed, on its 4-tuple or the reverse), and carry no more payload than the
    local stack's MSS (what its link can carry; an MSS above 9,000 bytes, a loopback's,
    counts as a jumbo frame's payload, :data:`JUMBO_PAYLOAD`).
``timer_stuck``
    after ``handle_timer(now)``, ``get_timer()`` is None or later than ``now`` (a
    driver would spin otherwise).
``unbounded_state``
    no container held by a core object grows past ``container_limit`` entries (or the
    documented cap of its own, :data:`CAPPED`), there are at most ``conn_limit``
    connections, and the configured limits hold in both roles: ``max_connections``,
    ``max_syn_sent`` (half-open: SYN_SENT or SYN_RCVD, and the proxy's count of them is
    exact), ``PmConfig.max_subflows`` live subflows per connection (the peer's joins
    included).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

from mptcp_proxy.core.tcp import CSUM_GSO, parse_packet

from . import snapshot as snap
from . import wire
from .build import CSUM_UNVERIFIED, FULL_CSUM, IN_CSUM_DEFAULT, OUT_CSUM_DEFAULT, verdict_of

ESTABLISHED = "ESTABLISHED"
# bytes: a 9,000-byte frame less an IPv6 header and a TCP header with 40 bytes of
# options -- the most payload a link the proxy serves carries (the recordings are made on
# loopback, whose stacks announce an MSS near 65,535)
JUMBO_PAYLOAD = 9000 - 40 - 60

# containers with a documented cap of their own above the generic limit (1,024): the
# anchor's stepped-aside 4-tuples (proxy.PASSED_MAX), the orphan table (orphans.MAX_ENTRIES)
CAPPED = {"Proxy.passed": 4096, "Orphans.table": 4096}


@dataclass
class Violation:
    invariant: str
    key: str  # the class within the invariant (what groups occurrences of one bug)
    message: str

    @property
    def cls(self) -> str:
        return f"{self.invariant}: {self.key}"


def _is_icmp(p) -> bool:
    """An IPv4 ICMP or an IPv6 ICMPv6 packet (no extension headers: the core adds none)."""
    return len(p) >= 40 and (p[0] >> 4 == 4 and p[9] == 1 or p[0] >> 4 == 6 and p[6] == 58)


def _norm(msg: str) -> str:
    """A problem message with its numbers removed, to group occurrences."""
    return re.sub(r"0x[0-9a-f]+|\d+", "N", msg)


def _core_frame(tb) -> str:
    """The innermost two frames in the proxy's code: ``file:function <- file:caller``."""
    frames = traceback.extract_tb(tb)
    core = [f for f in frames if "mptcp_proxy" in f.filename] or frames[-1:]
    return " <- ".join(f"{f.filename.split('mptcp_proxy/')[-1]}:{f.name}"
                       for f in reversed(core[-2:]))


# What a changed attribute means, most severe first (bad_csum_state_change classes).
# Unlisted attributes fall in "other"; names are the core's (before and after the
# restructuring); the grouping degrades to "other" (still reported) if they change.
_CATEGORIES = (
    ("connection or subflow closed/reset", {
        "Connection.state", "Connection.closed_at", "Connection.closed_by_reset",
        "Subflow.state", "Subflow.closed_at", "Proxy", "Proxy.connections", "Proxy.conns",
        "Proxy.tokens"}),
    ("handshake: key/ISN taken", {
        "Connection.remote_key", "Connection.remote_token", "Connection.idsn_remote",
        "Connection.remote_idsn",
        "Connection.tcp_rcv_isn", "Connection.tcp_rcv_base", "Subflow.rcv_isn",
        "Subflow.rcv_base", "Connection.csum", "Connection.deny_join0"}),
    ("receive: data or mapping accepted", {
        "Connection.r_fwd", "Connection.r_high", "Connection.rcv_data_fin",
        "Subflow.rcv_contig", "Subflow.rcv_high", "Subflow.rcv_ooo", "Subflow.rcv_map",
        "MapTable.entries", "Subflow.peer_fin"}),
    ("send: DATA_ACK taken", {
        "Connection.d_una", "Connection.data_fin_acked", "Connection.fully_established",
        "Subflow.send_map"}),
    ("subflow ACK taken", {"Subflow.snd_una", "Subflow.maps", "Subflow.sent",
                           "Subflow.fin_acked", "Subflow.max_snd_wnd"}),
    ("paths/signalling", {
        "Connection.subflows", "Connection.active", "Connection.handovers",
        "Connection.remote_addrs", "Connection.pending_signals", "Subflow.peer_backup",
        "Subflow.backup", "Connection.handover_at", "Connection.pending_handover"}),
    ("timer", {"Connection.timer", "Subflow.timer", "timer"}),
    ("timestamps", {"Subflow.ts_recent", "Connection.ts_shown", "Connection.shown_tsval",
                    "Subflow.ts_off"}),
    ("window/SACK shown", {"Connection.win_shown", "Connection.sacks_shown",
                           "Connection.shown_win", "Connection.shown_sacks",
                           "Subflow.rcv_wnd_edge"}),
    ("liveness only", {"Connection.last_activity", "Subflow.last_rx",
                       "Connection.last_rx_sf"}),
)


def _category(changed: set) -> str:
    for name, attrs in _CATEGORIES:
        if changed & attrs:
            return name
    return "other: " + ", ".join(sorted(changed))[:80]


def _seg_kind(data: bytes, detail: bool = True) -> str:
    """A coarse name for a segment: SYN/ACK, RST, FIN, data or pure ACK, and its
    MPTCP options (DSS with its flags)."""
    lo = wire.layout(data)
    if lo is None or lo.th < 0 or lo.th + 20 > len(data):
        return "unreadable"
    th = lo.th
    f = data[th + 13]
    hl = (data[th + 12] >> 4) * 4
    kind = ("SYN/ACK" if f & 0x12 == 0x12 else "SYN" if f & 0x02 else "RST" if f & 0x04
            else "FIN" if f & 0x01 else "data" if lo.end > th + hl else "pure ACK")
    names = {0: "MPC", 1: "MPJ", 3: "ADD_ADDR", 4: "RM_ADDR", 5: "PRIO", 6: "MP_FAIL",
             7: "FASTCLOSE", 8: "TCPRST"}
    subs = []
    i, end = th + 20, min(th + hl, len(data))
    while i + 2 < end:
        k = data[i]
        if k in (0, 1):
            i += 1
            continue
        n = data[i + 1]
        if n < 2 or i + n > end:
            break
        if k == 30 and n >= 3:
            sub = data[i + 2] >> 4
            if sub == 2 and n >= 4 and detail:
                fl = data[i + 3]
                subs.append("DSS(" + "".join(c for c, b in zip("AaMmF", range(5))
                                              if fl >> b & 1) + ")")
            else:
                subs.append(names.get(sub, "DSS" if sub == 2 else "unknown subtype"))
        i += n
    if not detail:  # (the option names are in the message; classes group by kind)
        return kind + (" +MPTCP" if subs else "")
    return kind + (" +" + "+".join(sorted(set(subs))) if subs else "")


class Checker:
    """Feed inputs to ``proxy`` and collect :class:`Violation` records."""

    def __init__(self, proxy, pm=None, *, container_limit: int = 1024,
                 conn_limit: int = 4096, bound_every: int = 128,
                 check_bad_csum: bool = True) -> None:
        self.proxy = proxy
        self.pm = pm
        self.container_limit = container_limit
        self.conn_limit = conn_limit
        self.bound_every = bound_every
        self.check_bad_csum = check_bad_csum
        self.calls = 0
        self.local_mss = 0
        self.violations: list[Violation] = []
        self.forged: list[bytes] = []  # forged packets of the last call
        self.events: list = []
        self._anchor = bool(getattr(getattr(proxy, "config", None), "anchor", False))

    # ---------------------------------------------------------------- helpers
    def _v(self, invariant: str, key: str, message: str) -> None:
        self.violations.append(Violation(invariant, key, message))

    def _lookup(self, key: tuple) -> tuple[str, bool] | None:
        """(state name, is the connection's own 4-tuple) of the connection a packet with
        4-tuple ``key`` (outbound orientation) belongs to, or None."""
        conns = getattr(self.proxy, "conns", None)
        if isinstance(conns, dict):
            e = conns.get(key)
            if e is None:
                return None
            conn = e[0]
            return conn.state.name, conn.key == key
        for conn in self.proxy.connections.values():
            if conn.key == key:
                return conn.state.name, True
            if any(sf.key == key for sf in conn.subflows):
                return conn.state.name, False
        return None

    def _where(self, lo, data: bytes, direction: str = "in") -> str:
        """" on CONNSTATE/SUBFLOWSTATE" for a segment of a known subflow."""
        if lo is None or lo.th < 0:
            return ""
        th = lo.th
        sport, dport = (data[th] << 8) | data[th + 1], (data[th + 2] << 8) | data[th + 3]
        key = (lo.dst, dport, lo.src, sport) if direction == "in" else \
            (lo.src, sport, lo.dst, dport)
        conns = getattr(self.proxy, "conns", None)
        e = conns.get(key) if isinstance(conns, dict) else None
        if e is None:
            return " on no connection"
        conn, sf = e[0], e[1]
        st = getattr(getattr(sf, "state", None), "name", "?")
        role = "initial subflow" if sf is getattr(conn, "sf0", None) else "join"
        return f" on {conn.state.name}/{role} {st}"

    def _known_tuples(self) -> set:
        t = set()
        for conn in self.proxy.connections.values():
            la, lp, ra, rp = conn.key
            t.add((ra, rp, la, lp))
            for sf in conn.subflows:
                t.add(sf.key)
        return t

    def _exception(self, where: str, exc: BaseException) -> None:
        self._v("exception", f"{type(exc).__name__} in {_core_frame(exc.__traceback__)}",
                f"{where}: {type(exc).__name__}: {exc}\n"
                + "".join(traceback.format_exception(exc)[-6:]))

    def _pull(self, answered: tuple | None = None) -> None:
        """Take the forged packets and events (as the driver does) and check them.
        ``answered``: the 4-tuple of the packet just fed; a packet on it or its reverse
        answers that packet (an RST as a closed port sends, a probe of the local socket)
        and needs no connection."""
        try:
            out = self.proxy.packets_to_send()
            self.events = list(self.proxy.events())
        except Exception as exc:  # noqa: BLE001 - the invariant is "nothing raises"
            self._exception("packets_to_send/events", exc)
            self.forged = []
            return
        self.forged = [bytes(p) for p in out]
        if not out:
            return
        known = self._known_tuples()
        for p in out:
            if not isinstance(p, (bytes, bytearray)):
                self._v("forged_malformed", "not bytes", f"forged {type(p).__name__}")
                continue
            if _is_icmp(p):  # an unreachable for the TCP side (TCP freeze, RFC 6069)
                t, bad = wire.decode_unreachable(p)
                for b in bad:
                    self._v("forged_malformed", _norm(b), f"{b}: {wire.hexdump(p)}")
                if t is not None and t not in known:
                    self._v("forged_unknown_tuple", "forged ICMP",
                            f"an ICMP unreachable for {t}")
                continue
            seg, bad = wire.decode(p)
            for b in bad:
                self._v("forged_malformed", _norm(b), f"{b}: {wire.hexdump(p)}")
            if seg is None:
                continue
            if seg.tuple not in known:
                t = seg.tuple
                answer = answered is not None and (
                    t == answered or t == (answered[2], answered[3], answered[0], answered[1]))
                if not answer:
                    self._v("forged_unknown_tuple", "forged", f"forged packet for {t}")
            lim = self.local_mss or 1460
            if seg.plen > lim:
                self._v("forged_oversize", "payload above the local MSS",
                        f"forged {seg.plen} payload bytes (local MSS {lim}), "
                        f"IP length {len(p)}")

    def _check_bounds(self) -> None:
        n = len(self.proxy.connections)
        if n > self.conn_limit:
            self._v("unbounded_state", "Proxy.connections", f"{n} connections")
        for name, size in snap.containers(self.proxy, self.container_limit):
            if size > CAPPED.get(name, 0):
                self._v("unbounded_state", name, f"{name} holds {size} entries")
        self._check_limits()

    def _check_limits(self) -> None:
        """The configured limits hold: connections (``max_connections``), half-open ones
        (``max_syn_sent``: SYN_SENT in the client role, SYN_RCVD in the server role, and
        the proxy's count of them equals what is there: a count that drifts up would
        refuse every new connection one day), live subflows per connection
        (``PmConfig.max_subflows``: the peer's joins included)."""
        cfg = getattr(self.proxy, "config", None)
        conns = list(self.proxy.connections.values())
        half = sum(1 for c in conns if c.state.name in ("SYN_SENT", "SYN_RCVD"))
        limit = getattr(cfg, "max_connections", 0)
        if limit and len(conns) > limit:
            self._v("unbounded_state", "connections over max_connections",
                    f"{len(conns)} connections, max_connections {limit}")
        limit = getattr(cfg, "max_syn_sent", 0)
        if limit and half > limit:
            self._v("unbounded_state", "half-open connections over max_syn_sent",
                    f"{half} half-open connections, max_syn_sent {limit}")
        count = getattr(self.proxy, "syn_sent", None)
        if count is not None and count != half:
            self._v("unbounded_state", "half-open count differs from the connections",
                    f"Proxy.syn_sent {count}, {half} connections half open")
        pmc = getattr(getattr(self.proxy, "pm", None), "config", None)
        limit = getattr(pmc, "max_subflows", 0)
        for c in conns:
            live = sum(1 for sf in c.subflows if not getattr(sf, "gone", False))
            if limit and live > limit:
                self._v("unbounded_state", "live subflows over max_subflows",
                        f"connection {c.id}: {live} live subflows, max_subflows {limit}")

    # ------------------------------------------------------------------ inputs
    def packet(self, direction: str, data: bytes, now: float, csum: int | None = None):
        """Feed one packet (``direction`` "out" or "in") in checksum state ``csum`` (by
        default the core's own default for that direction); returns the verdict, or the
        string "raised" if the core raised."""
        if csum is None:
            csum = IN_CSUM_DEFAULT if direction == "in" else OUT_CSUM_DEFAULT
        self.calls += 1
        data = bytes(data)
        buf = bytearray(data)
        lo = wire.layout(data)
        tcp_ok = ip_ok = True
        if lo is not None and lo.th >= 0 and csum in FULL_CSUM:
            ip_ok = lo.v6 or wire.ipv4_hdr_ok(data)
            tcp_ok = (not lo.frag and lo.end - lo.th >= 20
                      and wire.tcp_csum_ok(lo.src, lo.dst, data[lo.th:lo.end]))
        if direction == "out" and lo is not None and lo.th >= 0 and data[lo.th + 13] & 0x02:
            # the TCP side's SYN (client role) or SYN/ACK (server role): its MSS is what
            # its link carries
            self._note_local_syn(data, lo.th, lo.end)
        # received over a link: the network's segments, and on an anchor also the
        # servers' (its TCP side is across a link too; the queue may not have verified
        # their checksums either)
        received = direction == "in" or self._anchor
        bad_in = (received and self.check_bad_csum and csum in FULL_CSUM
                  and lo is not None and lo.th >= 0 and not tcp_ok)
        if bad_in and CSUM_UNVERIFIED is not None:
            csum = CSUM_UNVERIFIED  # (a corrupt segment cannot come marked as verified)
        before = snap.snapshot(self.proxy) if bad_in else None
        where = self._where(lo, data, direction) if bad_in else ""
        if bad_in and direction == "out":
            where = " from the TCP side" + where
        try:
            if direction == "out":
                v = verdict_of(self.proxy.outbound(buf, now, csum), buf)
            else:
                v = verdict_of(self.proxy.inbound(buf, now, csum), buf)
        except Exception as exc:  # noqa: BLE001
            self._exception(f"{direction}bound", exc)
            self._pull()
            return "raised"
        self._check_verdict(direction, data, buf, v, csum, tcp_ok, ip_ok)
        self._passthrough(direction, data, lo, v)
        self._pull(wire.four_tuple(data))
        if bad_in:
            after = snap.snapshot(self.proxy)
            if after != before:
                d = snap.diff(before, after)
                changed = {c for _p, c in d}
                cat = _category(changed)
                key = cat if cat == "liveness only" else \
                    f"{cat} <- {_seg_kind(data, False)}{where}"
                self._v("bad_csum_state_change", key,
                        f"state changed by a segment with a bad TCP checksum "
                        f"({_seg_kind(data)}): " + "; ".join(p for p, _c in d[:8]))
            if self.forged or self.events:
                kinds = sorted({str(getattr(getattr(e, "kind", "?"), "name", "?"))
                                for e in self.events})
                top = next((k for k in ("CLOSED", "FALLBACK", "SF_CLOSED", "ESTABLISHED",
                                        "SF_ESTABLISHED", "HANDOVER") if k in kinds), None)
                what = ("forged packets" if self.forged else "") + \
                    (f" event {top or kinds[0]}" if kinds else "")
                self._v("bad_csum_output",
                        f"{what.strip()} <- {_seg_kind(data, False)}{where}",
                        f"{len(self.forged)} packets forged, events {kinds}, on a segment "
                        f"with a bad TCP checksum ({_seg_kind(data)})")
        if self.calls % self.bound_every == 0:
            self._check_bounds()
        return v

    def timer(self, now: float) -> None:
        self.calls += 1
        try:
            self.proxy.handle_timer(now)
            t = self.proxy.get_timer()
        except Exception as exc:  # noqa: BLE001
            self._exception("handle_timer", exc)
            self._pull()
            return
        if t is not None and t <= now:
            self._v("timer_stuck", "get_timer() <= now after handle_timer(now)",
                    f"get_timer() = {t} after handle_timer({now})")
        self._pull()

    def due_timers(self, until: float) -> None:
        """Fire every timer due up to ``until``, as the driver's loop would."""
        for _ in range(64):
            try:
                t = self.proxy.get_timer()
            except Exception as exc:  # noqa: BLE001
                self._exception("get_timer", exc)
                return
            if t is None or t > until:
                return
            self.timer(t)

    def command(self, fn, *args) -> None:
        """A path-manager or proxy command (link_down, handover, ...)."""
        self.calls += 1
        try:
            fn(*args)
        except ValueError:
            pass  # documented refusals (e.g. removing the only usable subflow)
        except Exception as exc:  # noqa: BLE001
            self._exception(getattr(fn, "__name__", "command"), exc)
        self._pull()

    def finish(self, min_calls: int = 0) -> None:
        """End of a run: the bounded-state check (if at least ``min_calls`` calls)."""
        if self.calls >= min_calls:
            self._check_bounds()

    # ------------------------------------------------------------------ checks
    def _note_local_syn(self, data: bytes, th: int, end: int) -> None:
        i, e = th + 20, min(th + (data[th + 12] >> 4) * 4, end)
        while i + 1 < e:
            k = data[i]
            if k == 0:
                break
            if k == 1:
                i += 1
                continue
            n = data[i + 1]
            if n < 2:
                break
            if k == 2 and n == 4 and i + 4 <= e:
                mss = (data[i + 2] << 8) | data[i + 3]
                if mss > 9000:  # a loopback-sized MSS: believed up to a jumbo frame only
                    mss = JUMBO_PAYLOAD
                if mss >= 536:
                    self.local_mss = max(self.local_mss, mss)
            i += n

    def _check_verdict(self, direction, data, buf, v, csum, tcp_ok, ip_ok) -> None:
        if v is None:
            if bytes(buf) != data:
                trimmed = len(buf) < len(data) and bytes(buf) == data[:len(buf)]
                if not trimmed:
                    self._v("accept_modified", direction,
                            f"ACCEPT but the buffer changed ({len(data)} -> {len(buf)} "
                            "bytes): the driver passes the original packet")
            return
        if v is False:
            return
        if not isinstance(v, bytearray):
            self._v("verdict_type", type(v).__name__, f"verdict {v!r:.80}")
            return
        gso = csum == CSUM_GSO
        seg, bad = wire.decode(v, require_ip_csum=ip_ok,
                               require_tcp_csum=tcp_ok and not gso)
        if bad:
            # a defect already in the input (an option the local stack or the peer sent)
            # that the proxy only carried over is told apart from one the proxy made
            _s, had = wire.decode(data, require_ip_csum=False, require_tcp_csum=False)
            had = {_norm(x) for x in had}
        for b in bad:
            inv = "input_defect_carried" if _norm(b) in had else "verdict_malformed"
            self._v(inv, f"{direction}: {_norm(b)}",
                    f"{b} (csum state {csum}): {wire.hexdump(v)}")
        if direction == "in" and seg is not None:
            # an anchor leaves MP_CAPABLE in the peer's SYN: the server may speak MPTCP
            # itself (then the anchor steps aside); nothing else but a DSS reaches it
            mpc_ok = self._anchor and seg.flags & 0x12 == 0x02
            leaked = sorted({o[2] >> 4 for o in seg.mptcp() if len(o) > 2 and o[2] >> 4 != 2
                             and not (mpc_ok and o[2] >> 4 == 0 and len(o) == 4)})
            if leaked:
                self._v("verdict_malformed", "in: MPTCP option other than DSS to the local stack",
                        f"subtypes {leaked} in a rewritten segment: {wire.hexdump(v)}")
        if (direction == "in" or self._anchor) and not tcp_ok and csum in FULL_CSUM \
                and seg is not None:
            if wire.tcp_csum_ok(seg.src, seg.dst, bytes(v[seg.th:])):
                self._v("csum_laundered", direction,
                        "a segment with a bad TCP checksum was rewritten with a valid one")

    def _passthrough(self, direction, data, lo, v) -> None:
        if v is not None or lo is None or lo.th < 0:
            return
        th = lo.th
        sport, dport = (data[th] << 8) | data[th + 1], (data[th + 2] << 8) | data[th + 3]
        if direction == "out":
            key = (lo.src, sport, lo.dst, dport)
        else:
            key = (lo.dst, dport, lo.src, sport)
        st = self._lookup(key)
        if st is None or st[0] != ESTABLISHED:
            return
        if lo.frag or lo.ext or lo.jumbo:
            kind = "IPv4 fragment" if lo.frag and not lo.v6 else \
                "IPv6 fragment header" if lo.frag else \
                "IPv6 extension header" if lo.ext else "IP length 0 (BIG TCP)"
            if parse_packet(bytearray(data)) is None:
                self._v("unconverted_passthrough", f"{direction}: {kind}",
                        f"{kind} of an MPTCP connection passed unconverted")
        elif direction == "out" and st[1] and parse_packet(bytearray(data)) is not None:
            self._v("unconverted_passthrough", "out: accepted on an MPTCP connection",
                    "a local segment of an established MPTCP connection was accepted "
                    f"unchanged: {wire.hexdump(data, 80)}")
