"""IPv4/IPv6 + TCP header views over a ``bytearray``, TCP option lists, checksums.

The per-packet path of the proxy: parse once with precompiled structs, rewrite
fields in place, and keep the TCP (and IPv4 header) checksum right with
incremental updates (RFC 1624) instead of a full recomputation.

Checksum arithmetic uses one identity throughout: the ones'-complement sum of
the 16-bit words of an even-length byte string is congruent, modulo 0xFFFF, to
the big-endian integer of that string (2**16 ≡ 1 mod 0xFFFF). So the sum of a
whole option block is ``int.from_bytes(block, "big") % 0xFFFF`` (one C call),
and changing a 16-bit-aligned field from ``old`` to ``new`` of any width changes
the sum by ``new - old`` (mod 0xFFFF).

No I/O here: the core is sans-I/O.
"""

from __future__ import annotations

import struct

from .checksum import (
    M16,
    fold_checksum,
    ipv4_header_checksum,
    ones_sum,
    pseudo_header_sum,
    tcp_checksum,
)
from .constants import (
    TCP_MAX_OPTION_SPACE,
    TCPOPT_EOL,
    TCPOPT_NOP,
    TCPOPT_SACK,
    TCPOPT_TIMESTAMP,
)
from .verdict import Verdict

__all__ = [
    "TcpPacket",
    "PacketTooBig",
    "peek_tuple",
    "parse_packet",
    "walk_options",
    "pad_options",
    "build_ts",
    "build_sack",
    "read_sack",
    "CSUM_OK",
    "CSUM_PARTIAL",
    "CSUM_GSO",
    "CSUM_UNVERIFIED",
    # (re-exported from .checksum for the callers that build whole packets)
    "fold_checksum",
    "ipv4_header_checksum",
    "ones_sum",
    "tcp_checksum",
]

_TCP_FIXED = struct.Struct("!HHIIBBHHH")  # sport dport seq ack doff_res flags win csum urg
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IPV4_FIXED = struct.Struct("!BBHHHBBH4s4s")
_TS = struct.Struct("!BBII")
_II = struct.Struct("!II")
NOP2 = b"\x01\x01"

IPPROTO_TCP = 6
IP_MAX_LEN = 0xFFFF  # bytes: the IPv4 total length / IPv6 payload length field


class PacketTooBig(ValueError):
    """A rewrite would make the packet larger than its 16-bit IP length field can say."""

def walk_options(buf: bytes | bytearray, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """List the TCP options in ``buf[start:end]`` as ``(kind, offset, length)``.

    NOP and EOL are skipped (EOL ends the list). Returns ``None`` if the list is
    malformed (an option length < 2 or running past ``end``), like Linux
    ``tcp_parse_options`` which stops at such "silly options".
    """
    out = []
    i = start
    while i < end:
        kind = buf[i]
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if kind == TCPOPT_EOL:
            break
        if i + 1 >= end:
            return None
        olen = buf[i + 1]
        if olen < 2 or i + olen > end:
            return None
        out.append((kind, i, olen))
        i += olen
    return out


def pad_options(opts: bytes | bytearray) -> bytes:
    """Left-pad an option block with NOPs to a multiple of 4 bytes (Linux style)."""
    rem = len(opts) & 3
    if rem:
        return b"\x01" * (4 - rem) + bytes(opts)
    return bytes(opts)


def build_ts(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, Timestamps (RFC 7323 §3): 12 bytes; values are 32-bit."""
    return NOP2 + _TS.pack(TCPOPT_TIMESTAMP, 10, tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def build_sack(blocks: list[tuple[int, int]]) -> bytes:
    """NOP, NOP, SACK (RFC 2018 §3) with 32-bit wire edges ``(left, right)``: 4 + 8n bytes."""
    out = bytearray(NOP2)
    out += bytes((TCPOPT_SACK, 2 + 8 * len(blocks)))
    for left, right in blocks:
        out += _II.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    return bytes(out)


def read_sack(buf, off: int, olen: int) -> list[tuple[int, int]]:
    """The SACK blocks of the option at ``buf[off]`` as 32-bit wire ``(left, right)``
    pairs; an option of a bad length (not 2 + 8n, n ≥ 1) yields none."""
    n = olen - 2
    if n <= 0 or n % 8:
        return []
    return [_II.unpack_from(buf, off + 2 + 8 * i) for i in range(n // 8)]


# What the TCP checksum field of a queued packet holds (the driver says, from the queue's
# metadata): a complete checksum that is trustworthy (verified by the NIC or the kernel,
# or written by the local stack), only the pseudo-header sum of a checksum offload
# (completed later), a GSO super-packet's (each segment's is computed when it is cut), or
# a complete checksum nobody verified yet (a received packet: verify before acting).
CSUM_OK = 0
CSUM_PARTIAL = 1
CSUM_GSO = 2
CSUM_UNVERIFIED = 3


class TcpPacket:
    """A parsed IPv4 or IPv6 TCP segment over a mutable ``bytearray``.

    Fields are decoded once at parse time (``sport``, ``dport``, ``seq``, ``ack``,
    ``flags``, ``win`` are plain attributes holding the *current* values).
    Rewrites go through the ``set_*`` methods, which patch the bytes and add to a
    pending checksum delta; :meth:`finish` writes the TCP checksum once. The
    packet may be rebuilt with another option block (:meth:`set_options`).

    Offsets: ``th`` is the TCP header's offset in ``buf``; ``hl`` the TCP header
    length in bytes (20..60); ``plen`` the payload length in bytes.
    """

    __slots__ = (
        "buf",
        "v6",
        "th",
        "hl",
        "plen",
        "sport",
        "dport",
        "seq",
        "ack",
        "flags",
        "win",
        "_delta",
        "_ipdelta",
        "csum_mode",
        "modified",
    )

    def __init__(self, buf: bytearray, v6: bool, th: int, hl: int, plen: int,
                 sport: int, dport: int, seq: int, ack: int, flags: int, win: int) -> None:
        self.buf = buf
        self.v6 = v6
        self.th = th
        self.hl = hl
        self.plen = plen
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.win = win
        self._delta = 0
        self._ipdelta = 0
        self.csum_mode = CSUM_OK
        self.modified = False  # any byte of the buffer changed (see Verdict)

    # -- addresses -----------------------------------------------------------
    @property
    def src(self) -> bytes:
        b = self.buf
        return bytes(b[8:24]) if self.v6 else bytes(b[12:16])

    @property
    def dst(self) -> bytes:
        b = self.buf
        return bytes(b[24:40]) if self.v6 else bytes(b[16:20])

    @property
    def opt_start(self) -> int:
        return self.th + 20

    @property
    def opt_end(self) -> int:
        return self.th + self.hl

    @property
    def payload(self) -> bytes:
        return bytes(self.buf[self.th + self.hl:self.th + self.hl + self.plen])

    @property
    def end_seq(self) -> int:
        """Sequence number after this segment (SYN and FIN count one each), 32-bit."""
        return (self.seq + self.plen + (self.flags & 1) + ((self.flags >> 1) & 1)) & 0xFFFFFFFF

    def options(self) -> list[tuple[int, int, int]] | None:
        """Options as ``(kind, offset, length)`` (see :func:`walk_options`)."""
        th = self.th
        return walk_options(self.buf, th + 20, th + self.hl)

    def option_bytes(self) -> bytes:
        return bytes(self.buf[self.th + 20:self.th + self.hl])

    # -- field rewrites (incremental checksum) -------------------------------
    def set_seq(self, value: int) -> None:
        self.modified = True
        value &= 0xFFFFFFFF
        self._delta += value - self.seq
        _U32.pack_into(self.buf, self.th + 4, value)
        self.seq = value

    def set_ack(self, value: int) -> None:
        self.modified = True
        value &= 0xFFFFFFFF
        self._delta += value - self.ack
        _U32.pack_into(self.buf, self.th + 8, value)
        self.ack = value

    def set_win(self, value: int) -> None:
        self.modified = True
        self._delta += value - self.win
        _U16.pack_into(self.buf, self.th + 14, value)
        self.win = value

    def set_flags(self, value: int) -> None:
        self.modified = True
        # flags are the low byte of the 16-bit word at th+12
        self._delta += value - self.flags
        self.buf[self.th + 13] = value
        self.flags = value

    def set_sport(self, value: int) -> None:
        self.modified = True
        self._delta += value - self.sport
        _U16.pack_into(self.buf, self.th, value)
        self.sport = value

    def set_dport(self, value: int) -> None:
        self.modified = True
        self._delta += value - self.dport
        _U16.pack_into(self.buf, self.th + 2, value)
        self.dport = value

    def set_src(self, addr: bytes) -> None:
        self.modified = True
        b = self.buf
        if self.v6:
            old = b[8:24]
            b[8:24] = addr
        else:
            old = b[12:16]
            b[12:16] = addr
            self._ipdelta += int.from_bytes(addr, "big") - int.from_bytes(old, "big")
        self._delta += int.from_bytes(addr, "big") - int.from_bytes(old, "big")

    def set_dst(self, addr: bytes) -> None:
        self.modified = True
        b = self.buf
        if self.v6:
            old = b[24:40]
            b[24:40] = addr
        else:
            old = b[16:20]
            b[16:20] = addr
            self._ipdelta += int.from_bytes(addr, "big") - int.from_bytes(old, "big")
        self._delta += int.from_bytes(addr, "big") - int.from_bytes(old, "big")

    def patch_bytes(self, offset: int, data: bytes) -> None:
        """Overwrite ``len(data)`` bytes of the TCP header at absolute ``offset``
        (any alignment, no length change), updating the checksum delta."""
        self.modified = True
        b = self.buf
        th = self.th
        s = offset - ((offset - th) & 1)
        e = offset + len(data)
        e += (e - th) & 1
        old = int.from_bytes(b[s:e], "big")
        b[offset:offset + len(data)] = data
        self._delta += int.from_bytes(b[s:e], "big") - old
        if offset < th + 16:  # a fixed-header field changed: re-decode the fields
            (self.sport, self.dport, self.seq, self.ack, _doff, self.flags,
             self.win) = _TCP_FIXED.unpack_from(b, th)[:7]

    def set_options(self, opts: bytes) -> None:
        """Replace the whole option block with ``opts`` (length a multiple of 4, at
        most 40 bytes), moving the payload and fixing data offset, IP lengths and
        checksums incrementally. Pending field changes are kept. Raises ``ValueError``
        for a bad block and :class:`PacketTooBig` (nothing changed) when the packet
        would outgrow the 16-bit IP length."""
        n = len(opts)
        if n & 3 or n > TCP_MAX_OPTION_SPACE:
            raise ValueError("option block must be a multiple of 4 bytes, at most 40")
        if len(self.buf) - self.hl + 20 + n > IP_MAX_LEN + (40 if self.v6 else 0):
            raise PacketTooBig(len(self.buf) - self.hl + 20 + n)
        self.modified = True
        b = self.buf
        th = self.th
        old_hl = self.hl
        old = b[th + 20:th + old_hl]
        new_hl = 20 + n
        grow = new_hl - old_hl
        # options sum change, data offset nibble (high nibble of the word at th+12)
        self._delta += (int.from_bytes(opts, "big") - int.from_bytes(old, "big")
                        + ((new_hl - old_hl) << 10)
                        + grow)  # pseudo-header TCP length
        b[th + 20:th + old_hl] = opts
        b[th + 12] = (new_hl << 2) | (b[th + 12] & 0x0F)
        self.hl = new_hl
        if grow:
            if self.v6:
                plen = _U16.unpack_from(b, 4)[0] + grow
                _U16.pack_into(b, 4, plen)
            else:
                tot = _U16.unpack_from(b, 2)[0]
                _U16.pack_into(b, 2, tot + grow)
                self._ipdelta += grow

    def truncate_payload(self, n: int) -> None:
        """Cut the payload to its first ``n`` bytes (a segment running past its mapping),
        fixing the IP length and both checksums incrementally."""
        b = self.buf
        end = self.th + self.hl + n
        removed = self.plen - n
        if removed <= 0:
            return
        self.modified = True
        # the removed bytes leave the sum, and the pseudo-header length shrinks
        self._delta -= ones_sum(b[end:], odd_start=bool((end - self.th) & 1)) + removed
        del b[end:]
        self.plen = n
        if self.v6:
            _U16.pack_into(b, 4, _U16.unpack_from(b, 4)[0] - removed)
        else:
            _U16.pack_into(b, 2, _U16.unpack_from(b, 2)[0] - removed)
            self._ipdelta -= removed

    def finish(self) -> Verdict:
        """Apply pending checksum deltas; the verdict for the rewritten buffer
        (:attr:`Verdict.MANGLE`).

        ``csum_mode`` (set by the driver from the queue's metadata) says what the
        TCP checksum field held on arrival: :data:`CSUM_OK` a full checksum (updated
        incrementally); :data:`CSUM_PARTIAL` only the pseudo-header sum of a
        checksum offload (recomputed in full, since a rewritten packet goes back
        to the kernel as CHECKSUM_NONE); :data:`CSUM_GSO` a super-packet the kernel
        segments, which rewrites every segment's checksum itself (left alone)."""
        mode = self.csum_mode
        self.modified = True
        if mode == CSUM_PARTIAL:
            self.recompute_checksums()
            return Verdict.MANGLE
        if mode == CSUM_GSO:
            self._delta = 0
        b = self.buf
        if self._delta:
            off = self.th + 16
            s = M16 - _U16.unpack_from(b, off)[0]  # the ones' sum the old field encodes
            s = (s + self._delta) % M16
            _U16.pack_into(b, off, M16 - (s or M16))
            self._delta = 0
        if self._ipdelta:
            s = M16 - _U16.unpack_from(b, 10)[0]
            s = (s + self._ipdelta) % M16
            _U16.pack_into(b, 10, M16 - (s or M16))
            self._ipdelta = 0
        return Verdict.MANGLE

    def recompute_checksums(self) -> bytearray:
        """Full checksum computation (forged packets, tests); returns the buffer."""
        self.modified = True
        b = self.buf
        th = self.th
        if not self.v6:
            b[10:12] = b"\x00\x00"
            _U16.pack_into(b, 10, ipv4_header_checksum(b[:th]))
        b[th + 16:th + 18] = b"\x00\x00"
        seg = memoryview(b)[th:th + self.hl + self.plen]
        _U16.pack_into(b, th + 16, tcp_checksum(self.src, self.dst, seg))
        self._delta = 0
        self._ipdelta = 0
        return b

    def checksum_ok(self) -> bool:
        """Whether the packet may be trusted: True unless its checksum is unverified
        (:data:`CSUM_UNVERIFIED`) and the TCP (or IPv4 header) checksum does not verify.
        Once verified, the packet counts as :data:`CSUM_OK`. A packet whose checksum is
        still to be computed by offload comes from a local sender or from GRO of verified
        segments: it cannot be corrupt."""
        if self.csum_mode != CSUM_UNVERIFIED:
            return True
        if not self.verify_checksums():
            return False
        self.csum_mode = CSUM_OK
        return True

    def verify_checksums(self) -> bool:
        """Whether the TCP checksum (and IPv4 header checksum) of the buffer verify."""
        b = self.buf
        th = self.th
        if not self.v6 and ones_sum(b[:th]) != M16:
            return False
        seg = memoryview(b)[th:th + self.hl + self.plen]
        total = pseudo_header_sum(self.src, self.dst, len(seg)) + ones_sum(seg)
        return total % M16 == 0


_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options: (next, len8) headers
_IPV6_FRAG = 44


def peek_tuple(buf) -> tuple[bytes, int, bytes, int] | None:
    """``(src, sport, dst, dport)`` of a TCP segment :func:`parse_packet` refuses but whose
    ports can be read: an IPv4 first fragment or BIG TCP packet (total length 0), an IPv6
    packet with extension headers (a first fragment among them). None otherwise."""
    n = len(buf)
    if n < 40:
        return None
    ver = buf[0] >> 4
    if ver == 4:
        ihl = (buf[0] & 0x0F) << 2
        if ihl < 20 or buf[9] != IPPROTO_TCP or ((buf[6] & 0x1F) or buf[7]) or n < ihl + 4:
            return None  # (a later fragment: no ports in it)
        th, src, dst = ihl, bytes(buf[12:16]), bytes(buf[16:20])
    elif ver == 6:
        nxt, off = buf[6], 40
        while nxt != IPPROTO_TCP:
            if off + 8 > n:
                return None
            if nxt == _IPV6_FRAG:
                if ((buf[off + 2] << 8) | buf[off + 3]) & 0xFFF8:
                    return None  # a later fragment
                nxt, off = buf[off], off + 8
            elif nxt in _IPV6_EXT:
                nxt, off = buf[off], off + 8 * (buf[off + 1] + 1)
            else:
                return None
        if off + 4 > n:
            return None
        th, src, dst = off, bytes(buf[8:24]), bytes(buf[24:40])
    else:
        return None
    sport, dport = _U16.unpack_from(buf, th)[0], _U16.unpack_from(buf, th + 2)[0]
    return src, sport, dst, dport


def ip_tos_ttl(pkt: TcpPacket) -> tuple[int, int]:
    """The DSCP of the IPv4 TOS byte / IPv6 traffic class (the ECN bits cleared: segments
    the proxy forges are not ECN-capable transport, RFC 3168 §6.1.1) and the TTL / hop
    limit."""
    b = pkt.buf
    if pkt.v6:
        return (((b[0] & 0x0F) << 4) | (b[1] >> 4)) & 0xFC, b[7]
    return b[1] & 0xFC, b[8]


def parse_packet(buf: bytearray) -> TcpPacket | None:
    """Parse an IPv4 or IPv6 packet holding a TCP segment.

    Returns ``None`` for anything that is not a whole TCP segment we can rewrite safely:
    other protocols, IPv4 fragments, IPv6 extension headers, BIG TCP (IP length 0),
    truncated or malformed packets (IPv4 options are fine). The caller sees with
    :func:`peek_tuple` whether such a packet belongs to a connection it converts.
    """
    n = len(buf)
    if n < 40:
        return None
    ver = buf[0] >> 4
    if ver == 4:
        ihl = (buf[0] & 0x0F) << 2
        if ihl < 20 or buf[9] != IPPROTO_TCP:
            return None
        tot = (buf[2] << 8) | buf[3]
        if tot > n or tot < ihl + 20:
            return None
        if (buf[6] & 0x3F) or buf[7]:  # MF flag or fragment offset
            return None
        th = ihl
        v6 = False
    elif ver == 6:
        if n < 60 or buf[6] != IPPROTO_TCP:
            return None
        tot = 40 + ((buf[4] << 8) | buf[5])
        if tot > n:
            return None
        th = 40
        v6 = True
    else:
        return None
    sport, dport, seq, ack, doff, flags, win, _csum, _urg = _TCP_FIXED.unpack_from(buf, th)
    hl = (doff >> 4) << 2
    if hl < 20 or th + hl > tot:
        return None
    if tot < n:
        del buf[tot:]
    return TcpPacket(buf, v6, th, hl, tot - th - hl, sport, dport, seq, ack, flags, win)


# the one valid length of each option that a SYN may carry (RFC 9293, RFC 7323, RFC 2018)
SYN_OPTION_LENGTHS = {2: 4, 3: 3, 4: 2, 8: 10}


def syn_option_length_ok(kind: int, olen: int) -> bool:
    """Whether option ``kind`` of a SYN or SYN/ACK has its one valid length (options
    without a fixed length pass; SACK blocks, kind 5, never belong on a SYN)."""
    return kind != 5 and SYN_OPTION_LENGTHS.get(kind, olen) == olen
