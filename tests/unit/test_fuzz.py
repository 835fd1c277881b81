"""The fuzzer of tests/fuzz/ in the unit suite: its instruments are checked (replays are
exact, every invariant catches a planted defect), then a bounded run of about 30,000
packets through the core checks every invariant (``tools/fuzz`` runs millions).

Any violation of any invariant fails the suite.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lockstep.pair import ProxyPair
from lockstep.wire import dss_opt

from mptcp_proxy.core.tcp import CSUM_OK
from tests.fuzz import craft, engine, snapshot, traces, wire
from tests.fuzz.build import make_proxy
from tests.fuzz.invariants import ESTABLISHED, JUMBO_PAYLOAD, Checker

PACKETS = 30_000
SEED = 20261207


# ---------------------------------------------------------------- the instruments
@pytest.mark.parametrize("name", sorted(traces.SCENARIOS))
def test_recorded_trace_replays_exactly(name):
    """A trace recorded from the models replays bit for bit into a proxy built by
    build.make_proxy: same verdicts, same forged packets (so the fuzzer's branches
    start from real states), and without any violation."""
    tr = traces.record(name, 2)
    assert tr.packets() > 20
    proxy, pm = make_proxy(tr.setup)
    chk = Checker(proxy, pm, bound_every=1)
    forged = []
    for i, op in enumerate(tr.ops):
        if op[0] in ("out", "in"):
            v = chk.packet(op[0], op[2], op[1], op[3])
            assert traces.digest_verdict(v) == tr.digests[i], f"op {i} diverged"
        elif op[0] == "timer":
            chk.timer(op[1])
        else:
            chk.command(traces.apply_pm_op, proxy, pm, op[2], op[1], op[3])
        forged += [traces.digest_packet(p) for p in chk.forged]
    chk.finish()
    assert forged == tr.forged
    assert not chk.violations, [v.cls for v in chk.violations]


def _established_checker():
    tr = traces.record("pair_basic", 3)
    proxy, pm = make_proxy(tr.setup)
    chk = Checker(proxy, pm)
    for op in tr.ops[:30]:
        if op[0] in ("out", "in"):
            chk.packet(op[0], op[2], op[1], op[3])
    assert not chk.violations
    nxt = next(op for op in tr.ops[30:] if op[0] == "in" and len(op[2]) > 100)
    return proxy, chk, nxt


def _plant(proxy, which: str) -> None:
    """Make ``proxy.inbound`` misbehave the way ``which`` says."""
    real = proxy.inbound

    def inbound(buf, now, csum=0):
        if which == "raises":
            raise KeyError("planted")
        if which == "accept_but_modified":
            buf[-1] ^= 1
            return None
        if which == "bad_verdict_type":
            return b"bytes, not a bytearray"
        v = real(buf, now, csum)
        if which == "malformed_verdict":
            out = bytearray(buf)
            out[2:4] = struct.pack("!H", len(out) + 4)  # IP length != packet size
            return out
        if which == "state_change":  # (any public integer of the connection)
            conn = next(iter(proxy.connections.values()))
            name = next(n for n, x in snapshot.public_attributes(conn).items()
                        if type(x) is int and n != "id")
            setattr(conn, name, getattr(conn, name) + 1)
        if which == "forged_output":
            proxy.send(bytearray(b"\x45" + bytes(39)))
        return v

    proxy.inbound = inbound


@pytest.mark.parametrize("which,invariant", [
    ("raises", "exception"), ("accept_but_modified", "accept_modified"),
    ("bad_verdict_type", "verdict_type"), ("malformed_verdict", "verdict_malformed"),
    ("state_change", "bad_csum_state_change"), ("forged_output", "forged_malformed")])
def test_checker_catches_a_planted_defect(which, invariant):
    """Each invariant can fail: a proxy made to misbehave is caught (a bad-checksum
    copy is fed for the state-change case, a valid segment otherwise)."""
    proxy, chk, op = _established_checker()
    _plant(proxy, which)
    data = op[2]
    if which == "state_change":
        b = bytearray(data)
        b[-1] ^= 0x10
        data = bytes(b)
    chk.packet("in", data, op[1], op[3])
    assert invariant in {v.invariant for v in chk.violations}, chk.violations


@pytest.mark.parametrize("extra,caught", [(0, False), (1, True)])
def test_forged_size_limit_counts_a_loopback_mss_as_a_jumbo_frame(extra, caught):
    """A served TCP side that announces an MSS of 65,535 (a loopback's size; here the
    SYN/ACK of ``srv_basic`` made to say so): forged segments of a jumbo frame's payload
    (8,900 bytes) toward the peer are within the limit, one byte more is
    ``forged_oversize``."""
    tr = traces.record("srv_basic", 1)
    proxy, pm = make_proxy(tr.setup)
    chk = Checker(proxy, pm)
    for op in tr.ops:
        if op[0] not in ("out", "in"):
            continue
        data = op[2]
        if op[0] == "out" and craft.tcp_flags(data) & (wire.SYN | wire.ACK) == wire.SYN | wire.ACK:
            _lo, th, hl = craft.offsets(data)
            opts = bytes(data[th + 20:th + hl])
            assert opts.startswith(b"\x02\x04")  # the MSS option comes first
            data = bytes(craft.rebuild(data, opts=b"\x02\x04\xff\xff" + opts[4:]))
        chk.packet(op[0], data, op[1], op[3])
        now = op[1]
        conn = next((c for c in proxy.connections.values()
                     if c.state.name == ESTABLISHED), None)
        if conn is not None:
            break
    assert conn is not None and not chk.violations
    src, sport, dst, dport = conn.subflows[0].key  # on the subflow, toward the peer
    seg = wire.build(src, dst, sport, dport, 1, 1, wire.ACK,
                     payload=bytes(JUMBO_PAYLOAD + extra))
    proxy.send(seg)
    chk.timer(now)
    assert ("forged_oversize" in {v.invariant for v in chk.violations}) is caught, \
        chk.violations


def test_snapshot_sees_every_public_change_and_nothing_else():
    """The state snapshot: equal for an untouched proxy, and a change of one public
    attribute of one subflow is reported as that attribute, by name."""
    proxy, _chk, _op = _established_checker()
    a = snapshot.snapshot(proxy)
    assert snapshot.diff(a, snapshot.snapshot(proxy)) == []
    conn = next(iter(proxy.connections.values()))
    conn.subflows[0].rcv_high += 5
    d = snapshot.diff(a, snapshot.snapshot(proxy))
    assert [c for _p, c in d] == ["Subflow.rcv_high"], d


def test_fork_is_independent_and_identical():
    """A branch's copy of a live proxy behaves exactly like the original and shares no
    mutable state with it (random source and port allocator included)."""
    from tests.fuzz.fork import fork
    tr = traces.record("mp_backup", 1)
    proxy, pm = make_proxy(tr.setup)
    a = Checker(proxy, pm)
    half = len(tr.ops) // 2
    for op in tr.ops[:half]:
        if op[0] in ("out", "in"):
            a.packet(op[0], op[2], op[1], op[3])
        elif op[0] == "timer":
            a.timer(op[1])
        else:
            a.command(traces.apply_pm_op, proxy, pm, op[2], op[1], op[3])
    cproxy, cpm = fork((proxy, pm))
    assert cproxy.pm is cpm and cproxy is not proxy
    assert cproxy.random_bytes is not proxy.random_bytes
    assert next(iter(cproxy.connections.values())).proxy is cproxy
    b = Checker(cproxy, cpm)
    for op in tr.ops[half:]:
        if op[0] in ("out", "in"):
            va = a.packet(op[0], op[2], op[1], op[3])
            vb = b.packet(op[0], op[2], op[1], op[3])
            assert traces.digest_verdict(va) == traces.digest_verdict(vb)
        elif op[0] == "timer":
            a.timer(op[1])
            b.timer(op[1])
        else:
            a.command(traces.apply_pm_op, proxy, pm, op[2], op[1], op[3])
            b.command(traces.apply_pm_op, cproxy, cpm, op[2], op[1], op[3])
    assert cproxy.random_bytes(8) == proxy.random_bytes(8)


# --------------------------------------------------------------- the bounded run
@pytest.fixture(scope="module")
def bounded_run():
    st_ = engine.run_jobs(PACKETS, SEED, 1, seeds=(1,), deadline=None)
    return st_


def test_bounded_run_is_clean(bounded_run):
    """About 30,000 packets (recorded traces of every scenario, each at least once: client
    and server roles, anchor, the peer's joins, proxy<->proxy; mutated and crafted
    packets, floods) through the core: every invariant of tests/fuzz/invariants.py is
    checked after every packet, and none is violated -- no exception, no malformed
    forged packet, no laundered checksum, no stuck timer, no forged packet to an unknown
    4-tuple or above the link's size, no unbounded state, exact replays."""
    st_ = bounded_run
    assert st_.packets >= PACKETS and st_.mutants > PACKETS // 10
    # every scenario had an episode: the client role, the server role (--serve), the
    # anchor, the peer's joins and proxy<->proxy (tests/fuzz/traces_server.py)
    assert set(st_.scenarios) == set(traces.SCENARIOS), set(traces.SCENARIOS) - set(st_.scenarios)
    assert {"srv_joins", "anchor_announce", "pp_server", "cli_peer_join"} <= set(st_.scenarios)
    first = {cls: rep["message"].splitlines()[0] for cls, rep in st_.first.items()}
    assert not st_.counts, (dict(st_.counts.most_common(10)), first)


# -------------------------------------------------------------- hypothesis, crafted
_SUBTYPE_LENGTHS = {0: (4, 12, 20, 22, 24), 1: (12, 16, 24), 2: (4, 8, 12, 14, 18, 20, 22, 24,
                    26, 28), 3: (8, 10, 16, 18, 20, 22, 28, 30), 4: (4, 5, 11), 5: (3, 4),
                    6: (12,), 7: (12,), 8: (4,)}


@st.composite
def mptcp_option(draw):
    """Any MPTCP option shape: every subtype at its valid lengths (random content), a
    random subtype and length, or truncated."""
    kind = draw(st.sampled_from(["valid", "valid", "random"]))
    if kind == "valid":
        sub = draw(st.sampled_from(sorted(_SUBTYPE_LENGTHS)))
        n = draw(st.sampled_from(_SUBTYPE_LENGTHS[sub]))
    else:
        sub = draw(st.integers(0, 15))
        n = draw(st.integers(3, 36))
    body = draw(st.binary(min_size=n - 3, max_size=n - 3))
    return bytes((30, n, (sub << 4) | draw(st.integers(0, 15)))) + body


def _ready_pair(seed: int) -> ProxyPair:
    pair = ProxyPair(seed=seed)
    pair.handshake()
    pair.transfer(b"a" * 2000, b"b" * 2000)
    return pair


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opts=st.lists(mptcp_option(), min_size=1, max_size=3),
       flags=st.sampled_from([0x10, 0x18, 0x11, 0x14, 0x04, 0x12]),
       plen=st.sampled_from([0, 1, 700, 1400]), seq_off=st.sampled_from([0, 1, -1, 1400,
                                                                          70000]))
def test_crafted_mptcp_options_on_a_valid_segment_break_no_invariant(opts, flags, plen,
                                                                      seq_off):
    """A segment of the peer's 4-tuple with valid checksums and any MPTCP options (all
    subtypes, valid and invalid shapes): nothing raises, the verdict is well-formed and
    anything forged is well-formed (hypothesis explores the shapes)."""
    pair = _ready_pair(1)
    block = b""
    for o in opts:
        if len(block) + len(o) + 3 > 28:  # (the peer adds 12 bytes of timestamps)
            break
        block += b"\x01" * (-len(o) % 4) + o
    p = pair.peer
    pkt = p._build(flags & ~0x10, p.snd_nxt + seq_off, block, random.Random(plen).randbytes(plen),
                   sack=False)
    chk = Checker(pair.proxy, None)
    chk.packet("in", pkt, pair.now, CSUM_OK)
    bad = [v for v in chk.violations if v.invariant in
           ("exception", "verdict_type", "verdict_malformed", "forged_malformed",
            "accept_modified", "csum_laundered", "forged_unknown_tuple")]
    assert not bad, [(v.cls, v.message[:300]) for v in bad]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, 10 ** 6), bit=st.integers(0, 7),
       what=st.sampled_from(["data", "ack", "dss_csum", "dll0"]))
def test_a_corrupted_copy_of_a_peer_segment_changes_nothing(pos, bit, what):
    """RFC 1122 §4.2.2.7: the receiver MUST check the TCP checksum; a failing segment is
    discarded. A copy of a peer
    segment (data, pure ACK, one with a DSS checksum, one with DLL 0) with one bit
    flipped anywhere in the TCP segment leaves every public attribute of the proxy's
    state as it was, and the proxy sends nothing for it."""
    pair = _ready_pair(2)
    p = pair.peer
    dack = (p.remote_idsn + 1 + p.data_ack_value()) & ((1 << 64) - 1)
    dsn = (p.idsn + 1 + p.d_nxt) & ((1 << 64) - 1)
    if what == "data":
        p.write(b"c" * 1400)
        pkt = p.push()[0]
    elif what == "ack":
        pkt = p.ack_pkt()
    else:
        mp = dss_opt(data_ack=dack, dsn=dsn, ssn=p.s_alloc + 1, dll=0 if what == "dll0" else 500,
                     csum=0x4321 if what == "dss_csum" else None)
        pkt = p._build(0x08, p.snd_nxt, mp, b"d" * 500, sack=False)
    lo = wire.layout(pkt)
    b = bytearray(pkt)
    b[lo.th + pos % (len(b) - lo.th)] ^= 1 << bit
    if wire.csum_valid(b):
        return  # (a flip that cancels out in the sum: not a corrupted segment)
    chk = Checker(pair.proxy, None)
    chk.packet("in", bytes(b), pair.now, CSUM_OK)
    bad = [v for v in chk.violations if v.invariant.startswith("bad_csum")]
    assert not bad, [v.message[:200] for v in bad]

