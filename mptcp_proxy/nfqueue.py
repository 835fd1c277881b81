"""The NFQUEUE driver: the only module that touches netfilterqueue and raw sockets.

Two queues — one for the local stack's outbound segments (mangle OUTPUT), one for
inbound segments (raw PREROUTING) — feed :class:`~mptcp_proxy.core.proxy.Proxy`.
Verdicts go back to the kernel; forged packets leave on raw sockets marked with
``SO_MARK`` so the queue rules skip them, each bound to its source address so
that policy routing by source sends it out of the right link (docs/platform.md §6).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time

from .core.proxy import Proxy
from .core.verdict import ACCEPT, DROP, Verdict

log = logging.getLogger("mptcp_proxy.nfqueue")

COPY_RANGE = 0xFFFF
MAX_QUEUE_LEN = 4096
SOCK_RCVBUF = 8 * 1024 * 1024


class QueueBusyError(Exception):
    """The NFQUEUE number is already bound by another process."""


class Injector:
    """Raw sockets for forged packets, one per (family, source address)."""

    def __init__(self, mark: int, local_addrs: set[bytes]) -> None:
        self.mark = mark
        self.local_addrs = local_addrs
        self.socks: dict[tuple[int, bytes | None], socket.socket] = {}
        self.errors = 0

    def _sock(self, v6: bool, src: bytes) -> socket.socket:
        bind_to = src if src in self.local_addrs else None
        key = (6 if v6 else 4, bind_to)
        s = self.socks.get(key)
        if s is None:
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            if bind_to is not None:
                try:
                    s.bind((str(ipaddress.ip_address(bind_to)), 0))
                except OSError as e:
                    log.debug("raw socket bind %s: %s", ipaddress.ip_address(bind_to), e)
            s.setblocking(False)
            self.socks[key] = s
        return s

    def send(self, pkt: bytes | bytearray) -> None:
        v6 = (pkt[0] >> 4) == 6
        if v6:
            src, dst = bytes(pkt[8:24]), bytes(pkt[24:40])
        else:
            src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
        try:  # (inet_ntop: ~20x cheaper than ipaddress, one call per forged packet)
            self._sock(v6, src).sendto(pkt, (socket.inet_ntop(
                socket.AF_INET6 if v6 else socket.AF_INET, dst), 0))
        except OSError as e:
            self.errors += 1
            if e.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAGAIN):
                log.warning("raw send to %s failed: %s", ipaddress.ip_address(dst), e)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()


class DriverBase:
    """What every queue backend shares: after a batch of verdicts, send the forged
    packets, report events, and keep one asyncio timer armed at the core's next
    deadline (loop.time() and time.monotonic() are the same clock on Linux)."""

    proxy: Proxy
    injector: Injector
    loop: asyncio.AbstractEventLoop | None
    on_event = None
    _timer_handle: asyncio.TimerHandle | None = None
    _timer_at: float | None = None

    def contain(self, buf: bytearray, outbound: bool, now: float) -> Verdict:
        """The core raised on ``buf``: it resets that connection and the packet is dropped
        (never passed unconverted as if nothing happened)."""
        try:
            return self.proxy.contain_failure(buf, outbound, now)
        except Exception:
            log.exception("resetting the connection after a failure failed")
            return DROP

    def flush_outputs(self) -> None:
        """After a batch of verdicts (or a command): send the forged packets, report the
        events, and re-arm the timer at the core's next deadline."""
        proxy = self.proxy
        if proxy.has_output:
            self.flush()
            events = proxy.events()
            if self.on_event is not None:
                for ev in events:
                    self.on_event(ev)
            else:
                for _ev in events:
                    pass
        t = proxy.get_timer()
        if t != self._timer_at:
            self._arm(t)

    def flush(self) -> None:
        send = self.injector.send
        for pkt in self.proxy.packets_to_send():
            send(pkt)

    def _arm(self, t: float | None) -> None:
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timer_at = t
        if t is not None and self.loop is not None:
            # loop.time() and time.monotonic() are the same clock on Linux
            self._timer_handle = self.loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        self._timer_at = None
        try:
            self.proxy.handle_timer(time.monotonic())
        except Exception:
            log.exception("timer handling failed")
            self.proxy.counters.inc("InternalErrors")
        self.flush_outputs()
        if self._timer_at is None:
            t = self.proxy.get_timer()
            if t is not None:
                self._arm(t)


class NfqueueDriver(DriverBase):
    """Binds the two queues and runs the proxy core from the asyncio loop."""

    def __init__(self, proxy: Proxy, queue_out: int, queue_in: int, injector: Injector,
                 loop: asyncio.AbstractEventLoop | None = None,
                 accept_all: bool = False) -> None:
        self.proxy = proxy
        self.accept_all = accept_all
        self.queue_out = queue_out
        self.queue_in = queue_in
        self.injector = injector
        self.loop = loop
        self.queues = []
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.packets = 0
        self.on_event = None

    def bind(self) -> None:
        """Bind both queues; raises :class:`QueueBusyError` if one is taken."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue
        cbs = ((self.queue_out, self._cb_out), (self.queue_in, self._cb_in))
        if self.accept_all:
            cbs = ((self.queue_out, self._cb_accept), (self.queue_in, self._cb_accept))
        for num, cb in cbs:
            q = NetfilterQueue()
            try:
                q.bind(num, cb, max_len=MAX_QUEUE_LEN, mode=COPY_PACKET, range=COPY_RANGE,
                       sock_len=SOCK_RCVBUF)
            except OSError as e:
                self.unbind()
                raise QueueBusyError(f"NFQUEUE {num} is already bound by another process "
                                     f"({e})") from None
            self.queues.append(q)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for q in self.queues:
            loop.add_reader(q.get_fd(), self._make_reader(q))

    @staticmethod
    def _make_reader(q):
        def read() -> None:
            q.run(block=False)
        return read

    def unbind(self) -> None:
        for q in self.queues:
            try:
                if self.loop is not None:
                    self.loop.remove_reader(q.get_fd())
            except Exception:
                pass
            try:
                q.unbind()
            except Exception:
                pass
        self.queues = []

    # ----------------------------------------------------------- callbacks
    def _verdict(self, p, v: Verdict, buf: bytearray) -> None:
        if v is ACCEPT:
            p.accept()
        elif v is DROP:
            p.drop()
        else:
            p.set_payload(bytes(buf))
            p.accept()

    def _cb_accept(self, p) -> None:
        """Benchmark floor (``--accept-all``): the same queue, library and loop, every
        packet accepted unmodified."""
        self.packets += 1
        p.get_payload()
        p.accept()

    def _cb_out(self, p) -> None:
        self.packets += 1
        proxy = self.proxy
        buf = bytearray(p.get_payload())
        now = time.monotonic()
        try:
            v = proxy.outbound(buf, now)
        except Exception:  # a bug: reset that connection, drop the packet
            log.exception("outbound packet handling failed")
            v = self.contain(buf, True, now)
        self._verdict(p, v, buf)
        self.flush_outputs()

    def _cb_in(self, p) -> None:
        self.packets += 1
        proxy = self.proxy
        buf = bytearray(p.get_payload())
        now = time.monotonic()
        try:
            v = proxy.inbound(buf, now)
        except Exception:
            log.exception("inbound packet handling failed")
            v = self.contain(buf, False, now)
        self._verdict(p, v, buf)
        self.flush_outputs()
