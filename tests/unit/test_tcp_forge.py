"""mptcp_proxy.core.forge.build_segment and reply_rst_for, and the timestamp and SACK
option builders of mptcp_proxy.core.tcp, against the independent reference of
tcp_reference.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from tcp_reference import (
    SETTINGS,
    Spec,
    addr4,
    addr16,
    option_items,
    scapy_packet,
    scapy_tcp_checksum,
    tcp_header,
    u8,
    u16,
    u32,
)

from mptcp_proxy.core.forge import build_segment, reply_rst_for
from mptcp_proxy.core.tcp import build_sack, build_ts, pad_options, parse_packet, read_sack

# --- forge.build_segment ----------------------------------------------------------------------

def _fits(items) -> bool:
    total = sum(2 + len(body) for _kind, body in items)
    return total + (-total % 4) <= 40


raw_options = st.lists(option_items.filter(lambda o: o != b"\x01"), max_size=5).map(
    lambda items: [(o[0], o[2:]) for o in items]).filter(_fits)


class TestBuildSegment:
    @SETTINGS
    @given(st.booleans(), st.data(), u16, u16, u32, u32, u8, u16, raw_options,
           st.binary(max_size=60))
    def test_equals_scapy(self, v6, data, sport, dport, seq, ack, flags, win, opts, payload):
        src = data.draw(addr16 if v6 else addr4)
        dst = data.draw(addr16 if v6 else addr4)
        block = b"".join(bytes((k, 2 + len(b))) + b for k, b in opts)
        pkt = build_segment(src, dst, sport, dport, seq, ack, flags, win, block, payload)
        pad = -len(block) % 4
        spec = Spec(v6, src, dst, tcp_header(sport, dport, seq, ack, flags, win, 0,
                                             b"\x01" * pad + block), payload, ident=0, tos=0,
                    ttl=64, df=True)
        # scapy builds the same packet with its own checksums
        assert bytes(pkt) == raw(scapy_packet(spec))
        assert bytes(pkt) == bytes(spec.assemble())
        parsed = IPv6(bytes(pkt)) if v6 else IP(bytes(pkt))
        assert parsed[TCP].chksum == scapy_tcp_checksum(bytes(pkt), v6)
        assert parsed[TCP].dataofs * 4 == 20 + len(block) + pad
        assert bytes(parsed[TCP].payload) == payload
        p = parse_packet(bytearray(pkt))
        assert p is not None and p.checksum_ok()
        assert p.option_bytes() == pad_options(block)

    def test_wraps_seq_ack(self):
        pkt = parse_packet(build_segment(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2,
                                         2**32 + 5, -1, 0x10, 100))
        assert (pkt.seq, pkt.ack) == (5, 0xFFFFFFFF)

    def test_options_too_long(self):
        fits = b"\x1e\x27" + bytes(37)  # 39 bytes: one NOP makes 40
        assert len(build_segment(bytes(4), bytes(4), 1, 2, 0, 0, 0x10, 0, fits)) == 80
        with pytest.raises(ValueError):
            build_segment(bytes(4), bytes(4), 1, 2, 0, 0, 0x10, 0, b"\x1e\x29" + bytes(39))

    def test_reply_rst_for(self):
        """RFC 9293 §3.10.7.1: take SEQ from the ACK field, else ACK = SEG.SEQ + SEG.LEN."""
        a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
        with_ack = parse_packet(build_segment(a, b, 1111, 80, 500, 9000, 0x18, 10, b"", b"xyz"))
        rst = parse_packet(reply_rst_for(with_ack))
        assert (rst.src, rst.dst, rst.sport, rst.dport) == (b, a, 80, 1111)
        assert (rst.seq, rst.flags) == (9000, 0x04) and rst.checksum_ok()
        syn = parse_packet(build_segment(a, b, 1111, 80, 0xFFFFFFFF, 0, 0x02, 10))
        rst = parse_packet(reply_rst_for(syn))
        assert (rst.seq, rst.ack, rst.flags) == (0, 0, 0x14)  # SYN counts one, wraps
        fin = parse_packet(build_segment(a, b, 1111, 80, 100, 0, 0x01, 10, b"", b"ab"))
        rst = parse_packet(reply_rst_for(fin))
        assert (rst.seq, rst.ack, rst.flags) == (0, 103, 0x14)


class TestTimestampsAndSack:
    @given(u32, u32)
    def test_ts_layout(self, tsval, tsecr):
        # RFC 7323 Appendix A layout: NOP, NOP, kind 8, length 10, TSval, TSecr
        assert build_ts(tsval, tsecr) == b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr)
        assert build_ts(tsval + 2**32, tsecr + 2**33) == build_ts(tsval, tsecr)

    @given(st.lists(st.tuples(u32, u32), max_size=4))
    def test_sack_layout_and_round_trip(self, blocks):
        opt = build_sack(blocks)
        # RFC 2018 §3: NOP, NOP, kind 5, length 2 + 8n, then left/right edge pairs
        assert opt[:4] == bytes((1, 1, 5, 2 + 8 * len(blocks)))
        assert len(opt) == 4 + 8 * len(blocks)
        assert read_sack(b"xy" + opt, 4, opt[3]) == blocks

    @pytest.mark.parametrize("olen", [0, 1, 2, 3, 9, 11, 17])
    def test_bad_sack_length_gives_no_blocks(self, olen):
        assert read_sack(bytes((5, olen)) + bytes(range(40)), 0, olen) == []
