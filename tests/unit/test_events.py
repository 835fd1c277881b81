"""Events are frozen records with ip-mptcp-monitor names (core/events.py)."""

import dataclasses

import pytest

from mptcp_proxy.core.events import INFO_EVENTS, Event, EventKind


def _ev(**kw):
    base = dict(kind=EventKind.SF_ESTABLISHED, time=1.5, conn_id=3, token=0xAABBCCDD,
                remote_token=0x01020304, saddr=bytes([10, 0, 2, 1]), sport=40001,
                daddr=bytes([10, 0, 101, 1]), dport=80, subflow=1, locid=2, remid=0,
                backup=True, iface="c1")
    base.update(kw)
    return Event(**base)


def test_event_is_frozen():
    ev = _ev()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.conn_id = 4


def test_fields_in_monitor_shape():
    f = _ev().fields()
    assert f["type"] == "SF_ESTABLISHED"
    assert f["token"] == "aabbccdd" and f["remote_token"] == "01020304"
    assert f["saddr"] == "10.0.2.1" and f["daddr"] == "10.0.101.1"
    assert (f["sport"], f["dport"], f["locid"], f["remid"], f["backup"]) == (40001, 80, 2, 0, 1)
    assert "reason" not in f and "elapsed" not in f
    assert _ev().is_subflow_event and not _ev(kind=EventKind.HANDOVER).is_subflow_event


def test_ipv6_and_elapsed():
    f = _ev(kind=EventKind.RESUMED, saddr=bytes(15) + b"\x01", daddr=bytes(16),
            elapsed=0.1234567).fields()
    assert f["saddr"] == "::1" and f["daddr"] == "::" and f["elapsed"] == 0.123457


def test_names_are_the_monitors():
    for name in ("CREATED", "ESTABLISHED", "CLOSED", "ANNOUNCED", "REMOVED", "SF_ESTABLISHED",
                 "SF_CLOSED", "SF_PRIO"):
        assert EventKind(name).value == name
    assert EventKind.HANDOVER in INFO_EVENTS and EventKind.CREATED not in INFO_EVENTS
