"""Tests for mptcp_proxy.core.fastopt: the hot-path DSS / timestamp / SACK codecs must
agree byte for byte with the strict codec in mptcp_proxy.core.options (RFC 8684 §3.3)
and with the RFC 7323 / RFC 2018 layouts."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mptcp_proxy.core.fastopt import (
    build_dss_ack,
    build_dss_map,
    build_sack,
    build_ts,
    dss_len,
    parse_dss,
    read_sack,
    read_ts,
)
from mptcp_proxy.core.options import Dss, Malformed, pull_option, push_option

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)

# DSS flag bits (RFC 8684 §3.3, Fig. 9), spelled out here rather than imported
A, a, M, m, F = 0x01, 0x02, 0x04, 0x08, 0x10


def nop_pad(opt: bytes) -> bytes:
    """Leading NOPs up to a multiple of 4 bytes."""
    return b"\x01" * (-len(opt) % 4) + opt


def flags_of(d: Dss) -> int:
    return ((A if d.data_ack is not None else 0) | (a if d.ack64 else 0)
            | (M if d.data_seq is not None else 0) | (m if d.dsn64 else 0)
            | (F if d.data_fin else 0))


# --- Builders ---------------------------------------------------------------------------------

class TestBuildDssAck:
    @given(u32)
    @example(0)
    @example(0xFFFFFFFF)
    def test_equals_strict_codec(self, data_ack):
        want = nop_pad(push_option(Dss(data_ack=data_ack)))
        assert build_dss_ack(data_ack) == want
        assert len(want) == 8

    @given(st.integers(0, 2**64 - 1))
    def test_wide_value_sends_low_32_bits(self, data_ack):
        assert build_dss_ack(data_ack) == push_option(Dss(data_ack=data_ack & 0xFFFFFFFF))


COMBOS = list(itertools.product([False, True], repeat=3))  # (with ack, with csum, data_fin)


class TestBuildDssMap:
    @pytest.mark.parametrize("with_ack,with_csum,data_fin", COMBOS)
    @settings(max_examples=40, deadline=None)
    @given(data_ack=u32, data_seq=u64, ssn=u32, dll=u16, csum=u16)
    def test_equals_strict_codec(self, with_ack, with_csum, data_fin, data_ack, data_seq, ssn,
                                 dll, csum):
        dack = data_ack if with_ack else None
        cs = csum if with_csum else None
        got = build_dss_map(dack, data_seq, ssn, dll, cs, data_fin)
        want = nop_pad(push_option(Dss(data_ack=dack, ack64=False, data_seq=data_seq,
                                       dsn64=True, subflow_seq=ssn, data_len=dll, checksum=cs,
                                       data_fin=data_fin)))
        assert got == want
        assert len(got) % 4 == 0 and len(got) <= 24
        # and the strict parser reads back what was built
        opt = got.lstrip(b"\x01")
        back = pull_option(opt)
        assert back == Dss(dack, False, data_seq, True, ssn, dll, cs, data_fin)

    @given(u64, st.integers(2**32, 2**40))
    def test_wide_ssn_and_ack_send_low_32_bits(self, data_seq, wide):
        got = build_dss_map(wide, data_seq, wide, 7, None, False)
        low = wide & 0xFFFFFFFF
        assert got == nop_pad(push_option(Dss(data_ack=low, data_seq=data_seq, dsn64=True,
                                              subflow_seq=low, data_len=7)))


class TestDssLen:
    @pytest.mark.parametrize("flags", range(32))
    @pytest.mark.parametrize("csum", [False, True])
    def test_equals_strict_codec_length(self, flags, csum):
        d = Dss(data_ack=1 if flags & A else None, ack64=bool(flags & a),
                data_seq=2 if flags & M else None, dsn64=bool(flags & m),
                subflow_seq=3 if flags & M else 0, data_len=4 if flags & M else 0,
                checksum=5 if csum and flags & M else None, data_fin=bool(flags & F))
        opt = push_option(d)
        assert dss_len(flags, csum) == len(opt) == opt[1]

    def test_rfc_sizes(self):
        # RFC 8684 §3.3 Fig. 9: header 4, DATA_ACK 4/8, DSN 4/8 + SSN 4 + DLL 2, checksum 2
        assert dss_len(A, False) == 8
        assert dss_len(A | a, True) == 12
        assert dss_len(M, False) == 14
        assert dss_len(M | m, True) == 20
        assert dss_len(A | a | M | m | F, True) == 28


# --- parse_dss against pull_option ------------------------------------------------------------

@st.composite
def dss_bytes(draw) -> bytes:
    """Random bytes shaped like a DSS: kind 30, length byte = length, subtype 2.
    The length is mostly one the flags allow (with or without checksum), sometimes any."""
    flags = draw(st.integers(0, 0xFF))  # reserved bits 0xE0 included
    expected = dss_len(flags & 0x1F, False)
    n = draw(st.one_of(st.sampled_from([expected, expected + 2]),
                       st.integers(3, 40)))
    body = draw(st.binary(min_size=max(0, n - 4), max_size=max(0, n - 4)))
    low = draw(st.integers(0, 0x0F))
    return (bytes((30, n, 0x20 | low, flags)) + body)[:n]


def check_agrees(data: bytes) -> None:
    pulled = pull_option(data)
    got = parse_dss(data, 0, len(data))
    if isinstance(pulled, Malformed):
        assert got is None, (pulled, got)
        return
    assert isinstance(pulled, Dss)
    assert got is not None, pulled
    flags, data_ack, ack64, data_seq, dsn64, ssn, dll, csum = got
    assert flags == flags_of(pulled)
    assert (data_ack, ack64, data_seq, dsn64) == (pulled.data_ack, pulled.ack64,
                                                  pulled.data_seq, pulled.dsn64)
    if pulled.data_seq is None:
        assert (ssn, dll, csum) == (None, None, None)
    else:
        assert (ssn, dll, csum) == (pulled.subflow_seq, pulled.data_len, pulled.checksum)


class TestParseDss:
    @settings(max_examples=600, deadline=None)
    @given(dss_bytes())
    def test_agrees_with_pull_option(self, data):
        check_agrees(data)

    @pytest.mark.parametrize("flags", range(32))
    @pytest.mark.parametrize("extra", [-1, 0, 1, 2, 3])
    def test_every_flag_and_length(self, flags, extra):
        n = dss_len(flags, False) + extra
        data = (bytes((30, n, 0x20, flags)) + bytes(range(100, 140)))[:n]
        check_agrees(data)

    @given(st.binary(max_size=8), dss_bytes(), st.binary(max_size=8))
    def test_offset_inside_a_buffer(self, prefix, data, suffix):
        buf = bytearray(prefix + data + suffix)
        assert parse_dss(buf, len(prefix), len(data)) == parse_dss(data, 0, len(data))
        assert parse_dss(memoryview(bytes(buf)), len(prefix), len(data)) == parse_dss(
            data, 0, len(data))

    @settings(max_examples=100, deadline=None)
    @given(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans(),
           st.booleans(), u64, u64, u32, u16, u16)
    def test_round_trip_of_strict_encoding(self, has_ack, ack64, has_map, dsn64, has_cs, fin,
                                           dack, dseq, ssn, dll, cs):
        d = Dss(data_ack=(dack if ack64 else dack & 0xFFFFFFFF) if has_ack else None,
                ack64=ack64,
                data_seq=(dseq if dsn64 else dseq & 0xFFFFFFFF) if has_map else None,
                dsn64=dsn64, subflow_seq=ssn if has_map else 0, data_len=dll if has_map else 0,
                checksum=cs if has_map and has_cs else None, data_fin=fin)
        check_agrees(push_option(d))

    def test_rfc_vector(self):
        # tcpdump tests/mptcp-v1.pcap: DSS A+a+M+m, DSN = IDSN_B+1, SSN 1, DLL 8192
        # (the same vector is decoded by test_options.py)
        data = bytes.fromhex("1e1a200fc8072fb90edab04ea28e87fddd1d30f2000000012000")
        assert parse_dss(data, 0, len(data)) == (
            A | a | M | m, 0xC8072FB90EDAB04E, True, 0xA28E87FDDD1D30F2, True, 1, 0x2000, None)

    @pytest.mark.parametrize("flags", [A, A | a, A | F, 0, F])
    def test_no_map_with_two_extra_bytes(self, flags):
        """Regression: without M, Linux ``mptcp_parse_option`` (and ``pull_option``) accept
        the length + 2 form and ignore the two bytes; parse_dss used to reject it."""
        n = dss_len(flags, False) + 2
        data = (bytes((30, n, 0x20, flags)) + bytes(range(1, 20)))[:n]
        pulled = pull_option(data)
        assert isinstance(pulled, Dss)
        check_agrees(data)


# --- Timestamps and SACK ----------------------------------------------------------------------

class TestTimestamps:
    @given(u32, u32)
    def test_layout_and_round_trip(self, tsval, tsecr):
        opt = build_ts(tsval, tsecr)
        # RFC 7323 Appendix A layout: NOP, NOP, kind 8, length 10, TSval, TSecr
        assert opt == b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr)
        assert read_ts(opt, 2) == (tsval, tsecr)
        assert read_ts(b"junk" + opt, 6) == (tsval, tsecr)

    @given(st.integers(0, 2**40), st.integers(0, 2**40))
    def test_values_wrap_to_32_bits(self, tsval, tsecr):
        assert read_ts(build_ts(tsval, tsecr), 2) == (tsval % 2**32, tsecr % 2**32)


class TestSack:
    @given(st.lists(st.tuples(u32, u32), max_size=4))
    def test_layout_and_round_trip(self, blocks):
        opt = build_sack(blocks)
        # RFC 2018 §3: NOP, NOP, kind 5, length 2 + 8n, then left/right edge pairs
        assert opt[:4] == bytes((1, 1, 5, 2 + 8 * len(blocks)))
        assert len(opt) == 4 + 8 * len(blocks) and len(opt) % 4 == 0
        assert read_sack(opt, 2, opt[3]) == blocks

    @given(st.lists(st.tuples(st.integers(-2**33, 2**34), st.integers(-2**33, 2**34)),
                    max_size=3))
    def test_edges_wrap_to_32_bits(self, blocks):
        opt = build_sack(blocks)
        assert read_sack(opt, 2, opt[3]) == [(lo % 2**32, hi % 2**32) for lo, hi in blocks]

    @pytest.mark.parametrize("olen", [0, 1, 2, 3, 9, 11, 17])
    def test_bad_length_gives_no_blocks(self, olen):
        buf = bytes((5, olen)) + bytes(range(40))
        assert read_sack(buf, 0, olen) == []

    def test_offset(self):
        opt = build_sack([(1, 2), (0xFFFFFFF0, 5)])
        buf = b"\x08\x0a" + bytes(8) + opt
        assert read_sack(buf, 12, buf[13]) == [(1, 2), (0xFFFFFFF0, 5)]
