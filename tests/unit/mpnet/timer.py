"""A timer on the fake network's event heap (:class:`Timer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from mpnet.network import MpNet


class Timer:
    """A lazily re-armed timer on the network's event heap: ``arm(t)`` may be called
    often; only one heap event is pending, re-pushed when the deadline moved later."""

    __slots__ = ("net", "fn", "deadline", "_at")

    def __init__(self, net: "MpNet", fn: Callable[[], None]) -> None:
        self.net = net
        self.fn = fn
        self.deadline: float | None = None
        self._at: float | None = None

    def arm(self, when: float | None) -> None:
        self.deadline = when
        if when is not None and (self._at is None or when < self._at):
            self._at = when
            self.net.at(when, self._fire)

    def _fire(self) -> None:
        if self._at is not None and self._at > self.net.now + 1e-12:
            return  # an older, superseded event
        self._at = None
        d = self.deadline
        if d is None:
            return
        if d > self.net.now + 1e-12:
            self._at = d
            self.net.at(d, self._fire)
            return
        self.deadline = None
        self.fn()
