"""Tests for mptcp_proxy.core.mapping (MapTable), rangeset (merge_ranges, RangeSet) and the
table-driven helpers around it: scheduling.find_sent, projection.subflow_ack, seq.unwrap.

The reference model is a plain dict ``key -> value`` per byte. A MapTable's entries
are fully determined by it: the maximal runs of consecutive keys whose values are
also consecutive (``runs``). Paper §3.3–3.5 (Fig. 5), RFC 8684 §3.3.1.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mptcp_proxy.core.mapping import MapTable
from mptcp_proxy.core.projection import subflow_ack
from mptcp_proxy.core.rangeset import RangeSet, merge_ranges
from mptcp_proxy.core.scheduling import find_sent
from mptcp_proxy.core.seq import unwrap
from mptcp_proxy.core.subflow import Subflow

MASK32 = 0xFFFFFFFF


# --- Reference model --------------------------------------------------------------------------

def runs(model: dict[int, int]) -> list[list[int]]:
    """Maximal ``[key, value, length]`` runs, linear in both spaces, sorted by key."""
    out: list[list[int]] = []
    for k in sorted(model):
        v = model[k]
        if out and out[-1][0] + out[-1][2] == k and out[-1][1] + out[-1][2] == v:
            out[-1][2] += 1
        else:
            out.append([k, v, 1])
    return out


def expand(entries) -> dict[int, int]:
    """Per-byte map of ``(key, value, length)`` triples; a key must not repeat."""
    out: dict[int, int] = {}
    for a, b, n in entries:
        for i in range(n):
            assert a + i not in out, "two entries cover the same key"
            out[a + i] = b + i
    return out


def to_ranges(ints) -> list[tuple[int, int]]:
    """Sorted maximal half-open ranges covering exactly ``ints``."""
    out: list[tuple[int, int]] = []
    for x in sorted(set(ints)):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


def covered(ranges) -> set[int]:
    return {x for lo, hi in ranges for x in range(lo, hi)}


def conflicts(model: dict[int, int], a: int, b: int, n: int) -> bool:
    return any(k in model and model[k] != b + (k - a) for k in range(a, a + n))


keys = st.integers(0, 48)
vals = st.integers(0, 48)
lens = st.integers(-2, 10)
ranges = st.lists(st.tuples(st.integers(-4, 60), st.integers(-4, 60)), max_size=5)


# --- MapTable: hand-worked cases ----------------------------------------------------------------

class TestMapTableExamples:
    def test_contiguous_adds_merge(self):
        t = MapTable()
        assert t.add(0, 100, 10) and t.add(10, 110, 5) and t.add(12, 112, 10)
        assert t.entries == [[0, 100, 22]]

    def test_conflict_rejected_and_table_unchanged(self):
        t = MapTable()
        t.add(0, 100, 10)
        assert not t.add(5, 200, 3)  # bytes 5..7 already map to 105..107
        assert not t.add(9, 0, 1)
        assert t.entries == [[0, 100, 10]]
        assert t.add(5, 105, 3)  # the same mapping again is absorbed
        assert t.entries == [[0, 100, 10]]

    def test_handover_non_monotonic(self):
        # subflow bytes 0..9 -> data 0..9; 10..19 -> 30..39; 20..29 -> 10..19
        t = MapTable()
        assert t.add(0, 0, 10) and t.add(10, 30, 10) and t.add(20, 10, 10)
        assert t.entries == [[0, 0, 10], [10, 30, 10], [20, 10, 10]]  # touching, not merged
        assert t.lookup(25) == [20, 10, 10] and t.lookup(30) is None
        assert t.map_range(5, 20) == [(5, 5, 5), (10, 30, 10), (20, 10, 5)]
        assert t.project([(5, 25)]) == [(5, 15), (30, 40)]

    def test_insert_before_last_bridges_two_entries(self):
        t = MapTable()
        assert t.add(0, 50, 5) and t.add(10, 60, 5) and t.add(20, 0, 5)
        assert t.add(5, 55, 5)  # fills the gap with the same offset: one entry
        assert t.entries == [[0, 50, 15], [20, 0, 5]]

    def test_prunes(self):
        t = MapTable()
        t.add(0, 30, 10)
        t.add(10, 0, 10)
        t.add(20, 40, 10)
        t.prune_below_value(10)  # drops the entry with values 0..9 only
        assert t.entries == [[0, 30, 10], [20, 40, 10]]
        t.prune_below_key(25)  # keeps the entry that straddles 25 whole
        assert t.entries == [[20, 40, 10]]

    def test_prune_edges_are_half_open(self):
        t = MapTable()
        t.add(0, 30, 10)  # keys 0..9 -> values 30..39
        t.prune_below_key(9)
        t.prune_below_value(39)
        assert t.entries == [[0, 30, 10]]  # the last byte 9 -> 39 is still above
        t.prune_below_value(40)
        assert t.entries == []
        t.add(0, 30, 10)
        t.prune_below_key(10)
        assert t.entries == []

    def test_empty_add_is_a_no_op(self):
        t = MapTable()
        assert t.add(3, 4, 0) and t.add(3, 4, -1)
        assert t.entries == [] and len(t) == 0
        assert t.lookup(3) is None and t.map_range(0, 10) == [] and t.project([(0, 9)]) == []


# --- MapTable: stateful test against the per-byte model -----------------------------------------

class MapTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = MapTable()
        self.model: dict[int, int] = {}

    def _add(self, a: int, b: int, n: int) -> None:
        before = copy.deepcopy(self.table.entries)
        conflict = conflicts(self.model, a, b, n)
        assert self.table.add(a, b, n) is (not conflict)
        if conflict:
            assert self.table.entries == before
        else:
            for i in range(max(n, 0)):
                self.model[a + i] = b + i

    @rule(a=keys, off=st.integers(-4, 4), n=lens)
    def add_near_diagonal(self, a, off, n):
        """Small offsets: many same-offset overlaps and merges."""
        self._add(a, max(0, a + off), n)

    @rule(a=keys, b=vals, n=lens)
    def add_anywhere(self, a, b, n):
        self._add(a, b, n)

    @precondition(lambda self: self.table.entries)
    @rule(back=st.integers(0, 12), jump=st.integers(-3, 3), n=lens)
    def add_at_tail(self, back, jump, n):
        """Around the end of the last entry: the table's fast path."""
        la, lb, ln = self.table.entries[-1]
        a = max(0, la + ln - back)
        self._add(a, max(0, lb + (a - la) + jump), n)

    @rule(a=st.integers(-2, 60))
    def prune_below_key(self, a):
        self.table.prune_below_key(a)
        self.model = expand(r for r in runs(self.model) if r[0] + r[2] > a)

    @rule(b=st.integers(-2, 60))
    def prune_below_value(self, b):
        self.table.prune_below_value(b)
        self.model = expand(r for r in runs(self.model) if r[1] + r[2] > b)

    @precondition(lambda self: self.table.entries)
    @rule(data=st.data(), nudge=st.integers(-1, 1))
    def prune_at_an_edge(self, data, nudge):
        """Prune exactly at (or next to) an entry's start or end, key or value side."""
        ka, kb, kn = data.draw(st.sampled_from(self.table.entries))
        edge = data.draw(st.sampled_from([ka, ka + kn, kb, kb + kn])) + nudge
        if data.draw(st.booleans()):
            self.prune_below_key(edge)
        else:
            self.prune_below_value(edge)

    @precondition(lambda self: self.table.entries)
    @rule(data=st.data(), nudge=st.integers(-1, 1))
    def lookup_at_an_edge(self, data, nudge):
        ka, _kb, kn = data.draw(st.sampled_from(self.table.entries))
        self.lookup(data.draw(st.sampled_from([ka, ka + kn])) + nudge)

    @rule(k=st.integers(-2, 60))
    def lookup(self, k):
        e = self.table.lookup(k)
        if k not in self.model:
            assert e is None
        else:
            assert e is not None and e[0] <= k < e[0] + e[2]
            assert e[1] + (k - e[0]) == self.model[k]
            assert any(e is x for x in self.table.entries)

    @rule(a=st.integers(-2, 60), n=st.integers(-2, 30))
    def map_range(self, a, n):
        pieces = self.table.map_range(a, n)
        assert all(length > 0 for _k, _v, length in pieces)
        assert all(p[0] + p[2] <= q[0] for p, q in zip(pieces, pieces[1:]))
        assert expand(pieces) == {k: v for k, v in self.model.items() if a <= k < a + n}

    @rule(rs=ranges)
    def project(self, rs):
        want = to_ranges(self.model[k] for k in covered(rs) if k in self.model)
        assert self.table.project(rs) == want

    @invariant()
    def entries_equal_model(self):
        ents = self.table.entries
        assert all(n > 0 for _a, _b, n in ents)
        for (a1, b1, n1), (a2, b2, _n2) in zip(ents, ents[1:]):
            assert a1 + n1 <= a2  # sorted and disjoint
            assert not (a1 + n1 == a2 and b1 - a1 == b2 - a2)  # touching ones are merged
        assert expand(ents) == self.model
        assert ents == runs(self.model)
        assert len(self.table) == len(ents)


TestMapTableStateful = MapTableMachine.TestCase
TestMapTableStateful.settings = settings(max_examples=120, stateful_step_count=30,
                                         deadline=None)


# --- merge_ranges / RangeSet --------------------------------------------------------------

nonempty_ranges = st.lists(st.tuples(st.integers(-10, 60), st.integers(1, 12)).map(
    lambda t: (t[0], t[0] + t[1])), max_size=8)


class TestMergeRanges:
    @given(nonempty_ranges)
    def test_equals_union(self, rs):
        before = list(rs)
        assert merge_ranges(rs) == to_ranges(covered(rs))
        assert rs == before  # input untouched

    def test_adjacent_and_overlapping(self):
        assert merge_ranges([(5, 8), (0, 2), (2, 4), (7, 10)]) == [(0, 4), (5, 10)]
        assert merge_ranges([]) == [] and merge_ranges([(3, 4)]) == [(3, 4)]


class TestRangeSet:
    """RangeSet (core/rangeset.py): the union of what was added, minus what was discarded,
    as sorted disjoint non-adjacent ranges, never more than ``limit`` of them."""

    @given(st.lists(st.one_of(st.tuples(st.just("add"), st.integers(-10, 60),
                                        st.integers(1, 12)),
                              st.tuples(st.just("cut"), st.integers(-12, 70), st.just(0))),
                    max_size=25), st.integers(1, 6))
    def test_against_a_set_model(self, ops, limit):
        rs = RangeSet(limit=limit)
        model: set[int] = set()
        overflowed = False  # the union needed more than `limit` ranges at some point
        for op, a, n in ops:
            if op == "add":
                rs.add(a, a + n)
                model |= set(range(a, a + n))
                overflowed |= len(to_ranges(model)) > limit
            else:
                rs.discard_below(a)
                model = {x for x in model if x >= a}
            got = rs.ranges()
            assert got == merge_ranges(got) and len(got) <= limit
            assert covered(got) <= model  # never more than what was added
            if not overflowed:
                assert covered(got) == model

    @given(nonempty_ranges, st.integers(-12, 70))
    def test_above_clips(self, ranges, floor):
        rs = RangeSet(ranges)
        out = rs.above(floor)
        assert all(floor <= lo < hi for lo, hi in out)
        assert covered(out) == {x for x in covered(rs.ranges()) if x >= floor}

    def test_first_contains_len(self):
        rs = RangeSet([(5, 8), (0, 2), (2, 4)])
        assert rs.first() == (0, 4) and len(rs) == 2 and 6 in rs and 4 not in rs
        rs.discard_below(6)
        assert rs.ranges() == [(6, 8)]
        rs.clear()
        assert not rs and rs.first() is None


# --- scheduling.find_sent -------------------------------------------------------------------

def new_subflow() -> Subflow:
    return Subflow(0, b"\x0a\0\0\x01", 1000, b"\x0a\0\0\x02", 80, snd_isn=12345)


@st.composite
def send_tables(draw):
    """A SEND table s -> d built like the connection does, with retransmissions of old
    data at new subflow offsets (non-monotonic in d)."""
    sf = new_subflow()
    model: dict[int, int] = {}
    s = 0
    for _ in range(draw(st.integers(0, 6))):
        s += draw(st.integers(0, 2))  # a reserved gap
        n = draw(st.integers(1, 10))
        d = draw(st.integers(0, 40))
        assert sf.send_map.add(s, d, n)
        for i in range(n):
            model[s + i] = d + i
        s += n
    return sf, model


class TestFindSent:
    @settings(max_examples=200)
    @given(send_tables(), st.integers(-2, 55), st.integers(1, 15))
    def test_against_model(self, table, d, limit):
        sf, model = table
        assert expand(sf.send_map.entries) == model
        got = find_sent(sf, d, limit)
        senders = [s for s, v in model.items() if v == d]
        if not senders:
            assert got is None
            return
        assert got is not None
        s, n = got
        assert s in senders
        run = 0
        while s + run in model and model[s + run] == d + run:
            run += 1
        assert n == min(limit, run)  # the whole linear run from s, capped at limit

    def test_retransmission_after_handover(self):
        sf = new_subflow()
        sf.send_map.add(0, 0, 10)  # d 0..9 at s 0..9
        sf.send_map.add(10, 20, 5)  # d 20..24 at s 10..14
        assert find_sent(sf, 3, 100) == (3, 7)
        assert find_sent(sf, 3, 2) == (3, 2)
        assert find_sent(sf, 22, 100) == (12, 3)
        assert find_sent(sf, 10, 5) is None


# --- projection.subflow_ack -----------------------------------------------------------------

def model_project_ack(model, rcv_acked, rcv_high, peer_fin, sack_ok, r_ack, held):
    """The docstring, per byte: the cumulative subflow ACK covers, in subflow order from
    the last ACK sent, every subflow byte whose data byte the local stack acknowledged
    (``r < r_ack``) or holds (``r`` in ``held``); never beyond ``rcv_high`` nor below
    ``rcv_acked``; plus the peer's FIN once everything before it is covered. SACK (only
    when something is held: here every subflow byte arrived, so there is no subflow hole):
    the received subflow bytes above that ACK whose data bytes are acknowledged or held,
    and those that arrived in subflow order (below ``rcv_contig``, here ``rcv_high``: they
    were forwarded, the local stack has them even if it has not acknowledged them yet;
    leaving them out would show the peer a hole it does not have)."""
    held_set = covered(held)
    s = rcv_acked
    while s in model and (model[s] < r_ack or model[s] in held_set):
        s += 1
    cum = max(rcv_acked, min(s, rcv_high))
    if peer_fin is not None and cum >= peer_fin:
        cum = peer_fin + 1
    sacks: list[tuple[int, int]] = []
    if sack_ok and held:
        sacks = to_ranges(x for x, r in model.items() if cum <= x < rcv_high)
    return cum, sacks


@st.composite
def recv_scenarios(draw):
    """A RECV table s -> r whose chunks map out of order (handover, retransmission on
    another subflow), with unmapped gaps, plus the subflow's ACK state and what the local
    stack acknowledged (``r_ack``) and holds above it (``held``: sorted, merged, above
    ``r_ack``, as ``projection.held_ranges`` passes it)."""
    sf = new_subflow()
    model: dict[int, int] = {}
    s = 0
    for _ in range(draw(st.integers(0, 6))):
        s += draw(st.integers(0, 3))  # subflow bytes with no mapping (yet)
        n = draw(st.integers(1, 12))
        r = draw(st.integers(0, 60))
        assert sf.rcv_map.add(s, r, n)
        for i in range(n):
            model[s + i] = r + i
        s += n
    sf.rcv_high = draw(st.integers(0, s + 3))  # a mapping may run ahead of the data
    sf.rcv_contig = sf.rcv_high  # everything below arrived
    sf.peer_fin = draw(st.sampled_from([None, sf.rcv_high]))
    if sf.peer_fin is not None and draw(st.booleans()):
        sf.rcv_acked = sf.peer_fin + 1  # the FIN was already acknowledged
    else:
        sf.rcv_acked = draw(st.integers(0, sf.rcv_high))
    sf.sack_ok = draw(st.booleans())
    r_ack = draw(st.integers(0, 80))
    raw = draw(st.lists(st.tuples(st.integers(0, 80), st.integers(1, 15)).map(
        lambda t: (t[0], t[0] + t[1])), max_size=4))
    held = [(max(lo, r_ack), hi) for lo, hi in to_ranges(covered(raw)) if hi > r_ack]
    return sf, model, r_ack, held


class TestProjectAck:
    @settings(max_examples=400)
    @given(recv_scenarios())
    def test_against_model(self, scenario):
        sf, model, r_ack, held = scenario
        assert expand(sf.rcv_map.entries) == model
        state = (sf.rcv_acked, sf.rcv_high, sf.peer_fin, copy.deepcopy(sf.rcv_map.entries))
        got = subflow_ack(sf, r_ack, held)
        want = model_project_ack(model, sf.rcv_acked, sf.rcv_high, sf.peer_fin, sf.sack_ok,
                                 r_ack, held)
        assert got == want
        assert got[0] >= sf.rcv_acked
        # a query: nothing in the subflow changes
        assert (sf.rcv_acked, sf.rcv_high, sf.peer_fin, sf.rcv_map.entries) == state

    def _handover(self) -> Subflow:
        sf = new_subflow()
        # subflow bytes 0..9 -> data 0..9; 10..19 -> 30..39; 20..29 -> 10..19
        sf.rcv_map.add(0, 0, 10)
        sf.rcv_map.add(10, 30, 10)
        sf.rcv_map.add(20, 10, 10)
        sf.rcv_high = 30
        sf.rcv_contig = sf.rcv_high  # everything below arrived
        sf.sack_ok = True
        return sf

    def test_handover_examples(self):
        sf = self._handover()
        # s 10 carries r 30: not yet acked (nothing held, no subflow hole: no SACK)
        assert subflow_ack(sf, 20, []) == (10, [])
        assert subflow_ack(sf, 40, []) == (30, [])
        assert subflow_ack(sf, 20, [(30, 40)]) == (30, [])  # r 30..39 held: s 10..19 covered
        # r 35..39 held (s 15..19), r 10..19 already acknowledged (s 20..29); s 10..14
        # arrived in subflow order (forwarded, not acknowledged yet): SACKed, no hole
        assert subflow_ack(sf, 20, [(35, 40)]) == (10, [(10, 30)])
        assert subflow_ack(sf, 5, [(12, 15), (35, 37)]) == (5, [(5, 30)])
        assert subflow_ack(sf, 3, [(3, 8)]) == (8, [(8, 30)])  # held data extends the ACK
        assert subflow_ack(sf, 2, [(2, 5), (6, 9)]) == (5, [(5, 30)])
        sf.sack_ok = False
        assert subflow_ack(sf, 5, [(12, 15)]) == (5, [])

    def test_old_data_above_a_subflow_hole_is_sacked(self):
        """The peer reinjected data the local stack already acknowledged onto this
        subflow and one segment of it was lost: what arrived above the hole is SACKed,
        or the peer recovers it one segment per round trip (seen as 7-15 s stalls after
        remove-subflow on the namespace bed)."""
        sf = self._handover()
        sf.rcv_contig = 12  # s 12..14 lost
        sf.rcv_ooo = RangeSet([(15, 30)])
        assert subflow_ack(sf, 40, []) == (12, [(15, 30)])
        sf.sack_ok = False
        assert subflow_ack(sf, 40, []) == (12, [])

    def test_never_below_last_ack_nor_beyond_received(self):
        sf = self._handover()
        sf.rcv_acked = 15
        assert subflow_ack(sf, 0, []) == (15, [])
        sf.rcv_acked = 0
        sf.rcv_high = 25
        sf.rcv_contig = sf.rcv_high  # everything below arrived
        assert subflow_ack(sf, 40, []) == (25, [])

    def test_peer_fin(self):
        sf = self._handover()
        sf.peer_fin = 30
        # r 39 (s 19) not acked: FIN not covered
        assert subflow_ack(sf, 39, []) == (19, [])
        assert subflow_ack(sf, 40, []) == (31, [])  # FIN consumes one subflow sequence number
        assert subflow_ack(sf, 30, [(30, 40)]) == (31, [])
        sf.rcv_acked = 31
        assert subflow_ack(sf, 40, []) == (31, [])


# --- unwrap -----------------------------------------------------------------------------------

class TestUnwrap:
    @given(st.integers(0, MASK32), st.integers(-2**33, 2**40),
           st.integers(-2**31, 2**31 - 1))
    def test_nearest_to_ref(self, base, ref, delta):
        value = ref + delta
        assert unwrap((base + value) & MASK32, base, ref) == value

    @given(st.integers(0, MASK32), st.integers(0, MASK32), st.integers(-2**33, 2**40))
    def test_congruent_and_within_half_window(self, wire, base, ref):
        v = unwrap(wire, base, ref)
        assert (v - (wire - base)) % 2**32 == 0
        assert -2**31 <= v - ref <= 2**31

    def test_wraps(self):
        assert unwrap(0x10, 0xFFFFFF00, 0) == 0x110  # the wire value wrapped, not rel.
        assert unwrap(3, 0, 2**32 - 5) == 2**32 + 3  # relative value crosses 2**32
        assert unwrap(0xFFFFFFFE, 0, 2**32 + 1) == 2**32 - 2  # a little behind, after a wrap
        assert unwrap((7 + 2**33 + 2) & MASK32, 7, 2**33 + 7) == 2**33 + 2
        assert unwrap(0xFFFFFFFF, 0, 0) == -1  # just before relative 0

    @given(st.integers(0, MASK32), st.integers(0, 2**36), st.integers(-2**31 + 1, 2**31 - 1))
    def test_subflow_wire_round_trip(self, isn, high, delta):
        sf = new_subflow()
        sf.set_rcv_isn(isn)
        sf.rcv_high = high
        sf.rcv_contig = sf.rcv_high  # everything below arrived
        s = high + delta
        assert sf.rcv_wire(s) == (isn + 1 + s) & MASK32
        assert sf.rcv_rel(sf.rcv_wire(s)) == s
        sf.snd_una = high
        assert sf.snd_rel(sf.snd_wire(s)) == s


@pytest.mark.parametrize("isn", [0, 0xFFFFFFFF, 0xFFFFFFF0])
def test_subflow_isn_bases(isn):
    sf = Subflow(1, b"\0" * 4, 1, b"\0" * 4, 2, snd_isn=isn)
    sf.set_rcv_isn(isn)
    assert sf.snd_wire(0) == sf.rcv_wire(0) == (isn + 1) & MASK32
