"""The reference itself (checked byte for byte against scapy) and the checksum helpers of
mptcp_proxy.core.tcp (ones_sum, fold_checksum, tcp_checksum, ipv4_header_checksum),
against the independent reference of tcp_reference.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.utils import checksum as scapy_checksum
from tcp_reference import (
    SETTINGS,
    ref_checksum,
    ref_sum,
    ref_tcp_checksum,
    scapy_packet,
    scapy_tcp_checksum,
    specs,
)

from mptcp_proxy.core.tcp import fold_checksum, ipv4_header_checksum, ones_sum, tcp_checksum

# --- The reference itself ---------------------------------------------------------------

class TestReference:
    """``assemble`` agrees with scapy, so it can judge the code under test."""

    @SETTINGS
    @given(specs())
    def test_assemble_equals_scapy(self, spec):
        packet = spec.assemble()
        assert bytes(packet) == raw(scapy_packet(spec))

    @SETTINGS
    @given(specs())
    def test_scapy_checksum_matches_reference(self, spec):
        packet = spec.assemble()
        th = spec.th
        assert scapy_tcp_checksum(bytes(packet), spec.v6) == struct.unpack_from(
            "!H", packet, th + 16)[0]
        if not spec.v6:
            hdr = bytearray(packet[:th])
            hdr[10:12] = b"\0\0"
            assert scapy_checksum(bytes(hdr)) == struct.unpack_from("!H", packet, 10)[0]


# --- ones_sum / fold_checksum / tcp_checksum / ipv4_header_checksum --------------------------

EDGE_DATA = [b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff", b"\x80\x00\x7f\xff",
             b"\xff\xff\xff\xff", b"\x12\x34\xed\xcb", b"\x00\x01\xff\xfe\x00", b"\x01"]


class TestOnesSum:
    @given(st.binary(max_size=200))
    @example(b"")
    def test_matches_word_loop(self, data):
        assert ones_sum(data) == ref_sum(data)

    @pytest.mark.parametrize("data", EDGE_DATA)
    def test_edges(self, data):
        assert ones_sum(data) == ref_sum(data)

    def test_negative_zero_is_ffff_and_zero_only_for_zero_data(self):
        assert ones_sum(b"\x12\x34\xed\xcb") == 0xFFFF  # 0x1234 + 0xEDCB = 0xFFFF
        assert ones_sum(b"\0\0\0\0") == 0
        assert ones_sum(memoryview(b"\x00\x01\xff\xfe")) == 0xFFFF


class TestFoldChecksum:
    @given(st.binary(max_size=200).filter(lambda d: len(d) % 2 == 0))
    def test_of_plain_word_sum(self, data):
        words = sum(struct.unpack(f"!{len(data) // 2}H", data))
        assert fold_checksum(words) == ref_checksum(data)

    @given(st.binary(max_size=200).filter(lambda d: len(d) % 2 == 0))
    def test_of_big_endian_integer(self, data):
        assert fold_checksum(int.from_bytes(data, "big")) == ref_checksum(data)

    @pytest.mark.parametrize("data", [d for d in EDGE_DATA if len(d) % 2 == 0])
    def test_edges(self, data):
        assert fold_checksum(ref_sum(data)) == ref_checksum(data)
        assert fold_checksum(int.from_bytes(data, "big")) == ref_checksum(data)

    def test_negative_zero_gives_zero_field(self):
        assert fold_checksum(0xFFFF) == 0 == ref_checksum(b"\xff\xff")
        assert fold_checksum(3 * 0xFFFF) == 0


class TestTcpChecksum:
    @SETTINGS
    @given(specs())
    def test_matches_reference(self, spec):
        seg = spec.segment()
        seg[16:18] = b"\0\0"
        want = ref_tcp_checksum(spec.src, spec.dst, seg)
        assert tcp_checksum(spec.src, spec.dst, seg) == want
        assert tcp_checksum(spec.src, spec.dst, memoryview(seg)) == want


class TestIpv4HeaderChecksum:
    @given(st.binary(min_size=20, max_size=60).filter(lambda d: len(d) % 4 == 0))
    def test_matches_reference(self, hdr):
        hdr = bytearray(hdr)
        hdr[10:12] = b"\0\0"
        assert ipv4_header_checksum(hdr) == ref_checksum(hdr) == scapy_checksum(bytes(hdr))

    def test_negative_zero_header(self):
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                                    b"\x0a\0\0\x01", b"\x0a\0\0\x02"))
        s = ref_sum(hdr)
        struct.pack_into("!H", hdr, 4, 0xFFFF - s)  # the ident makes the sum 0xFFFF
        assert ref_sum(hdr) == 0xFFFF
        assert ipv4_header_checksum(hdr) == 0 == ref_checksum(hdr)
