"""Crafted packets for the server side of the conversion and the peer's joins (issue 10),
in the style of :mod:`.mutate` (same signature, same :class:`~.craft.Input` results).

- :func:`m_server_craft`: one packet aimed at the server role's handshake or at a join
  the peer opens toward us: the peer's third ACK with MP_CAPABLE (right or wrong keys,
  flags), its first data with MP_CAPABLE and a data-level length (right, wrong or missing
  DSS checksum, length past the payload), its SYN again (same or another ISN), resets
  in and out of window during SYN_RCVD, the TCP side's SYN/ACK (again, from another ISN,
  with MP_CAPABLE: a native server behind an anchor), MP_JOIN SYNs with our token (to our
  address and port or elsewhere, odd options), the join's third ACK (right HMAC, a
  flipped bit, a wrong ACK, with data), its SYN again and resets on a half-open join, and
  new MP_CAPABLE SYNs to a served port (or any port of an anchor).
- :func:`m_server_flood`: many at once — MP_CAPABLE SYNs from distinct ports (must stay
  within ``max_syn_sent``/``max_connections``), MP_JOIN SYNs with a live token (within
  ``max_subflows``), third ACKs with bad HMACs for every half-open join, RSTs across the
  window of SYN_RCVD connections.

HMACs and DSS checksums are computed with the unit-test models' own helpers
(tests/unit/mpnet/, tests/unit/lockstep/), independent of the core's codec.
"""

from __future__ import annotations

import struct

from mptcp_proxy.core.tcp import CSUM_OK

from . import wire
from .craft import ConnView, Ctx, Input, SfView
from .wire import ACK, M32, M64, PSH, RST, SYN

_SYN_OPTS = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + \
    struct.pack("!BBII", 8, 10, 7777, 0) + b"\x01\x03\x03\x07"


def _peer_ends(cv: ConnView | None, d: str, buf) -> tuple | None:
    """(peer address, peer port, our address, our port) to aim at: the connection's, or
    the packet's (an inbound one comes from the peer, an outbound one goes to it)."""
    if cv is not None and cv.key is not None:
        la, lp, ra, rp = cv.key
        return ra, rp, la, lp
    t = wire.four_tuple(buf)
    if t is None:
        return None
    return t if d == "in" else (t[2], t[3], t[0], t[1])


def _served_port(ctx: Ctx, lp: int, rng) -> int:
    cfg = getattr(ctx.proxy, "config", None)
    serve = sorted(getattr(cfg, "serve", ()) or ())
    ports = sorted(getattr(cfg, "ports", ()) or ())
    return rng.choice(serve or ports or [lp])


def mpc_syn(src, sport, dst, dport, isn, rng, flags: int = 0x01, length: int = 4,
            opts: bytes = _SYN_OPTS) -> bytearray:
    """The peer's SYN with MP_CAPABLE (version 1, ``flags``; ``length`` 4 normally, 12 with
    a key as v0 had)."""
    mpc = bytes((30, length, 0x01, flags)) + rng.randbytes(length - 4)
    return wire.build(src, dst, sport, dport, isn, 0, SYN, 0xFFFF, opts + mpc)


def join_syn(src, sport, dst, dport, token: int, rng, backup: bool = False,
             addr_id: int = 2, opts: bytes = _SYN_OPTS) -> bytearray:
    mpj = struct.pack("!BBBBII", 30, 12, 0x10 | (1 if backup else 0), addr_id, token,
                      rng.getrandbits(32))
    return wire.build(src, dst, sport, dport, rng.getrandbits(32), 0, SYN, 0xFFFF, opts + mpj)


def _third_ack(rng, cv: ConnView, sv: SfView, plen: int) -> tuple[bytes, str]:
    """MP_CAPABLE of the peer's third ACK (len 20) or first data (len 22/24)."""
    good = rng.random() < 0.6
    sndr = cv.remote_key if good or rng.random() < 0.5 else rng.getrandbits(64)
    rcvr = cv.local_key if good or rng.random() < 0.5 else rng.getrandbits(64)
    if cv.remote_key == 0:  # SYN_RCVD: the peer's key is not known yet; any key goes
        sndr = rng.getrandbits(64)
    fl = rng.choice((0x01, 0x01, 0x81, 0x41, 0x21, 0x00, rng.getrandbits(8)))
    ver = rng.choice((1, 1, 1, 1, 0, 2))
    if not plen:
        return struct.pack("!BBBBQQ", 30, 20, ver, fl, sndr, rcvr), \
            "srv_third_ack" + ("" if good else "_keys")
    dll = rng.choice((plen, plen, plen, 0, 1, plen + 1, 0xFFFF))
    payload_csum = rng.choice(("none", "right", "right", "wrong"))
    opt = struct.pack("!BBBBQQH", 30, 22, ver, fl, sndr, rcvr, dll)
    if payload_csum != "none":
        opt = bytes((30, 24)) + opt[2:] + b"\x00\x00"
    return opt, f"srv_first_data_{payload_csum}"


def _with_csum(opt: bytes, cv: ConnView, payload: bytes, right: bool) -> bytes:
    """Fill the DSS checksum of an MP_CAPABLE with data (len 24): the implied mapping is
    DSN = the peer's IDSN + 1, SSN 1 (RFC 8684 §3.1, §3.3.1)."""
    from lockstep.wire import dss_csum
    if len(opt) != 24:
        return opt
    dll = struct.unpack_from("!H", opt, 20)[0]
    c = dss_csum((cv.idsn_remote + 1) & M64, 1, dll, payload[:dll])
    if not right:
        c ^= 0x0101
    return opt[:22] + struct.pack("!H", c)


def _join_ack(rng, cv: ConnView, sv: SfView) -> tuple[bytes, str]:
    """MP_JOIN of the peer's third ACK on its half-open join: the right 160-bit HMAC, or
    one with a bit flipped, or random."""
    from mpnet.options import join_ack_hmac
    h = join_ack_hmac(cv.remote_key, cv.local_key, sv.remote_nonce, sv.nonce)
    how = rng.choice(("good", "good", "flip", "random"))
    if how == "flip":
        i = rng.randrange(20)
        h = h[:i] + bytes((h[i] ^ (1 << rng.randrange(8)),)) + h[i + 1:]
    elif how == "random":
        h = rng.randbytes(20)
    return bytes((30, 24, 0x10, 0)) + h, f"join_third_ack_{how}"


def m_server_craft(rng, ctx, d, buf, csum):
    """One crafted packet aimed at the server role's handshake or at a peer's join."""
    conns = ctx.conns()
    cv = rng.choice(conns) if conns else None
    ends = _peer_ends(cv, d, buf)
    if ends is None:
        return []
    ra, rp, la, lp = ends
    what = rng.choice(("third_ack", "third_ack", "syn_again", "rst", "rst", "synack",
                       "join_syn", "join_syn", "join_ack", "join_ack", "join_syn_again",
                       "join_rst", "mpc_syn", "mpc_syn"))
    if cv is None and what not in ("mpc_syn", "join_syn"):
        what = "mpc_syn"
    if what == "mpc_syn":
        new = rng.random() < 0.7
        port = rng.getrandbits(16) | 1024 if new else rp
        opts = _SYN_OPTS if rng.random() < 0.8 else rng.choice((
            b"", struct.pack("!BBH", 2, 4, rng.choice((0, 1, 65535))),
            b"\x01\x03\x03" + bytes((rng.choice((14, 15, 255)),))))
        p = mpc_syn(ra, port, la, _served_port(ctx, lp, rng), rng.getrandbits(32), rng,
                    flags=rng.choice((0x01, 0x01, 0x81, 0x41, 0x00)),
                    length=rng.choice((4, 4, 4, 12)), opts=opts)
        return [Input("in", bytes(p), CSUM_OK, "srv_mpc_syn" + ("" if new else "_tuple"))]
    if what == "join_syn":
        tok = cv.local_token if cv is not None and rng.random() < 0.85 else rng.getrandbits(32)
        dport = lp if rng.random() < 0.7 else rng.getrandbits(16)
        src = ra if rng.random() < 0.5 else bytes(ra[:-1]) + bytes(((ra[-1] + 1) & 255,))
        p = join_syn(src, rng.getrandbits(16) | 1024, la, dport, tok, rng,
                     backup=rng.random() < 0.5, addr_id=rng.getrandbits(8))
        return [Input("in", bytes(p), CSUM_OK, "srv_join_syn")]
    sf0 = cv.subflows[0] if cv.subflows else None
    if what in ("third_ack", "syn_again", "rst", "synack") and sf0 is None:
        return []
    if what == "third_ack":
        plen = rng.choice((0, 0, 1, 100, 1400))
        payload = rng.randbytes(plen)
        opt, label = _third_ack(rng, cv, sf0, plen)
        opt = _with_csum(opt, cv, payload, right=label.endswith("right"))
        seq = (cv.tcp_rcv_isn + 1 + rng.choice((0, 0, 0, 1, -1, 1 << 20))) & M32
        ack = (cv.tcp_snd_isn + 1 + rng.choice((0, 0, 0, 1, -1, 1 << 30))) & M32
        p = wire.build(ra, la, rp, lp, seq, ack, ACK | (PSH if plen else 0), 0x2000,
                       b"\x01\x01" + struct.pack("!BBII", 8, 10, 9999, cv.ts_local) + opt,
                       payload)
        return [Input("in", bytes(p), CSUM_OK, label)]
    if what == "syn_again":
        isn = cv.tcp_rcv_isn if rng.random() < 0.6 else rng.getrandbits(32)
        p = mpc_syn(ra, rp, la, lp, isn, rng)
        if rng.random() < 0.3:
            p = wire.build(ra, la, rp, lp, isn, 0, SYN, 0xFFFF, _SYN_OPTS)  # without MPTCP
        return [Input("in", bytes(p), CSUM_OK, "srv_syn_again")]
    if what == "rst":
        seq = (cv.tcp_rcv_isn + 1 + rng.choice((0, 0, 1, -1, 1000, 65535, 1 << 30))) & M32
        flags = rng.choice((RST, RST | ACK))
        mp = rng.choice((b"", bytes((30, 4, 0x80, 0x01)),  # MP_TCPRST, MP_FASTCLOSE
                         struct.pack("!BBBBQ", 30, 12, 0x70, 0, cv.local_key)))
        p = wire.build(ra, la, rp, lp, seq, (cv.tcp_snd_isn + 1) & M32 if flags & ACK else 0,
                       flags, 0, mp)
        return [Input("in", bytes(p), CSUM_OK, "srv_rst")]
    if what == "synack":
        isn = cv.tcp_snd_isn if rng.random() < 0.6 else rng.getrandbits(32)
        ack = (cv.tcp_rcv_isn + 1 + rng.choice((0, 0, 0, 1, -1))) & M32
        opts = struct.pack("!BBH", 2, 4, rng.choice((1460, 536, 65535, 0))) + b"\x04\x02" + \
            struct.pack("!BBII", 8, 10, cv.ts_local, 0) + b"\x01\x03\x03\x07"
        native = rng.random() < 0.3
        if native:
            opts += struct.pack("!BBBBQ", 30, 12, 0x01, 0x01, rng.getrandbits(64))
        if rng.random() < 0.15:
            opts += bytes((0xFD, 10)) + bytes(8)  # no room left for our MP_CAPABLE
        p = wire.build(la, ra, lp, rp, isn, ack, SYN | ACK, 0xFFFF, opts[:40])
        return [Input("out", bytes(p), CSUM_OK, "srv_synack" + ("_native" if native else ""))]
    passive = [s for s in cv.subflows if s.passive and s.key is not None]
    if not passive:
        return []
    sv = rng.choice(passive)
    sla, slp, sra, srp = sv.key
    if what == "join_ack":
        opt, label = _join_ack(rng, cv, sv)
        plen = rng.choice((0, 0, 0, 100))
        ack = (sv.snd_isn + 1 + rng.choice((0, 0, 0, 1, -1))) & M32
        p = wire.build(sra, sla, srp, slp, (sv.rcv_isn + 1) & M32, ack, ACK, 0x2000,
                       b"\x01\x01" + struct.pack("!BBII", 8, 10, 5001, 0) + opt,
                       rng.randbytes(plen))
        return [Input("in", bytes(p), CSUM_OK, label)]
    if what == "join_syn_again":
        isn = sv.rcv_isn if rng.random() < 0.7 else rng.getrandbits(32)
        mpj = struct.pack("!BBBBII", 30, 12, 0x10, sv.remote_id & 255, cv.local_token,
                          sv.remote_nonce if rng.random() < 0.7 else rng.getrandbits(32))
        p = wire.build(sra, sla, srp, slp, isn, 0, SYN, 0xFFFF, _SYN_OPTS + mpj)
        return [Input("in", bytes(p), CSUM_OK, "join_syn_again")]
    seq = (sv.rcv_isn + 1 + rng.choice((0, 0, 1, -1, 100, 1 << 30))) & M32
    p = wire.build(sra, sla, srp, slp, seq, 0, rng.choice((RST, RST | ACK)), 0)
    return [Input("in", bytes(p), CSUM_OK, "join_rst")]


def m_server_flood(rng, ctx, d, buf, csum):
    """Many crafted packets of one kind at once (see the module's docstring)."""
    conns = ctx.conns()
    kind = rng.choice(("mpc_syn", "mpc_syn", "join_syn", "join_syn", "join_ack", "rst"))
    n = rng.choice((32, 64, 300, 1100))
    cv = rng.choice(conns) if conns else None
    ends = _peer_ends(cv, d, buf)
    if ends is None:
        return []
    ra, rp, la, lp = ends
    out = []
    if kind == "mpc_syn" or cv is None:
        dport = _served_port(ctx, lp, rng)
        base = rng.randint(1024, 60000)
        for i in range(n):
            src = ra if i % 3 else bytes(ra[:-1]) + bytes(((ra[-1] + i) & 255,))
            p = mpc_syn(src, (base + i) % 64512 + 1024, la, dport, rng.getrandbits(32), rng)
            out.append(Input("in", bytes(p), CSUM_OK, "flood_mpc_syn"))
        return out
    if kind == "join_syn":
        base = rng.randint(1024, 60000)
        for i in range(n):
            p = join_syn(ra, (base + i) % 64512 + 1024, la, lp, cv.local_token, rng,
                         backup=bool(i & 1))
            out.append(Input("in", bytes(p), CSUM_OK, "flood_join_syn"))
        return out
    if kind == "join_ack":
        passive = [s for s in cv.subflows if s.passive and s.key is not None]
        for i in range(min(n, 64)):
            if not passive:
                break
            sv = passive[i % len(passive)]
            sla, slp, sra, srp = sv.key
            opt = bytes((30, 24, 0x10, 0)) + rng.randbytes(20)
            p = wire.build(sra, sla, srp, slp, (sv.rcv_isn + 1) & M32, (sv.snd_isn + 1) & M32,
                           ACK, 0x2000, opt)
            out.append(Input("in", bytes(p), CSUM_OK, "flood_join_ack"))
        return out
    for i in range(n):  # RSTs across the window of the initial subflow
        seq = (cv.tcp_rcv_isn + 2 + i * 1021) & M32
        p = wire.build(ra, la, rp, lp, seq, 0, RST, 0)
        out.append(Input("in", bytes(p), CSUM_OK, "flood_srv_rst"))
    return out
