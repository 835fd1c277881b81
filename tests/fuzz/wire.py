"""Packets as the fuzzer sees them: an independent, strict decoder and validator of
IPv4/IPv6 + TCP + MPTCP option lists, and checksum helpers.

Written apart from the proxy's codec (``mptcp_proxy.core.tcp``/``options``) on
purpose: the validator judges what the core emits, so it must not share its
mistakes. Lengths and layouts follow RFC 791, RFC 8200, RFC 9293 §3.1, RFC 7323,
RFC 2018 and RFC 8684 §3 (the option lengths Linux's ``mptcp_parse_option`` accepts).
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field

IPPROTO_TCP = 6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
_LITTLE = sys.byteorder == "little"
# IPv6 extension headers that may precede TCP (RFC 8200 §4): hop-by-hop, routing,
# fragment, destination options (AH and ESP are not walked: the core never sees them)
IPV6_EXT = {0, 43, 44, 60}


# ---------------------------------------------------------------------- checksums
def ones16(data) -> int:
    """RFC 1071 ones'-complement sum of 16-bit big-endian words, folded to 0..0xFFFF."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\x00"
    a = array("H", data)
    if _LITTLE:
        a.byteswap()
    s = sum(a)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:  # (a length above 65535, BIG TCP, sums as two words)
        return src + dst + struct.pack("!BBHH", 0, IPPROTO_TCP, length >> 16, length & 0xFFFF)
    return src + dst + struct.pack("!IxxxB", length, IPPROTO_TCP)


def tcp_csum_ok(src: bytes, dst: bytes, seg) -> bool:
    """The TCP checksum of segment ``seg`` (header with its checksum field, payload)
    verifies: the sum over pseudo-header and segment is 0xFFFF."""
    return ones16(_pseudo(src, dst, len(seg)) + bytes(seg)) == 0xFFFF


def ipv4_hdr_ok(buf) -> bool:
    ihl = (buf[0] & 15) * 4
    return ones16(bytes(buf[:ihl])) == 0xFFFF


@dataclass
class Layout:
    """Where things are in a raw IP packet (lenient: for inputs, also fragments and
    IPv6 extension headers)."""

    v6: bool
    src: bytes
    dst: bytes
    th: int  # offset of the TCP header, or -1 when there is none to read
    end: int  # end of the IP packet as declared by its length field (clamped to the buffer)
    frag: bool = False  # an IPv4 fragment, or an IPv6 Fragment header
    first_frag: bool = True
    ext: bool = False  # IPv6 extension headers before TCP
    jumbo: bool = False  # IP length field 0 (BIG TCP / jumbogram)


def layout(buf) -> Layout | None:
    """Locate the TCP header of an IPv4/IPv6 packet, walking IPv6 extension headers and
    reading IPv4 first fragments. ``None`` if it is not TCP or too short to tell."""
    n = len(buf)
    if n < 20:
        return None
    ver = buf[0] >> 4
    if ver == 4:
        ihl = (buf[0] & 15) * 4
        if ihl < 20 or n < ihl or buf[9] != IPPROTO_TCP:
            return None
        tot = (buf[2] << 8) | buf[3]
        jumbo = tot == 0
        end = n if jumbo else min(tot, n)
        off = ((buf[6] & 0x1F) << 8) | buf[7]
        mf = bool(buf[6] & 0x20)
        lo = Layout(False, bytes(buf[12:16]), bytes(buf[16:20]), ihl, end,
                    frag=mf or off != 0, first_frag=off == 0, jumbo=jumbo)
        if off != 0 or ihl + 20 > end:
            lo.th = -1
        return lo
    if ver == 6:
        if n < 40:
            return None
        plen = (buf[4] << 8) | buf[5]
        jumbo = plen == 0
        end = n if jumbo else min(40 + plen, n)
        nh = buf[6]
        off = 40
        ext = frag = False
        first = True
        while nh in IPV6_EXT:
            if off + 8 > end:
                return None
            ext = True
            if nh == 44:
                frag = True
                fo = ((buf[off + 2] << 8) | buf[off + 3]) >> 3
                first = fo == 0
                nh = buf[off]
                off += 8
            else:
                nh, hlen = buf[off], (buf[off + 1] + 1) * 8
                off += hlen
        if nh != IPPROTO_TCP:
            return None
        lo = Layout(True, bytes(buf[8:24]), bytes(buf[24:40]), off, end, frag=frag,
                    first_frag=first, ext=ext, jumbo=jumbo)
        if not first or off + 20 > end:
            lo.th = -1
        return lo
    return None


def four_tuple(buf) -> tuple | None:
    """(src, sport, dst, dport) of a TCP packet, also through IPv6 extension headers and
    in an IPv4 first fragment; ``None`` if the ports cannot be read."""
    lo = layout(buf)
    if lo is None or lo.th < 0:
        return None
    th = lo.th
    return (lo.src, (buf[th] << 8) | buf[th + 1], lo.dst, (buf[th + 2] << 8) | buf[th + 3])


def fix_checksums(buf: bytearray) -> bytearray:
    """Recompute the IPv4 header checksum and the TCP checksum (full, over the segment
    the IP length declares) in place; returns ``buf``. Fragments keep what they have."""
    lo = layout(buf)
    if lo is None:
        return buf
    if not lo.v6:
        ihl = (buf[0] & 15) * 4
        buf[10:12] = b"\x00\x00"
        buf[10:12] = struct.pack("!H", 0xFFFF - ones16(bytes(buf[:ihl])))
    if lo.th < 0 or lo.frag:
        return buf
    th = lo.th
    seg_end = lo.end
    if seg_end - th < 20:
        return buf
    buf[th + 16:th + 18] = b"\x00\x00"
    s = ones16(_pseudo(lo.src, lo.dst, seg_end - th) + bytes(buf[th:seg_end]))
    buf[th + 16:th + 18] = struct.pack("!H", (0xFFFF - s) or 0xFFFF)
    return buf


def set_partial_csum(buf: bytearray) -> bytearray:
    """Put what a CHECKSUM_PARTIAL skb holds in the TCP checksum field: the folded
    pseudo-header sum, not complemented (Linux ``tcp_v4_send_check``)."""
    lo = layout(buf)
    if lo is None or lo.th < 0:
        return buf
    s = ones16(_pseudo(lo.src, lo.dst, lo.end - lo.th))
    buf[lo.th + 16:lo.th + 18] = struct.pack("!H", s)
    return buf


def csum_valid(buf) -> bool:
    """Both checksums of a TCP packet verify (IPv4 header and TCP)."""
    lo = layout(buf)
    if lo is None or lo.th < 0:
        return False
    if not lo.v6 and not ipv4_hdr_ok(buf):
        return False
    return tcp_csum_ok(lo.src, lo.dst, bytes(buf[lo.th:lo.end]))


# -------------------------------------------------------------- strict validation
@dataclass
class Seg:
    """A decoded TCP segment (all values from the wire)."""

    v6: bool
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    win: int
    th: int
    hl: int
    plen: int
    opts: list = field(default_factory=list)  # [(kind, bytes)] without NOP/EOL
    ttl: int = 64
    tos: int = 0

    @property
    def tuple(self) -> tuple:
        return (self.src, self.sport, self.dst, self.dport)

    def mptcp(self) -> list[bytes]:
        return [o for k, o in self.opts if k == 30]

    def option(self, kind: int) -> bytes | None:
        for k, o in self.opts:
            if k == kind:
                return o
        return None


_TCP_LEN = {2: (4,), 3: (3,), 4: (2,), 5: (10, 18, 26, 34), 8: (10,)}
_ADD_ADDR_LEN = {False: (16, 18, 28, 30), True: (8, 10, 20, 22)}


def dss_expected(flags: int) -> int:
    n = 4
    if flags & 0x01:
        n += 8 if flags & 0x02 else 4
    if flags & 0x04:
        n += 14 if flags & 0x08 else 10
    return n


def mptcp_problem(o: bytes, flags: int, plen: int) -> str | None:
    """Why MPTCP option ``o`` is malformed for a segment with TCP ``flags`` and ``plen``
    payload bytes (RFC 8684 §3 lengths, strict as Linux), or None."""
    n = len(o)
    if n < 3:
        return "MPTCP option shorter than 3 bytes"
    sub = o[2] >> 4
    syn = bool(flags & SYN)
    ackf = bool(flags & ACK)
    if sub == 0:
        want = (4,) if syn and not ackf else (12,) if syn else ((22, 24) if plen else (20,))
        if n not in want:
            return f"MP_CAPABLE of length {n} on a segment with flags {flags:#x}"
        if (o[2] & 15) != 1 or n < 4 or o[3] & 0x5E or not o[3] & 0x01:
            return "MP_CAPABLE with a bad version or flags"
    elif sub == 1:
        want = 12 if syn and not ackf else 16 if syn else 24
        if n != want:
            return f"MP_JOIN of length {n} on a segment with flags {flags:#x}"
    elif sub == 2:
        if n < 4:
            return "DSS shorter than 4 bytes"
        e = dss_expected(o[3])
        if n != e and not (o[3] & 0x04 and n == e + 2):
            return f"DSS of length {n} for flags {o[3]:#x} (expected {e})"
    elif sub == 3:
        if n not in _ADD_ADDR_LEN[bool(o[2] & 1)]:
            return f"ADD_ADDR of length {n}"
    elif sub == 4:
        if not 4 <= n <= 11:
            return f"REMOVE_ADDR of length {n}"
    elif sub == 5:
        if n not in (3, 4):
            return f"MP_PRIO of length {n}"
    elif sub in (6, 7):
        if n != 12:
            return f"subtype {sub} of length {n}"
    elif sub == 8:
        if n != 4:
            return f"MP_TCPRST of length {n}"
        if not flags & RST:
            return "MP_TCPRST on a segment without RST"
    else:
        return f"unknown MPTCP subtype {sub}"
    return None


def decode_unreachable(buf) -> tuple[tuple | None, list[str]]:
    """Decode ``buf`` as an ICMP destination unreachable (IPv4 type 3, IPv6 type 1) that
    quotes a TCP segment. Returns the quoted segment's 4-tuple reversed (the connection
    the message is for, as ``Seg.tuple`` of a packet toward its sender) and the list of
    problems: lengths, checksums, type, a quote too short to name the ports."""
    n = len(buf)
    v6 = n >= 1 and buf[0] >> 4 == 6
    hl = 40 if v6 else (buf[0] & 15) * 4 if n else 0
    if n < hl + 8 + (40 if v6 else 20) + 4:
        return None, [f"ICMP packet of {n} bytes"]
    bad: list[str] = []
    icmp = bytes(buf[hl:])
    if v6:
        if 40 + ((buf[4] << 8) | buf[5]) != n:
            bad.append("IPv6 payload length != packet size")
        pseudo = bytes(buf[8:40]) + struct.pack("!IxxxB", len(icmp), 58)
        if ones16(pseudo + icmp) != 0xFFFF:
            bad.append("bad ICMPv6 checksum")
        if icmp[0] != 1:
            bad.append(f"ICMPv6 type {icmp[0]}")
        q = icmp[8:]
        qsrc, qdst, qth = q[8:24], q[24:40], 40
    else:
        if ((buf[2] << 8) | buf[3]) != n:
            bad.append(f"IPv4 total length != packet size {n}")
        if not ipv4_hdr_ok(buf):
            bad.append("bad IPv4 header checksum")
        if ones16(icmp) != 0xFFFF:
            bad.append("bad ICMP checksum")
        if icmp[0] != 3:
            bad.append(f"ICMP type {icmp[0]}")
        q = icmp[8:]
        qth = (q[0] & 15) * 4
        qsrc, qdst = q[12:16], q[16:20]
        if q[9] != IPPROTO_TCP:
            bad.append(f"ICMP quotes protocol {q[9]}")
    if len(q) < qth + 4:
        return None, bad + ["ICMP quote too short for the ports"]
    sport, dport = struct.unpack_from("!HH", q, qth)
    return (bytes(qdst), dport, bytes(qsrc), sport), bad


def decode(buf, *, require_ip_csum: bool = True, require_tcp_csum: bool = True
           ) -> tuple[Seg | None, list[str]]:
    """Decode ``buf`` as one well-formed TCP segment. Returns the segment (or None) and
    the list of problems: IP length not equal to the buffer or above 65535, fragments,
    extension headers, header lengths, option list shape, option lengths (TCP and
    MPTCP), duplicate MPTCP options, flag combinations, checksums (as required)."""
    bad: list[str] = []
    n = len(buf)
    if n < 40:
        return None, [f"packet of {n} bytes"]
    ver = buf[0] >> 4
    if ver == 4:
        ihl = (buf[0] & 15) * 4
        tot = (buf[2] << 8) | buf[3]
        if ihl < 20 or ihl + 20 > n:
            return None, [f"IPv4 header length {ihl}"]
        if tot != n:
            bad.append(f"IPv4 total length {tot} != packet size {n}")
        if n > 65535:
            bad.append(f"IPv4 packet of {n} bytes")
        if buf[9] != IPPROTO_TCP:
            return None, [f"IPv4 protocol {buf[9]}"]
        if (buf[6] & 0x3F) or buf[7]:
            bad.append("IPv4 fragment")
        if require_ip_csum and not ipv4_hdr_ok(buf):
            bad.append("bad IPv4 header checksum")
        src, dst, th = bytes(buf[12:16]), bytes(buf[16:20]), ihl
        ttl, tos = buf[8], buf[1]
    elif ver == 6:
        plen6 = (buf[4] << 8) | buf[5]
        if 40 + plen6 != n:
            bad.append(f"IPv6 payload length {plen6} + 40 != packet size {n}")
        if n - 40 > 65535:
            bad.append(f"IPv6 payload of {n - 40} bytes")
        if buf[6] != IPPROTO_TCP:
            return None, [f"IPv6 next header {buf[6]}"]
        src, dst, th = bytes(buf[8:24]), bytes(buf[24:40]), 40
        ttl, tos = buf[7], ((buf[0] & 15) << 4) | (buf[1] >> 4)
    else:
        return None, [f"IP version {ver}"]
    sport, dport, seq, ack, doff, flags, win = struct.unpack_from("!HHIIBBH", buf, th)
    hl = (doff >> 4) * 4
    if hl < 20 or th + hl > n:
        return None, bad + [f"TCP header length {hl}"]
    seg = Seg(ver == 6, src, dst, sport, dport, seq, ack, flags, win, th, hl, n - th - hl,
              ttl=ttl, tos=tos)
    if flags & SYN and flags & (RST | FIN):
        bad.append(f"TCP flags {flags:#x}")
    i, end = th + 20, th + hl
    seen: dict[int, int] = {}
    while i < end:
        k = buf[i]
        if k == 0:
            break
        if k == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            bad.append(f"option list malformed at kind {k}")
            break
        o = bytes(buf[i:i + buf[i + 1]])
        seg.opts.append((k, o))
        i += len(o)
        want = _TCP_LEN.get(k)
        if want is not None and len(o) not in want:
            bad.append(f"TCP option {k} of length {len(o)}")
        if k in (2, 3, 4) and not flags & SYN:
            bad.append(f"TCP option {k} on a segment without SYN")
        if k == 30:
            p = mptcp_problem(o, flags, seg.plen)
            if p:
                bad.append(p)
            sub = o[2] >> 4 if len(o) > 2 else -1
            if sub in (0, 1, 2):
                seen[sub] = seen.get(sub, 0) + 1
                if seen[sub] == 2:
                    bad.append(f"two MPTCP options of subtype {sub} in one segment")
    if require_tcp_csum and not tcp_csum_ok(src, dst, bytes(buf[th:n])):
        bad.append("bad TCP checksum")
    return seg, bad


# ----------------------------------------------------------------- building blocks
def build(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
          win: int = 0xFFFF, opts: bytes = b"", payload: bytes = b"", ttl: int = 64
          ) -> bytearray:
    """A whole IPv4 (4-byte addresses) or IPv6 packet with valid checksums; ``opts``
    is padded with NOPs in front to a multiple of 4 (at most 40 bytes are allowed by
    the header, more raise ``ValueError``)."""
    if len(opts) % 4:
        opts = b"\x01" * (4 - len(opts) % 4) + opts
    if len(opts) > 40:
        raise ValueError("options exceed 40 bytes")
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & M32, ack & M32,
                      (20 + len(opts)) << 2, flags, win & 0xFFFF, 0, 0) + opts + payload
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, ttl,
                         IPPROTO_TCP, 0, src, dst)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, ttl, src, dst)
    return fix_checksums(bytearray(ip + tcp))


def set_ip_length(buf: bytearray, lo: Layout | None = None) -> None:
    """Make the IP length field match the buffer (IPv4 total length, IPv6 payload)."""
    if buf[0] >> 4 == 4:
        struct.pack_into("!H", buf, 2, min(len(buf), 0xFFFF))
    else:
        struct.pack_into("!H", buf, 4, min(len(buf) - 40, 0xFFFF))


def hexdump(buf, limit: int = 200) -> str:
    b = bytes(buf)
    return b[:limit].hex() + ("..." if len(b) > limit else "")
