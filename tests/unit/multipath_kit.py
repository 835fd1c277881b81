"""Helpers of the multipath tests (tests/unit/test_mp_*.py), which run multipath end to end:
joins, handovers, break before make, multipath reception, peer-driven signalling, random
schedules and table bounds, on the fake network of tests/unit/mpnet/ (a real-ish local TCP
stack, a Linux-like native MPTCP peer with several subflows, two lossy/reordering paths, a
fake clock).

Every test checks the byte streams both ways (each byte is compared with the sender's stream
on arrival; completion means everything arrived) and ``net.assert_clean()``: no violation
recorded by the local stack, the peer, or the cross-party oracles (ACK/SACK shown to the
local stack only for data the peer has; subflow ACK/SACK only for subflow bytes that reached
the proxy and whose data the local stack holds; DATA_ACK only for data the local stack has;
no data on a join before the fourth ACK reached the proxy).

Defects these tests found are kept as regression tests (test_mp_regressions.py); every test
checks every invariant."""

from __future__ import annotations

import random
from bisect import bisect_right

from lockstep.decode import parse_seg
from lockstep.wire import sdiff
from mpnet.network import MpNet

from mptcp_proxy.core.subflow import SubflowState

M64 = (1 << 64) - 1
SYN_FLAG = 0x02



def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def started(seed: int = 1, *, subflows: str = "backup", join: bool = True, **kw) -> MpNet:
    """Connected, the app already talking (so the first segment the local stack sees
    after the SYN/ACK comes from the initial subflow, as with any request/response
    app), and with ``join`` the policy's subflows up."""
    net = MpNet(seed, subflows=subflows, **kw)
    net.connect()
    net.local.write(blob(3000, seed + 1000))
    net.run(net.now + 0.01)
    if join and subflows != "manual":
        net.wait_subflows(2)
    return net


def proxy_sf(net: MpNet, client_tuple):
    e = net.proxy.conns.get(client_tuple)
    return None if e is None else e[1]


def mptcp_opts(seg, subtype: int) -> list[bytes]:
    return [o for k, o in seg.opts if k == 30 and len(o) > 2 and o[2] >> 4 == subtype]


class ProxyTx:
    """Tap on the proxy's data segments to the peer. For each it knows the subflow
    (client 4-tuple), relative subflow seq ``s`` and relative DSN ``d``; it checks
    paper §3.3 (a retransmission goes where the original went, with the same
    DSN→SSN offset, while that subflow lives and has not acknowledged the original
    subflow bytes) and records per subflow whether the
    mapping became non-monotonic."""

    def __init__(self, net: MpNet) -> None:
        self.net = net
        self.segs: list[tuple[float, tuple, int, int, int]] = []  # (t, tuple, s, d, n)
        self.first_lo: list[int] = []  # first transmissions: sorted starts
        self.first: list[tuple[int, int, tuple, int]] = []  # (lo, hi, tuple, s - d)
        self.errors: list[str] = []
        self.nonmono: set[tuple] = set()
        self.last_by_tuple: dict[tuple, tuple[int, int]] = {}
        self.probes = 0
        net.taps.append(self)

    def __call__(self, hop: str, p: bytes, now: float) -> None:
        if hop != "to_peer":
            return
        ihl = (p[0] & 15) * 4
        if len(p) - ihl - (p[ihl + 12] >> 4) * 4 <= 0:
            return
        s = parse_seg(p)
        tup = (s.src, s.sport, s.dst, s.dport)
        sub = self.net.peer.by_tuple.get((s.dst, s.dport, s.src, s.sport))
        if sub is None:
            return
        srel = sdiff(s.seq, sub.irs + 1)
        if s.plen == 1 and s.mpc is None and (s.dss is None or s.dss.dsn is None) \
                and srel < sub.rcv_nxt:
            self.probes += 1  # a liveness probe: one byte of old data, no mapping
            return
        idsn = self.net.peer.remote_idsn
        if s.dss is not None and s.dss.dsn is not None:
            mdsn = (s.dss.dsn - idsn - 1) & M64
            d = mdsn + srel - (s.dss.ssn - 1)
        elif s.mpc is not None:
            d = srel  # MP_CAPABLE with data: DSN 0 at SSN 1
        else:
            self.errors.append(f"t={now:.4f}: data without a mapping {s!r}")
            return
        n = s.plen
        self.segs.append((now, tup, srel, d, n))
        last = self.last_by_tuple.get(tup)
        if last is not None and srel > last[0] and d < last[1]:
            self.nonmono.add(tup)
        if last is None or srel > last[0]:
            self.last_by_tuple[tup] = (srel, d)
        # paper §3.3: compare with the first transmission of these bytes
        cur = d
        end = d + n
        i = max(0, bisect_right(self.first_lo, d) - 1)
        while i < len(self.first) and cur < end:
            lo, hi, t0, off0 = self.first[i]
            if hi <= cur:
                i += 1
                continue
            if lo >= end:
                break
            sf0 = proxy_sf(self.net, t0)
            if sf0 is not None and sf0.state == SubflowState.ESTABLISHED:
                # (bytes the peer acknowledged at the subflow level but not at the data
                # level go as new subflow data: at their old place it would drop them)
                acked = sf0.snd_una >= min(hi, end) + off0
                if (t0 != tup or off0 != srel - d) and not acked:
                    self.errors.append(
                        f"t={now:.4f}: data [{max(lo, cur)},{min(hi, end)}) first sent on "
                        f"{t0[1]} (offset {off0}) retransmitted on {tup[1]} (offset "
                        f"{srel - d}) while the first subflow is alive")
            cur = max(cur, hi)
            i += 1
        top = self.first[-1][1] if self.first else 0
        if end > top:
            lo = max(d, top)
            self.first_lo.append(lo)
            self.first.append((lo, end, tup, srel - d))

    def new_data_tuples(self, t0: float, d_from: int) -> set:
        return {tup for t, tup, s, d, n in self.segs if t >= t0 and d >= d_from}

    def resent_on(self, tup, t0: float, d_below: int) -> int:
        """Segments sent on ``tup`` from ``t0`` on that carry data below ``d_below``."""
        return sum(1 for t, t2, s, d, n in self.segs if t2 == tup and t >= t0 and d < d_below)


class SackRecency:
    """RFC 2018 §4 on the SACK option the proxy builds for the local stack: the first
    block must be the one holding the data the peer reported most recently (the
    peer's first SACK block, projected into the data space), so that when not all
    blocks fit, the newest information is the one kept."""

    def __init__(self, net: MpNet, tx: ProxyTx) -> None:
        self.net = net
        self.tx = tx
        self.pending: list[tuple[int, int]] | None = None
        self.errors: list[str] = []
        self.checked = 0
        net.taps.append(self)

    def _dsn_ranges(self, tup, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        for _t, t2, s0, d0, n in self.tx.segs:
            if t2 == tup and s0 < b and s0 + n > a:
                lo, hi = max(a, s0), min(b, s0 + n)
                out.append((d0 + lo - s0, d0 + hi - s0))
        return out

    def __call__(self, hop: str, p: bytes, now: float) -> None:
        if hop == "in":
            self.pending = None
            s = parse_seg(p)
            if s.sack and not s.plen:
                sub = self.net.peer.by_tuple.get((s.src, s.sport, s.dst, s.dport))
                if sub is not None:
                    lo, hi = s.sack[0]
                    self.pending = self._dsn_ranges((s.dst, s.dport, s.src, s.sport),
                                                    sdiff(lo, sub.irs + 1),
                                                    sdiff(hi, sub.irs + 1))
        elif hop == "accepted_in" and self.pending:
            s = parse_seg(p)
            base = self.net.local.swire(0)
            una = sdiff(s.ack, base)
            want = [(max(lo, una), hi) for lo, hi in self.pending if hi > una]
            self.pending = None
            if not want:
                return
            self.checked += 1
            if not s.sack:
                self.errors.append(f"t={now:.4f}: the peer SACKed data {want} but the local "
                                   f"stack was shown no SACK block")
                return
            shown = [(sdiff(x, base), sdiff(y, base)) for x, y in s.sack]
            flo, fhi = shown[0]
            if not any(flo < hi and lo < fhi for lo, hi in want):
                self.errors.append(f"t={now:.4f}: the peer's newest SACK covers data {want}; "
                                   f"the local stack's first SACK block is not that one: "
                                   f"{shown}")
            missing = [(lo, hi) for lo, hi in want
                       if not any(a <= lo and hi <= b for a, b in shown)]
            if missing:
                self.errors.append(f"t={now:.4f}: the peer's newest SACK covers data {want}; "
                                   f"{missing} is missing from the blocks shown: {shown}")


ACTIONS = ("make0", "make1", "break0", "break1", "down0", "down1", "up0", "up1")


def _table_sizes(net: MpNet) -> dict[str, int]:
    c = net.conn
    return {"send_map": max(len(sf.send_map) for sf in c.subflows),
            "rcv_map": max(len(sf.rcv_map) for sf in c.subflows),
            "r_fwd": len(c.r_fwd)}


def _apply(net: MpNet, action: str) -> None:
    i = int(action[-1])
    if action.startswith("make"):
        net.handover(i)
    elif action.startswith("break"):
        net.handover(i, break_=True)
    elif action.startswith("down"):
        if not net.down[1 - i]:  # never both links down at once
            net.link_down(i)
    else:
        net.link_up(i)
