"""mptcp_proxy.core.tcp.parse_packet (IPv4/IPv6 + TCP views) on packets assembled by the
independent reference of tcp_reference.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tcp_reference import SETTINGS, Spec, ref_walk, specs, tcp_header, v4_packet, v6_packet

from mptcp_proxy.core.tcp import parse_packet

# --- parse_packet -----------------------------------------------------------------------------

class TestParsePacket:
    @SETTINGS
    @given(specs())
    def test_fields(self, spec):
        buf = spec.assemble()
        pkt = parse_packet(buf)
        assert pkt is not None
        sport, dport, seq, ack, _d, flags, win, _c, _u = struct.unpack_from("!HHIIBBHHH",
                                                                             spec.hdr)
        assert (pkt.v6, pkt.th, pkt.hl, pkt.plen) == (spec.v6, spec.th, len(spec.hdr),
                                                       len(spec.payload))
        assert (pkt.sport, pkt.dport, pkt.seq, pkt.ack, pkt.flags, pkt.win) == (
            sport, dport, seq, ack, flags, win)
        assert (pkt.src, pkt.dst, pkt.payload) == (spec.src, spec.dst, spec.payload)
        assert pkt.option_bytes() == bytes(spec.hdr[20:])
        assert (pkt.opt_start, pkt.opt_end) == (spec.th + 20, spec.th + len(spec.hdr))
        want = ref_walk(spec.hdr, 20, len(spec.hdr))
        assert pkt.options() == [(k, o + spec.th, n) for k, o, n in want]
        syn, fin = (flags >> 1) & 1, flags & 1
        assert pkt.end_seq == (seq + len(spec.payload) + syn + fin) % 2**32
        assert pkt.checksum_ok()
        assert bytes(pkt.buf) == bytes(spec.assemble())  # parsing changes nothing

    @SETTINGS
    @given(specs(), st.binary(min_size=1, max_size=30))
    def test_trailing_bytes_trimmed(self, spec, trailer):
        buf = spec.assemble()
        good = bytes(buf)
        buf += trailer
        pkt = parse_packet(buf)
        assert pkt is not None
        assert bytes(buf) == good and pkt.buf is buf
        assert pkt.payload == spec.payload and pkt.checksum_ok()

    def test_good_baselines_parse(self):
        assert parse_packet(v4_packet()) is not None
        assert parse_packet(v6_packet()) is not None
        assert parse_packet(v4_packet(df=False)) is not None

    @pytest.mark.parametrize("proto", [17, 1, 132, 0])
    def test_non_tcp(self, proto):
        v4 = v4_packet()
        v4[9] = proto
        assert parse_packet(v4) is None
        v6 = v6_packet()
        v6[6] = proto
        assert parse_packet(v6) is None

    @pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x1FFF, 0x0100, 0x6000, 0x4001])
    def test_ipv4_fragments(self, frag):
        buf = v4_packet()
        struct.pack_into("!H", buf, 6, frag)  # MF and/or a fragment offset
        assert parse_packet(buf) is None

    def test_df_is_not_a_fragment(self):
        buf = v4_packet()
        struct.pack_into("!H", buf, 6, 0x4000)
        assert parse_packet(buf) is not None

    @pytest.mark.parametrize("nh", [0, 43, 44, 60, 51, 50])
    def test_ipv6_extension_headers(self, nh):
        base = v6_packet()
        # extension header (8 bytes: next header TCP, length 0, 6 bytes of padding) before TCP
        ext = bytes((6, 0)) + bytes(6)
        buf = base[:40] + ext + base[40:]
        buf[6] = nh
        struct.pack_into("!H", buf, 4, len(buf) - 40)
        assert parse_packet(buf) is None

    @pytest.mark.parametrize("cut", [1, 4, 19, 20])
    def test_truncated(self, cut):
        for buf in (v4_packet(), v6_packet()):
            assert parse_packet(buf[:-cut]) is None  # IP length says more than we have

    def test_too_short(self):
        assert parse_packet(bytearray()) is None
        assert parse_packet(v4_packet()[:39]) is None
        assert parse_packet(v6_packet()[:59]) is None

    def test_tcp_header_past_ip_length(self):
        # options announced (doff 15) but the IP length only holds 20 bytes of TCP
        hdr = tcp_header(opts=bytes(40))
        buf = Spec(False, b"\x0a\0\0\x01", b"\x0a\0\0\x02", hdr, b"").assemble()
        struct.pack_into("!H", buf, 2, 40)
        assert parse_packet(buf) is None
        v6 = Spec(True, bytes(16), bytes(15) + b"\x01", hdr, b"").assemble()
        struct.pack_into("!H", v6, 4, 20)
        assert parse_packet(v6) is None

    @pytest.mark.parametrize("doff", [0, 1, 4])
    def test_bad_data_offset_small(self, doff):
        for buf, th in ((v4_packet(), 20), (v6_packet(), 40)):
            buf[th + 12] = doff << 4
            assert parse_packet(buf) is None

    def test_bad_data_offset_beyond_packet(self):
        for buf, th in ((v4_packet(), 20), (v6_packet(), 40)):
            buf[th + 12] = 15 << 4  # 60 bytes of header, only 24 bytes of segment
            assert parse_packet(buf) is None

    def test_ip_length_below_headers(self):
        buf = v4_packet()
        struct.pack_into("!H", buf, 2, 39)
        assert parse_packet(buf) is None
        buf = v4_packet()
        buf[0] = 0x44  # IHL 16 bytes
        assert parse_packet(buf) is None

    def test_other_ip_versions(self):
        for ver in (0, 5, 7, 15):
            buf = v4_packet()
            buf[0] = (ver << 4) | 5
            assert parse_packet(buf) is None
