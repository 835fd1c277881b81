"""The tables ``mptcpctl`` prints: the columns of ``connections`` and ``subflows`` with
their legends (``--help``), the value formats (bytes, durations, yes/no) and the aligned
text table. Imports nothing beyond the standard library (mptcpctl's start-up time)."""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # (no typing import at run time: mptcpctl's start-up time)
if TYPE_CHECKING:
    from typing import Any


def human_bytes(n: Any) -> str:
    """``532 B``, ``12.3 kB``, ``12.3 MB`` (SI units); non-numbers as they are."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    if abs(n) < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if abs(n) < 999.95 or unit == "PB":
            return f"{n:.1f} {unit}"
    return str(n)  # not reached


def human_duration(s: Any) -> str:
    """``4.2s``, ``5m03s``, ``2h05m``, ``3d04h``."""
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        return str(s)
    if s < 60:
        return f"{s:.1f}s"
    s = int(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def yes_no(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


def text(v: Any) -> str:
    if isinstance(v, bool):
        return yes_no(v)
    if isinstance(v, list):
        return ", ".join(map(str, v)) if v else "-"
    if v is None or v == "":
        return "-"
    return str(v)


# (header, key, formatter, right-aligned)
Column = tuple[str, str, Callable[[object], str], bool]

CONNECTION_COLUMNS: list[Column] = [
    ("CONN", "id", text, True),
    ("ROLE", "role", text, False),
    ("STATE", "state", text, False),
    ("LOCAL", "local", text, False),
    ("REMOTE", "remote", text, False),
    ("SUBFLOWS", "subflows", str, True),
    ("ACTIVE_SF", "active", str, True),
    ("PEER_TOKEN", "token", text, False),
    ("DATA_SENT", "bytes_sent", human_bytes, True),
    ("DATA_ACKED", "bytes_acked", human_bytes, True),
    ("DATA_RCVD", "bytes_received", human_bytes, True),
    ("AGE", "age", human_duration, True),
]

CONNECTION_LEGEND = """\
columns:
  CONN        connection id (for subflows, handover, prio...)
  STATE       syn_sent, established, fallback (plain TCP, untouched), closed
  LOCAL       the application's own socket address
  REMOTE      the server's address
  SUBFLOWS    subflows not closed
  ACTIVE_SF   id of the subflow that carries new data (see: mptcpctl subflows CONN)
  PEER_TOKEN  the server's MPTCP token (what ip mptcp monitor shows on the server)
  DATA_SENT   bytes sent at the MPTCP data level (DATA_ACKED: acknowledged by the
              server; DATA_RCVD: received from it)
  AGE         time since the local SYN
"""

SUBFLOW_COLUMNS: list[Column] = [
    ("SF", "id", str, True),
    ("STATE", "state", text, False),
    ("IFACE", "iface", text, False),
    ("LOCAL", "local", text, False),
    ("REMOTE", "remote", text, False),
    ("LOCID", "addr_id", str, True),
    ("REMID", "remote_id", str, True),
    ("BACKUP", "backup", yes_no, False),
    ("PEER_BACKUP", "peer_backup", yes_no, False),
    ("SENDING", "active", yes_no, False),
    ("SENT", "bytes_sent", human_bytes, True),
    ("ACKED", "bytes_acked", human_bytes, True),
    ("RECEIVED", "bytes_received", human_bytes, True),
]

SUBFLOW_LEGEND = """\
columns:
  SF           subflow id (0 is the initial subflow)
  STATE        syn_sent, established, closing, closed...
  IFACE        local interface it leaves by
  LOCAL        its local address on the wire; REMOTE: the server's
  LOCID        our address ID (RFC 8684 section 3.2); REMID: the server's
  BACKUP       we marked it backup (MP_CAPABLE/MP_JOIN B flag or MP_PRIO)
  PEER_BACKUP  the server marked it backup
  SENDING      yes for the subflow that carries new data
  SENT         bytes sent on the subflow (ACKED: acknowledged; RECEIVED: received)
"""

UNCONVERTED_HELP = {
    "port_filter": "SYNs to ports outside --port (passed as plain TCP)",
    "already_mptcp": "SYNs of sockets that speak MPTCP themselves (passed untouched)",
    "fallback": "connections whose server did not answer in MPTCP (plain TCP)",
    "not_parseable": "packets that were not TCP the proxy could read (passed untouched)",
}


def table(rows: list[list[str]], headers: list[str], right: list[bool]) -> str:
    """Columns aligned on the widest cell, two spaces apart; numbers right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def format_records(records: list[dict], columns: list[Column]) -> str:
    rows = [[fmt(rec.get(key, "-")) for _h, key, fmt, _r in columns] for rec in records]
    return table(rows, [c[0] for c in columns], [c[3] for c in columns])


# --------------------------------------------------------------------- the verbs
