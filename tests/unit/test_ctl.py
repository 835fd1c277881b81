"""mptcpctl (mptcp_proxy/ctl.py) against a tiny fake daemon: a threaded Unix-socket
server answering canned replies. Checks the requests it builds, the tables it
prints, ``--json``, and every exit code. (The real ControlServer end to end is in
test_control.py.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from mptcp_proxy import ctl, ctltable, daemon
from mptcp_proxy.core.counters import COUNTERS
from mptcp_proxy.ctlproto import DEFAULT_CONTROL, Fault

STATUS = {"pid": 4242, "uptime": 3725.2, "interfaces": ["eth0", "wlan0"], "connections": 2,
          "packets": 1000, "ports": [], "checksum": False}
CONNECTIONS = [
    {"id": 1, "role": "client", "state": "established", "local": "10.0.1.1:40001",
     "remote": "192.0.2.9:80",
     "token": "0000abcd", "local_token": "00001234", "checksum": False,
     "fully_established": True, "subflows": 2, "active": 1, "bytes_sent": 12_345_678,
     "bytes_acked": 12_300_000, "bytes_received": 532, "age": 5.04},
    {"id": 17, "role": "anchor", "state": "fallback", "local": "[2001:db8::1]:40002",
     "remote": "[2001:db8::2]:443", "token": "00000000", "local_token": "00005678",
     "checksum": False, "fully_established": False, "subflows": 1, "active": 0,
     "bytes_sent": 0, "bytes_acked": 0, "bytes_received": 2_000_000_000, "age": 7500.0},
    {"id": None, "role": "passed", "state": "passed", "local": "10.0.101.1:443",
     "remote": "10.0.1.1:40003", "age": 1.5},
]
SUBFLOWS = [
    {"id": 0, "state": "established", "local": "10.0.1.1:40001", "remote": "192.0.2.9:80",
     "iface": "eth0", "addr_id": 0, "backup": False, "peer_backup": False, "active": False,
     "bytes_sent": 1500, "bytes_acked": 1500, "bytes_received": 100,
     "send_table": 0, "recv_table": 1},
    {"id": 1, "state": "syn_sent", "local": "10.0.2.1:40000", "remote": "192.0.2.9:80",
     "iface": "wlan0", "addr_id": 2, "backup": True, "peer_backup": True, "active": True,
     "bytes_sent": 7_000_000, "bytes_acked": 6_999_000, "bytes_received": 0,
     "send_table": 3, "recv_table": 0},
]
STATS = {"DSSTx": 12, "AcksConsumed": 3, "MPJoinSynTx": 0, "RstRx": 0}
HANDOVER = [{"conn": 1, "subflow": 2, "pending": True}, {"conn": 5, "subflow": 1,
                                                         "pending": False}]
METRICS = "# HELP mptcp_proxy_DSSTx_total segments sent with a DSS mapping\n" \
          "# TYPE mptcp_proxy_DSSTx_total counter\nmptcp_proxy_DSSTx_total 12.0\n"
EVENTS = [  # what the daemon streams after a monitor request
    {"event": {"type": "HANDOVER", "time": 10.5, "wall": 1796600000.25, "conn": 1,
               "token": "0badcafe", "subflow": 1, "saddr": "10.0.1.1", "daddr": "192.0.2.9",
               "sport": 40001, "dport": 80, "from_subflow": 0}},
    {"lost": 3},
    {"event": {"type": "SF_PRIO", "time": 10.6, "wall": 1796600000.35, "conn": 1,
               "token": "0badcafe", "subflow": 0, "locid": 1, "remid": 0,
               "saddr": "2001:db8::1", "daddr": "2001:db8::2", "sport": 40001, "dport": 80,
               "backup": 1, "iface": "eth0"}},
]
CANNED = {"status": STATUS, "connections": CONNECTIONS, "subflows": SUBFLOWS, "stats": STATS,
          "add-subflow": SUBFLOWS[1], "remove-subflow": dict(SUBFLOWS[0], state="closing"),
          "handover": HANDOVER, "prio": SUBFLOWS[1], "metrics": METRICS,
          "monitor": {"stream": "events"}}


class FakeDaemon:
    """Answers each request line from ``results`` (or ``error``), or misbehaves as
    ``mode`` says: ``silent`` (never answers), ``close`` (hangs up), ``garbage``,
    ``no-ok``, ``chunked`` (the reply in small delayed pieces)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[dict] = []
        self.results = dict(CANNED)
        self.error: tuple[int, str] | None = None
        self.mode = "answer"
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _reply(self, req: dict) -> bytes:
        if self.mode == "garbage":
            return b"this is not json\n"
        if self.mode == "no-ok":
            return b'{"result": 1}\n'
        if self.error is not None:
            code, msg = self.error
            name = Fault(code).name.lower() if code in Fault._value2member_map_ else "new"
            obj = {"ok": False, "error": {"code": code, "name": name, "message": msg}}
        else:
            obj = {"ok": True, "result": self.results[req["cmd"]]}
        return json.dumps(obj).encode() + b"\n"

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            for line in f:
                req = json.loads(line)
                self.requests.append(req)
                if self.mode == "silent":
                    self.done.wait(10)
                    return
                if self.mode == "close":
                    return
                data = self._reply(req)
                if req["cmd"] == "monitor" and self.error is None:
                    data += b"".join(json.dumps(e).encode() + b"\n" for e in EVENTS)
                if self.mode == "chunked":
                    for i in range(0, len(data), 7):
                        conn.sendall(data[i:i + 7])
                        time.sleep(0.001)
                else:
                    conn.sendall(data)
                if req["cmd"] == "monitor":
                    return  # the stream ends: as when the daemon stops

    def close(self) -> None:
        self.done.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="mctl-", dir="/tmp")  # AF_UNIX paths are short
    yield os.path.join(d, "ctl.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake(sock_path, monkeypatch):
    monkeypatch.setenv(ctl.SOCKET_ENV, sock_path)  # so plain "mptcpctl VERB" finds it
    d = FakeDaemon(sock_path)
    yield d
    d.close()


def run(capsys, *argv):
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def columns(header: str) -> list[int]:
    """Start offsets of the header's words."""
    return [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]


# ---------------------------------------------------------------- human output
def test_status(fake, capsys):
    code, out, err = run(capsys, "status")
    assert (code, err) == (0, "")
    lines = dict(ln.split(":", 1) for ln in out.splitlines())
    assert {k: v.strip() for k, v in lines.items()} == {
        "pid": "4242", "uptime": "1h02m", "interfaces": "eth0, wlan0", "connections": "2",
        "packets": "1000", "ports": "all", "checksum": "no"}
    assert len({ln.index(ln.split()[1]) for ln in out.splitlines()}) == 1  # values aligned
    assert fake.requests == [{"cmd": "status", "args": {}}]


def test_connections_table(fake, capsys):
    code, out, err = run(capsys, "connections")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["CONN", "ROLE", "STATE", "LOCAL", "REMOTE", "SUBFLOWS",
                              "ACTIVE_SF", "PEER_TOKEN", "DATA_SENT", "DATA_ACKED", "DATA_RCVD",
                              "AGE"]
    assert len(rows) == 3
    r1 = rows[0].split()
    assert r1[:8] == ["1", "client", "established", "10.0.1.1:40001", "192.0.2.9:80", "2",
                      "1", "0000abcd"]
    assert " ".join(r1[8:]) == "12.3 MB 12.3 MB 532 B 5.0s"
    r2 = rows[1].split()
    assert r2[:5] == ["17", "anchor", "fallback", "[2001:db8::1]:40002", "[2001:db8::2]:443"]
    assert " ".join(r2[8:]) == "0 B 0 B 2.0 GB 2h05m"
    # a connection an anchor stepped aside for: its 4-tuple, nothing else known
    assert rows[2].split() == ["-", "passed", "passed", "10.0.101.1:443", "10.0.1.1:40003",
                               "-", "-", "-", "-", "-", "-", "1.5s"]
    assert "12345678" not in out  # human units in tables
    # left-aligned text columns start under their header
    starts = columns(header)
    for row in rows:
        assert row[starts[1]:].startswith(("client", "anchor", "passed"))
        assert row[starts[2]:].startswith(("established", "fallback", "passed"))
        assert row[starts[3]:].split()[0] in ("10.0.1.1:40001", "[2001:db8::1]:40002",
                                              "10.0.101.1:443")
    # right-aligned numbers end under their header
    end_age = len(header)
    assert all(len(row) == end_age for row in rows)


def test_connections_empty(fake, capsys):
    fake.results["connections"] = []
    assert run(capsys, "connections") == (0, "no connections\n", "")


def test_subflows_table(fake, capsys):
    code, out, err = run(capsys, "subflows", "1")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["SF", "STATE", "IFACE", "LOCAL", "REMOTE", "LOCID", "REMID",
                              "BACKUP", "PEER_BACKUP", "SENDING", "SENT", "ACKED", "RECEIVED"]
    assert rows[0].split() == ["0", "established", "eth0", "10.0.1.1:40001", "192.0.2.9:80",
                               "0", "-", "no", "no", "no", "1.5", "kB", "1.5", "kB", "100",
                               "B"]
    assert rows[1].split() == ["1", "syn_sent", "wlan0", "10.0.2.1:40000", "192.0.2.9:80",
                               "2", "-", "yes", "yes", "yes", "7.0", "MB", "7.0", "MB", "0",
                               "B"]
    assert fake.requests == [{"cmd": "subflows", "args": {"conn": 1}}]


def test_stats_sorted_all_by_default(fake, capsys):
    code, out, err = run(capsys, "stats")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "VALUE", "MEANING"]
    assert [r.split()[:2] for r in rows] == [["AcksConsumed", "3"], ["DSSTx", "12"],
                                             ["MPJoinSynTx", "0"], ["RstRx", "0"]]
    for row in rows:  # each counter with the help text of the registry
        name = row.split()[0]
        assert row.rstrip().endswith(COUNTERS[name]), row


def test_stats_prometheus_prints_the_daemons_text(fake, capsys):
    assert run(capsys, "stats", "--prometheus") == (0, METRICS, "")
    assert fake.requests == [{"cmd": "metrics", "args": {}}]


def test_monitor_human_lines(fake, capsys, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    code, out, err = run(capsys, "monitor")
    time.tzset()
    assert code == 7 and "closed the event stream" in err  # the fake hung up
    assert "3 event(s) lost" in err
    lines = out.splitlines()
    assert lines == [
        "23:33:20.250 [      HANDOVER] token=0badcafe saddr4=10.0.1.1 daddr4=192.0.2.9 "
        "sport=40001 dport=80 conn=1 subflow=1 from_subflow=0",
        "23:33:20.350 [       SF_PRIO] token=0badcafe remid=0 locid=1 saddr6=2001:db8::1 "
        "daddr6=2001:db8::2 sport=40001 dport=80 backup=1 conn=1 subflow=0 iface=eth0"]
    assert fake.requests == [{"cmd": "monitor", "args": {}}]


def test_monitor_json_one_object_per_line(fake, capsys):
    code, out, _ = run(capsys, "--json", "monitor")
    assert code == 7
    assert [json.loads(ln) for ln in out.splitlines()] == [EVENTS[0]["event"],
                                                            EVENTS[2]["event"]]


def test_monitor_refused(fake, capsys):
    fake.error = (int(Fault.PERMISSION_DENIED), "the control socket is open to root only")
    code, out, err = run(capsys, "monitor")
    assert (code, out) == (6, "") and "open to root" in err


def test_status_interfaces_and_unconverted(fake, capsys):
    fake.results["status"] = dict(STATUS, interfaces=[
        {"name": "eth0", "state": "up", "addr_id": 1, "addresses": ["10.0.1.1", "fd00::1"]},
        {"name": "wlan0", "state": "down", "addr_id": 2, "addresses": []}],
        unconverted={"port_filter": 7, "already_mptcp": 0, "fallback": 2,
                     "not_parseable": None})
    code, out, err = run(capsys, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    i = lines.index("interfaces:")
    assert lines[i + 1].split() == ["NAME", "STATE", "LOCID", "ADDRESSES"]
    assert lines[i + 2].split() == ["eth0", "up", "1", "10.0.1.1,", "fd00::1"]
    assert lines[i + 3].split() == ["wlan0", "down", "2", "-"]
    j = lines.index("left unconverted:")
    rows = {ln.split()[0] + " " + ln.split()[1]: ln for ln in lines[j + 2:]}
    assert rows["port filter"].split()[2] == "7" and "--port" in rows["port filter"]
    assert rows["fallback 2"].startswith("  fallback")
    assert rows["not parseable"].split()[2] == "-"  # unknown, not zero


def test_stats_nonzero(fake, capsys):
    code, out, _ = run(capsys, "stats", "--nonzero")
    assert code == 0
    assert [r.split()[0] for r in out.splitlines()[1:]] == ["AcksConsumed", "DSSTx"]
    code, out, _ = run(capsys, "--json", "stats", "--nonzero")
    assert json.loads(out) == {"DSSTx": 12, "AcksConsumed": 3}


def test_add_subflow(fake, capsys):
    code, out, err = run(capsys, "add-subflow", "1", "--iface", "wlan0", "--backup")
    assert (code, err) == (0, "")
    assert out == "connection 1: subflow 1 syn_sent on wlan0 10.0.2.1:40000 -> 192.0.2.9:80 " \
                  "(backup)\n"
    run(capsys, "add-subflow", "3", "-i", "eth0")
    assert [r["args"] for r in fake.requests] == [
        {"conn": 1, "iface": "wlan0", "backup": True},
        {"conn": 3, "iface": "eth0", "backup": False}]


def test_remove_subflow(fake, capsys):
    code, out, _ = run(capsys, "remove-subflow", "1", "0")
    assert code == 0 and out == "connection 1: subflow 0 on eth0 removed (closing)\n"
    assert fake.requests == [{"cmd": "remove-subflow", "args": {"conn": 1, "subflow": 0}}]


def test_handover_one(fake, capsys):
    fake.results["handover"] = HANDOVER[:1]
    code, out, _ = run(capsys, "handover", "1", "--to", "wlan0")
    assert code == 0
    assert out == ("connection 1: handover to wlan0 on subflow 2 (make-before-break; "
                   "pending until the subflow is established)\n")
    assert fake.requests[0] == {"cmd": "handover",
                                "args": {"to": "wlan0", "break": False, "conn": 1}}


def test_handover_all_break(fake, capsys):
    code, out, _ = run(capsys, "handover", "--all", "--to", "eth0", "--break")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "break-before-make" in lines[0]
    assert lines[1] == "connection 5: handover to eth0 on subflow 1 (break-before-make; done)"
    assert fake.requests[0]["args"] == {"to": "eth0", "break": True, "all": True}


def test_handover_all_nothing_to_do(fake, capsys):
    fake.results["handover"] = []
    code, out, _ = run(capsys, "handover", "--all", "--to", "eth0")
    assert (code, out) == (0, "no established connections to hand over\n")


@pytest.mark.parametrize("flag,value,word", [("--backup", True, "a backup path"),
                                             ("--no-backup", False, "a regular path")])
def test_prio(fake, capsys, flag, value, word):
    fake.results["prio"] = dict(SUBFLOWS[1], backup=value)
    code, out, _ = run(capsys, "prio", "1", "1", flag)
    assert code == 0 and word in out and out.count("\n") == 1
    assert fake.requests[0] == {"cmd": "prio",
                                "args": {"conn": 1, "subflow": 1, "backup": value}}


# ---------------------------------------------------------------- --json
@pytest.mark.parametrize("argv,cmd", [
    (["status"], "status"), (["connections"], "connections"), (["subflows", "1"], "subflows"),
    (["stats"], "stats"), (["add-subflow", "1", "--iface", "wlan0"], "add-subflow"),
    (["remove-subflow", "1", "0"], "remove-subflow"),
    (["handover", "--all", "--to", "wlan0"], "handover"),
    (["prio", "1", "1", "--backup"], "prio"),
])
def test_json_is_the_exact_result(fake, capsys, argv, cmd):
    code, out, err = run(capsys, "--json", *argv)
    assert (code, err) == (0, "")
    assert json.loads(out) == CANNED[cmd]
    assert fake.requests[0]["cmd"] == cmd


def test_global_options_after_the_verb(fake, capsys):
    code, out, _ = run(capsys, "connections", "--json", "--socket", fake.path, "--timeout", "2")
    assert code == 0 and json.loads(out)[0]["bytes_sent"] == 12_345_678


def test_chunked_reply(fake, capsys):
    fake.mode = "chunked"
    code, out, _ = run(capsys, "--json", "connections")
    assert code == 0 and json.loads(out) == CONNECTIONS


# ---------------------------------------------------------------- socket path
def test_socket_default_and_env(monkeypatch):
    assert ctl.DEFAULT_SOCKET == daemon.DEFAULT_CONTROL == DEFAULT_CONTROL
    monkeypatch.delenv(ctl.SOCKET_ENV, raising=False)
    assert ctl.parse_args(["status"]).socket == "/run/mptcp-proxy/control.sock"
    monkeypatch.setenv(ctl.SOCKET_ENV, "/tmp/elsewhere.sock")
    assert ctl.parse_args(["status"]).socket == "/tmp/elsewhere.sock"
    assert ctl.parse_args(["--socket", "/x.sock", "status"]).socket == "/x.sock"
    assert ctl.parse_args(["status", "-s", "/y.sock"]).socket == "/y.sock"


def test_defaults_when_global_options_absent(monkeypatch):
    ns = ctl.parse_args(["connections"])
    assert (ns.json, ns.timeout) == (False, ctl.DEFAULT_TIMEOUT)
    ns = ctl.parse_args(["-j", "-t", "1.5", "connections"])
    assert (ns.json, ns.timeout) == (True, 1.5)


# ---------------------------------------------------------------- exit codes
FAULT_EXITS = {
    Fault.BAD_REQUEST: 1, Fault.UNKNOWN_COMMAND: 1, Fault.BAD_ARGUMENT: 1,
    Fault.UNKNOWN_CONNECTION: 3, Fault.UNKNOWN_SUBFLOW: 3, Fault.UNKNOWN_INTERFACE: 3,
    Fault.INTERFACE_DOWN: 4, Fault.NOT_POSSIBLE: 5, Fault.PERMISSION_DENIED: 6,
    Fault.INTERNAL: 1,
}


def test_every_fault_has_an_expected_exit():
    assert set(FAULT_EXITS) == set(Fault)


@pytest.mark.parametrize("fault,exit_code", list(FAULT_EXITS.items()) + [(99, 1)])
@pytest.mark.parametrize("as_json", [False, True])
def test_daemon_errors_map_to_exit_codes(fake, capsys, fault, exit_code, as_json):
    fake.error = (int(fault), f"went wrong ({int(fault)})")
    argv = ["--json"] if as_json else []
    code, out, err = run(capsys, *argv, "handover", "3", "--to", "wlan0")
    assert code == exit_code
    assert out == ""
    assert err == f"mptcpctl: error: went wrong ({int(fault)})\n"


def test_not_running_missing_socket(sock_path, capsys):
    code, out, err = run(capsys, "--socket", sock_path, "status")
    assert code == 7 and out == ""
    assert err.startswith("mptcpctl: error: daemon not running")
    assert sock_path in err and "--socket" in err


def test_not_running_connection_refused(sock_path, capsys):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)  # a stale socket file: nobody listens
    s.close()
    code, _, err = run(capsys, "--socket", sock_path, "connections")
    assert code == 7
    assert "refused" in err and sock_path in err and "--socket" in err


def test_not_running_parent_is_a_file(sock_path, capsys):
    open(sock_path, "w").close()
    code, _, err = run(capsys, "--socket", sock_path + "/x.sock", "status")
    assert code == 7 and sock_path in err


def test_permission_denied_connecting(fake, capsys, monkeypatch):
    def denied(path, timeout):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(ctl, "open_socket", denied)
    code, out, err = run(capsys, "status")
    assert code == 6 and out == ""
    assert "permission denied" in err and fake.path in err
    assert fake.requests == []


def test_timeout_when_the_daemon_never_answers(fake, capsys):
    fake.mode = "silent"
    t0 = time.monotonic()
    code, out, err = run(capsys, "--timeout", "0.2", "status")
    elapsed = time.monotonic() - t0
    assert code == 8 and out == ""
    assert "timed out after 0.2s" in err and fake.path in err
    assert 0.15 < elapsed < 2
    assert fake.requests == [{"cmd": "status", "args": {}}]  # it was sent


def test_no_reply_when_the_daemon_hangs_up(fake, capsys):
    fake.mode = "close"
    code, _, err = run(capsys, "status")
    assert code == 8 and "closed the connection" in err


@pytest.mark.parametrize("mode,text", [("garbage", "not valid JSON"), ("no-ok", '"ok"')])
def test_unreadable_reply(fake, capsys, mode, text):
    fake.mode = mode
    code, out, err = run(capsys, "status")
    assert code == 1 and out == "" and text in err


def test_result_of_the_wrong_shape(fake, capsys):
    fake.results["stats"] = [1, 2]
    code, out, err = run(capsys, "stats", "--nonzero")
    assert code == 1 and "unexpected reply" in err


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["subflows"], ["subflows", "abc"], ["subflows", "1", "2"],
    ["remove-subflow", "1"], ["add-subflow", "1"], ["handover", "--to", "wlan0"],
    ["handover", "1", "--all", "--to", "wlan0"], ["handover", "1"],
    ["prio", "1", "0"], ["prio", "1", "0", "--backup", "--no-backup"],
    ["--timeout", "0", "status"], ["--timeout", "soon", "status"], ["stats", "--bogus"],
    ["subflows", "-1"],
])
def test_bad_command_line(fake, capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "usage: mptcpctl" in err and "error:" in err
    assert fake.requests == []


def test_help_lists_the_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for line in ("0  success", "2  bad command line", "3  unknown connection",
                 "6  permission denied", "7  daemon not running", "8  timeout"):
        assert line in out
    assert "MPTCP_PROXY_SOCKET" in out
    code, out, _ = run(capsys, "handover", "--help")
    assert code == 0 and "7  daemon not running" in out and "--break" in out


def test_exit_codes_documented_in_module_docstring():
    doc = ctl.__doc__
    for code in range(9):
        assert f"\n{code}  " in doc


# ---------------------------------------------------------------- structure, units
def test_one_do_method_per_verb():
    parser = ctl.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    verbs = set(sub.choices)
    assert verbs == {"status", "connections", "subflows", "add-subflow", "remove-subflow",
                     "handover", "announce", "prio", "stats", "monitor", "debug-dump"}
    for v in verbs:
        assert callable(getattr(ctl.Controller, "do_" + v.replace("-", "_")))


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1500, "1.5 kB"), (999_960, "1.0 MB"),
    (12_345_678, "12.3 MB"), (2_000_000_000, "2.0 GB"), (5 * 10**12, "5.0 TB"),
    (None, "None"),
])
def test_human_bytes(n, text):
    assert ctltable.human_bytes(n) == text


@pytest.mark.parametrize("s,text", [(4.24, "4.2s"), (59.9, "59.9s"), (303, "5m03s"),
                                    (7500, "2h05m"), (3 * 86400 + 4 * 3600 + 5, "3d04h")])
def test_human_duration(s, text):
    assert ctltable.human_duration(s) == text
