"""The state journal (mptcp_proxy/recovery.py): what the daemon changes outside itself is
on disk before it is changed, a clean exit leaves no file, and what a killed daemon left is
undone by the next start or ``--cleanup`` — never what someone else changed since.
Sysctls are played by files under a temporary directory; no root needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mptcp_proxy import recovery
from mptcp_proxy.links import RpFilter
from mptcp_proxy.recovery import Journal, JournalBusy, journal_path, recover


@pytest.fixture
def sysroot(tmp_path, monkeypatch):
    """A fake /proc/sys/net/ipv4/conf: all=0, c0=1 (strict), c1=0, c2=2."""
    conf = tmp_path / "sys" / "conf"
    for name, v in (("all", "0"), ("c0", "1"), ("c1", "0"), ("c2", "2")):
        (conf / name).mkdir(parents=True)
        (conf / name / "rp_filter").write_text(v + "\n")
    monkeypatch.setattr(recovery, "SYSCTL_ROOT", str(tmp_path / "sys"))
    return conf


def rp(conf, name: str) -> str:
    return (conf / name / "rp_filter").read_text().strip()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def crashed_daemon(run_dir, conf, queue: int = 4700) -> Journal:
    """A daemon that loosened rp_filter and was killed: its journal stays, owner dead."""
    j = Journal(journal_path(queue, run_dir), queue)
    RpFilter(["c0", "c1", "c2"], j, root=conf).apply()
    data = json.loads(j.path.read_text())
    data["pid"] = dead_pid()
    j.path.write_text(json.dumps(data))
    return j


def test_change_recorded_before_it_is_made(tmp_path, sysroot) -> None:
    j = Journal(journal_path(4700, tmp_path), 4700)
    seen = []
    real = j.record

    def record(kind, **fields):
        seen.append(rp(sysroot, "c0"))  # the value at the moment of recording
        return real(kind, **fields)
    j.record = record
    RpFilter(["c0", "c1", "c2"], j, root=sysroot).apply()
    assert seen == ["1"]  # recorded while still strict
    data = json.loads(j.path.read_text())
    assert data["pid"] == os.getpid() and data["queue"] == 4700
    assert data["entries"] == [{"kind": "sysctl", "path": str(sysroot / "c0" / "rp_filter"),
                                "old": "1", "new": "2"}]
    assert (rp(sysroot, "c0"), rp(sysroot, "c1"), rp(sysroot, "c2")) == ("2", "0", "2")
    assert os.stat(j.path).st_mode & 0o777 == 0o600
    assert not [p for p in j.path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_clean_exit_restores_and_deletes(tmp_path, sysroot) -> None:
    j = Journal(journal_path(4700, tmp_path), 4700)
    f = RpFilter(["c0", "c1"], j, root=sysroot)
    f.apply()
    f.restore()
    assert rp(sysroot, "c0") == "1" and j.entries == []
    assert j.undo_all() == [] and not j.path.exists()


def test_next_start_restores_what_a_killed_daemon_left(tmp_path, sysroot) -> None:
    j = crashed_daemon(tmp_path, sysroot)
    assert rp(sysroot, "c0") == "2"
    undone, failed = recover(4700, tmp_path)
    assert (undone, failed) == (1, [])
    assert rp(sysroot, "c0") == "1" and not j.path.exists()
    assert recover(4700, tmp_path) == (0, [])  # nothing left: a second run is a no-op


def test_someone_elses_later_change_wins(tmp_path, sysroot) -> None:
    crashed_daemon(tmp_path, sysroot)
    (sysroot / "c0" / "rp_filter").write_text("0\n")  # the admin changed it meanwhile
    assert recover(4700, tmp_path) == (1, [])
    assert rp(sysroot, "c0") == "0"


def test_other_queue_untouched(tmp_path, sysroot) -> None:
    crashed_daemon(tmp_path, sysroot, queue=4800)
    assert recover(4700, tmp_path) == (0, [])
    assert rp(sysroot, "c0") == "2"
    assert recover(4800, tmp_path) == (1, []) and rp(sysroot, "c0") == "1"


def test_running_owner_is_not_disturbed(tmp_path, sysroot) -> None:
    j = Journal(journal_path(4700, tmp_path), 4700)
    RpFilter(["c0"], j, root=sysroot).apply()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        data = json.loads(j.path.read_text())
        data["pid"], data["start_time"] = child.pid, recovery._start_time(child.pid)
        j.path.write_text(json.dumps(data))
        with pytest.raises(JournalBusy):
            recover(4700, tmp_path)
        assert rp(sysroot, "c0") == "2" and j.path.exists()
        data["start_time"] = "1"  # same PID, another process: the owner is gone
        j.path.write_text(json.dumps(data))
        assert recover(4700, tmp_path) == (1, []) and rp(sysroot, "c0") == "1"
    finally:
        child.kill()
        child.wait()


def test_unreadable_journal_is_left_alone(tmp_path) -> None:
    path = journal_path(4700, tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        recover(4700, tmp_path)
    assert path.read_text() == "{not json"


def test_sysctl_entries_outside_proc_sys_refused(tmp_path, sysroot) -> None:
    path = journal_path(4700, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("2")
    path.write_text(json.dumps({"pid": dead_pid(), "entries": [
        {"kind": "sysctl", "path": str(victim), "old": "x", "new": "2"}]}))
    undone, failed = recover(4700, tmp_path)
    assert undone == 0 and len(failed) == 1 and victim.read_text() == "2"
    assert path.exists()  # kept for a later look


def test_adopted_entries_are_undone_with_ours(tmp_path, sysroot) -> None:
    j = Journal(journal_path(4700, tmp_path), 4700)
    other = {"kind": "sysctl", "path": str(sysroot / "c2" / "rp_filter"), "old": "1",
             "new": "2"}
    j.adopt([other])
    RpFilter(["c0"], j, root=sysroot).apply()
    assert [e["path"] for e in json.loads(j.path.read_text())["entries"]] == [
        other["path"], str(sysroot / "c0" / "rp_filter")]
    assert j.undo_all() == []
    assert (rp(sysroot, "c0"), rp(sysroot, "c2")) == ("1", "1") and not j.path.exists()


def test_kept_address_entries_only_ever_remove_from_lo(tmp_path, sysroot) -> None:
    """An address kept on lo for a connection (mobility) is journaled like the rest; an
    entry naming another interface is refused (a journal is not trusted to delete the
    host's own addresses)."""
    path = journal_path(4700, tmp_path)
    entry = {"kind": "address", "family": 2, "address": "10.0.1.1", "prefixlen": 32,
             "ifname": "eth0"}
    path.write_text(json.dumps({"pid": dead_pid(), "entries": [entry]}))
    assert recovery.describe(entry) == "address 10.0.1.1/32 on eth0"
    undone, failed = recover(4700, tmp_path)
    assert undone == 0 and failed == [entry]


def test_the_daemon_journals_its_routes_and_kept_addresses(tmp_path) -> None:
    """The mobility helpers report each change to the journal before making it."""
    import argparse

    from mptcp_proxy.daemon import host_state
    j = Journal(journal_path(4700, tmp_path), 4700)
    args = argparse.Namespace(no_fallback_routes=False, anchor=False, queue=4700,
                              no_manage_routes=False, no_keep_addresses=False)
    host = host_state(args, ["c0"], None, None, None, None, None, j)
    host.routes.record("ip_rule", {"family": 2, "src": "10.0.1.1", "src_len": 32,
                                   "table": 1, "priority": 30000})
    host.kept.record("address", {"family": 2, "address": "10.0.1.1", "prefixlen": 32,
                                 "ifname": "lo"})
    assert [e["kind"] for e in j.entries] == ["ip_rule", "address"]
    j.close()
