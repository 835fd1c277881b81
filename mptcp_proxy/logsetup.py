"""Where the daemon's log goes (``--log=stderr|journal|syslog``) and how connection
events are logged.

- ``stderr``: ``TIME LOGGER LEVEL message`` lines (the default; what a terminal or a
  test reads).
- ``journal``: systemd's journal through cysystemd's handler, with structured fields:
  every record carries ``LOGGER_NAME``, ``CODE_*``..., and a connection event also
  ``MPTCP_EVENT`` (``HANDOVER``...), ``MPTCP_CONN`` (the proxy's connection id),
  ``MPTCP_TOKEN`` (ours), ``MPTCP_REMOTE_TOKEN``, ``MPTCP_SUBFLOW``, ``MPTCP_SADDR``,
  ``MPTCP_SPORT``, ``MPTCP_DADDR``, ``MPTCP_DPORT`` and ``MPTCP_IFACE`` when set:
  ``journalctl -u mptcp-proxy MPTCP_EVENT=HANDOVER -o verbose``.
- ``syslog``: ``/dev/log``, facility daemon, tagged ``mptcp-proxy[PID]``.

Whatever the target, the last :data:`RING_LINES` lines are also kept in memory for
``mptcpctl debug-dump`` (:class:`RingHandler`).

The journal and syslog are datagram sockets that block while their queue is full (the
reader lags; ``net.unix.max_dgram_qlen`` is 10 in a new network namespace): their
records go through a queue to a thread of their own (:class:`Background`), so that a
thread that logs never waits for the reader itself; at exit the log thread gets
:data:`FLUSH_TIMEOUT` seconds to send what is left. For syslog that is the whole story.
cysystemd 2.0 sends to the journal without releasing the interpreter lock, so a journald
that stops reading still stalls the daemon (journald normally drains at once; the test
of ``--log=journal`` reads its socket continuously, as journald does).

A connection event is one line shaped like ``ip mptcp monitor``
(:func:`~mptcp_proxy.eventfmt.format_event`): at INFO level for the kinds in
:data:`~mptcp_proxy.core.events.INFO_EVENTS`, DEBUG for the routine per-connection ones
(CREATED, ESTABLISHED, CLOSED...: at a thousand connections a second their lines
would cost a tenth of the CPU; ``--log-level debug`` or ``mptcpctl monitor`` shows
them). Nothing per packet is logged above DEBUG.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import socket
import sys
import threading
from collections import deque

from .core.events import INFO_EVENTS, Event
from .eventfmt import format_event

__all__ = ["TARGETS", "LEVELS", "LogSetupError", "RingHandler", "configure", "set_level",
           "log_event", "journal_fields"]

TARGETS = ("stderr", "journal", "syslog")
LEVELS = ("debug", "info", "warning", "error")
RING_LINES = 2000
SYSLOG_ADDRESS = "/dev/log"
FLUSH_TIMEOUT = 2.0  # seconds the log thread may take at exit
IDENTIFIER = "mptcp-proxy"

# the root logger: pyroute2's warnings go to the same place (daemon.py keeps its debug out)
root = logging.getLogger()
events_log = logging.getLogger("mptcp_proxy.events")


class LogSetupError(Exception):
    """The chosen log target cannot be used (message says why)."""


class RingHandler(logging.Handler):
    """Keeps the last ``size`` formatted lines in memory."""

    def __init__(self, size: int = RING_LINES) -> None:
        super().__init__()
        self.buf: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buf.append(self.format(record))
        except Exception:  # a logging handler never raises
            self.handleError(record)

    def lines(self, n: int) -> list[str]:
        return list(self.buf)[-n:]


class Background(logging.handlers.QueueHandler):
    """Hands records to ``target`` from a thread of its own (the caller never blocks);
    :meth:`close` sends what is queued, for at most :data:`FLUSH_TIMEOUT` seconds."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(queue.SimpleQueue())
        self.target = target
        self.thread = threading.Thread(target=self._run, name="log", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while True:
            record = self.queue.get()
            if record is None:
                return
            self.target.handle(record)

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join(FLUSH_TIMEOUT)
        super().close()


def _journal_handler() -> logging.Handler:
    try:
        from cysystemd import journal
    except Exception as e:  # missing, or its bundled libsystemd does not load
        raise LogSetupError(f"--log=journal needs the cysystemd package ({e}); use "
                            "--log=stderr (systemd puts stderr in the journal too)") from None
    h = journal.JournaldLogHandler(identifier=IDENTIFIER)
    h.setFormatter(logging.Formatter("%(message)s"))
    return h


def _syslog_handler(address: str) -> logging.Handler:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:  # the handler itself would retry silently at every line: say it now
        probe.connect(address)
    except OSError as e:
        raise LogSetupError(f"--log=syslog: cannot reach the syslog socket {address}: "
                            f"{e.strerror or e} (is a syslog daemon running?)") from None
    finally:
        probe.close()
    try:
        h = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError as e:
        raise LogSetupError(f"--log=syslog: cannot reach the syslog socket {address}: "
                            f"{e.strerror or e}") from None
    h.setFormatter(logging.Formatter(f"{IDENTIFIER}[%(process)d]: %(levelname)s %(message)s"))
    return h


def configure(target: str, level: str, ring: RingHandler | None = None,
              syslog_address: str = SYSLOG_ADDRESS) -> None:
    """Send every logger's records to ``target`` at ``level`` (and to ``ring``).
    Raises :class:`LogSetupError` when the target is unusable; ``ValueError`` for an
    unknown target."""
    if target == "stderr":
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    elif target == "journal":
        h = Background(_journal_handler())
    elif target == "syslog":
        h = Background(_syslog_handler(syslog_address))
    else:
        raise ValueError(f"unknown log target: {target}")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(h)
    if ring is not None:
        root.addHandler(ring)
    set_level(level)


def set_level(level: str) -> None:
    root.setLevel(getattr(logging, level.upper()))


def journal_fields(fields: dict) -> dict:
    """An event's fields as journal field names (``mptcp_event``... the handler upper-
    cases them): the ones an operator filters on."""
    out = {"mptcp_event": fields.get("type")}
    for k in ("conn", "token", "remote_token", "subflow", "saddr", "sport", "daddr",
              "dport", "iface", "reason"):
        if k in fields:
            out[f"mptcp_{k}"] = fields[k]
    return out


def log_event(ev: Event, fields: dict | None = None) -> None:
    """One line for one event (see the module docstring for the levels)."""
    level = logging.INFO if ev.kind in INFO_EVENTS else logging.DEBUG
    if events_log.isEnabledFor(level):
        f = fields if fields is not None else ev.fields()
        events_log.log(level, "%s", format_event(f), extra=journal_fields(f))
