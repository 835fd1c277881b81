"""The traffic peer end to end on loopback (no root, no namespace): server, client and
agent processes as the tools start them, every mode and option checked by its records."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from netns.peer import AgentHandle, ServerHandle, Stream, expected_sha
from netns.peer.protocol import HOLD, Request

ADDR = "127.0.0.1"


def _peer(*args: Any, stdin: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "netns.peer", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else None)


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    srv = ServerHandle(_peer("server", "--port", 0, "--bind", ADDR, "--timeout", 20))
    srv.wait_listening(20)
    yield srv
    srv.stop()


def _client(srv: ServerHandle, *args: Any, timeout: float = 60) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "netns.peer", "client", "--addr", ADDR,
                          "--port", str(srv.port), *map(str, args)], capture_output=True,
                         text=True, timeout=timeout)
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


def test_both_ways_hashed_and_checked(server: ServerHandle) -> None:
    recs = _client(server, "--upload", 3_000_000, "--download", 2_500_000, "--conns", 3,
                   "--seed", 40)
    srv = {r["seed"]: r for r in server.wait(3, timeout=20)}
    assert sorted(r["seed"] for r in recs) == [40, 41, 42]
    for cli in recs:
        rec = srv[cli["seed"]]
        assert cli["error"] is None and rec["error"] is None, (cli, rec)
        assert (cli["sent"], rec["received"], rec["sent"], cli["received"]) == \
            (3_000_000, 3_000_000, 2_500_000, 2_500_000)
        assert rec["recv_sha256"] == cli["sent_sha256"] == expected_sha(cli["seed"], 3_000_000)
        assert cli["recv_sha256"] == expected_sha(cli["seed"], 2_500_000, "down")
        assert cli["pattern_ok"] and rec["pattern_ok"] and cli["bad_at"] is None
        assert rec["peer"] == cli["local"]


def test_report_gives_the_servers_record_in_band(server: ServerHandle) -> None:
    (cli,) = _client(server, "--upload", 1_000_000, "--report", "--no-hash", "--seed", 7)
    reply = cli["server"]
    assert cli["error"] is None and reply["received"] == cli["sent"] == 1_000_000
    assert reply["pattern_ok"] and reply["recv_sha256"] is None and reply["seed"] == 7
    assert server.record(10, seed=7)["received"] == 1_000_000  # and on its stdout too


def test_timed_paced_download_with_hold(server: ServerHandle) -> None:
    t0 = time.monotonic()
    (cli,) = _client(server, "--download-seconds", 1.0, "--download-rate", 400_000, "--hold")
    took = time.monotonic() - t0
    rec = server.record(10, seed=1)
    assert cli["error"] is None and cli["sent"] == 0 and cli["pattern_ok"]
    assert rec["sent"] == cli["received"]
    assert 200_000 < cli["received"] < 600_000, cli["received"]  # ~1 s at 400 kB/s
    assert took >= 0.9


@pytest.mark.parametrize("hold", [False, True])
def test_hold_keeps_the_idle_direction_open(server: ServerHandle, hold: bool) -> None:
    """With ``hold`` the server, having nothing to send, half-closes only after the
    client's end of stream; without it at once."""
    with socket.create_connection((ADDR, server.port), timeout=10) as s:
        s.sendall(Request(seed=3, flags=HOLD if hold else 0).pack()
                  + bytes(Stream(3, "up").window(0, 1000)))
        s.settimeout(1.0)
        try:
            early = s.recv(1)  # b"": the server's FIN
        except TimeoutError:
            early = None
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        late = s.recv(1)
    assert (early, late) == ((None, b"") if hold else (b"", b""))
    assert server.record(10, seed=3)["received"] == 1000


def test_paced_upload_until_the_download_ended(server: ServerHandle) -> None:
    (cli,) = _client(server, "--download", 400_000, "--download-rate", 400_000,
                     "--upload-rate", 100_000, "--until-eof", "--seed", 9)
    rec = server.record(10, seed=9)
    assert cli["error"] is None and rec["error"] is None
    assert 50_000 < cli["sent"] < 200_000, cli["sent"]  # ~1 s of 100 kB/s
    assert rec["received"] == cli["sent"] and rec["recv_sha256"] == expected_sha(9, cli["sent"])


def test_a_byte_off_the_pattern_is_located(server: ServerHandle) -> None:
    data = bytearray(Stream(5, "up").window(0, 300_000))
    data[123_457] ^= 0x40
    with socket.create_connection((ADDR, server.port), timeout=10) as s:
        s.sendall(Request(seed=5).pack() + bytes(data))
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    rec = server.record(10, seed=5)
    assert rec["received"] == 300_000 and rec["error"] is None
    assert rec["pattern_ok"] is False and rec["bad_at"] == 123_457


def test_terminated_connections_still_report(server: ServerHandle) -> None:
    proc = _peer("client", "--addr", ADDR, "--port", server.port, "--conns", 2,
                 "--download-seconds", 30, "--download-rate", 50_000, "--progress", 0.2,
                 "--events")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    objs = [json.loads(x) for x in out.splitlines()]
    events = {o["event"] for o in objs if "event" in o}
    recs = [o for o in objs if "event" not in o]
    assert proc.returncode == 1 and events == {"connected", "progress"}
    assert len(recs) == 2 and all(r["error"] == "terminated" for r in recs), recs
    assert all(r["received"] > 0 and r["pattern_ok"] for r in recs)
    progress = [o for o in objs if o.get("event") == "progress"]
    assert len(progress[-1]["conns"]) == 2 and progress[-1]["conns"][0][2] > 0


def test_agent_request_response_and_held_connections(server: ServerHandle) -> None:
    agent = AgentHandle(_peer("agent", stdin=True))
    try:
        assert agent.call("ping", 10)["pid"] == agent.proc.pid
        rr = agent.call("rr", 30, addr=ADDR, port=server.port, mptcp=False, count=20)
        assert len(rr["ms"]) == 20 and rr["errors"] == {}
        held = agent.call("hold", 60, addr=ADDR, port=server.port, mptcp=False, n=200)
        assert held["opened"] == 200 and held["held"] == 200 and held["errors"] == {}
        assert agent.call("release", 30) == {"closed": 200}
        up = agent.call("bulk", 30, addr=ADDR, port=server.port, mptcp=False,
                        direction="up", max_bytes=5_000_000, seconds=5.0, seed=77)
        assert up["error"] is None and up["received"] == up["sent"] == 5_000_000
        assert up["mbps"] > 0 and up["facts"]["mptcp_socket"] is False
        down = agent.call("bulk", 30, addr=ADDR, port=server.port, mptcp=False,
                          direction="down", max_bytes=4_000_000, seconds=5.0, seed=78)
        assert down["error"] is None and down["received"] == 4_000_000
        assert server.record(10, seed=78)["sent"] == 4_000_000
    finally:
        agent.close()
        agent.stop()


def test_a_timed_sender_times_out_when_nothing_moves() -> None:
    """A peer that never reads: the timed upload (30 s) ends with ``timeout`` after the
    socket timeout (1 s) once the buffers are full, not at the end of its time."""
    with socket.create_server((ADDR, 0)) as ls:  # accepts (backlog), never reads
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "netns.peer", "client", "--addr", ADDR,
                              "--port", str(ls.getsockname()[1]), "--upload-seconds", "30",
                              "--timeout", "1"], capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
    (rec,) = [json.loads(x) for x in out.stdout.splitlines()]
    assert rec["error"] == "timeout" and rec["sent"] > 0, rec
    assert took < 15, took
