"""The control socket and mptcpctl with the server role and the anchor: the ROLE of each
connection (client, server, anchor, and the connections an anchor passed through),
``announce``, and ``handover`` of a connection whose subflows the peer opens — against
the real core (tests/unit/server_model.py), not fakes."""

from __future__ import annotations

import json

import pytest
from lockstep.decode import OtherMp
from mpnet.options import add_addr_hmac8, decode_other
from server_model import ServerPair
from test_joins_listener import CLIENT2, joined

from mptcp_proxy import ctl
from mptcp_proxy.control import ControlServer, Fault
from mptcp_proxy.core.policy import LocalIface, PathManager, PmConfig

OURS = bytes([10, 0, 1, 254])


def server(pair) -> ControlServer:
    return ControlServer("/nonexistent/ctl.sock", pair.proxy, None, {"rc0": {}},
                         pair.proxy.pm)


def call(srv, cmd, **args):
    return srv.handle_line(json.dumps({"cmd": cmd, "args": args}).encode())


def ok(reply):
    assert reply["ok"] is True, reply
    return reply["result"]


def fault(reply, code: Fault) -> str:
    assert reply["ok"] is False and reply["error"]["code"] == int(code), reply
    return reply["error"]["message"]


def pair_with(anchor=False, native=False):
    pm = PathManager([LocalIface("rc0", 1, v4=[OURS])], PmConfig())
    pair = ServerPair(anchor=anchor, native=native, pm=pm)
    pair.handshake()
    return pair


@pytest.mark.parametrize("anchor", [False, True])
def test_connections_show_the_role(anchor):
    pair = pair_with(anchor=anchor)
    (c,) = ok(call(server(pair), "connections"))
    assert c["role"] == ("anchor" if anchor else "server") and c["state"] == "established"
    assert c["local"] == "10.0.0.1:8080" and c["remote"] == "10.0.1.2:50000"
    assert c["token"] == f"{pair.peer.token:08x}"


def test_connections_list_what_an_anchor_passed_through():
    pair = pair_with(anchor=True, native=True)
    rows = ok(call(server(pair), "connections"))
    assert rows == [{"id": None, "role": "passed", "state": "passed",
                     "local": "10.0.0.1:8080", "remote": "10.0.1.2:50000",
                     "age": rows[0]["age"]}]


def test_status_tells_the_mode():
    pair = pair_with(anchor=True)
    st = ok(call(server(pair), "status"))
    assert st["mode"] == "anchor" and st["serve"] == []


@pytest.mark.parametrize("how", [{"iface": "rc0"}, {"addr": "10.0.1.254:9000"}])
def test_announce_sends_add_addr(how):
    pair = pair_with()
    res = ok(call(server(pair), "announce", conn=pair.conn.id, **how))
    port = 9000 if "addr" in how else None
    assert res == [{"conn": pair.conn.id, "addr": "10.0.1.254" + (":9000" if port else ""),
                    "addr_id": 1}]
    pair.flush()
    (add,) = [decode_other(x) for s in pair.segs("to_peer") for x in s.mp
              if isinstance(x, OtherMp) and x.subtype == 3]
    assert add[1:5] == (False, 1, OURS, port)
    assert add[5] == add_addr_hmac8(pair.conn.local_key, pair.peer.key, 1, OURS, port)
    assert pair.proxy.counters["AddAddrTx"] == 1
    pair.assert_clean()


def test_announce_errors():
    pair = pair_with()
    srv = server(pair)
    assert "address" in fault(call(srv, "announce", conn=pair.conn.id, addr="nope"),
                              Fault.BAD_ARGUMENT)
    fault(call(srv, "announce", conn=pair.conn.id, addr="fd00::1"), Fault.NOT_POSSIBLE)
    fault(call(srv, "announce", conn=pair.conn.id), Fault.BAD_ARGUMENT)
    fault(call(srv, "announce", conn=99, iface="rc0"), Fault.UNKNOWN_CONNECTION)


def test_handover_of_a_server_role_connection_to_a_peer_opened_subflow():
    pair = pair_with()
    pair.transfer(b"a" * 100, b"b" * 100)
    pair.elsewhere = []
    joined(pair)
    srv = server(pair)
    msg = fault(call(srv, "handover", conn=pair.conn.id, to="rc0"), Fault.NOT_POSSIBLE)
    assert "peer opens the subflows" in msg
    res = ok(call(srv, "handover", conn=pair.conn.id, subflow=1))
    assert res == [{"conn": pair.conn.id, "subflow": 1, "pending": False}]
    assert pair.conn.active is pair.conn.subflows[1]
    pair.flush()
    prios = [(s.dst, decode_other(x)) for s in pair.elsewhere + pair.segs("to_peer")
             for x in s.mp if isinstance(x, OtherMp) and x.subtype == 5]
    # subflow 0 becomes a backup for the peer; the join was regular from its SYN/ACK on
    assert prios == [(pair.peer.addr, ("prio", True))]
    assert not pair.conn.subflows[1].backup and all(s.dst == CLIENT2 for s in pair.elsewhere)
    pair.local_send(b"now on the join")
    assert [s.payload for s in pair.elsewhere if s.plen] == [b"now on the join"]


def test_mptcpctl_command_lines():
    ns = ctl.parse_args(["announce", "3", "--addr", "10.0.0.9:80"])
    assert (ns.conn, ns.addr, ns.iface) == (3, "10.0.0.9:80", None)
    ns = ctl.parse_args(["handover", "3", "--subflow", "2", "--break"])
    assert (ns.conn, ns.subflow, ns.to, ns.brk) == (3, 2, None, True)
    for bad in (["announce", "--addr", "1.2.3.4"], ["announce", "3"],
                ["handover", "--all", "--subflow", "1"], ["handover", "3", "--to", "x",
                                                          "--subflow", "1"]):
        with pytest.raises(SystemExit):
            ctl.parse_args(bad)
