"""A journal of what the daemon changed outside itself, so a crash leaves nothing behind.

Before the daemon changes anything in the system — a netfilter chain and its jump rule,
a sysctl (``rp_filter``), a policy-routing rule or a route of its fallback table — it
records the change, and the value it replaces, in a JSON file written atomically
(temporary file, ``fsync``, ``rename``)::

    /run/mptcp-proxy/state-<queue>-net<netns cookie>.json

A clean exit undoes every change (:meth:`Journal.undo_all`) and deletes the file. After
a ``kill -9`` the file stays; the next start in the same network namespace with the same
queue, or ``mptcp-proxy --cleanup [same options]`` (a systemd unit's ``ExecStopPost``),
undoes what it lists (:func:`recover`) once its owner is gone.

Entries (``kind`` and its fields)::

    chain    table, name, hook, v6     our chain and its jump rule from ``hook``
    sysctl   path, old, new            a /proc/sys file we changed from ``old`` to ``new``
    ip_rule  family, table, priority   a policy-routing rule we added
    route    family, dst, dst_len, oif, table, priority, gateway   a route we added

Undoing never touches what the daemon did not create: a sysctl is written back only if it
still holds the value we set (someone else's later change wins); a rule, route or chain
is removed only if it is there, identified by exactly what we created. Entries are
recorded *before* the change, so a crash between the two leaves an entry whose undo
finds nothing to do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("mptcp_proxy.recovery")

RUN_DIR = Path("/run/mptcp-proxy")
SYSCTL_ROOT = "/proc/sys/"  # sysctl entries are only ever written below this
VERSION = 1


class JournalBusy(Exception):
    """The journal belongs to a daemon that is still running."""


SO_NETNS_COOKIE = 71  # (Linux 5.14+; not in Python's socket module)


def netns_id() -> int:
    """A number naming this process's network namespace for the whole boot (names the
    journal: ``/run`` is shared by every namespace of the host). The kernel's netns
    cookie, never reused; the namespace's inode where the cookie is not available (an
    inode is reused once its namespace is gone, so a journal left by a daemon killed in a
    namespace since deleted could be taken for this one's)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8),
                                  "little")
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_age() -> float:
    """Seconds since this process started (its start time in /proc/self/stat against
    CLOCK_BOOTTIME): the daemon's restart-to-ready time, interpreter start included."""
    import time
    ticks = int(_start_time(os.getpid()) or 0)
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def journal_path(queue: int, run_dir: Path | None = None) -> Path:
    return (run_dir or RUN_DIR) / f"state-{queue}-net{netns_id()}.json"


class Journal:
    """The changes of one daemon (queue ``queue`` in this network namespace), kept on
    disk. Thread-safe (the link monitor's thread records fallback routes)."""

    def __init__(self, path: Path, queue: int) -> None:
        self.path = path
        self.queue = queue
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.pid = os.getpid()

    # ------------------------------------------------------------------ recording
    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record a change about to be made; returns the entry (for :meth:`done`).
        Recording the same entry twice keeps one."""
        entry = {"kind": kind, **fields}
        with self._lock:
            if entry not in self.entries:
                self.entries.append(entry)
                self._write()
        return entry

    def adopt(self, entries: list[dict[str, Any]]) -> None:
        """Take over entries another daemon could not undo (undone with ours)."""
        with self._lock:
            self.entries[:0] = [e for e in entries if e not in self.entries]
            self._write()

    def done(self, entry: dict[str, Any]) -> None:
        """The change of ``entry`` was undone (or never made): forget it."""
        with self._lock:
            if entry in self.entries:
                self.entries.remove(entry)
                self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"version": VERSION, "pid": self.pid, "start_time": _start_time(self.pid),
                "queue": self.queue, "netns": netns_id(), "entries": self.entries}
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    # ------------------------------------------------------------------ undoing
    def undo_all(self) -> list[dict[str, Any]]:
        """Undo every recorded change, newest first; the file is deleted when all went.
        Returns the entries that could not be undone (they stay in the file)."""
        failed = []
        for entry in reversed(list(self.entries)):
            if undo(entry):
                self.done(entry)
            else:
                failed.append(entry)
        if not failed:
            self.close()
        return failed

    def close(self) -> None:
        """Delete the file (nothing left to undo)."""
        with self._lock:
            self.entries.clear()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------- recovery

def owner_alive(data: dict[str, Any]) -> bool:
    """Whether the daemon that wrote ``data`` still runs (same PID *and* start time)."""
    pid = data.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    st = _start_time(pid)
    return st is not None and st == data.get("start_time")


def recover(queue: int, run_dir: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Undo what a daemon of ``queue`` in this network namespace left in its journal.

    Returns ``(undone, failed)``: the number of entries undone, and those that could not
    be (kept in the file for a later try). ``(0, [])`` when there is no journal. Raises
    :class:`JournalBusy` when its daemon still runs, ``ValueError`` for an unreadable file
    (it is left alone)."""
    path = journal_path(queue, run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0, []
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the state journal {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"cannot read the state journal {path}: not a journal")
    if owner_alive(data):
        raise JournalBusy(f"the daemon that wrote {path} (pid {data['pid']}) is still running")
    j = Journal(path, queue)
    j.pid = data.get("pid", j.pid)
    j.entries = [e for e in data["entries"] if isinstance(e, dict)]
    n = len(j.entries)
    for e in j.entries:
        log.warning("restoring after an unclean exit: %s", describe(e))
    j.pid = os.getpid()
    failed = j.undo_all()
    return n - len(failed), failed


def describe(entry: dict[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == "chain":
        return (f"chain {entry['table']}/{entry['name']}"
                f"{' (IPv6)' if entry.get('v6') else ''}")
    if kind == "sysctl":
        return f"{entry['path']} back to {entry['old']}"
    if kind == "ip_rule":
        return f"ip rule pref {entry['priority']} lookup {entry['table']}"
    if kind == "route":
        return f"route {entry['dst']}/{entry['dst_len']} table {entry['table']}"
    if kind == "address":
        return f"address {entry['address']}/{entry['prefixlen']} on {entry['ifname']}"
    return f"unknown entry {entry!r}"


def undo(entry: dict[str, Any]) -> bool:
    """Undo one change; True when it is gone (or was never made). Never raises."""
    kind = entry.get("kind")
    try:
        if kind == "chain":
            from .rules import remove_chain
            remove_chain(bool(entry["v6"]), entry["table"], entry["name"], entry["hook"])
            return True
        if kind == "sysctl":
            return _undo_sysctl(entry)
        if kind == "ip_rule":
            return _undo_ip_rule(entry)
        if kind == "route":
            return _undo_route(entry)
        if kind == "address":
            return _undo_address(entry)
    except Exception as e:
        log.error("could not undo %s: %s", describe(entry), e)
        return False
    log.error("unknown state journal entry left alone: %r", entry)
    return False


def _undo_sysctl(entry: dict[str, Any]) -> bool:
    p = Path(entry["path"])
    if not str(p).startswith(SYSCTL_ROOT):
        log.error("refusing to write %s (not a sysctl)", p)
        return False
    try:
        cur = p.read_text().strip()
    except FileNotFoundError:
        return True  # the interface is gone, and its setting with it
    if cur != str(entry["new"]):
        log.info("%s is %s, not the %s we set: left alone", p, cur, entry["new"])
        return True
    p.write_text(str(entry["old"]))
    return True


def _undo_ip_rule(entry: dict[str, Any]) -> bool:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    with IPRoute() as ipr:
        for _ in range(16):  # a rule added twice is deleted twice
            found = [r for r in ipr.get_rules(family=entry["family"])
                     if r.get_attr("FRA_PRIORITY") == entry["priority"]
                     and (r.get_attr("FRA_TABLE") or r["table"]) == entry["table"]]
            if not found:
                return True
            try:
                ipr.rule("del", family=entry["family"], table=entry["table"],
                         priority=entry["priority"])
            except NetlinkError as e:
                if e.code == 2:  # ENOENT
                    return True
                raise
    return False


def _undo_route(entry: dict[str, Any]) -> bool:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    fam = entry["family"]
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=fam, table=entry["table"]):
            if (r["dst_len"] == entry["dst_len"]
                    and r.get_attr("RTA_OIF") == entry["oif"]
                    and r.get_attr("RTA_PRIORITY") == entry.get("priority")
                    and (r.get_attr("RTA_DST") or ("0.0.0.0" if fam == socket.AF_INET
                                                   else "::")) == entry["dst"]):
                try:
                    ipr.route("del", family=fam, dst=entry["dst"], dst_len=entry["dst_len"],
                              table=entry["table"], oif=entry["oif"],
                              **({"priority": entry["priority"]}
                                 if entry.get("priority") is not None else {}))
                except NetlinkError as e:
                    if e.code != 3:  # ESRCH: gone meanwhile
                        raise
    return True


def _undo_address(entry: dict[str, Any]) -> bool:
    """An address the daemon kept on ``lo`` for a connection (mptcp_proxy/addresses.py):
    deleted if it is still there (never from another interface)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    if entry.get("ifname") != "lo":
        log.error("refusing to remove %s (not on lo)", describe(entry))
        return False
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.addr("del", index=idx, address=entry["address"],
                     prefixlen=entry["prefixlen"], family=entry["family"])
        except NetlinkError as e:
            if e.code not in (2, 99):  # ENOENT, EADDRNOTAVAIL: gone already
                raise
    return True


def recover_all(queue: int, chains: list[dict], fallback_table: int, fallback_pref: int,
                run_dir: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    """:func:`recover`, then what is ours by construction even without a journal (a
    daemon of an older version, a journal that could not be written): the chains named
    for this queue (``chains`` as :func:`~mptcp_proxy.rules.load_ruleset` gives them)
    and the fallback rule ``pref fallback_pref lookup fallback_table``. Call it only while
    holding the queues (no other daemon can be using these)."""
    undone, failed = recover(queue, run_dir)
    from .rules import RuleSet
    try:
        RuleSet(chains).remove_stale()
    except Exception as e:  # python-iptables unusable: install will say so
        log.debug("stale chains: %s", e)
    for fam in (socket.AF_INET, socket.AF_INET6):
        entry = {"kind": "ip_rule", "family": fam, "table": fallback_table,
                 "priority": fallback_pref}
        if not undo(entry):
            failed.append(entry)
    return undone, failed
