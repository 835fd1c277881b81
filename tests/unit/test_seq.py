"""Tests for mptcp_proxy.core.seq (Linux before()/after(), before64(), mptcp_expand_seq())."""

from hypothesis import assume, example, given
from hypothesis import strategies as st

from mptcp_proxy.core.seq import (
    MASK32,
    MASK64,
    after32,
    after64,
    before32,
    before64,
    diff32,
    diff64,
    expand_seq,
    max32,
)

u32 = st.integers(0, MASK32)
u64 = st.integers(0, MASK64)
d32 = st.integers(-(2**31) + 1, 2**31 - 1)  # exactly 2**31 apart is ambiguous (both "before")
d64 = st.integers(-(2**63) + 1, 2**63 - 1)


def linux_expand_seq(old_seq: int, cur_seq: int) -> int:
    """Direct port of Linux ``__mptcp_expand_seq`` (net/mptcp/protocol.h), u64 arithmetic."""
    old32, cur32 = old_seq & MASK32, cur_seq & MASK32
    cur = ((old_seq & ~MASK32) + cur32) & MASK64
    if cur32 < old32 and before32(old32, cur32):
        return (cur + (1 << 32)) & MASK64
    if cur32 > old32 and after32(old32, cur32):
        return (cur - (1 << 32)) & MASK64
    return cur


def test_before_after_across_32bit_wrap():
    assert before32(0xFFFFFFF0, 0x10)
    assert after32(0x10, 0xFFFFFFF0)
    assert not after32(0xFFFFFFF0, 0x10)
    assert not before32(0x10, 0xFFFFFFF0)
    assert not before32(5, 5) and not after32(5, 5)
    assert diff32(0x10, 0xFFFFFFF0) == 0x20
    assert diff32(0xFFFFFFF0, 0x10) == -0x20
    assert diff32(0, 0x80000000) == -(2**31)
    assert max32(0xFFFFFFF0, 0x10) == 0x10
    assert max32(0x10, 0xFFFFFFF0) == 0x10
    assert max32(7, 7) == 7


def test_before_after_across_64bit_wrap():
    assert before64(MASK64 - 5, 3)
    assert after64(3, MASK64 - 5)
    assert not before64(3, MASK64 - 5)
    assert diff64(3, MASK64 - 5) == 9
    assert diff64(MASK64 - 5, 3) == -9
    # a gap of more than 2**31 is still "before" in 64-bit space, but not in 32-bit space
    assert before64(1, 0x8000_0002)
    assert not before32(1, 0x8000_0002) and after32(1, 0x8000_0002)


def test_expand_seq_forward_across_32bit_wrap():
    ref = 0x0000_0001_FFFF_FFF0
    assert expand_seq(ref, 0x10, 32) == 0x0000_0002_0000_0010
    assert expand_seq(ref, 0xFFFF_FFF8, 32) == 0x0000_0001_FFFF_FFF8


def test_expand_seq_backward_across_32bit_wrap():
    ref = 0x0000_0002_0000_0010
    assert expand_seq(ref, 0xFFFF_FFF0, 32) == 0x0000_0001_FFFF_FFF0
    assert expand_seq(ref, 0x20, 32) == 0x0000_0002_0000_0020


def test_expand_seq_64bit_space_wrap_and_passthrough():
    assert expand_seq(0x10, 0xFFFF_FFF0, 32) == MASK64 - 0xF  # just behind DSN 0
    assert expand_seq(MASK64 - 0xF, 0x10, 32) == 0x10  # just past the 2**64 wrap
    assert expand_seq(0x1234, 0xDEAD_BEEF_0000_0001, 64) == 0xDEAD_BEEF_0000_0001


@given(u32, d32)
def test_diff32_inverts_addition(a, d):
    b = (a + d) & MASK32
    assert diff32(b, a) == d
    assert before32(a, b) == (d > 0)
    assert after32(a, b) == (d < 0)
    assert before32(a, b) == after32(b, a)
    assert max32(a, b) == (b if d >= 0 else a)


@given(u64, d64)
def test_diff64_inverts_addition(a, d):
    b = (a + d) & MASK64
    assert diff64(b, a) == d
    assert before64(a, b) == (d > 0)
    assert after64(a, b) == (d < 0)


@given(u32, u32)
def test_before_after_exclusive(a, b):
    assume(((a - b) & MASK32) != 0x80000000)
    assert not (before32(a, b) and after32(a, b))
    assert (a == b) == (not before32(a, b) and not after32(a, b))


@given(u64, d32)
@example(0x0000_0001_FFFF_FFF0, 0x20)
@example(0x0000_0002_0000_0010, -0x20)
def test_expand_seq_recovers_nearby_value(ref, d):
    value64 = (ref + d) & MASK64
    assert expand_seq(ref, value64 & MASK32, 32) == value64
    assert expand_seq(ref, value64, 64) == value64


@given(u64, u32)
def test_expand_seq_matches_linux(ref, value):
    assume(((value - ref) & MASK32) != 0x80000000)  # the one ambiguous distance
    assert expand_seq(ref, value, 32) == linux_expand_seq(ref, value)


@given(st.integers(0, MASK64), st.integers(-(1 << 40), 1 << 40), st.integers(-(1 << 30), 1 << 30))
def test_data_rel_inverts_data_wire_near_the_reference(idsn, rel, d):
    """The one DSN/DATA_ACK expansion: a 32-bit wire value within 2**31 of the reference
    comes back as the relative value it was made from; a 64-bit one always does."""
    from mptcp_proxy.core.seq import data_rel, data_wire
    wire = data_wire(idsn, rel)
    assert data_rel(idsn, rel + d, wire, 64) == rel
    if -(1 << 31) < d < (1 << 31) - 1:
        assert data_rel(idsn, rel + d, wire & MASK32, 32) == rel
