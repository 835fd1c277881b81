"""The independent reference of the TCP tests (tests/unit/test_tcp_*.py), which test
mptcp_proxy.core.tcp (IPv4/IPv6 + TCP views, option walking, RFC 1624 incremental
checksums) and mptcp_proxy.core.forge.build_segment.

Every checksum is checked against an independent reference: ``ref_sum`` is the plain
RFC 1071 loop over 16-bit words with end-around carry, run over pseudo-header +
segment. ``assemble`` builds a whole packet from a field-level model with that
reference, and is itself checked byte for byte against scapy (``TestReference``).
The incremental-update tests then compare the rewritten buffer with the packet
assembled from scratch: same bytes means the same TCP checksum field, IPv4 header
checksum, lengths, data offset and payload."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum

from mptcp_proxy.core.tcp import walk_options

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



def v4_packet(**kw) -> bytearray:
    """A valid IPv4 TCP segment with 4 bytes of data (``kw``: Spec fields such as ``df``)."""
    return Spec(False, b"\x0a\0\0\x01", b"\x0a\0\0\x02", tcp_header(), b"data", **kw).assemble()


def v6_packet() -> bytearray:
    """A valid IPv6 TCP segment with 4 bytes of data."""
    return Spec(True, b"\x20\x01" + bytes(13) + b"\x01", b"\x20\x01" + bytes(13) + b"\x02",
                tcp_header(), b"data").assemble()
