"""The daemon's control protocol (mptcp_proxy/control.py): every command's success
path and every error with its stable Fault code, through ``handle_line``; then a
real ControlServer on a Unix socket (framing, the 64 KiB limit, the root-only
check); then mptcpctl against that real server.

The proxy, path manager and driver are small fakes with exactly the attributes
control.py reads (after supervisor's ``DummySupervisor``);
``test_fake_pm_matches_path_manager`` keeps their call signatures honest.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from contextlib import contextmanager

import pytest

from mptcp_proxy import control, ctl
from mptcp_proxy.control import MAX_LINE, ControlServer, Fault
from mptcp_proxy.core.counters import COUNTER_HELP, Counters
from mptcp_proxy.core.policy import LocalIface, PathManager, PmConfig
from mptcp_proxy.core.proxy import ProxyConfig
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.subflow import SubflowState

V4_L, V4_R = bytes([10, 0, 1, 1]), bytes([192, 0, 2, 9])
V4_L2 = bytes([10, 0, 2, 1])
V6_L = bytes.fromhex("20010db8" + "00" * 11 + "01")
V6_R = bytes.fromhex("20010db8" + "00" * 11 + "02")


# ---------------------------------------------------------------- fakes
class FakeSubflow:
    def __init__(self, index, laddr=V4_L, lport=5000, raddr=V4_R, rport=80, iface="eth0",
                 state=SubflowState.ESTABLISHED, addr_id=0, backup=False):
        self.index, self.laddr, self.lport = index, laddr, lport
        self.raddr, self.rport = raddr, rport
        self.iface, self.state, self.addr_id = iface, state, addr_id
        self.backup, self.peer_backup = backup, False
        self.snd_nxt, self.snd_una, self.rcv_high = 3000 + index, 2000 + index, 1000 + index
        self.send_map, self.rcv_map = [1, 2], [3]

    @property
    def alive(self):
        return self.state == SubflowState.ESTABLISHED


class FakeConn:
    def __init__(self, cid, v6=False, state=ConnState.ESTABLISHED, subflows=None):
        la, ra = (V6_L, V6_R) if v6 else (V4_L, V4_R)
        self.id, self.state = cid, state
        self.role, self.anchor = "client", False
        self.key = (la, 5000 + cid, ra, 80)
        self.remote_token, self.local_token = 0xABCD + cid, 0x1234
        self.csum, self.fully_established = False, True
        self.subflows = subflows if subflows is not None else [
            FakeSubflow(0, la, 5000 + cid, ra, 80)]
        self.active = self.subflows[0]
        self.d_nxt, self.d_una, self.r_high = 12_345_678, 12_000_000, 4096
        self.created = time.monotonic() - 5.0


class FakePM:
    """Records calls; behaves like PathManager for the control layer."""

    def __init__(self, ifaces):
        self.ifaces = {i.name: i for i in ifaces}
        self.config = PmConfig()
        self.calls: list = []
        self.refuse = False
        self.handover_pending = False
        self.explode = False

    def add_subflow(self, conn, iface, backup, now):
        self.calls.append(("add_subflow", conn.id, iface.name, backup))
        if self.explode:
            raise RuntimeError("boom")
        if self.refuse:
            return None
        sf = FakeSubflow(len(conn.subflows), V4_L2, 40000, iface=iface.name,
                         state=SubflowState.SYN_SENT, addr_id=iface.addr_id, backup=backup)
        conn.subflows.append(sf)
        return sf

    def remove_subflow(self, conn, sf, now):
        self.calls.append(("remove_subflow", conn.id, sf.index))
        if len([s for s in conn.subflows if s.alive]) < 2:
            raise ValueError("cannot remove the only usable subflow")
        sf.state = SubflowState.CLOSING

    def handover(self, conn, iface, now, break_=False):
        self.calls.append(("handover", conn.id, iface.name, break_))
        if self.refuse:
            return None
        sf = FakeSubflow(len(conn.subflows), V4_L2, 40000, iface=iface.name,
                         state=SubflowState.SYN_SENT if self.handover_pending
                         else SubflowState.ESTABLISHED)
        conn.subflows.append(sf)
        return sf

    def set_prio(self, conn, sf, backup, now):
        self.calls.append(("set_prio", conn.id, sf.index, backup))
        sf.backup = backup


class FakeProxy:
    def __init__(self, conns):
        self.connections = {c.id: c for c in conns}
        self.config = ProxyConfig(ports=frozenset({443, 80}), checksum=True)
        self.counters = Counters()
        self.now = 0.0

    def passed_through(self, now):
        return []


class FakeDriver:
    def __init__(self):
        self.packets = 42
        self.after = 0

    def flush_outputs(self):
        self.after += 1


def make_server(path="/nonexistent/ctl.sock", pm=True):
    two = FakeConn(2, subflows=[FakeSubflow(0), FakeSubflow(1, V4_L2, 40000, iface="wlan0",
                                                            addr_id=2, backup=True)])
    conns = [FakeConn(1), two, FakeConn(3, v6=True), FakeConn(4, state=ConnState.FALLBACK)]
    ifaces = [LocalIface("eth0", 1, v4=[V4_L]), LocalIface("wlan0", 2, v4=[V4_L2]),
              LocalIface("lte0", 3, v4=[bytes([10, 0, 3, 1])], up=False)]
    proxy = FakeProxy(conns)
    srv = ControlServer(path, proxy, FakeDriver(), {"eth0": {}, "wlan0": {}, "lte0": {}},
                        FakePM(ifaces) if pm else None)
    return srv


def call(srv, cmd, **args):
    return srv.handle_line(json.dumps({"cmd": cmd, "args": args}).encode())


def ok(reply):
    assert reply["ok"] is True, reply
    return reply["result"]


def fault(reply, code: Fault) -> str:
    assert reply["ok"] is False, reply
    err = reply["error"]
    assert (err["code"], err["name"]) == (int(code), code.name.lower()), err
    assert isinstance(err["message"], str) and err["message"]
    return err["message"]


@pytest.fixture
def srv():
    return make_server()


# ---------------------------------------------------------------- success paths
def test_status(srv):
    r = ok(call(srv, "status"))
    assert r["pid"] == os.getpid()
    assert r["interfaces"] == [
        {"name": "eth0", "state": "up", "addr_id": 1, "addresses": ["10.0.1.1"]},
        {"name": "wlan0", "state": "up", "addr_id": 2, "addresses": ["10.0.2.1"]},
        {"name": "lte0", "state": "down", "addr_id": 3, "addresses": ["10.0.3.1"]}]
    assert r["connections"] == 4 and r["packets"] == 42
    assert r["subflows"] == "backup"
    # without rule counters the kernel-counted reasons are unknown (None), not 0
    assert r["unconverted"] == {"port_filter": None, "already_mptcp": None, "fallback": 0,
                                "not_parseable": 0}
    assert r["ports"] == [80, 443] and r["checksum"] is True
    assert 0 <= r["uptime"] < 60


def test_status_without_args_field(srv):
    assert ok(srv.handle_line(b'{"cmd": "status"}\n'))["connections"] == 4
    assert ok(srv.handle_line(b'{"cmd": "status", "args": null}'))["packets"] == 42


def test_connections(srv):
    r = ok(call(srv, "connections"))
    assert [c["id"] for c in r] == [1, 2, 3, 4]
    c1 = r[0]
    assert c1["state"] == "established"
    assert c1["local"] == "10.0.1.1:5001" and c1["remote"] == "192.0.2.9:80"
    assert c1["token"] == f"{0xABCD + 1:08x}" and c1["local_token"] == "00001234"
    assert (c1["bytes_sent"], c1["bytes_acked"], c1["bytes_received"]) == (
        12_345_678, 12_000_000, 4096)
    assert c1["subflows"] == 1 and c1["active"] == 0
    assert 4.5 < c1["age"] < 60
    assert r[1]["subflows"] == 2
    assert r[2]["local"] == "[2001:db8::1]:5003" and r[2]["remote"] == "[2001:db8::2]:80"
    assert r[3]["state"] == "fallback"
    json.dumps(r)  # serialisable as is


def test_connections_count_only_live_subflows(srv):
    srv.proxy.connections[2].subflows[1].state = SubflowState.CLOSED
    assert ok(call(srv, "connections"))[1]["subflows"] == 1


def test_stats_lists_every_documented_counter(srv):
    srv.proxy.counters.inc("DSSTx", 7)
    srv.proxy.counters.inc("SomethingNew")
    r = ok(call(srv, "stats"))
    assert list(r) == sorted(r)
    assert r["DSSTx"] == 7 and r["SomethingNew"] == 1
    assert set(COUNTER_HELP) <= set(r)
    assert r["MPFastcloseRx"] == 0


def test_subflows(srv):
    r = ok(call(srv, "subflows", conn=2))
    assert [s["id"] for s in r] == [0, 1]
    assert [s["active"] for s in r] == [True, False]
    s1 = r[1]
    assert s1["iface"] == "wlan0" and s1["local"] == "10.0.2.1:40000"
    assert s1["backup"] is True and s1["peer_backup"] is False and s1["addr_id"] == 2
    assert (s1["bytes_sent"], s1["bytes_acked"], s1["bytes_received"]) == (3001, 2001, 1001)
    assert (s1["send_table"], s1["recv_table"]) == (2, 1)
    assert ok(call(srv, "subflows", conn=3))[0]["remote"] == "[2001:db8::2]:80"


def test_conn_id_as_decimal_string(srv):
    assert len(ok(call(srv, "subflows", conn="2"))) == 2


def test_add_subflow(srv):
    r = ok(call(srv, "add-subflow", conn=1, iface="wlan0", backup=True))
    assert r["id"] == 1 and r["iface"] == "wlan0" and r["state"] == "syn_sent"
    assert r["backup"] is True
    r = ok(call(srv, "add-subflow", conn=1, iface="wlan0"))
    assert r["backup"] is False
    assert srv.pm.calls == [("add_subflow", 1, "wlan0", True), ("add_subflow", 1, "wlan0", False)]


def test_add_subflow_refused_by_pm(srv):
    srv.pm.refuse = True
    assert "wlan0" in fault(call(srv, "add-subflow", conn=1, iface="wlan0"), Fault.NOT_POSSIBLE)


def test_remove_subflow(srv):
    r = ok(call(srv, "remove-subflow", conn=2, subflow=1))
    assert r["id"] == 1 and r["state"] == "closing"
    assert srv.pm.calls == [("remove_subflow", 2, 1)]


def test_remove_last_subflow_not_possible(srv):
    msg = fault(call(srv, "remove-subflow", conn=1, subflow=0), Fault.NOT_POSSIBLE)
    assert "only usable" in msg


def test_remove_closed_subflow_not_possible(srv):
    srv.proxy.connections[2].subflows[1].state = SubflowState.CLOSED
    fault(call(srv, "remove-subflow", conn=2, subflow=1), Fault.NOT_POSSIBLE)
    assert srv.pm.calls == []


def test_handover_one(srv):
    r = ok(call(srv, "handover", conn=1, to="wlan0", **{"break": True}))
    assert r == [{"conn": 1, "subflow": 1, "pending": False}]
    assert srv.pm.calls == [("handover", 1, "wlan0", True)]


def test_handover_pending(srv):
    srv.pm.handover_pending = True
    r = ok(call(srv, "handover", conn=1, to="wlan0"))
    assert r == [{"conn": 1, "subflow": 1, "pending": True}]
    assert srv.pm.calls == [("handover", 1, "wlan0", False)]


def test_handover_all_skips_connections_not_established(srv):
    r = ok(call(srv, "handover", all=True, to="eth0"))
    assert [m["conn"] for m in r] == [1, 2, 3]  # 4 is a fallback connection
    assert all(c[3] is False for c in srv.pm.calls)


def test_handover_refused_by_pm(srv):
    srv.pm.refuse = True
    fault(call(srv, "handover", conn=1, to="wlan0"), Fault.NOT_POSSIBLE)


def test_prio(srv):
    r = ok(call(srv, "prio", conn=2, subflow=1, backup=False))
    assert r["backup"] is False
    r = ok(call(srv, "prio", conn=2, subflow=0, backup=True))
    assert r["backup"] is True and r["active"] is True
    assert srv.pm.calls == [("set_prio", 2, 1, False), ("set_prio", 2, 0, True)]


def test_prio_on_subflow_not_established(srv):
    srv.proxy.connections[2].subflows[1].state = SubflowState.SYN_SENT
    fault(call(srv, "prio", conn=2, subflow=1, backup=True), Fault.NOT_POSSIBLE)
    assert srv.pm.calls == []


def test_driver_flushed_after_success_only(srv):
    ok(call(srv, "status"))
    assert srv.driver.after == 1
    fault(call(srv, "subflows", conn=99), Fault.UNKNOWN_CONNECTION)
    assert srv.driver.after == 1


# ---------------------------------------------------------------- error paths
@pytest.mark.parametrize("line", [b"{not json", b"\xff\xfe\n", b"", b'{"cmd": "status"'])
def test_bad_json(srv, line):
    assert "JSON" in fault(srv.handle_line(line), Fault.BAD_REQUEST)


@pytest.mark.parametrize("line", [b"[1, 2]", b'"status"', b"42", b"null"])
def test_not_an_object(srv, line):
    fault(srv.handle_line(line), Fault.BAD_REQUEST)


@pytest.mark.parametrize("line", [b"{}", b'{"args": {}}', b'{"cmd": 5}', b'{"cmd": null}'])
def test_missing_or_bad_cmd(srv, line):
    assert "cmd" in fault(srv.handle_line(line), Fault.BAD_REQUEST)


def test_unknown_command(srv):
    assert "frobnicate" in fault(call(srv, "frobnicate"), Fault.UNKNOWN_COMMAND)


@pytest.mark.parametrize("args", ["[]", "[1]", '"x"', "3", "false", '""'])
def test_args_not_an_object(srv, args):
    line = f'{{"cmd": "status", "args": {args}}}'.encode()
    assert "args" in fault(srv.handle_line(line), Fault.BAD_REQUEST)
    assert srv.driver.after == 0


@pytest.mark.parametrize("conn", [None, "abc", 1.5, 2.0, True, [1], "-1", "²"])
def test_conn_not_an_integer(srv, conn):
    args = {} if conn is None else {"conn": conn}
    assert "integer" in fault(call(srv, "subflows", **args), Fault.BAD_ARGUMENT)


@pytest.mark.parametrize("sub", [None, "x", 0.5, False])
def test_subflow_not_an_integer(srv, sub):
    args = {"conn": 2} if sub is None else {"conn": 2, "subflow": sub}
    fault(call(srv, "remove-subflow", **args), Fault.BAD_ARGUMENT)


@pytest.mark.parametrize("cmd,args", [
    ("subflows", {"conn": 99}),
    ("add-subflow", {"conn": 99, "iface": "wlan0"}),
    ("remove-subflow", {"conn": 99, "subflow": 0}),
    ("handover", {"conn": 99, "to": "wlan0"}),
    ("prio", {"conn": 99, "subflow": 0, "backup": True}),
])
def test_unknown_connection(srv, cmd, args):
    assert "99" in fault(call(srv, cmd, **args), Fault.UNKNOWN_CONNECTION)


@pytest.mark.parametrize("cmd,args", [
    ("remove-subflow", {"conn": 2, "subflow": 7}),
    ("prio", {"conn": 2, "subflow": 7, "backup": True}),
])
def test_unknown_subflow(srv, cmd, args):
    assert "subflow 7" in fault(call(srv, cmd, **args), Fault.UNKNOWN_SUBFLOW)


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 1, "iface": "wlan9"}),
    ("handover", {"conn": 1, "to": "wlan9"}),
    ("handover", {"all": True, "to": "wlan9"}),
])
def test_unknown_interface(srv, cmd, args):
    msg = fault(call(srv, cmd, **args), Fault.UNKNOWN_INTERFACE)
    assert "wlan9" in msg and "eth0" in msg  # names the known ones
    assert srv.pm.calls == []


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 1, "iface": "lte0"}),
    ("handover", {"conn": 1, "to": "lte0"}),
])
def test_interface_down(srv, cmd, args):
    assert "lte0" in fault(call(srv, cmd, **args), Fault.INTERFACE_DOWN)
    assert srv.pm.calls == []


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 1}),
    ("add-subflow", {"conn": 1, "iface": ""}),
    ("handover", {"conn": 1, "to": 3}),
])
def test_interface_name_required(srv, cmd, args):
    fault(call(srv, cmd, **args), Fault.BAD_ARGUMENT)


@pytest.mark.parametrize("args", [{}, {"backup": "true"}, {"backup": 1}, {"backup": None}])
def test_prio_without_bool(srv, args):
    assert "backup" in fault(call(srv, "prio", conn=2, subflow=1, **args), Fault.BAD_ARGUMENT)
    assert srv.pm.calls == []


def test_prio_without_bool_checked_before_state(srv):
    srv.proxy.connections[2].subflows[1].state = SubflowState.SYN_SENT
    fault(call(srv, "prio", conn=2, subflow=1, backup="no"), Fault.BAD_ARGUMENT)


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 1, "iface": "wlan0", "backup": "false"}),
    ("handover", {"conn": 1, "to": "wlan0", "break": "false"}),
    ("handover", {"all": 1, "to": "wlan0"}),
])
def test_flags_must_be_bool(srv, cmd, args):
    fault(call(srv, cmd, **args), Fault.BAD_ARGUMENT)
    assert srv.pm.calls == []


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 4, "iface": "wlan0"}),
    ("remove-subflow", {"conn": 4, "subflow": 0}),
    ("handover", {"conn": 4, "to": "wlan0"}),
    ("prio", {"conn": 4, "subflow": 0, "backup": True}),
])
def test_connection_not_established(srv, cmd, args):
    assert "fallback" in fault(call(srv, cmd, **args), Fault.NOT_POSSIBLE)
    assert srv.pm.calls == []


@pytest.mark.parametrize("cmd,args", [
    ("add-subflow", {"conn": 1, "iface": "wlan0"}),
    ("handover", {"all": True, "to": "wlan0"}),
    ("prio", {"conn": 2, "subflow": 1, "backup": True}),
])
def test_no_path_manager(cmd, args):
    srv = make_server(pm=False)
    assert "path manager" in fault(call(srv, cmd, **args), Fault.NOT_POSSIBLE)


def test_internal_error_is_a_reply(srv):
    srv.pm.explode = True
    assert "boom" in fault(call(srv, "add-subflow", conn=1, iface="wlan0"), Fault.INTERNAL)
    assert ok(call(srv, "status"))["pid"] == os.getpid()  # still serving


def test_fake_pm_matches_path_manager():
    """The fake is called exactly as control.py calls the real PathManager."""
    for name in ("add_subflow", "remove_subflow", "handover", "set_prio"):
        real = inspect.signature(getattr(PathManager, name)).parameters
        fake = inspect.signature(getattr(FakePM, name)).parameters
        assert list(fake) == list(real)[:len(fake)], name
    assert {"ifaces"} <= set(vars(PathManager([])))


# ---------------------------------------------------------------- the real socket
@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="mpc-", dir="/tmp")  # AF_UNIX paths are short
    yield os.path.join(d, "ctl.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(control, "peer_uid", lambda sock: 0)


async def _exchange(path, payload: bytes, nreplies: int | None):
    reader, writer = await asyncio.open_unix_connection(path, limit=4 * MAX_LINE)
    writer.write(payload)
    await writer.drain()
    if nreplies is None:  # read until the server hangs up, once it has read everything
        writer.write_eof()
    replies = []
    while nreplies is None or len(replies) < nreplies:
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line:
            break
        replies.append(json.loads(line))
    tail = await asyncio.wait_for(reader.read(), 5) if nreplies is None else None
    writer.close()
    return replies, tail


def run_with_server(srv, scenario):
    async def main():
        await srv.start()
        try:
            return await scenario()
        finally:
            await srv.stop()
    return asyncio.run(main())


def test_socket_one_request_per_line(sock_path, as_root):
    srv = make_server(sock_path)
    replies, _ = run_with_server(srv, lambda: _exchange(
        sock_path, b'{"cmd": "status"}\n', 1))
    assert ok(replies[0])["pid"] == os.getpid()


def test_socket_several_requests_on_one_connection(sock_path, as_root):
    srv = make_server(sock_path)
    payload = (b'{"cmd": "connections"}\n{"cmd": "bogus"}\nnot json\n'
               b'{"cmd": "subflows", "args": {"conn": 2}}\n')
    replies, tail = run_with_server(srv, lambda: _exchange(sock_path, payload, None))
    assert len(replies) == 4 and tail == b""
    assert len(ok(replies[0])) == 4
    fault(replies[1], Fault.UNKNOWN_COMMAND)
    fault(replies[2], Fault.BAD_REQUEST)
    assert [s["id"] for s in ok(replies[3])] == [0, 1]


def test_socket_line_over_limit(sock_path, as_root):
    srv = make_server(sock_path)
    big = b'{"cmd": "status", "args": {"pad": "' + b"x" * (MAX_LINE + 10) + b'"}}\n'
    replies, tail = run_with_server(srv, lambda: _exchange(
        sock_path, big + b'{"cmd": "status"}\n', None))
    assert len(replies) == 1  # then the server hangs up
    assert "too long" in fault(replies[0], Fault.BAD_REQUEST)
    assert srv.driver.after == 0


def test_socket_line_just_under_limit(sock_path, as_root):
    srv = make_server(sock_path)
    pad = MAX_LINE - 100
    line = b'{"cmd": "status", "args": {"pad": "' + b"x" * pad + b'"}}\n'
    assert len(line) < MAX_LINE
    replies, _ = run_with_server(srv, lambda: _exchange(sock_path, line, 1))
    assert ok(replies[0])["connections"] == 4


def test_socket_not_root_is_denied(sock_path, monkeypatch):
    monkeypatch.setattr(control, "peer_uid", lambda sock: 1000)
    srv = make_server(sock_path)
    replies, _ = run_with_server(srv, lambda: _exchange(
        sock_path, b'{"cmd": "status"}\n{"cmd": "connections"}\n', 2))
    for r in replies:
        assert "root" in fault(r, Fault.PERMISSION_DENIED)
    assert srv.driver.after == 0  # nothing ran


def test_socket_peer_uid_is_read_from_the_peer(sock_path):
    seen = []
    real = control.peer_uid

    def spy(sock):
        seen.append(real(sock))
        return seen[-1]
    srv = make_server(sock_path)
    mp = pytest.MonkeyPatch()
    mp.setattr(control, "peer_uid", spy)
    try:
        replies, _ = run_with_server(srv, lambda: _exchange(sock_path, b'{"cmd":"status"}\n', 1))
    finally:
        mp.undo()
    assert seen == [os.geteuid()]
    assert replies[0]["ok"] is True  # root, or the daemon's own user


def test_peer_uid_socketpair_and_failure():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert control.peer_uid(a) == os.geteuid()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        assert control.peer_uid(udp) == -1  # no credentials: never root


def test_socket_file_is_private_and_removed(sock_path, as_root):
    srv = make_server(sock_path)

    async def scenario():
        mode = stat.S_IMODE(os.stat(sock_path).st_mode)
        return mode, stat.S_ISSOCK(os.stat(sock_path).st_mode)
    mode, is_sock = run_with_server(srv, scenario)
    assert mode == 0o600 and is_sock
    assert not os.path.exists(sock_path)


def test_stale_socket_replaced_live_one_refused(sock_path, as_root):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens
    first = make_server(sock_path)

    async def scenario():
        second = make_server(sock_path)
        with pytest.raises(OSError, match="another daemon"):
            await second.start()
        await second.stop()  # the failed daemon's clean-up must not take the live socket
        return await _exchange(sock_path, b'{"cmd": "status"}\n', 1)
    replies, _ = run_with_server(first, scenario)
    assert replies[0]["ok"] is True


# ---------------------------------------------------------------- mptcpctl end to end
@contextmanager
def server_thread(srv):
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        asyncio.run_coroutine_threadsafe(srv.start(), loop).result(5)
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


def test_mptcpctl_against_the_real_server(sock_path, as_root, capsys):
    srv = make_server(sock_path)
    with server_thread(srv):
        assert ctl.main(["--socket", sock_path, "connections"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split()[:4] == ["CONN", "ROLE", "STATE", "LOCAL"]
        assert out[1].split()[:5] == ["1", "client", "established", "10.0.1.1:5001",
                                      "192.0.2.9:80"]
        assert "12.3 MB" in out[1]
        assert "[2001:db8::1]:5003" in out[3]

        assert ctl.main(["--socket", sock_path, "--json", "subflows", "2"]) == 0
        assert json.loads(capsys.readouterr().out) == ok(call(srv, "subflows", conn=2))

        assert ctl.main(["-s", sock_path, "prio", "2", "1", "--no-backup"]) == 0
        assert "regular" in capsys.readouterr().out
        assert srv.pm.calls[-1] == ("set_prio", 2, 1, False)

        assert ctl.main(["-s", sock_path, "handover", "--all", "--to", "wlan0", "--break"]) == 0
        assert capsys.readouterr().out.count("handover to wlan0") == 3
        assert srv.pm.calls[-1] == ("handover", 3, "wlan0", True)

        assert ctl.main(["-s", sock_path, "add-subflow", "1", "--iface", "lte0"]) == 4
        assert "lte0 is down" in capsys.readouterr().err
        assert ctl.main(["-s", sock_path, "remove-subflow", "1", "9"]) == 3
        assert ctl.main(["-s", sock_path, "remove-subflow", "4", "0"]) == 5
        assert ctl.main(["-s", sock_path, "stats", "--nonzero"]) == 0
        assert "no counters above zero" in capsys.readouterr().out


def test_mptcpctl_not_root_against_the_real_server(sock_path, monkeypatch, capsys):
    monkeypatch.setattr(control, "peer_uid", lambda sock: 1000)
    with server_thread(make_server(sock_path)):
        assert ctl.main(["--socket", sock_path, "status"]) == 6
    assert "open to root" in capsys.readouterr().err
