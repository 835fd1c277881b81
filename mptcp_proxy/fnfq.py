"""NFQUEUE driver on fnfqueue with GSO: the fast backend (``--backend fnfqueue``).

Same role and interface as :class:`~mptcp_proxy.nfqueue.NfqueueDriver`, with two
differences that matter for speed (measured in tools/bench):

- reads are batched (recvmmsg through fnfqueue's C layer), one syscall for up to
  ``BATCH`` packets;
- the queues are configured with ``NFQA_CFG_F_GSO``: the kernel hands over GSO
  super-packets (up to 64 KB) instead of segmenting them first, so the proxy
  rewrites one header per super-packet — as Linux MPTCP itself puts one DSS
  mapping on a TSO super-packet, copied to every segment. Such packets may carry
  a partial checksum (offload not done yet); the metadata ``NFQA_SKB_INFO`` says
  so, and the core then recomputes the checksum of what it rewrites, or leaves it
  to the kernel's segmentation for a GSO packet (see ``core.tcp.CSUM_*``).

netfilterqueue cannot do this: it copies at most 4016 bytes of a packet and has no
API for queue flags.

What the library gets wrong, and how this driver copes (fnfqueue 1.1.2; see
docs/queue-backends.md): its ``parse_packet`` stores each netlink attribute at
``attr[type]`` with no bound check, in an array sized by the kernel headers it was
built with (``NFQA_MAX`` = 20, ``NFQA_L2HDR``). Linux sends ``NFQA_PRIORITY`` (21)
whenever ``skb->priority`` is not 0 — any socket with ``SO_PRIORITY`` or ``IP_TOS``
set, OpenSSH's for instance — and ``NFQA_CGROUP_CLASSID`` (22) for a socket in a
net_cls cgroup. Entry 21 overlaps the struct's own ``seq``/``msg_flags``/``msg_len``,
so the walk stops there and every later attribute, ``NFQA_SKB_INFO`` and
``NFQA_PAYLOAD`` included, is lost; entry 22 and above fall past the struct. The
driver therefore allocates each packet struct with room for :data:`ATTR_SLACK`
extra entries (nothing outside it is ever written) and, when the payload
attribute came back empty, walks the attributes itself
(:func:`reparse_attributes`) — the common case stays in C.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import time

from .core.proxy import Proxy
from .core.tcp import CSUM_GSO, CSUM_OK, CSUM_PARTIAL, CSUM_UNVERIFIED, parse_packet, walk_options
from .core.verdict import ACCEPT, DROP
from .nfqueue import DriverBase, Injector, QueueBusyError

log = logging.getLogger("mptcp_proxy.fnfq")

BATCH = 64
PACKET_BUF = 80 * 1024
MAX_QUEUE_LEN = 4096
SOCK_RCVBUF = 8 * 1024 * 1024
SO_RCVBUFFORCE = 33

# include/uapi/linux/netfilter/nfnetlink_queue.h
NFQA_SKB_CSUMNOTREADY = 1 << 0
NFQA_SKB_GSO = 1 << 1
NFQA_SKB_CSUM_NOTVERIFIED = 1 << 2  # (set on PREROUTING unless the NIC/kernel verified it)
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4
NFQA_PRIORITY = 21  # past the array of fnfqueue 1.1.2 (built with NFQA_MAX = 20)

ATTR_SLACK = 64
"""Extra ``struct nfq_attr`` entries allocated behind every packet struct, so that
the library's unchecked ``attr[type]`` store of an attribute type it does not
know (up to ``NFQA_MAX + ATTR_SLACK``) lands in memory of ours."""

_NLA = struct.Struct("=HH")
_NLMSG_LEN = struct.Struct("=I")


def alloc_packet(ffi, bufsize: int = PACKET_BUF):
    """A ``struct nfq_packet *`` with :data:`ATTR_SLACK` spare attribute entries and
    a receive buffer of ``bufsize`` bytes; returns ``(packet, keepalive)`` (keep the
    second alive as long as the first is used)."""
    size = ffi.sizeof("struct nfq_packet") + ATTR_SLACK * ffi.sizeof("struct nfq_attr")
    raw = ffi.new("char[]", size)
    p = ffi.cast("struct nfq_packet *", raw)
    b = ffi.new("char[]", bufsize)
    p.buffer, p.len = b, bufsize
    return p, (raw, b)


def reparse_attributes(ffi, lib, p, bufsize: int = PACKET_BUF) -> bool:
    """Walk the netlink attributes of the message in ``p.buffer`` again and set
    ``p.attr[NFQA_PAYLOAD]``, ``[NFQA_SKB_INFO]`` and ``[NFQA_CAP_LEN]`` from them
    (pointers into the buffer). For a packet whose payload ``parse_packet`` lost;
    bounded by the message's own length and the buffer's. Returns True when a
    payload was found."""
    buf = ffi.buffer(ffi.cast("char *", p.buffer), bufsize)
    end = min(_NLMSG_LEN.unpack_from(buf, 0)[0], bufsize)
    wanted = {lib.NFQA_PAYLOAD: None, lib.NFQA_SKB_INFO: None, lib.NFQA_CAP_LEN: None}
    off = NLMSG_HDRLEN + NFGENMSG_LEN
    while off + 4 <= end:
        nla_len, nla_type = _NLA.unpack_from(buf, off)
        if nla_len < 4 or off + nla_len > end:
            break
        t = nla_type & NLA_TYPE_MASK
        if t in wanted:
            wanted[t] = (off + 4, nla_len - 4)
        off += (nla_len + 3) & ~3
    base = ffi.cast("char *", p.buffer)
    for t, found in wanted.items():
        a = p.attr[t]
        if found is None:
            a.buffer, a.len = ffi.NULL, 0
        else:
            a.buffer, a.len = base + found[0], found[1]
    return wanted[lib.NFQA_PAYLOAD] is not None


class FnfqueueDriver(DriverBase):
    """Binds the outbound and inbound queues on one netlink socket and runs the
    proxy core from the asyncio loop."""

    def __init__(self, proxy: Proxy, queue_out: int, queue_in: int, injector: Injector,
                 loop: asyncio.AbstractEventLoop | None = None, accept_all: bool = False,
                 gso: bool = True, floor_mangle: bool = False) -> None:
        from fnfqueue import ffi, lib  # the library's C layer (cffi)
        self.ffi, self.lib = ffi, lib
        self.proxy = proxy
        self.queue_out = queue_out
        self.queue_in = queue_in
        self.injector = injector
        self.loop = loop
        self.accept_all = accept_all
        self.floor_mangle = floor_mangle
        self.gso = gso
        self.packets = 0
        self.on_event = None
        self.conn = None
        self._seq = 0
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._bound: list[int] = []
        self.early_accepted = 0  # packets accepted unconverted while binding
        self.reparsed = 0  # packets whose attributes the library misread (see above)
        # verdicts given: [in accept, in drop, in mangle, out accept, out drop, out mangle]
        # (how often each path is taken: a MANGLE costs the kernel a copy of the packet)
        self.tally = [0] * 6

    # ------------------------------------------------------------- set-up
    def _call(self, fn, *args) -> None:
        """A configuration request, waiting for the kernel's acknowledgement."""
        ffi, lib = self.ffi, self.lib
        self._seq += 1
        seq = self._seq
        if fn(self.conn, *args, 1, seq) == -1:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            n = lib.receive(self.conn, self.pkts, 1)
            if n == -1:
                if ffi.errno in (errno.EAGAIN, errno.EINTR):
                    time.sleep(0.001)
                    continue
                raise OSError(ffi.errno, os.strerror(ffi.errno))
            p = self.pkts[0]
            seq_of = p.seq  # parse_packet may overwrite it (see the module docstring)
            err = lib.parse_packet(p)
            if err == 0:
                # a packet queued while we set up (stale rules of a killed daemon already
                # send traffic here): never leave it without a verdict
                lib.set_verdict(self.conn, p, lib.NF_ACCEPT, 0, 0, 0)
                self.early_accepted += 1
                continue
            if seq_of == seq:
                if err != -1:
                    raise OSError(err, os.strerror(err))
                return
        raise OSError(errno.ETIMEDOUT, "no answer from nfnetlink_queue")

    def bind(self) -> None:
        """Bind both queues; raises :class:`QueueBusyError` if one is taken."""
        ffi, lib = self.ffi, self.lib
        self.conn = ffi.new("struct nfq_connection *")
        if lib.init_connection(self.conn) == -1:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        fd = self.conn.fd
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCK_RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_RCVBUF)
        finally:
            s.close()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.alloc_batch()
        for num in (self.queue_out, self.queue_in):
            try:
                self._call(lib.bind_queue, num)
            except OSError as e:
                self.unbind()
                raise QueueBusyError(f"NFQUEUE {num} is already bound by another process "
                                     f"({e.strerror})") from None
            self._bound.append(num)
            self._call(lib.set_mode, num, 0xFFFF, lib.NFQNL_COPY_PACKET)
            self._call(lib.set_maxlen, num, MAX_QUEUE_LEN)
            if self.gso:
                self._call(lib.set_flags, num, lib.NFQA_CFG_F_GSO, lib.NFQA_CFG_F_GSO)

    def alloc_batch(self) -> None:
        """The :data:`BATCH` packet structs and buffers ``receive`` fills."""
        ffi = self.ffi
        self.pkts = ffi.new("struct nfq_packet*[]", BATCH)
        self._keep = []
        for i in range(BATCH):
            p, keep = alloc_packet(ffi)
            self._keep.append(keep)
            self.pkts[i] = p

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.conn.fd, self._read)

    def unbind(self) -> None:
        if self.conn is None:
            return
        try:
            if self.loop is not None:
                self.loop.remove_reader(self.conn.fd)
        except Exception:
            pass
        for num in self._bound:
            try:
                self._call(self.lib.unbind_queue, num)
            except OSError:
                pass
        self._bound = []
        self.lib.close_connection(self.conn)
        self.conn = None

    # -------------------------------------------------------------- packets
    def _read(self) -> None:
        ffi, lib = self.ffi, self.lib
        conn = self.conn
        if conn is None:
            return
        pkts = self.pkts
        proxy = self.proxy
        q_out = self.queue_out
        PAYLOAD, SKB_INFO = lib.NFQA_PAYLOAD, lib.NFQA_SKB_INFO
        NF_ACCEPT, NF_DROP, MANGLE = lib.NF_ACCEPT, lib.NF_DROP, lib.MANGLE_PAYLOAD
        unpack, cast, from_buffer, ffi_buffer = ffi.unpack, ffi.cast, ffi.from_buffer, ffi.buffer
        NULL = ffi.NULL
        verdict = lib.set_verdict
        accept_all = self.accept_all
        floor_mangle = self.floor_mangle
        tally = self.tally
        for _ in range(8):  # bounded, so timers and the control socket get their turn
            n = lib.receive(conn, pkts, BATCH)
            if n == -1:
                err = ffi.errno
                if err == errno.ENOBUFS:
                    proxy.counters.inc("QueueOverrun")
                    continue
                if err not in (errno.EAGAIN, errno.EINTR):
                    log.error("nfqueue receive failed: %s", os.strerror(err))
                break
            now = time.monotonic()
            for i in range(n):
                p = pkts[i]
                if lib.parse_packet(p) != 0:
                    continue  # acknowledgements, errors of earlier verdicts
                self.packets += 1
                a = p.attr[PAYLOAD]
                if a.buffer == NULL:  # an attribute the library does not know cut it
                    reparse_attributes(ffi, lib, p)
                    self.reparsed += 1
                    proxy.counters.inc("QueueAttrReparse")
                if accept_all and not floor_mangle:
                    unpack(cast("char *", a.buffer), a.len)
                    verdict(conn, p, NF_ACCEPT, 0, 0, 0)
                    continue
                out = p.queue_id == q_out
                csum = CSUM_OK  # no flag: complete, and verified if it was received
                si = p.attr[SKB_INFO]
                if si.buffer != ffi.NULL:
                    info = _U32.unpack(ffi_buffer(cast("char *", si.buffer), 4))[0]
                    if info & NFQA_SKB_CSUMNOTREADY:
                        # outbound GSO: the kernel's segmentation recomputes checksums;
                        # anything else rewritten goes back as CHECKSUM_NONE: complete it
                        csum = CSUM_GSO if out and info & NFQA_SKB_GSO else CSUM_PARTIAL
                    elif info & NFQA_SKB_CSUM_NOTVERIFIED:
                        csum = CSUM_UNVERIFIED  # received, nobody checked it: the core does
                buf = bytearray(ffi_buffer(cast("char *", a.buffer), a.len))  # one copy
                try:
                    if floor_mangle:
                        v = grow_with_nops(buf, csum)
                    elif out:
                        v = proxy.outbound(buf, now, csum)
                    else:
                        v = proxy.inbound(buf, now, csum)
                except Exception:  # a bug: reset that connection, drop the packet
                    log.exception("packet handling failed")
                    v = self.contain(buf, out, now)
                tally[out * 3 + v] += 1
                if v is ACCEPT:
                    verdict(conn, p, NF_ACCEPT, 0, 0, 0)
                elif v is DROP:
                    verdict(conn, p, NF_DROP, 0, 0, 0)
                else:
                    keep = from_buffer(buf)
                    a.buffer = keep
                    a.len = len(buf)
                    if verdict(conn, p, NF_ACCEPT, MANGLE, 0, 0) == -1:
                        proxy.counters.inc("VerdictErrors")
            if n < BATCH:
                break
        self.flush_outputs()


_U32 = struct.Struct("!I")

FLOOR_GROWTH = 20  # bytes: what the proxy adds to a segment of the TCP side (a DSS option)
FLOOR_MSS_OVERHEAD = 24  # bytes: what the proxy takes off the MSS (core ProxyConfig default)


def grow_with_nops(buf: bytearray, csum: int):
    """``--floor-mangle``: the segment in ``buf`` grown by up to :data:`FLOOR_GROWTH` bytes
    of NOP options (as many as fit in 40), checksums completed as the core completes its
    own rewrites; the verdict (MANGLE, or ACCEPT for what is not a TCP segment)."""
    pkt = parse_packet(buf)
    if pkt is None:
        return ACCEPT
    opts = bytearray(pkt.option_bytes())
    if pkt.flags & 0x02:  # SYN: the MSS shown lowered as the proxy lowers it (room for DSS)
        for kind, off, olen in walk_options(opts, 0, len(opts)) or ():
            if kind == 2 and olen == 4:
                mss = int.from_bytes(opts[off + 2:off + 4], "big")
                opts[off + 2:off + 4] = max(mss - FLOOR_MSS_OVERHEAD, 536).to_bytes(2, "big")
    grow = min(FLOOR_GROWTH, (40 - len(opts)) & ~3)
    pkt.csum_mode = csum
    pkt.set_options(b"\x01" * grow + bytes(opts))
    return pkt.finish()
