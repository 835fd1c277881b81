"""One text line per connection event, in the shape of ``ip mptcp monitor``.

Shared by the daemon's log and ``mptcpctl monitor``, so both read the same, and kept
free of imports beyond the standard library: ``mptcpctl`` loads it.

``ip mptcp monitor`` prints ``[    EVENT_NAME] token=... remid=... locid=... saddr4=...
daddr4=... sport=... dport=... backup=...``; the proxy's lines keep that order and
those names (``saddr4``/``saddr6`` by family), then add its own fields: ``conn`` (the
proxy's connection id, as ``mptcpctl connections`` shows it), ``subflow``, ``iface``,
``reason``, ``from_subflow``, ``elapsed`` (seconds), ``remote_token``.
"""

from __future__ import annotations

__all__ = ["format_event", "KIND_WIDTH"]

KIND_WIDTH = 14  # len("SF_ESTABLISHED"), the longest name
_MONITOR_ORDER = ("token", "remid", "locid")
_OURS = ("conn", "subflow", "iface", "reason", "from_subflow", "elapsed", "remote_token")


def format_event(fields: dict) -> str:
    """``[KIND] key=value ...`` for an event's fields (``Event.fields()``, or its JSON
    form from the control socket). Unknown extra keys are appended in their order;
    ``time`` and ``wall`` are left to the caller."""
    kind = str(fields.get("type", "?"))
    parts = [f"[{kind:>{KIND_WIDTH}}]"]
    for k in _MONITOR_ORDER:
        if k in fields:
            parts.append(f"{k}={fields[k]}")
    fam = "6" if ":" in str(fields.get("saddr", "")) else "4"
    for k in ("saddr", "daddr"):
        if k in fields:
            parts.append(f"{k}{fam}={fields[k]}")
    for k in ("sport", "dport", "backup"):
        if k in fields:
            parts.append(f"{k}={fields[k]}")
    for k in _OURS:
        if k in fields:
            parts.append(f"{k}={fields[k]}")
    seen = set(_MONITOR_ORDER) | set(_OURS) | {"type", "time", "wall", "saddr", "daddr",
                                                "sport", "dport", "backup"}
    parts.extend(f"{k}={v}" for k, v in fields.items() if k not in seen)
    return " ".join(parts)
