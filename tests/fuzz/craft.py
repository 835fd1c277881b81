"""What the fuzzer's crafters know and build: a view of the proxy's live state (read
from public attributes, with defaults, so a renamed attribute makes crafting less sharp,
never crash), option-block edits of raw packets, and MPTCP options of every subtype
with fields near the live values (valid keys and HMACs computed with the unit-test
models' own helpers, independent of the core's codec).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import wire
from .wire import ACK, M32, M64


# ------------------------------------------------------------------- live state
def _g(obj, name, default=0):
    return getattr(obj, name, default)


class SfView:
    """What a crafter needs of one subflow (wire values, 32-bit)."""

    def __init__(self, sf) -> None:
        self.key = _g(sf, "key", None)
        rcv_base, snd_base = _g(sf, "rcv_base"), _g(sf, "snd_base")
        self.rcv_nxt = (rcv_base + _g(sf, "rcv_high")) & M32  # next peer byte expected
        self.snd_nxt = (snd_base + _g(sf, "snd_nxt")) & M32
        self.snd_una = (snd_base + _g(sf, "snd_una")) & M32
        self.rcv_high_rel = _g(sf, "rcv_high")
        self.ts_ok = bool(_g(sf, "ts_ok", False))
        self.ts_recent = _g(sf, "ts_recent")
        self.remote_id = _g(sf, "remote_id")
        self.index = _g(sf, "index")
        st = _g(sf, "state", None)
        self.state = getattr(st, "name", str(st))
        self.passive = bool(_g(sf, "passive", False))  # the peer's join (we are listener B)
        self.snd_isn, self.rcv_isn = _g(sf, "snd_isn"), _g(sf, "rcv_isn")
        self.nonce, self.remote_nonce = _g(sf, "nonce"), _g(sf, "remote_nonce")


def _g2(obj, *names, default=0):
    """The first of ``names`` the object has (attributes renamed by the restructuring)."""
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


class ConnView:
    def __init__(self, conn) -> None:
        self.key = _g(conn, "key", None)
        self.v6 = bool(_g(conn, "v6", False))
        st = _g(conn, "state", None)
        self.state = getattr(st, "name", str(st))
        self.local_key = _g(conn, "local_key")
        self.remote_key = _g(conn, "remote_key")
        self.idsn_local = _g2(conn, "local_idsn", "idsn_local")
        self.idsn_remote = _g2(conn, "remote_idsn", "idsn_remote")
        self.d_nxt, self.d_una = _g(conn, "d_nxt"), _g(conn, "d_una")
        self.r_high, self.r_ack = _g(conn, "r_high"), _g(conn, "r_ack")
        self.tcp_snd_base, self.tcp_rcv_base = _g(conn, "tcp_snd_base"), _g(conn, "tcp_rcv_base")
        self.local_token = _g(conn, "local_token")
        self.remote_token = _g(conn, "remote_token")
        self.ts_local = _g2(conn, "tcp_tsval", "ts_local")
        self.subflows = [SfView(s) for s in _g(conn, "subflows", [])]
        self.role = _g(conn, "role", "client")
        self.anchor = bool(_g(conn, "anchor", False))
        self.csum = bool(_g(conn, "csum", False))
        # the server role's handshake: the peer's ISN, the TCP side's SYN/ACK ISN
        self.tcp_rcv_isn, self.tcp_snd_isn = _g(conn, "tcp_rcv_isn"), _g(conn, "tcp_snd_isn")

    @property
    def data_ack(self) -> int:
        """A DATA_ACK the peer would send: everything we sent (64-bit)."""
        return (self.idsn_local + 1 + self.d_nxt) & M64

    @property
    def peer_dsn(self) -> int:
        """The peer's next DSN (64-bit)."""
        return (self.idsn_remote + 1 + self.r_high) & M64


class Ctx:
    """The live state of one proxy, as the crafters see it, and recent packets."""

    def __init__(self, proxy, history: dict) -> None:
        self.proxy = proxy
        self.history = history

    def conns(self) -> list[ConnView]:
        try:
            return [ConnView(c) for c in list(self.proxy.connections.values())]
        except Exception:  # noqa: BLE001 - crafting must not fail on odd state
            return []


@dataclass
class Input:
    """One packet to inject: ``direction`` "out" (the TCP side -> proxy) or "in" (the
    network -> proxy), its bytes, checksum state and the label it is counted under."""

    direction: str
    data: bytes
    csum: int
    label: str


# ------------------------------------------------------------------ packet edits
def offsets(buf):
    lo = wire.layout(buf)
    if lo is None or lo.th < 0 or lo.th + 20 > len(buf):
        return None
    hl = (buf[lo.th + 12] >> 4) * 4
    return lo, lo.th, max(20, min(hl, len(buf) - lo.th))


def rebuild(buf, *, opts: bytes | None = None, payload: bytes | None = None,
            fix: bool = True) -> bytearray | None:
    """``buf`` with a new option block and/or payload (data offset and IP length set,
    checksums recomputed when ``fix``). Options longer than 40 bytes are cut at an
    option boundary."""
    o = offsets(buf)
    if o is None:
        return None
    lo, th, hl = o
    old_opts = bytes(buf[th + 20:th + hl])
    old_pay = bytes(buf[th + hl:lo.end])
    opts = old_opts if opts is None else opts
    payload = old_pay if payload is None else payload
    if len(opts) > 40:
        opts = opts[:40]
    if len(opts) % 4:
        opts += b"\x00" * (4 - len(opts) % 4)
    out = bytearray(buf[:th + 20]) + opts + payload
    out[th + 12] = ((20 + len(opts)) // 4) << 4 | (out[th + 12] & 0x0F)
    wire.set_ip_length(out)
    return wire.fix_checksums(out) if fix else out


def option_list(buf) -> list[tuple[int, int, int]]:
    """(kind, offset, length) of the options of ``buf`` (tolerant walk)."""
    o = offsets(buf)
    if o is None:
        return []
    _lo, th, hl = o
    out = []
    i, end = th + 20, th + hl
    while i < end:
        k = buf[i]
        if k == 0:
            break
        if k == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            break
        out.append((k, i, buf[i + 1]))
        i += buf[i + 1]
    return out


def tcp_flags(buf) -> int:
    o = offsets(buf)
    return buf[o[1] + 13] if o else 0


def payload_len(buf) -> int:
    o = offsets(buf)
    if o is None:
        return 0
    lo, th, hl = o
    return max(0, lo.end - th - hl)


# -------------------------------------------------------------- MPTCP options
def ts_option(sfv: SfView | None) -> bytes:
    if sfv is None or not sfv.ts_ok:
        return b""
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, (sfv.ts_recent + 1) & M32, 0)


def gen_mptcp(rng, cv: ConnView | None, *, plen: int = 0, flags: int = ACK) -> bytes:
    """One MPTCP option of a random subtype and shape: mostly well-formed with fields
    near the connection's live values (valid keys and HMACs half of the time), some
    with wrong lengths or garbage."""
    from mpnet.options import add_addr_hmac8, join_synack_thmac
    r = rng.random
    ck = cv is not None and r() < 0.6  # use the real keys/values
    lk = cv.local_key if ck else rng.getrandbits(64)
    rk = cv.remote_key if ck else rng.getrandbits(64)
    sub = rng.choice((0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 15))
    if r() < 0.08:  # a random length with random content
        n = rng.randint(3, 38)
        return bytes((30, n, (sub << 4) | rng.getrandbits(4))) + rng.randbytes(n - 3)
    if sub == 0:
        n = rng.choice((4, 12, 20, 22, 24, 5, 16))
        ver = rng.choice((1, 1, 1, 0, 2, 15))
        fl = rng.choice((0x01, 0x81, 0x21, 0x41, 0x00, rng.getrandbits(8)))
        body = struct.pack("!QQHH", rk, lk, plen & 0xFFFF, rng.getrandbits(16))
        return bytes((30, n, ver, fl)) + body[:n - 4] + bytes(max(0, n - 4 - len(body)))
    if sub == 1:
        n = rng.choice((12, 16, 24, 13))
        b = 0x10 | rng.getrandbits(1)
        tok = cv.remote_token if ck else rng.getrandbits(32)
        if n == 12:
            return struct.pack("!BBBBII", 30, 12, b, rng.getrandbits(8), tok, rng.getrandbits(32))
        if n == 16:
            thmac = join_synack_thmac(rk, lk, 1, 2) if ck else rng.randbytes(8)
            return bytes((30, 16, b, rng.getrandbits(8))) + thmac + rng.randbytes(4)
        return bytes((30, n, 0x10, 0)) + rng.randbytes(n - 4)
    if sub == 2:
        return gen_dss(rng, cv, plen=plen)
    if sub == 3:
        echo = r() < 0.3
        v6 = r() < 0.3
        addr = rng.choice((
            bytes((10, 9, 1, 2)), bytes((127, 0, 0, 1)), bytes((192, 168, 1, 1)),
            bytes((224, 0, 0, 1)), bytes(4), b"\xff" * 4, bytes((8, 8, 8, 8)),
            rng.randbytes(4))) if not v6 else rng.choice((
                bytes(15) + b"\x01", bytes.fromhex("fe80000000000000") + rng.randbytes(8),
                rng.randbytes(16)))
        port = rng.choice((None, None, 22, 8080, 0, rng.getrandbits(16)))
        aid = rng.choice((0, 1, 2, 3, 255, rng.getrandbits(8)))
        body = bytes(addr) + (struct.pack("!H", port) if port is not None else b"")
        if not echo:
            body += add_addr_hmac8(rk, lk, aid, addr, port) if ck else rng.randbytes(8)
        return bytes((30, 4 + len(body), 0x30 | (1 if echo else 0), aid)) + body
    if sub == 4:
        k = rng.choice((1, 1, 2, 8, 9, 0))
        ids = bytes(rng.choice((0, 1, 2, rng.getrandbits(8))) for _ in range(k))
        return bytes((30, 3 + k, 0x40)) + ids
    if sub == 5:
        return bytes((30, 3, 0x50 | rng.getrandbits(1))) if r() < 0.8 else \
            bytes((30, 4, 0x50 | rng.getrandbits(1), rng.getrandbits(8)))
    if sub == 6:
        dsn = cv.peer_dsn if ck else rng.getrandbits(64)
        return struct.pack("!BBBBQ", 30, 12, 0x60, 0, dsn)
    if sub == 7:
        key = lk if ck else rng.getrandbits(64)
        return struct.pack("!BBBBQ", 30, 12, 0x70, 0, key)
    if sub == 8:
        return bytes((30, 4, 0x80 | rng.getrandbits(4), rng.randint(0, 8)))
    return bytes((30, 4, sub << 4, 0))


def gen_dss(rng, cv: ConnView | None, *, plen: int = 0, ssn_rel: int | None = None,
            fin: bool | None = None) -> bytes:
    """A DSS with random flags, fields near the live values (and boundary values)."""
    r = rng.random
    fl = rng.getrandbits(5)
    if fin is not None:
        fl = (fl & ~0x10) | (0x10 if fin else 0)
    body = b""
    if fl & 0x01:
        a = cv.data_ack if cv is not None and r() < 0.7 else rng.getrandbits(64)
        a = (a + rng.choice((0, 0, 0, 1, -1, 1000, -1000, 1 << 31, rng.getrandbits(32)))) & M64
        body += struct.pack("!Q", a) if fl & 0x02 else struct.pack("!I", a & M32)
    if fl & 0x04:
        d = cv.peer_dsn if cv is not None and r() < 0.7 else rng.getrandbits(64)
        d = (d + rng.choice((0, 0, 1, -1, 1400, -1400, 1 << 31, rng.getrandbits(40)))) & M64
        body += struct.pack("!Q", d) if fl & 0x08 else struct.pack("!I", d & M32)
        if ssn_rel is None:
            base = cv.subflows[0].rcv_high_rel if cv is not None and cv.subflows else 0
            ssn_rel = base + rng.choice((0, 0, 1, -1, 1400, 100000, rng.getrandbits(31)))
        dll = rng.choice((plen, plen, plen + 1, 0, 1, 0xFFFF, max(plen - 1, 0),
                          rng.getrandbits(16)))
        body += struct.pack("!IH", (ssn_rel + 1) & M32, dll)
        if r() < 0.3:
            body += struct.pack("!H", rng.getrandbits(16))
    return bytes((30, 4 + len(body), 0x20, fl)) + body


def options_with(buf, mp: bytes, replace: bool) -> bytes:
    """The option block of ``buf`` with MPTCP option ``mp`` added (or replacing the
    MPTCP options), NOP-padded; other options are dropped last-first to fit 40."""
    keep = []
    for k, off, n in option_list(buf):
        if replace and k == 30:
            continue
        keep.append(bytes(buf[off:off + n]))
    pad = lambda b: (b"\x01" * (-len(b) % 4)) + b  # noqa: E731
    parts = [pad(x) for x in keep]
    block = pad(mp)
    while parts and len(block) + sum(len(p) for p in parts) > 40:
        parts.pop()
    return b"".join(parts) + block


