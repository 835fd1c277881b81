"""One connection end of the peer: sending the pattern, receiving and checking it, and the
record that tells what happened.

:class:`Side` keeps the byte counts, the pattern check of what arrived (``bad_at``: first
byte that was not the expected one), optional SHA-256 of both directions, the delivery
gaps (time between two reads that returned data) and optionally a trace of every read
(monotonic time and size, for the handover analysis). :class:`Registry` knows the live
connections of a process: it reports their progress and ends them on SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import sys
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any

from .pattern import Stream
from .protocol import UNLIMITED
from .sockinfo import error_name

__all__ = ["SendPlan", "Side", "Registry", "emit", "recv_exact", "shutdown", "RECV_BUF",
           "SEND_CHUNK"]

RECV_BUF = 262144       # bytes per recv_into
SEND_CHUNK = 262144     # bytes per send() at full speed
PACED_PIECE = 8192      # bytes per send() when paced


@dataclass(frozen=True)
class SendPlan:
    """What one side sends: at most ``max_bytes``, for at most ``seconds`` (0: no limit),
    paced at ``rate`` bytes/s (0: full speed); ``until_eof``: stop once the other side's
    stream has ended."""

    max_bytes: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    until_eof: bool = False

    @property
    def empty(self) -> bool:
        return self.max_bytes == 0


_print_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout (thread-safe)."""
    line = json.dumps(obj, sort_keys=True)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes, or fewer if the stream ended first."""
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            break
        data += part
    return data


class Terminated(Exception):
    """The process was asked to stop (SIGTERM): the connection ends unfinished."""


class Side:
    """Byte, hash and timing accounting of one connection end; ``error`` keeps the first
    failure. ``tx``/``rx``: the streams this side sends and expects."""

    def __init__(self, tx: Stream, rx: Stream, hashing: bool = True,
                 trace: bool = False) -> None:
        self.tx, self.rx = tx, rx
        self.sent = 0
        self.received = 0
        self.sent_h = hashlib.sha256() if hashing else None
        self.recv_h = hashlib.sha256() if hashing else None
        self.bad_at: int | None = None   # stream offset of the first unexpected byte
        self.error: str | None = None
        self.eof = threading.Event()     # the other side's stream ended (or failed)
        self.sock: socket.socket | None = None
        self.t0 = time.monotonic()
        self.first_rx: float | None = None
        self.last_rx: float | None = None
        self.max_gap = 0.0               # longest time between two data-returning reads, s
        self.t_send_end: float | None = None
        self.trace = array("d") if trace else None  # (monotonic time, bytes) interleaved

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = "terminated" if isinstance(exc, Terminated) else error_name(exc)

    # ------------------------------------------------------------------ sending
    def send(self, sock: socket.socket, plan: SendPlan) -> None:
        """Send the pattern as ``plan`` says (raises the socket's errors)."""
        t_start = time.monotonic()
        deadline = t_start + plan.seconds if plan.seconds else None
        piece = PACED_PIECE if plan.rate else SEND_CHUNK
        tx, h = self.tx, self.sent_h
        try:
            while self.sent < plan.max_bytes:
                if plan.until_eof and self.eof.is_set():
                    break
                if deadline is not None and not _writable(sock, deadline):
                    break
                view = tx.window(self.sent, min(piece, plan.max_bytes - self.sent))
                n = sock.send(view)
                if h is not None:
                    h.update(view[:n])
                self.sent += n
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if plan.rate:
                    self._pace(t_start + self.sent / plan.rate, deadline, plan.until_eof)
        finally:
            self.t_send_end = time.monotonic()

    def _pace(self, due: float, deadline: float | None, until_eof: bool) -> None:
        wait = due - time.monotonic()
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        if wait > 0:
            if until_eof:
                self.eof.wait(wait)
            else:
                time.sleep(wait)

    # ------------------------------------------------------------------ receiving
    def recv_to_eof(self, sock: socket.socket) -> None:
        """Read until the other side's end of stream, checking every byte against the
        pattern (raises the socket's errors; ``eof`` is set either way)."""
        buf = bytearray(RECV_BUF)
        view = memoryview(buf)
        rx, h, trace = self.rx, self.recv_h, self.trace
        try:
            while True:
                n = sock.recv_into(buf)
                if n == 0:
                    break
                now = time.monotonic()
                if self.last_rx is None:
                    self.first_rx = now
                elif now - self.last_rx > self.max_gap:
                    self.max_gap = now - self.last_rx
                self.last_rx = now
                data = view[:n]
                if self.bad_at is None and not rx.matches(self.received, data):
                    self.bad_at = self.received + (rx.first_mismatch(self.received, data) or 0)
                if h is not None:
                    h.update(data)
                if trace is not None:
                    trace.append(now)
                    trace.append(n)
                self.received += n
        finally:
            self.eof.set()

    def write_trace(self, path: str) -> None:
        """The read trace as interleaved doubles (time, bytes) (see ``netns.handover``)."""
        with open(path, "wb") as f:
            (self.trace if self.trace is not None else array("d")).tofile(f)

    # ------------------------------------------------------------------ record
    def record(self, role: str, conn: int, facts: dict[str, Any], **extra: Any) -> dict:
        """The connection's record (see :mod:`netns.peer` for the keys)."""
        now = time.monotonic()
        return {
            "role": role, "conn": conn, **extra,
            "sent": self.sent, "received": self.received,
            "sent_sha256": self.sent_h.hexdigest() if self.sent_h else None,
            "recv_sha256": self.recv_h.hexdigest() if self.recv_h else None,
            "pattern_ok": self.bad_at is None, "bad_at": self.bad_at,
            "elapsed": round(now - self.t0, 6), "error": self.error,
            "recv_s": round(self.last_rx - self.first_rx, 6)
            if self.first_rx is not None and self.last_rx is not None else None,
            "max_gap_s": round(self.max_gap, 6),
            "idle_at_end_s": round(now - (self.last_rx or self.t0), 6),
            "t0": self.t0, "t_send_end": self.t_send_end, "t_end": now, **facts,
        }

    def progress(self, now: float) -> list[Any]:
        """``[seed, sent, received, s since the last byte arrived, pattern ok]``."""
        return [self.rx.seed, self.sent, self.received,
                round(now - (self.last_rx or self.t0), 3), self.bad_at is None]


def _writable(sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` can take data (True) or ``deadline`` (monotonic) passed
    (False); raises ``TimeoutError`` when the socket's own timeout passes first."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    limit = sock.gettimeout()
    p = select.poll()
    p.register(sock, select.POLLOUT)
    if p.poll(min(left, limit if limit is not None else left) * 1000):
        return True
    if limit is not None and limit < left:
        raise TimeoutError("timed out")
    return False


def shutdown(sock: socket.socket) -> None:
    """Shut both directions down (a blocked sender or receiver returns at once)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def unlimited_if(limit: int | None, open_ended: bool) -> int:
    """A byte limit: ``limit`` if given, else unlimited for an open-ended (timed or
    until-EOF) plan and 0 otherwise."""
    if limit is not None:
        return limit
    return UNLIMITED if open_ended else 0


class Registry:
    """The live connection ends of this process: for progress reports and for ending
    them all when the process is told to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sides: set[Side] = set()
        self.stopping = False

    def add(self, side: Side) -> None:
        with self._lock:
            self._sides.add(side)

    def remove(self, side: Side) -> None:
        with self._lock:
            self._sides.discard(side)

    def progress_event(self) -> dict[str, Any]:
        """``{"event": "progress", "t": monotonic, "conns": [Side.progress(), ...]}``."""
        now = time.monotonic()
        with self._lock:
            rows = sorted(s.progress(now) for s in self._sides)
        return {"event": "progress", "t": now, "conns": rows}

    def report_every(self, period: float) -> None:
        """Emit a progress event every ``period`` s (in a daemon thread)."""
        def run() -> None:
            while not self.stopping:
                time.sleep(period)
                emit(self.progress_event())
        threading.Thread(target=run, daemon=True).start()

    def stop_all(self) -> None:
        """Mark every live side terminated and shut its socket down (its threads then
        finish and write their records)."""
        self.stopping = True
        with self._lock:
            sides = list(self._sides)
        for side in sides:
            side.fail(Terminated())
            if side.sock is not None:
                shutdown(side.sock)
