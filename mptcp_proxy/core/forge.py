"""Building whole IPv4/IPv6 TCP packets for segments the proxy forges itself
(MP_JOIN handshakes, ACKs of its own subflows, FINs, RSTs, signalling on
duplicate ACKs). Checksums are computed in full: these packets are rare."""

from __future__ import annotations

import struct

from .tcp import IPPROTO_TCP, TcpPacket, ipv4_header_checksum, pad_options, tcp_checksum

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")

DEFAULT_TTL = 64


def build_segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                  flags: int, win: int, options: bytes = b"", payload: bytes = b"",
                  ttl: int = DEFAULT_TTL, tos: int = 0) -> bytearray:
    """A complete IPv4 (4-byte addresses) or IPv6 (16-byte) packet with one TCP
    segment. ``options`` is padded with NOPs to a multiple of 4 bytes (≤ 40).
    ``seq``/``ack`` are 32-bit wire values, ``win`` the raw 16-bit field; ``ttl`` the
    IPv4 TTL or IPv6 hop limit, ``tos`` the IPv4 TOS byte or IPv6 traffic class (DSCP
    and ECN bits, as the TCP side's socket sets them)."""
    opts = pad_options(options)
    if len(opts) > 40:
        raise ValueError("TCP options exceed 40 bytes")
    hl = 20 + len(opts)
    tcp = bytearray(_TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                              hl << 2, flags, win & 0xFFFF, 0, 0))
    tcp += opts
    tcp += payload
    csum = tcp_checksum(src, dst, tcp)
    struct.pack_into("!H", tcp, 16, csum)
    if len(src) == 4:
        total = 20 + len(tcp)
        ip = bytearray(_IPV4.pack(0x45, tos, total, 0, 0x4000, ttl, IPPROTO_TCP, 0, src, dst))
        struct.pack_into("!H", ip, 10, ipv4_header_checksum(ip))
    else:
        ip = bytearray(_IPV6.pack((6 << 28) | (tos << 20), len(tcp), IPPROTO_TCP, ttl, src,
                                  dst))
    return ip + tcp


def reply_rst_for(pkt: TcpPacket) -> bytearray:
    """An RST answering ``pkt`` as a closed port would (RFC 9293 §3.10.7.1)."""
    from .constants import TCP_ACK, TCP_RST
    if pkt.flags & TCP_ACK:
        return build_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.ack, 0, TCP_RST, 0)
    return build_segment(pkt.dst, pkt.src, pkt.dport, pkt.sport, 0, pkt.end_seq,
                         TCP_RST | TCP_ACK, 0)


IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58


def build_unreachable(quoted: bytes | bytearray, src: bytes, dst: bytes,
                      ttl: int = DEFAULT_TTL) -> bytearray:
    """An ICMP destination unreachable from ``src`` to ``dst`` quoting ``quoted`` (the
    start of the packet it refers to: its IP header and the first bytes of its TCP
    header). IPv4: type 3 code 0, net unreachable (RFC 792); IPv6: type 1 code 0, no
    route to destination (RFC 4443 §3.1). Linux reverts one step of the quoted
    connection's RTO back-off for either (RFC 6069; docs/platform.md §10)."""
    from .checksum import fold_checksum, ones_sum
    body = bytearray(struct.pack("!BBHI", 1 if len(src) == 16 else 3, 0, 0, 0)) + quoted
    if len(src) == 16:
        pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + len(body) \
            + IPPROTO_ICMPV6
        struct.pack_into("!H", body, 2, fold_checksum(pseudo + ones_sum(body)))
        return bytearray(_IPV6.pack(6 << 28, len(body), IPPROTO_ICMPV6, ttl, src, dst)) + body
    struct.pack_into("!H", body, 2, fold_checksum(ones_sum(body)))
    ip = bytearray(_IPV4.pack(0x45, 0, 20 + len(body), 0, 0, ttl, IPPROTO_ICMP, 0, src, dst))
    struct.pack_into("!H", ip, 10, ipv4_header_checksum(ip))
    return ip + body
