"""Mutations of real packets and crafted packets, for the fuzzer.

Each mutator takes ``(rng, ctx, direction, packet, csum)`` — a packet of the trace
about to be fed, and a :class:`Ctx` view of the proxy's live state — and returns the
inputs to inject: a list of :class:`Input` ``(direction, bytes, csum, label)``. A
mutator that does not apply (no option to flip, no connection to aim at) returns
``[]``.

What they cover (the brief of issue 8): bit flips in headers, options and payload
with and without fixing the checksums; option length and shape for every MPTCP
subtype; sequence/ACK and DSS field jumps; duplicated, stale (reordered) and
truncated packets; payloads near 64 KB; IPv4 fragments, IPv4 options and IPv6
extension headers; BIG TCP (IP length 0); RST/SYN with data; peer MSS 65535 and
window scale above 14; the checksum metadata states (``CSUM_OK``/``CSUM_PARTIAL``/
``CSUM_GSO``); crafted packets aimed at live connections with every MPTCP option
(valid HMACs and keys included, computed with the unit-test models' own helpers);
floods.

The proxy's state is read only through :class:`.craft.Ctx`; option edits and the MPTCP
option generators live in :mod:`.craft`.
"""

from __future__ import annotations

import struct

from mptcp_proxy.core.tcp import CSUM_GSO, CSUM_OK, CSUM_PARTIAL

from . import wire
from .craft import (
    ConnView,
    Ctx,
    Input,
    SfView,
    gen_dss,
    gen_mptcp,
    offsets,
    option_list,
    options_with,
    payload_len,
    rebuild,
    tcp_flags,
    ts_option,
)
from .mutate_server import m_server_craft, m_server_flood
from .wire import ACK, FIN, M32, M64, PSH, RST, SYN


# ---------------------------------------------------------------------- mutators
def _fixp(rng, buf, p: float) -> bytearray:
    return wire.fix_checksums(bytearray(buf)) if rng.random() < p else bytearray(buf)


def m_flip_header(rng, ctx, d, buf, csum):
    o = offsets(buf)
    if o is None:
        return []
    b = bytearray(buf)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(o[1] + 20)
        b[i] ^= 1 << rng.randrange(8)
    fixed = rng.random() < 0.5
    return [Input(d, bytes(_fixp(rng, b, 1.0 if fixed else 0.0)), csum,
                  "flip_header" + ("+csum" if fixed else ""))]


def m_flip_options(rng, ctx, d, buf, csum):
    o = offsets(buf)
    if o is None or o[2] == 20:
        return []
    _lo, th, hl = o
    b = bytearray(buf)
    for _ in range(rng.randint(1, 3)):
        i = th + 20 + rng.randrange(hl - 20)
        b[i] ^= 1 << rng.randrange(8)
    fixed = rng.random() < 0.6
    return [Input(d, bytes(_fixp(rng, b, 1.0 if fixed else 0.0)), csum,
                  "flip_options" + ("+csum" if fixed else ""))]


def m_bad_csum_copy(rng, ctx, d, buf, csum):
    """One flipped bit anywhere in the TCP segment, checksum left as it was: what a
    corrupted frame the hardware did not verify looks like (CSUM_OK)."""
    o = offsets(buf)
    if o is None:
        return []
    lo, th, _hl = o
    b = bytearray(buf)
    i = rng.randrange(th, lo.end)
    b[i] ^= 1 << rng.randrange(8)
    return [Input(d, bytes(b), CSUM_OK, "bad_csum_copy")]


def m_opt_len(rng, ctx, d, buf, csum):
    opts = option_list(buf)
    if not opts:
        return []
    k, off, n = rng.choice(opts)
    b = bytearray(buf)
    b[off + 1] = rng.choice((0, 1, 2, 3, n - 1, n + 1, n + 2, 40, 255, rng.getrandbits(8))) & 255
    return [Input(d, bytes(_fixp(rng, b, 0.8)), csum, f"opt_len_{k}")]


def _mptcp_opts(buf):
    return [(off, n) for k, off, n in option_list(buf) if k == 30 and n >= 3]


def m_mptcp_shape(rng, ctx, d, buf, csum):
    """Subtype nibble, flags byte, or the option's size (bytes added or removed)."""
    mps = _mptcp_opts(buf)
    if not mps:
        return []
    off, n = rng.choice(mps)
    b = bytearray(buf)
    how = rng.choice(("subtype", "flags", "flags", "resize", "resize"))
    if how == "subtype":
        b[off + 2] = (rng.getrandbits(4) << 4) | (b[off + 2] & 15)
        return [Input(d, bytes(_fixp(rng, b, 0.9)), csum, "mptcp_subtype")]
    if how == "flags" and n >= 4:
        b[off + 3] = rng.getrandbits(8)
        return [Input(d, bytes(_fixp(rng, b, 0.9)), csum, "mptcp_flags")]
    o = bytes(buf[off:off + n])
    delta = rng.choice((-8, -4, -2, -1, 1, 2, 4, 8))
    if delta < 0:
        new = o[:max(3, n + delta)]
    else:
        new = o + rng.randbytes(delta)
    new = bytes((30, len(new))) + new[2:]
    sub = o[2] >> 4
    out = rebuild(buf, opts=options_with(buf, new, replace=True), fix=rng.random() < 0.9)
    return [Input(d, bytes(out), csum, f"mptcp_resize_{sub}")] if out else []


def _conn_for(ctx: Ctx, buf, d: str) -> tuple[ConnView | None, SfView | None]:
    t = wire.four_tuple(buf)
    if t is None:
        return None, None
    key = t if d == "out" else (t[2], t[3], t[0], t[1])
    for cv in ctx.conns():
        for sv in cv.subflows:
            if sv.key == key:
                return cv, sv
        if cv.key == key:
            return cv, (cv.subflows[0] if cv.subflows else None)
    return None, None


def m_mptcp_insert(rng, ctx, d, buf, csum):
    cv, _sv = _conn_for(ctx, buf, d)
    mp = gen_mptcp(rng, cv, plen=payload_len(buf), flags=tcp_flags(buf))
    replace = rng.random() < 0.6
    out = rebuild(buf, opts=options_with(buf, mp, replace), fix=rng.random() < 0.9)
    return [Input(d, bytes(out), csum, f"mptcp_insert_{mp[2] >> 4}")] if out else []


def m_dss_fields(rng, ctx, d, buf, csum):
    """A new DSS in place of the packet's MPTCP option(s): jumps of DATA_ACK, DSN and
    SSN, DLL 0 (infinite mapping), DLL past the payload, DATA_FIN, checksum presence."""
    cv, _sv = _conn_for(ctx, buf, d)
    plen = payload_len(buf)
    dss = gen_dss(rng, cv, plen=plen)
    out = rebuild(buf, opts=options_with(buf, dss, replace=True), fix=rng.random() < 0.9)
    return [Input(d, bytes(out), csum, "dss_fields")] if out else []


def m_seq_ack(rng, ctx, d, buf, csum):
    o = offsets(buf)
    if o is None:
        return []
    th = o[1]
    b = bytearray(buf)
    field = rng.choice((4, 8))
    v = struct.unpack_from("!I", b, th + field)[0]
    j = rng.choice((1, -1, 100, -100, 1448, 65535, -65535, 1 << 20, -(1 << 20), 1 << 31,
                    rng.getrandbits(32)))
    struct.pack_into("!I", b, th + field, (v + j) & M32)
    return [Input(d, bytes(_fixp(rng, b, 0.9)), csum, "seq_jump" if field == 4 else "ack_jump")]


def m_flags(rng, ctx, d, buf, csum):
    o = offsets(buf)
    if o is None:
        return []
    th = o[1]
    b = bytearray(buf)
    old = b[th + 13]
    b[th + 13] = rng.choice((old | RST, old | SYN, old | FIN, (old | RST) & ~ACK,
                             old & ~ACK, SYN | RST, SYN | FIN, RST | FIN | ACK, 0, 0xFF,
                             old ^ (1 << rng.randrange(8))))
    return [Input(d, bytes(_fixp(rng, b, 0.9)), csum, "flags")]


def m_rst_syn_data(rng, ctx, d, buf, csum):
    """RST or SYN carrying data, up to near 64 KB (a local RST/SYN grows with options)."""
    o = offsets(buf)
    if o is None:
        return []
    lo, th, hl = o
    flag = rng.choice((RST | ACK, RST, SYN, SYN | ACK))
    size = rng.choice((1, 100, 1400, 65535 - (th + hl) - rng.randint(0, 40)))
    b = bytearray(buf)
    b[th + 13] = flag
    out = rebuild(b, payload=rng.randbytes(max(size, 0)))
    mode = csum if d == "in" else rng.choice((CSUM_OK, CSUM_PARTIAL, CSUM_GSO))
    if out is not None and mode == CSUM_PARTIAL:
        wire.set_partial_csum(out)
    return [Input(d, bytes(out), mode, "rst_syn_data")] if out else []


def m_dup(rng, ctx, d, buf, csum):
    return [Input(d, bytes(buf), csum, "dup"), Input(d, bytes(buf), csum, "dup")]


def m_stale(rng, ctx, d, buf, csum):
    h = ctx.history.get(d)
    if not h:
        return []
    old_d, old, old_csum = rng.choice(list(h))
    return [Input(old_d, old, old_csum, "stale")]


def m_truncate(rng, ctx, d, buf, csum):
    n = len(buf)
    cut = rng.randrange(0, n) if rng.random() < 0.5 else rng.randrange(max(0, n - 24), n)
    b = bytearray(buf[:cut])
    label = "truncate"
    if len(b) >= 40 and rng.random() < 0.5:
        wire.set_ip_length(b)
        wire.fix_checksums(b)
        label = "truncate+len"
    return [Input(d, bytes(b), csum, label)]


def m_oversize(rng, ctx, d, buf, csum):
    """A payload near 64 KB (a GSO/GRO super-packet), or exactly at the IP limit."""
    o = offsets(buf)
    if o is None:
        return []
    lo, th, hl = o
    room = 65535 - hl if lo.v6 else 65535 - th - hl  # (IPv6: the payload length field)
    size = rng.choice((room, room - 1, room - 12, room - 28, room - 40,
                       rng.randint(60000, room)))
    if size <= 0:
        return []
    b = bytearray(buf)
    if not b[th + 13] & (SYN | RST):
        b[th + 13] |= ACK
    out = rebuild(b, payload=rng.randbytes(size))
    if out is None:
        return []
    if d == "out":
        mode = rng.choice((CSUM_GSO, CSUM_GSO, CSUM_PARTIAL, CSUM_OK))
    else:
        mode = rng.choice((CSUM_PARTIAL, CSUM_OK))
    if mode == CSUM_PARTIAL:
        wire.set_partial_csum(out)
    return [Input(d, bytes(out), mode, "oversize")]


def m_big_tcp(rng, ctx, d, buf, csum):
    """IP length 0 (BIG TCP): IPv4 total length 0, IPv6 payload length 0 with or
    without a hop-by-hop jumbo option (RFC 2675)."""
    o = offsets(buf)
    if o is None:
        return []
    lo, th, hl = o
    size = rng.choice((rng.randint(70000, 190000), rng.randint(1000, 60000)))
    b = bytearray(buf)
    b[th + 13] |= ACK
    out = rebuild(b, payload=rng.randbytes(size), fix=False)
    if out is None:
        return []
    if lo.v6 and rng.random() < 0.5:
        tcp = bytes(out[40:])
        hbh = bytes((6, 0, 0xC2, 4)) + struct.pack("!I", len(tcp) + 8)
        out = bytearray(out[:40]) + hbh + tcp
        out[6] = 0
    if lo.v6:
        out[4:6] = b"\x00\x00"
    else:
        out[2:4] = b"\x00\x00"
    mode = CSUM_GSO if d == "out" else CSUM_PARTIAL
    wire.fix_checksums(out)
    wire.set_partial_csum(out)
    return [Input(d, bytes(out), mode, "big_tcp")]


def m_fragment(rng, ctx, d, buf, csum):
    lo = wire.layout(buf)
    if lo is None:
        return []
    b = bytearray(buf)
    if not lo.v6:
        # first fragment (MF, offset 0: the TCP header is readable) or a later one
        struct.pack_into("!H", b, 6, rng.choice((0x2000, 0x2000, 185, 0x2000 | 185)))
        wire.fix_checksums(b)
        return [Input(d, bytes(b), csum, "ipv4_fragment")]
    nh = b[6]
    frag = struct.pack("!BBHI", nh, 0, rng.choice((1, 0, 185 << 3 | 1)), rng.getrandbits(32))
    out = bytearray(b[:40]) + frag + b[40:]
    out[6] = 44
    wire.set_ip_length(out)
    wire.fix_checksums(out)
    return [Input(d, bytes(out), csum, "ipv6_fragment")]


def m_ext_header(rng, ctx, d, buf, csum):
    lo = wire.layout(buf)
    if lo is None:
        return []
    b = bytearray(buf)
    if not lo.v6:
        # IPv4 options (NOPs, or a record-route), still a plain TCP segment for the core
        ihl = (b[0] & 15) * 4
        opt = rng.choice((b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(5)))
        out = bytearray(b[:ihl]) + opt + b[ihl:]
        out[0] = (out[0] & 0xF0) | ((ihl + len(opt)) // 4)
        wire.set_ip_length(out)
        wire.fix_checksums(out)
        return [Input(d, bytes(out), csum, "ipv4_options")]
    kind = rng.choice((0, 60, 43))
    nh = b[6]
    if kind == 43:
        ext = bytes((nh, 0, 0, 0)) + bytes(4)  # routing type 0, segments left 0
    else:
        ext = bytes((nh, 0, 1, 4)) + bytes(4)  # PadN
    out = bytearray(b[:40]) + ext + b[40:]
    out[6] = kind
    wire.set_ip_length(out)
    wire.fix_checksums(out)
    return [Input(d, bytes(out), csum, f"ipv6_ext_{kind}")]


def m_csum_state(rng, ctx, d, buf, csum):
    """The same bytes with another checksum state: CHECKSUM_PARTIAL (the field holds the
    pseudo-header sum) or, outbound, GSO."""
    b = bytearray(buf)
    if d == "out" and rng.random() < 0.4:
        return [Input(d, bytes(wire.set_partial_csum(b)), CSUM_GSO, "csum_gso")]
    return [Input(d, bytes(wire.set_partial_csum(b)), CSUM_PARTIAL, "csum_partial")]


def m_syn_opts(rng, ctx, d, buf, csum):
    """SYN and SYN/ACK options: MSS 0/1/65535, window scale above 14, missing or
    duplicated options, a local SYN that already carries MP_CAPABLE, a full option
    space."""
    if not tcp_flags(buf) & SYN:
        return []
    opts = option_list(buf)
    parts = []
    for k, off, n in opts:
        o = bytearray(buf[off:off + n])
        if k == 2 and n == 4 and rng.random() < 0.7:
            o[2:4] = struct.pack("!H", rng.choice((65535, 0, 1, 535, 65495)))
        if k == 3 and n == 3 and rng.random() < 0.7:
            o[2] = rng.choice((14, 15, 16, 30, 255))
        parts.append(bytes(o))
    how = rng.random()
    if how < 0.2 and parts:
        parts.pop(rng.randrange(len(parts)))
    elif how < 0.35 and parts:
        parts.append(rng.choice(parts))
    elif how < 0.6 and d == "out":
        parts.append(rng.choice((bytes((30, 4, 0x01, 0x01)), bytes((30, 4, 0x01, 0x81)),
                                 bytes((30, 4, 0x00, 0x01)), bytes((30, 12, 0x01, 0x01)) +
                                 rng.randbytes(8))))
    elif how < 0.7:
        parts.append(b"\x01" * rng.randint(1, 20))
    block = b"".join(parts)
    if rng.random() < 0.2:
        block = (block + b"\x01" * 40)[:40]
    out = rebuild(buf, opts=block)
    return [Input(d, bytes(out), csum, "syn_opts")] if out else []


def m_craft(rng, ctx, d, buf, csum):
    """A packet built from scratch for a live subflow (or the local socket): sequence
    and ACK near the live values or far off, random flags, MPTCP options from
    :func:`gen_mptcp`, payload of 0 to 20000 bytes."""
    conns = ctx.conns()
    if not conns:
        return []
    cv = rng.choice(conns)
    if not cv.subflows or cv.key is None:
        return []
    d = rng.choice(("in", "in", "in", "out"))
    plen = rng.choice((0, 0, 0, 1, 100, 1400, 1448, 20000))
    payload = rng.randbytes(plen)
    flags = rng.choice((ACK, ACK | PSH, ACK, ACK | FIN, RST, RST | ACK, SYN, SYN | ACK, 0))
    if d == "in":
        sv = rng.choice(cv.subflows)
        if sv.key is None:
            return []
        la, lp, ra, rp = sv.key
        seq = (sv.rcv_nxt + rng.choice((0, 0, 0, 1, -1, 1000, 60000, 200000, 1 << 30,
                                        rng.getrandbits(32)))) & M32
        ack = (sv.snd_nxt + rng.choice((0, 0, 0, -1, 1, 1 << 30, rng.getrandbits(32)))) & M32
        opts = ts_option(sv)
        if flags & SYN:
            opts = b""
        k = rng.choice((0, 1, 1, 1, 2))
        for _ in range(k):
            mp = gen_mptcp(rng, cv, plen=plen, flags=flags)
            if len(opts) + len(mp) + 3 <= 40:
                opts += b"\x01" * (-len(mp) % 4) + mp
        pkt = wire.build(ra, la, rp, lp, seq, ack, flags, rng.choice((0, 1024, 0xFFFF)),
                         opts, payload)
    else:
        la, lp, ra, rp = cv.key
        seq = (cv.tcp_snd_base + cv.d_nxt + rng.choice((0, 0, 1, -1000, 1 << 30))) & M32
        ack = (cv.tcp_rcv_base + cv.r_ack + rng.choice((0, 0, 1, 5000, -1))) & M32
        opts = b"\x01\x01" + struct.pack("!BBII", 8, 10, (cv.ts_local + 1) & M32, 0)
        if rng.random() < 0.3:
            blocks = [((ack + 1000) & M32, (ack + 2000) & M32)]
            opts += b"\x01\x01" + bytes((5, 10)) + struct.pack("!II", *blocks[0])
        pkt = wire.build(la, ra, lp, rp, seq, ack, flags, 1024, opts, payload)
    if rng.random() < 0.05:
        pkt[-1] ^= 1  # occasionally a bad checksum too
    return [Input(d, bytes(pkt), CSUM_OK, f"craft_{d}")]


def m_flood(rng, ctx, d, buf, csum):
    """Many crafted packets of one kind at once: in-window RSTs, 1-byte segments with
    distinct mappings over a wide window, ADD_ADDR with valid HMACs and distinct IDs,
    a local SYN flood (new connections)."""
    conns = ctx.conns()
    kind = rng.choice(("rst", "maps", "add_addr", "syn", "acks"))
    n = rng.choice((32, 64, 256, 1100))
    out = []
    if kind == "syn":
        src, dst = (bytes((10, 0, 0, 1)), bytes((10, 0, 1, 2)))
        if conns and conns[0].key is not None:
            src, _p, dst, _dp = conns[0].key
        base = rng.randint(1024, 60000)
        for i in range(n):
            opts = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + \
                struct.pack("!BBII", 8, 10, i, 0) + b"\x01\x03\x03\x07"
            p = wire.build(src, dst, (base + i) % 65536, 8080, rng.getrandbits(32), 0, SYN,
                           0xFFFF, opts)
            out.append(Input("out", bytes(p), CSUM_OK, "flood_syn"))
        return out
    live = [c for c in conns if c.subflows and c.subflows[0].key is not None]
    if not live:
        return []
    cv = rng.choice(live)
    sv = rng.choice(cv.subflows)
    if sv.key is None:
        return []
    la, lp, ra, rp = sv.key
    from mpnet.options import add_addr_hmac8
    for i in range(n):
        if kind == "rst":
            p = wire.build(ra, la, rp, lp, (sv.rcv_nxt + 1 + i * 97) & M32, 0, RST, 0)
        elif kind == "maps":
            ssn_rel = sv.rcv_high_rel + 2 + 2 * i
            dss = bytes((30, 18, 0x20, 0x0C)) + struct.pack(
                "!QIH", (cv.peer_dsn + 7 * i + 3) & M64, (ssn_rel + 1) & M32, 1)
            p = wire.build(ra, la, rp, lp, (sv.rcv_nxt + 2 + 2 * i) & M32, sv.snd_nxt,
                           ACK, 1024, ts_option(sv) + b"\x01\x01" + dss, b"x")
        elif kind == "add_addr":
            aid = i % 256
            addr = struct.pack("!I", 0x0A090000 + i)
            h = add_addr_hmac8(cv.remote_key, cv.local_key, aid, addr, None)
            opt = bytes((30, 16, 0x30, aid)) + addr + h
            p = wire.build(ra, la, rp, lp, sv.rcv_nxt, sv.snd_nxt, ACK, 1024,
                           ts_option(sv) + opt)
        else:
            dack = (cv.data_ack + rng.choice((0, -1, 1, -100))) & M64
            dss = bytes((30, 12, 0x20, 0x03)) + struct.pack("!Q", dack)
            p = wire.build(ra, la, rp, lp, sv.rcv_nxt, (sv.snd_una + (i % 3)) & M32, ACK,
                           rng.choice((1024, 0, 1)), ts_option(sv) + dss)
        out.append(Input("in", bytes(p), CSUM_OK, f"flood_{kind}"))
    return out


MUTATORS = [
    (m_flip_header, 4), (m_flip_options, 6), (m_bad_csum_copy, 10), (m_opt_len, 5),
    (m_mptcp_shape, 8), (m_mptcp_insert, 10), (m_dss_fields, 10), (m_seq_ack, 6),
    (m_flags, 5), (m_rst_syn_data, 3), (m_dup, 3), (m_stale, 4), (m_truncate, 3),
    (m_oversize, 4), (m_big_tcp, 2), (m_fragment, 2), (m_ext_header, 2),
    (m_csum_state, 4), (m_syn_opts, 3), (m_craft, 12), (m_flood, 0.25),
    (m_server_craft, 10), (m_server_flood, 0.2),
]


_INLINE = [m for m in MUTATORS if m[0] not in (m_flood, m_server_flood)]


def pick(rng, inline: bool = False):
    """A mutator, by weight (floods only in branches: they would slow a whole run)."""
    fns = _INLINE if inline else MUTATORS
    total = sum(w for _f, w in fns)
    x = rng.random() * total
    for f, w in fns:
        x -= w
        if x <= 0:
            return f
    return fns[-1][0]
