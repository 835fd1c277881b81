"""Connection events the core reports to its driver: one frozen record per event.

The names are those of ``ip mptcp monitor`` (Linux ``MPTCP_EVENT_*``, shown there as
``CREATED``, ``ESTABLISHED``, ``SF_ESTABLISHED``...), so an operator reads the proxy's
events and the kernel's side by side; the proxy's own events that the kernel has no name
for use the same style (``HANDOVER``, ``FALLBACK``, ``RESUMED``...).

The driver pulls them with :meth:`~.proxy.Proxy.events`; the core never logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["EventKind", "Event", "INFO_EVENTS"]


class EventKind(str, Enum):
    """What happened. Connection-level unless the name starts with ``SF_``."""

    CREATED = "CREATED"  # taken on: a local SYN got MP_CAPABLE, or an MP_CAPABLE SYN came in
    ESTABLISHED = "ESTABLISHED"  # MP_CAPABLE handshake done: MPTCP in use (elapsed: SYN RTT)
    FALLBACK = "FALLBACK"  # the peer does not speak MPTCP (or fell back): plain TCP
    PASSED = "PASSED"  # anchor: the server speaks MPTCP itself; left end to end, untouched
    CLOSED = "CLOSED"  # closed at the data level, or reset
    DATA_FIN_TX = "DATA_FIN_TX"  # our DATA_FIN sent (the local stack closed)
    DATA_FIN_RX = "DATA_FIN_RX"  # the peer's DATA_FIN received
    ANNOUNCED = "ANNOUNCED"  # the peer announced an address (ADD_ADDR, HMAC good)
    REMOVED = "REMOVED"  # the peer removed an address (REMOVE_ADDR)
    SF_OPENING = "SF_OPENING"  # our MP_JOIN SYN sent
    SF_ESTABLISHED = "SF_ESTABLISHED"  # an MP_JOIN subflow completed its handshake
    SF_PRIO = "SF_PRIO"  # a subflow's backup flag changed (MP_PRIO from the peer or ours)
    SF_CLOSING = "SF_CLOSING"  # a subflow is being closed on command (FIN)
    SF_SUSPENDED = "SF_SUSPENDED"  # its link is down and there is nowhere else to go
    SF_CLOSED = "SF_CLOSED"  # a subflow ended (reason says why)
    SF_STALE = "SF_STALE"  # its path shows no progress (reason says why): not used for data
    SF_ALIVE = "SF_ALIVE"  # a stale path answered again
    HANDOVER = "HANDOVER"  # new data moved to another subflow
    RESUMED = "RESUMED"  # first data delivered after a HANDOVER (elapsed: the gap)
    FROZEN = "FROZEN"  # no path can carry new data: the local stack is kept waiting
    THAWED = "THAWED"  # a path carries data again (elapsed: how long it was frozen)


# Events worth a line at INFO level; the routine per-connection ones are DEBUG (at a
# thousand connections a second, logging each of them costs a tenth of the CPU).
INFO_EVENTS = frozenset({
    EventKind.FALLBACK, EventKind.ANNOUNCED, EventKind.REMOVED, EventKind.SF_ESTABLISHED,
    EventKind.SF_PRIO, EventKind.SF_CLOSED, EventKind.SF_SUSPENDED, EventKind.HANDOVER,
    EventKind.SF_STALE, EventKind.SF_ALIVE, EventKind.FROZEN, EventKind.THAWED,
})


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one connection.

    ``time``: the core's clock when it happened (seconds, the driver's monotonic clock).
    ``conn_id``: the proxy's connection number; ``token``/``remote_token``: our and the
    peer's 32-bit MPTCP tokens (0 while unknown). ``saddr``/``sport``/``daddr``/``dport``:
    for connection events the local socket's 4-tuple (addresses as 4 or 16 bytes); for
    ``SF_*`` events the subflow's own wire 4-tuple. ``subflow``: the subflow's index
    (0 = the initial one), ``locid``/``remid``: address IDs (RFC 8684 §3.2),
    ``backup``: the subflow's backup flag as we send it, ``iface``: the local interface,
    ``reason``: why (``SF_CLOSED``, ``FALLBACK``, ``CLOSED``), ``from_subflow``: the
    previous active subflow (``HANDOVER``), ``elapsed``: seconds (``ESTABLISHED``: since
    the SYN; ``RESUMED``: since the handover; ``THAWED``: how long it was frozen).
    """

    kind: EventKind
    time: float
    conn_id: int
    token: int
    remote_token: int
    saddr: bytes
    sport: int
    daddr: bytes
    dport: int
    subflow: int | None = None
    locid: int | None = None
    remid: int | None = None
    backup: bool | None = None
    iface: str | None = None
    reason: str | None = None
    from_subflow: int | None = None
    elapsed: float | None = None

    @property
    def is_subflow_event(self) -> bool:
        return self.kind.value.startswith("SF_")

    def fields(self) -> dict:
        """The set fields as plain JSON-able values (addresses as text, the kind's name),
        in the order ``ip mptcp monitor`` prints them."""
        import ipaddress
        out: dict = {"type": self.kind.value, "time": round(self.time, 6),
                     "conn": self.conn_id, "token": f"{self.token:08x}"}
        if self.remote_token:
            out["remote_token"] = f"{self.remote_token:08x}"
        for name in ("subflow", "locid", "remid"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        out["saddr"] = str(ipaddress.ip_address(self.saddr))
        out["daddr"] = str(ipaddress.ip_address(self.daddr))
        out["sport"] = self.sport
        out["dport"] = self.dport
        for name in ("backup", "iface", "reason", "from_subflow", "elapsed"):
            v = getattr(self, name)
            if v is not None:
                out[name] = round(v, 6) if name == "elapsed" else \
                    (int(v) if name == "backup" else v)
        return out
