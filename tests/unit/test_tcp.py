"""Tests for mptcp_proxy.core.tcp (IPv4/IPv6 + TCP views, option walking, RFC 1624
incremental checksums) and mptcp_proxy.core.forge.build_segment.

Every checksum is checked against an independent reference: ``ref_sum`` is the plain
RFC 1071 loop over 16-bit words with end-around carry, run over pseudo-header +
segment. ``assemble`` builds a whole packet from a field-level model with that
reference, and is itself checked byte for byte against scapy (``TestReference``).
The incremental-update tests then compare the rewritten buffer with the packet
assembled from scratch: same bytes means the same TCP checksum field, IPv4 header
checksum, lengths, data offset and payload.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum as scapy_checksum

from mptcp_proxy.core.forge import build_segment, reply_rst_for
from mptcp_proxy.core.tcp import (
    CSUM_GSO,
    CSUM_OK,
    CSUM_PARTIAL,
    CSUM_UNVERIFIED,
    build_sack,
    build_ts,
    fold_checksum,
    ipv4_header_checksum,
    ones_sum,
    pad_options,
    parse_packet,
    read_sack,
    tcp_checksum,
    walk_options,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr4 = st.binary(min_size=4, max_size=4)
addr16 = st.binary(min_size=16, max_size=16)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- Independent reference ---------------------------------------------------------------

def ref_sum(data: bytes) -> int:
    """RFC 1071 ones'-complement sum, one 16-bit word at a time with end-around carry
    (odd length padded with a zero byte). 0 only for all-zero data."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def ref_pseudo(src: bytes, dst: bytes, tcp_len: int) -> bytes:
    """RFC 9293 §3.1 (IPv4) / RFC 8200 §8.1 (IPv6) pseudo-header."""
    if len(src) == 4:
        return src + dst + bytes((0, 6)) + struct.pack("!H", tcp_len)
    return src + dst + struct.pack("!I", tcp_len) + b"\0\0\0\x06"


def ref_tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """Checksum field for ``segment`` (its own checksum field is ignored)."""
    seg = bytearray(segment)
    seg[16:18] = b"\0\0"
    return ref_checksum(ref_pseudo(src, dst, len(seg)) + bytes(seg))


def tcp_header(sport=1000, dport=80, seq=1, ack=0, flags=0x10, win=1024, urg=0,
               opts=b"", res=0) -> bytearray:
    hl = 20 + len(opts)
    return bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (hl << 2) | res, flags,
                                 win, 0, urg)) + opts


@dataclass
class Spec:
    """A packet at field level; ``assemble`` makes the bytes with reference checksums."""

    v6: bool
    src: bytes
    dst: bytes
    hdr: bytearray  # TCP header with options (its checksum field is ignored)
    payload: bytes
    ip_opts: bytes = b""  # IPv4 options, a multiple of 4 bytes
    ident: int = 0
    tos: int = 0
    ttl: int = 64
    df: bool = True
    flow: int = 0
    tcp_csum: int | None = None  # force a checksum field value (None: reference)

    def segment(self) -> bytearray:
        tcp = bytearray(self.hdr) + self.payload
        csum = self.tcp_csum
        if csum is None:
            csum = ref_tcp_checksum(self.src, self.dst, tcp)
        struct.pack_into("!H", tcp, 16, csum)
        return tcp

    def ip_header(self, tcp_len: int) -> bytearray:
        if self.v6:
            return bytearray(struct.pack("!IHBB", (6 << 28) | (self.tos << 20) | self.flow,
                                         tcp_len, 6, self.ttl) + self.src + self.dst)
        ihl = 20 + len(self.ip_opts)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | (ihl >> 2), self.tos, ihl + tcp_len,
                                   self.ident, 0x4000 if self.df else 0, self.ttl, 6, 0,
                                   self.src, self.dst)) + self.ip_opts
        struct.pack_into("!H", ip, 10, ref_checksum(ip))
        return ip

    def assemble(self) -> bytearray:
        tcp = self.segment()
        return self.ip_header(len(tcp)) + tcp

    @property
    def th(self) -> int:
        return 40 if self.v6 else 20 + len(self.ip_opts)


# --- Strategies ----------------------------------------------------------------------------

def _opt(kind: int, body: bytes) -> bytes:
    return bytes((kind, 2 + len(body))) + body


option_items = st.one_of(
    st.just(b"\x01"),
    u16.map(lambda v: _opt(2, struct.pack("!H", v))),
    u8.map(lambda v: _opt(3, bytes((v,)))),
    st.just(_opt(4, b"")),
    st.binary(min_size=8, max_size=8).map(lambda b: _opt(8, b)),
    st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=4).map(
        lambda bl: _opt(5, b"".join(bl))),
    st.binary(min_size=1, max_size=26).map(lambda b: _opt(30, b)),  # MPTCP, raw bytes
)


@st.composite
def option_blocks(draw, max_len: int = 40) -> bytes:
    """A well-formed option block, a multiple of 4 bytes, at most ``max_len``."""
    out = b""
    for item in draw(st.lists(option_items, max_size=8)):
        if len(out) + len(item) + (-(len(out) + len(item)) % 4) <= max_len:
            out += item
    pad = -len(out) % 4
    if draw(st.booleans()):
        return b"\x01" * pad + out  # Linux style: leading NOPs
    return out + b"\x00" * pad  # EOL padding


@st.composite
def specs(draw, v6: bool | None = None, min_payload: int = 0) -> Spec:
    if v6 is None:
        v6 = draw(st.booleans())
    addr = addr16 if v6 else addr4
    hdr = tcp_header(draw(u16), draw(u16), draw(u32), draw(u32), draw(u8), draw(u16), draw(u16),
                     draw(option_blocks()))
    return Spec(
        v6=v6, src=draw(addr), dst=draw(addr), hdr=hdr,
        payload=draw(st.binary(min_size=min_payload, max_size=80)),
        ip_opts=b"" if v6 else b"\x01" * 4 * draw(st.integers(0, 10)),
        ident=draw(u16), tos=draw(u8), ttl=draw(u8), df=draw(st.booleans()),
        flow=draw(st.integers(0, 0xFFFFF)) if v6 else 0)


def scapy_packet(spec: Spec):
    """The same packet built by scapy (checksums computed by scapy)."""
    opts = []
    walked = walk_options(spec.hdr, 20, len(spec.hdr))
    assert walked is not None
    i = 20
    for kind, off, olen in walked:
        opts += [("NOP", None)] * (off - i)
        opts.append((kind, bytes(spec.hdr[off + 2:off + olen])))
        i = off + olen
    for byte in spec.hdr[i:]:  # trailing NOPs, then EOL; scapy pads the rest with zeros
        if byte:
            opts.append(("NOP", None))
        else:
            opts.append(("EOL", None))
            break
    sport, dport, seq, ack, _doff, flags, win, _c, urg = struct.unpack_from(
        "!HHIIBBHHH", spec.hdr)
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=win, urgptr=urg,
              dataofs=len(spec.hdr) // 4, options=opts)
    if spec.v6:
        ip = IPv6(src=str(IPv6Address(spec.src)), dst=str(IPv6Address(spec.dst)), tc=spec.tos,
                  fl=spec.flow, hlim=spec.ttl)
    else:
        ip = IP(src=str(IPv4Address(spec.src)), dst=str(IPv4Address(spec.dst)), tos=spec.tos,
                id=spec.ident, flags="DF" if spec.df else 0, ttl=spec.ttl,
                options=spec.ip_opts or [])
    return ip / tcp / spec.payload


def scapy_tcp_checksum(pkt_bytes: bytes, v6: bool) -> int:
    """scapy's own TCP checksum of a whole packet (its checksum field zeroed)."""
    p = IPv6(pkt_bytes) if v6 else IP(pkt_bytes)
    seg = bytearray(raw(p[TCP]))
    seg[16:18] = b"\0\0"
    if v6:
        return in6_chksum(6, p, bytes(seg))
    return in4_chksum(6, p, bytes(seg))


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


# --- walk_options / pad_options --------------------------------------------------------------

def ref_walk(buf: bytes, start: int, end: int):
    """Spec of walk_options, written independently."""
    out = []
    i = start
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if end - i < 2:
            return None
        olen = buf[i + 1]
        if olen < 2 or olen > end - i:
            return None
        out.append((kind, i, olen))
        i += olen
    return out


class TestWalkOptions:
    @given(st.lists(option_items, max_size=8), st.binary(max_size=4), st.binary(max_size=6))
    def test_constructed_list(self, items, prefix, junk):
        block = b"".join(items)
        buf = prefix + block
        want = []
        i = len(prefix)
        for item in items:
            if item != b"\x01":
                want.append((item[0], i, len(item)))
            i += len(item)
        assert walk_options(buf + b"\0" + junk, len(prefix), len(buf) + 1 + len(junk)) == want
        assert walk_options(buf, len(prefix), len(buf)) == want
        # bytes after ``end`` are never looked at
        assert walk_options(buf + b"\x05", len(prefix), len(buf)) == want

    @given(st.binary(max_size=44), st.integers(0, 4))
    def test_random_bytes_match_spec(self, data, start):
        start = min(start, len(data))
        assert walk_options(data, start, len(data)) == ref_walk(data, start, len(data))

    def test_stops_at_eol(self):
        buf = b"\x02\x04\x05\xb4\x00\x00\xff\x00"  # after EOL: a silly option (length 0)
        assert walk_options(buf, 0, len(buf)) == [(2, 0, 4)]

    def test_nops_skipped(self):
        buf = b"\x01\x01\x08\x0a" + bytes(8)
        assert walk_options(buf, 0, len(buf)) == [(8, 2, 10)]

    @pytest.mark.parametrize("buf", [
        b"\x02\x00\x00\x00",  # length 0
        b"\x02\x01\x00\x00",  # length 1
        b"\x01\x01\x01\x1e",  # kind with no length byte
        b"\x08\x0a\x00\x00",  # runs past the end
        b"\x02\x04\x05\xb4\x1e\x05\x20\x00",  # second option runs past the end
    ])
    def test_malformed(self, buf):
        assert walk_options(buf, 0, len(buf)) is None

    def test_option_crossing_end_is_malformed(self):
        buf = b"\x02\x04\x05\xb4" * 2
        assert walk_options(buf, 0, 6) is None


class TestPadOptions:
    @given(st.binary(max_size=40))
    def test_left_nop_padding(self, opts):
        padded = pad_options(opts)
        pad = len(padded) - len(opts)
        assert len(padded) % 4 == 0 and 0 <= pad < 4
        assert padded == b"\x01" * pad + opts
        assert isinstance(pad_options(bytearray(opts)), bytes)


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

    @staticmethod
    def _v4(**kw) -> bytearray:
        return Spec(False, b"\x0a\0\0\x01", b"\x0a\0\0\x02", tcp_header(), b"data", **kw).assemble()

    @staticmethod
    def _v6() -> bytearray:
        return Spec(True, b"\x20\x01" + bytes(13) + b"\x01", b"\x20\x01" + bytes(13) + b"\x02",
                    tcp_header(), b"data").assemble()

    def test_good_baselines_parse(self):
        assert parse_packet(self._v4()) is not None
        assert parse_packet(self._v6()) is not None
        assert parse_packet(self._v4(df=False)) is not None

    @pytest.mark.parametrize("proto", [17, 1, 132, 0])
    def test_non_tcp(self, proto):
        v4 = self._v4()
        v4[9] = proto
        assert parse_packet(v4) is None
        v6 = self._v6()
        v6[6] = proto
        assert parse_packet(v6) is None

    @pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x1FFF, 0x0100, 0x6000, 0x4001])
    def test_ipv4_fragments(self, frag):
        buf = self._v4()
        struct.pack_into("!H", buf, 6, frag)  # MF and/or a fragment offset
        assert parse_packet(buf) is None

    def test_df_is_not_a_fragment(self):
        buf = self._v4()
        struct.pack_into("!H", buf, 6, 0x4000)
        assert parse_packet(buf) is not None

    @pytest.mark.parametrize("nh", [0, 43, 44, 60, 51, 50])
    def test_ipv6_extension_headers(self, nh):
        base = self._v6()
        # extension header (8 bytes: next header TCP, length 0, 6 bytes of padding) before TCP
        ext = bytes((6, 0)) + bytes(6)
        buf = base[:40] + ext + base[40:]
        buf[6] = nh
        struct.pack_into("!H", buf, 4, len(buf) - 40)
        assert parse_packet(buf) is None

    @pytest.mark.parametrize("cut", [1, 4, 19, 20])
    def test_truncated(self, cut):
        for buf in (self._v4(), self._v6()):
            assert parse_packet(buf[:-cut]) is None  # IP length says more than we have

    def test_too_short(self):
        assert parse_packet(bytearray()) is None
        assert parse_packet(self._v4()[:39]) is None
        assert parse_packet(self._v6()[:59]) is None

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
        for buf, th in ((self._v4(), 20), (self._v6(), 40)):
            buf[th + 12] = doff << 4
            assert parse_packet(buf) is None

    def test_bad_data_offset_beyond_packet(self):
        for buf, th in ((self._v4(), 20), (self._v6(), 40)):
            buf[th + 12] = 15 << 4  # 60 bytes of header, only 24 bytes of segment
            assert parse_packet(buf) is None

    def test_ip_length_below_headers(self):
        buf = self._v4()
        struct.pack_into("!H", buf, 2, 39)
        assert parse_packet(buf) is None
        buf = self._v4()
        buf[0] = 0x44  # IHL 16 bytes
        assert parse_packet(buf) is None

    def test_other_ip_versions(self):
        for ver in (0, 5, 7, 15):
            buf = self._v4()
            buf[0] = (ver << 4) | 5
            assert parse_packet(buf) is None


# --- Incremental checksum updates -------------------------------------------------------------

def op_strategy():
    return st.one_of(
        st.tuples(st.just("seq"), u32),
        st.tuples(st.just("ack"), u32),
        st.tuples(st.just("win"), u16),
        st.tuples(st.just("flags"), u8),
        st.tuples(st.just("sport"), u16),
        st.tuples(st.just("dport"), u16),
        st.tuples(st.just("src"), addr16),
        st.tuples(st.just("dst"), addr16),
        st.tuples(st.just("patch"), st.integers(0, 63), st.binary(min_size=0, max_size=13)),
        st.tuples(st.just("options"), option_blocks()),
        st.tuples(st.just("finish")),
    )


_FIELD = {"seq": ("!I", 4), "ack": ("!I", 8), "win": ("!H", 14), "sport": ("!H", 0),
          "dport": ("!H", 2)}


def apply_op(pkt, spec: Spec, op, patch_from: int = 0) -> None:
    """Apply ``op`` to the packet under test and to the model ``spec``.

    Patches land in ``[patch_from, hl)`` of the TCP header, at any alignment and length.
    """
    name = op[0]
    hdr = spec.hdr
    if name in _FIELD:
        fmt, off = _FIELD[name]
        getattr(pkt, "set_" + name)(op[1])
        struct.pack_into(fmt, hdr, off, op[1])
    elif name == "flags":
        pkt.set_flags(op[1])
        hdr[13] = op[1]
    elif name in ("src", "dst"):
        addr = op[1][:len(spec.src)]
        getattr(pkt, "set_" + name)(addr)
        setattr(spec, name, addr)
    elif name == "patch":
        hl = len(hdr)
        rel = patch_from + op[1] % (hl - patch_from)
        data = bytearray(op[2][:hl - rel])
        if rel <= 12 < rel + len(data):
            data[12 - rel] = hdr[12]  # keep the data offset: a length change is set_options'
        pkt.patch_bytes(pkt.th + rel, bytes(data))
        hdr[rel:rel + len(data)] = data
    elif name == "options":
        opts = op[1]
        pkt.set_options(opts)
        hl = 20 + len(opts)
        spec.hdr = bytearray(hdr[:20]) + opts
        spec.hdr[12] = (hl << 2) | (hdr[12] & 0x0F)
    elif name == "finish":
        pkt.finish()
    else:  # pragma: no cover
        raise AssertionError(op)


def check_against_model(pkt, spec: Spec) -> None:
    """The rewritten packet equals the one assembled from the model from scratch."""
    buf = pkt.buf
    th = spec.th
    want = spec.assemble()
    assert pkt.checksum_ok()
    assert struct.unpack_from("!H", buf, th + 16)[0] == struct.unpack_from("!H", want, th + 16)[0]
    if spec.v6:
        assert struct.unpack_from("!H", buf, 4)[0] == len(spec.hdr) + len(spec.payload)
    else:
        assert struct.unpack_from("!H", buf, 2)[0] == th + len(spec.hdr) + len(spec.payload)
        assert struct.unpack_from("!H", buf, 10)[0] == struct.unpack_from("!H", want, 10)[0]
    assert pkt.payload == spec.payload
    assert bytes(buf[th + len(spec.hdr):]) == spec.payload
    assert (pkt.hl, pkt.plen) == (len(spec.hdr), len(spec.payload))
    assert bytes(buf) == bytes(want)
    again = parse_packet(bytearray(buf))
    assert again is not None and again.checksum_ok()
    assert (again.seq, again.ack, again.win, again.flags, again.sport, again.dport) == (
        pkt.seq, pkt.ack, pkt.win, pkt.flags, pkt.sport, pkt.dport)


class TestIncrementalUpdate:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(specs(), st.lists(op_strategy(), max_size=12))
    def test_random_rewrites_equal_full_recomputation(self, spec, ops):
        pkt = parse_packet(spec.assemble())
        assert pkt is not None
        for op in ops:
            apply_op(pkt, spec, op)
        pkt.finish()
        check_against_model(pkt, spec)

    @SETTINGS
    @given(specs(), st.lists(op_strategy(), max_size=6), st.integers(0, 63),
           st.binary(min_size=1, max_size=20))
    def test_patch_anywhere_in_header(self, spec, ops, where, data):
        """``patch_bytes`` over any bytes of the header (the data offset byte is kept) as
        the last rewrite before ``finish``: its own delta, at every alignment."""
        pkt = parse_packet(spec.assemble())
        for op in ops:
            apply_op(pkt, spec, op)
        apply_op(pkt, spec, ("patch", where, data), patch_from=0)
        pkt.finish()
        assert pkt.checksum_ok()
        assert bytes(pkt.buf) == bytes(spec.assemble())

    @SETTINGS
    @given(specs(), st.lists(option_blocks(), min_size=1, max_size=4))
    def test_set_options_grow_shrink_remove(self, spec, blocks):
        pkt = parse_packet(spec.assemble())
        for opts in blocks + [b""] + blocks[:1] + [bytes(40)]:
            apply_op(pkt, spec, ("options", opts))
            assert bytes(pkt.buf[pkt.th + pkt.hl:]) == spec.payload
        pkt.finish()
        check_against_model(pkt, spec)

    @pytest.mark.parametrize("n", [1, 2, 3, 5, 41, 44])
    def test_set_options_rejects_bad_length(self, n):
        pkt = parse_packet(TestParsePacket._v4())
        before = bytes(pkt.buf)
        with pytest.raises(ValueError):
            pkt.set_options(b"\x01" * n)
        assert bytes(pkt.buf) == before

    @SETTINGS
    @given(specs(), st.lists(op_strategy(), max_size=8))
    def test_recompute_checksums_equals_reference(self, spec, ops):
        pkt = parse_packet(spec.assemble())
        for op in ops:
            apply_op(pkt, spec, op)
        # wreck both checksum fields, then recompute in full
        pkt.buf[pkt.th + 16:pkt.th + 18] = b"\x12\x34"
        if not spec.v6:
            pkt.buf[10:12] = b"\x56\x78"
        pkt.recompute_checksums()
        assert bytes(pkt.buf) == bytes(spec.assemble())
        pkt.finish()  # no pending delta is left behind
        assert bytes(pkt.buf) == bytes(spec.assemble())

    def test_checksum_ok_detects_corruption(self):
        for buf, th in ((TestParsePacket._v4(), 20), (TestParsePacket._v6(), 40)):
            pkt = parse_packet(buf)
            assert pkt.verify_checksums()
            buf[-1] ^= 0x01  # payload
            assert not pkt.verify_checksums()
            pkt.csum_mode = CSUM_UNVERIFIED  # (as a received packet nobody checked)
            assert not pkt.checksum_ok()
            buf[-1] ^= 0x01
            if th == 20:
                buf[8] ^= 0x01  # TTL: only the IPv4 header checksum breaks
                assert not pkt.checksum_ok()
                buf[8] ^= 0x01
            assert pkt.checksum_ok() and pkt.csum_mode == CSUM_OK  # verified once, trusted

    def test_checksum_trusted_unless_unverified(self):
        for mode in (CSUM_OK, CSUM_PARTIAL, CSUM_GSO):
            buf = TestParsePacket._v4()
            buf[-1] ^= 0x01
            pkt = parse_packet(buf)
            pkt.csum_mode = mode
            assert pkt.checksum_ok()  # the kernel or NIC checked it, or completes it

    @pytest.mark.parametrize("field", ["seq", "ack", "win", "sport", "dport", "flags"])
    def test_patch_then_set_same_field(self, field):
        """Regression: ``patch_bytes`` over a fixed field must update the decoded
        attribute, or a later ``set_*`` of that field computes its delta from a stale
        value and writes a wrong checksum."""
        fmt, off = _FIELD.get(field, ("!B", 13))
        width = struct.calcsize(fmt)
        spec = Spec(False, b"\x0a\0\0\x01", b"\x0a\0\0\x02",
                    tcp_header(seq=1000, ack=7, flags=0x18), b"abc")
        pkt = parse_packet(spec.assemble())
        patched = struct.pack(fmt, 0x5A)[-width:]
        pkt.patch_bytes(pkt.th + off, patched)
        assert getattr(pkt, field) == 0x5A
        getattr(pkt, "set_" + field)(0x11)
        pkt.finish()
        struct.pack_into(fmt, spec.hdr, off, 0x11)
        assert getattr(pkt, field) == 0x11
        assert pkt.checksum_ok()
        assert bytes(pkt.buf) == bytes(spec.assemble())


# --- Negative zero: sums that hit 0xFFFF ---------------------------------------------------

def negative_zero(spec: Spec) -> Spec:
    """``spec`` with its first payload word set so the TCP sum is 0xFFFF (field 0x0000)."""
    spec = copy.deepcopy(spec)
    payload = bytearray(spec.payload)
    payload[0:2] = b"\0\0"
    spec.payload = bytes(payload)
    seg = spec.segment()
    seg[16:18] = b"\0\0"
    s = ref_sum(ref_pseudo(spec.src, spec.dst, len(seg)) + bytes(seg))
    payload[0:2] = struct.pack("!H", 0xFFFF - s)  # s + (0xFFFF - s) = 0xFFFF, no carry
    spec.payload = bytes(payload)
    return spec


class TestNegativeZero:
    @SETTINGS
    @given(specs(min_payload=2))
    def test_constructed_edge(self, spec):
        spec = negative_zero(spec)
        seg = spec.segment()
        assert ref_sum(ref_pseudo(spec.src, spec.dst, len(seg)) + bytes(seg)) == 0xFFFF
        assert struct.unpack_from("!H", seg, 16)[0] == 0  # ~0xFFFF
        seg[16:18] = b"\0\0"
        assert tcp_checksum(spec.src, spec.dst, seg) == 0
        pkt = parse_packet(spec.assemble())
        assert pkt.checksum_ok()
        pkt.recompute_checksums()
        assert bytes(pkt.buf) == bytes(spec.assemble())

    @SETTINGS
    @given(specs(min_payload=2), st.sampled_from(["seq", "ack", "win", "sport", "options",
                                                  "src"]), st.data())
    def test_incremental_update_into_edge(self, spec, field, data):
        """Start from a packet differing in one field; rewriting that field to the value
        that makes the sum 0xFFFF must give field 0x0000, as a full recomputation does."""
        target = negative_zero(spec)
        start = copy.deepcopy(target)
        if field == "options":
            start.hdr = tcp_header(opts=data.draw(option_blocks()))
            start.hdr[:20] = target.hdr[:20]
            start.hdr[12] = (len(start.hdr) << 2) | (target.hdr[12] & 0x0F)
        elif field == "src":
            start.src = data.draw(addr16 if spec.v6 else addr4)
        else:
            fmt, off = _FIELD[field]
            struct.pack_into(fmt, start.hdr, off,
                             data.draw(u32 if fmt == "!I" else u16))
        pkt = parse_packet(start.assemble())
        if field == "options":
            pkt.set_options(bytes(target.hdr[20:]))
        elif field == "src":
            pkt.set_src(target.src)
        else:
            getattr(pkt, "set_" + field)(struct.unpack_from(_FIELD[field][0], target.hdr,
                                                            _FIELD[field][1])[0])
        pkt.finish()
        assert struct.unpack_from("!H", pkt.buf, target.th + 16)[0] == 0
        assert bytes(pkt.buf) == bytes(target.assemble())

    @SETTINGS
    @given(specs(min_payload=2), st.lists(op_strategy(), min_size=1, max_size=5),
           st.sampled_from([None, 0xFFFF]))
    def test_incremental_update_out_of_edge(self, spec, ops, field):
        """From a packet whose sum is 0xFFFF (field 0x0000, or the equally valid 0xFFFF
        some senders write), any rewrite gives the recomputed field. (A net-zero rewrite
        of a 0xFFFF field may leave it as it was: both values verify.)"""
        spec = negative_zero(spec)
        spec.tcp_csum = field
        pkt = parse_packet(spec.assemble())
        assert pkt.checksum_ok()
        spec.tcp_csum = None
        for op in ops:
            apply_op(pkt, spec, op)
        pkt.finish()
        got = struct.unpack_from("!H", pkt.buf, spec.th + 16)[0]
        if field == 0xFFFF and got == 0xFFFF:
            assert ref_tcp_checksum(spec.src, spec.dst, spec.segment()) == 0
            spec.tcp_csum = 0xFFFF
        check_against_model(pkt, spec)

    @SETTINGS
    @given(specs(min_payload=2))
    def test_delta_multiple_of_ffff(self, spec):
        """A rewrite whose delta is a nonzero multiple of 0xFFFF leaves the sum alone."""
        for s in (spec, negative_zero(spec)):
            s = copy.deepcopy(s)
            pkt = parse_packet(s.assemble())
            pkt.set_sport(0)
            pkt.finish()
            pkt.set_sport(0xFFFF)  # delta +0xFFFF
            seq = pkt.seq % (2**32 - 0xFFFF)
            pkt.set_seq(seq)
            pkt.finish()
            pkt.set_seq(seq + 0xFFFF)  # delta +0xFFFF
            pkt.finish()
            struct.pack_into("!H", s.hdr, 0, 0xFFFF)
            struct.pack_into("!I", s.hdr, 4, seq + 0xFFFF)
            assert bytes(pkt.buf) == bytes(s.assemble())

    @SETTINGS
    @given(specs(v6=False), addr4)
    def test_ipv4_header_edge_via_set_src(self, spec, other):
        """The IPv4 header sum hits 0xFFFF after ``set_src``: header checksum 0x0000."""
        target = copy.deepcopy(spec)
        target.ident = 0
        hdr = target.ip_header(len(target.hdr) + len(target.payload))
        hdr[10:12] = b"\0\0"
        target.ident = 0xFFFF - ref_sum(hdr)
        hdr = target.ip_header(len(target.hdr) + len(target.payload))
        assert struct.unpack_from("!H", hdr, 10)[0] == 0
        start = copy.deepcopy(target)
        start.src = other
        pkt = parse_packet(start.assemble())
        pkt.set_src(target.src)
        pkt.finish()
        assert bytes(pkt.buf) == bytes(target.assemble())


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
