"""MP_JOIN, ADD_ADDR, REMOVE_ADDR and MP_PRIO encoders, their HMACs (RFC 8684 §3.2,
§3.4.1) and :func:`decode_other`, written independently of the proxy's codec."""

from __future__ import annotations

import hashlib
import hmac
import struct

from lockstep.decode import Ignored
from lockstep.wire import M64


def hmac256(k1: int, k2: int, msg: bytes) -> bytes:
    """HMAC-SHA256 keyed with two big-endian u64s (RFC 8684 §3.2, §3.4.1)."""
    return hmac.new(struct.pack("!QQ", k1 & M64, k2 & M64), msg, hashlib.sha256).digest()


def join_synack_thmac(key_listener: int, key_init: int, r_listener: int, r_init: int) -> bytes:
    """SYN/ACK: leftmost 64 bits of HMAC(KeyB‖KeyA, R_B‖R_A); B = listener."""
    return hmac256(key_listener, key_init, struct.pack("!II", r_listener, r_init))[:8]


def join_ack_hmac(key_init: int, key_listener: int, r_init: int, r_listener: int) -> bytes:
    """Third ACK: leftmost 160 bits of HMAC(KeyA‖KeyB, R_A‖R_B); A = initiator."""
    return hmac256(key_init, key_listener, struct.pack("!II", r_init, r_listener))[:20]


def add_addr_hmac8(key_sender: int, key_receiver: int, addr_id: int, addr: bytes,
                   port: int | None) -> bytes:
    """ADD_ADDR: rightmost 64 bits of HMAC(Key_sender‖Key_receiver, id‖addr‖port16)."""
    msg = bytes((addr_id,)) + bytes(addr) + struct.pack("!H", port or 0)
    return hmac256(key_sender, key_receiver, msg)[-8:]


def mpj_synack_opt(backup: bool, addr_id: int, thmac: bytes, nonce: int) -> bytes:
    return bytes((30, 16, 0x10 | (1 if backup else 0), addr_id)) + thmac + \
        struct.pack("!I", nonce)


def add_addr_opt(addr_id: int, addr: bytes, port: int | None = None,
                 hmac8: bytes | None = None, echo: bool = False) -> bytes:
    body = bytes(addr) + (struct.pack("!H", port) if port is not None else b"") + \
        (b"" if echo else hmac8)
    return bytes((30, 4 + len(body), 0x30 | (1 if echo else 0), addr_id)) + body


def rm_addr_opt(ids) -> bytes:
    return bytes((30, 3 + len(ids), 0x40)) + bytes(ids)


def prio_opt(backup: bool) -> bytes:
    return bytes((30, 3, 0x50 | (1 if backup else 0)))


def decode_other(x):
    """MP_JOIN / ADD_ADDR / REMOVE_ADDR / MP_PRIO / MP_FAIL as Linux 6.18 accepts them
    (``mptcp_parse_option``: strict lengths). Returns a tuple ``(name, fields...)`` or
    an :class:`Ignored`."""
    o = x.raw
    n = len(o)
    sub = x.subtype
    if sub == 1:
        if n == 12:
            return ("join_syn", bool(o[2] & 1), o[3], struct.unpack_from("!I", o, 4)[0],
                    struct.unpack_from("!I", o, 8)[0])
        if n == 16:
            return ("join_synack", bool(o[2] & 1), o[3], bytes(o[4:12]),
                    struct.unpack_from("!I", o, 12)[0])
        if n == 24:
            return ("join_ack", bytes(o[4:24]))
        return Ignored(1, o, f"MP_JOIN len {n}")
    if sub == 3:
        echo = bool(o[2] & 1)
        forms = {8: (True, False), 10: (True, True), 16: (False, False), 18: (False, True)}
        f = forms.get(n)
        if f is None or f[0] != echo:
            return Ignored(3, o, f"ADD_ADDR len {n} echo={echo}")
        port = struct.unpack_from("!H", o, 8)[0] if f[1] else None
        h = None if echo else bytes(o[-8:])
        return ("add_addr", echo, o[3], bytes(o[4:8]), port, h)
    if sub == 4:
        if not 4 <= n <= 11:
            return Ignored(4, o, f"REMOVE_ADDR len {n}")
        return ("rm_addr", tuple(o[3:n]))
    if sub == 5:
        if n != 3:
            return Ignored(5, o, f"MP_PRIO len {n} (Linux accepts only 3)")
        return ("prio", bool(o[2] & 1))
    if sub == 6:
        if n != 12:
            return Ignored(6, o, f"MP_FAIL len {n}")
        return ("fail", struct.unpack_from("!Q", o, 4)[0])
    return ("unknown", sub, o)
