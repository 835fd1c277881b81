"""The path policy's state of one connection (``Connection.paths``): the address IDs it
uses, joins waiting for a retry, the interface a command pinned it to, its freeze, and
the one deadline at which :meth:`~.policy.PathManager.path_timer` must look at it.

Owned by :mod:`.policy` (and :mod:`.freeze` for the freeze fields); plain data.
"""

from __future__ import annotations

__all__ = ["ConnPaths", "JOIN_RETRY_MIN", "JOIN_RETRY_MAX"]

JOIN_RETRY_MIN = 1.0  # seconds before a failed join is tried again, doubled per failure
JOIN_RETRY_MAX = 60.0


class ConnPaths:
    """Path-policy state of one connection.

    ``timer``: when the path manager must look next (liveness, retries, freeze bound);
    ``ids``: our address → the address ID this connection uses for it; ``used``: a
    bit per ID it ever used (a removed address comes back under a new ID, so a late
    REMOVE_ADDR for the old one can never take the new subflow with it);
    ``retry``: interface → when its next join attempt is due, ``backoff``: interface →
    the delay after its last failed join (doubled per failure, dropped on success); both
    None until a join fails (an idle connection stays small: docs/robustness.md §3);
    ``pinned``: the interface a handover command chose (preferred over the configured
    order); ``frozen_at``: since when no path can carry new data (None: not frozen);
    ``zero_window``: the TCP side was shown a zero window; ``head_retx``: how often the
    TCP side re-sent its oldest unacknowledged byte while frozen (:mod:`.freeze`)."""

    __slots__ = ("timer", "ids", "used", "retry", "backoff", "pinned", "frozen_at",
                 "zero_window", "saved_win", "head_retx", "quoted", "icmp_sent", "icmp_at",
                 "sender")

    def __init__(self) -> None:
        self.timer: float | None = None
        self.ids: dict[bytes, int] = {}
        self.used = 0  # bit i: address ID i was used
        self.retry: dict[str, float] | None = None
        self.backoff: dict[str, float] | None = None
        self.pinned: str | None = None
        self.frozen_at: float | None = None
        self.zero_window = False
        self.saved_win = 0xFFFF  # the window shown before the zero one (raw field)
        self.head_retx = 0
        self.quoted = b""  # the start of the latest such retransmission (for an ICMP)
        self.icmp_sent = 0
        self.icmp_at = 0.0  # the next unsolicited ICMP while frozen
        self.sender = None  # the subflow new data went to last (several senders)

    def addr_id(self, addr: bytes, preferred: int, initial: bool) -> int:
        """The address ID for our address ``addr``: the one in use, else ``0`` for the
        initial subflow's address (``initial``) or ``preferred`` if never used here, else
        the lowest ID this connection never used (1..255; RFC 8684 §3.2: IDs are 8 bit)."""
        cur = self.ids.get(addr)
        if cur is not None:
            return cur
        used = self.used
        if initial and not used & 1:
            i = 0
        elif not used >> preferred & 1:
            i = preferred
        else:
            i = next((k for k in range(1, 256) if not used >> k & 1), preferred)
        self.ids[addr] = i
        self.used |= 1 << i
        return i

    def retry_later(self, name: str, now: float, low: float, high: float) -> float:
        """A join on interface ``name`` failed: its next attempt is due after a back-off
        doubled per failure, between ``low`` and ``high`` seconds. Returns the delay."""
        if self.retry is None:
            self.retry, self.backoff = {}, {}
        delay = min(max(low, 2 * self.backoff.get(name, 0.0)), high)
        self.backoff[name] = delay
        self.retry[name] = now + delay
        return delay

    def forget_id(self, addr_id: int) -> None:
        """``addr_id`` was removed (REMOVE_ADDR sent): its address gets a new ID next."""
        self.ids = {a: i for a, i in self.ids.items() if i != addr_id}
