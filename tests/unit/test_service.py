"""The service side without root: event lines shaped like ``ip mptcp monitor``
(eventfmt, logsetup), the log targets (syslog to a socket of the test's own, the
in-memory ring), the Prometheus text (metrics), the capability check, the systemd unit
(``systemd-analyze verify`` when it exists: tools/bootstrap installs it, so in strict
mode a missing one fails) and ``install-service`` into a scratch root."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mptcp_proxy import logsetup, service
from mptcp_proxy.core.counters import COUNTERS, Counters
from mptcp_proxy.core.events import Event, EventKind
from mptcp_proxy.core.states import ConnState
from mptcp_proxy.core.subflow import SubflowState
from mptcp_proxy.eventfmt import format_event
from mptcp_proxy.metrics import Metrics, metrics_address

STRICT = os.environ.get("MPTCP_PROXY_STRICT") == "1"
V4A, V4B = bytes([10, 0, 1, 1]), bytes([10, 0, 101, 1])
V6A = bytes.fromhex("fd000001" + "00" * 11 + "01")
V6B = bytes.fromhex("fd000101" + "00" * 11 + "01")


def ev(kind: EventKind, **kw) -> Event:
    base = dict(time=12.5, conn_id=7, token=0x0BADCAFE, remote_token=0x12345678,
                saddr=V4A, sport=40001, daddr=V4B, dport=5001)
    base.update(kw)
    return Event(kind, **base)


# ---------------------------------------------------------------- event lines
def test_connection_event_line_like_ip_mptcp_monitor():
    line = format_event(ev(EventKind.CREATED, remote_token=0).fields())
    assert line == ("[       CREATED] token=0badcafe saddr4=10.0.1.1 daddr4=10.0.101.1 "
                    "sport=40001 dport=5001 conn=7")


def test_subflow_event_line_keeps_monitor_order_then_ours():
    e = ev(EventKind.SF_ESTABLISHED, saddr=V6A, daddr=V6B, subflow=1, locid=2, remid=0,
           backup=True, iface="c1")
    assert format_event(e.fields()) == (
        "[SF_ESTABLISHED] token=0badcafe remid=0 locid=2 saddr6=fd00:1::1 "
        "daddr6=fd00:101::1 sport=40001 dport=5001 backup=1 conn=7 subflow=1 iface=c1 "
        "remote_token=12345678")


def test_every_kind_fits_the_bracket():
    for kind in EventKind:
        line = format_event(ev(kind).fields())
        assert re.match(r"^\[ *[A-Z_]+\] token=", line) and line.index("]") == 15, line


def test_unknown_fields_are_kept():
    f = dict(ev(EventKind.HANDOVER, from_subflow=0, subflow=2).fields(), extra="x")
    line = format_event(f)
    assert line.endswith("from_subflow=0 remote_token=12345678 extra=x")
    assert " subflow=2 " in line


# ---------------------------------------------------------------- logging
@pytest.fixture
def clean_root_logger():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_syslog_target(tmp_path, clean_root_logger):
    path = str(tmp_path / "log")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    ring = logsetup.RingHandler(size=3)
    logsetup.configure("syslog", "info", ring, syslog_address=path)
    e = ev(EventKind.HANDOVER, subflow=1, from_subflow=0)
    logsetup.log_event(e)  # INFO_EVENTS: at info level
    logsetup.log_event(ev(EventKind.CREATED))  # routine: debug, not logged at info
    data = rx.recv(4096).decode()
    rx.settimeout(0.2)
    with pytest.raises(TimeoutError):
        rx.recv(4096)
    rx.close()
    # <daemon.info> = 3*8+6 = 30, then the tag with our pid
    assert data.startswith(f"<30>mptcp-proxy[{os.getpid()}]: INFO [      HANDOVER] "
                           "token=0badcafe"), data
    assert len(ring.lines(10)) == 1 and "HANDOVER" in ring.lines(10)[0]


def test_syslog_target_unreachable(tmp_path, clean_root_logger):
    with pytest.raises(logsetup.LogSetupError, match="cannot reach the syslog socket"):
        logsetup.configure("syslog", "info", syslog_address=str(tmp_path / "none"))


def test_ring_keeps_the_last_lines(clean_root_logger):
    ring = logsetup.RingHandler(size=5)
    logsetup.configure("stderr", "debug", ring)
    log = logging.getLogger("mptcp_proxy.test")
    for i in range(12):
        log.info("line %d", i)
    assert [ln.rsplit(" ", 1)[1] for ln in ring.lines(100)] == ["7", "8", "9", "10", "11"]
    assert len(ring.lines(2)) == 2


def test_journal_fields_of_an_event():
    f = ev(EventKind.SF_PRIO, subflow=0, backup=True, iface="c0").fields()
    assert logsetup.journal_fields(f) == {
        "mptcp_event": "SF_PRIO", "mptcp_conn": 7, "mptcp_token": "0badcafe",
        "mptcp_remote_token": "12345678", "mptcp_subflow": 0, "mptcp_saddr": "10.0.1.1",
        "mptcp_sport": 40001, "mptcp_daddr": "10.0.101.1", "mptcp_dport": 5001,
        "mptcp_iface": "c0"}


# ---------------------------------------------------------------- metrics
class FakeSubflow:
    def __init__(self, state):
        self.state = state


class FakeConn:
    def __init__(self, state, sf_states):
        self.state = state
        self.subflows = [FakeSubflow(s) for s in sf_states]


class FakeProxy:
    def __init__(self):
        self.counters = Counters()
        self.connections = {
            1: FakeConn(ConnState.ESTABLISHED, [SubflowState.ESTABLISHED,
                                                SubflowState.PRE_ESTABLISHED]),
            2: FakeConn(ConnState.ESTABLISHED, [SubflowState.ESTABLISHED]),
            3: FakeConn(ConnState.FALLBACK, [SubflowState.ESTABLISHED])}


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_text():
    proxy = FakeProxy()
    proxy.counters.inc("MPCapableSYNTX", 3)
    proxy.counters.inc("Handovers")
    m = Metrics(proxy, backend="fnfqueue")
    for gap in (0.004, 0.18, 0.9):
        m.observe(ev(EventKind.RESUMED, elapsed=gap))
    m.observe(ev(EventKind.ESTABLISHED, elapsed=0.0012))
    m.observe(ev(EventKind.ESTABLISHED))  # no elapsed: counted, not observed
    text = m.text()
    s = samples(text)
    # every registered counter, with _total and its help text
    for name, help_ in COUNTERS.items():
        assert f"# HELP mptcp_proxy_{name}_total {help_}\n" in text
        assert f"# TYPE mptcp_proxy_{name}_total counter\n" in text
    assert s["mptcp_proxy_MPCapableSYNTX_total"] == 3 and s["mptcp_proxy_Handovers_total"] == 1
    assert s["mptcp_proxy_RstRx_total"] == 0
    assert s['mptcp_proxy_connections{state="established"}'] == 2
    assert s['mptcp_proxy_connections{state="fallback"}'] == 1
    assert s['mptcp_proxy_connections{state="syn_sent"}'] == 0
    assert s['mptcp_proxy_subflows{state="established"}'] == 3
    assert s['mptcp_proxy_subflows{state="pre_established"}'] == 1
    assert s["mptcp_proxy_handover_gap_seconds_count"] == 3
    assert s['mptcp_proxy_handover_gap_seconds_bucket{le="0.01"}'] == 1
    assert s['mptcp_proxy_handover_gap_seconds_bucket{le="0.2"}'] == 2
    assert s['mptcp_proxy_handover_gap_seconds_bucket{le="+Inf"}'] == 3
    assert abs(s["mptcp_proxy_handover_gap_seconds_sum"] - 1.084) < 1e-9
    assert s["mptcp_proxy_connection_setup_seconds_count"] == 1
    assert s['mptcp_proxy_events_total{type="ESTABLISHED"}'] == 2
    assert s['mptcp_proxy_events_total{type="RESUMED"}'] == 3
    build = [k for k in s if k.startswith("mptcp_proxy_build_info{")]
    assert len(build) == 1 and 'backend="fnfqueue"' in build[0] and "version=" in build[0]
    assert "process_resident_memory_bytes" in s
    assert not any("_created" in k for k in s)
    # no label names a connection
    assert not re.search(r'\{[^}]*(conn|token|sport|saddr)=', text)


def test_metrics_snapshot_from_another_thread_goes_through_the_loop():
    import asyncio
    import threading

    proxy = FakeProxy()
    loop = asyncio.new_event_loop()
    ran_in: list[int] = []
    m = Metrics(proxy, loop=loop)
    real = m.snapshot

    def spy():
        ran_in.append(threading.get_ident())
        return real()
    m.snapshot = spy
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        m.loop_thread = t.ident  # as in the daemon: the loop owns the proxy
        out: list[str] = []
        scraper = threading.Thread(target=lambda: out.append(m.text()))
        scraper.start()
        scraper.join(10)
        assert out and "mptcp_proxy_connections" in out[0]
        assert ran_in == [t.ident]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


@pytest.mark.parametrize("text, addr", [
    ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9464", ("::1", 9464)), ("localhost:80", ("localhost", 80)),
])
def test_metrics_address(text, addr):
    assert metrics_address(text) == addr


@pytest.mark.parametrize("text, pattern", [
    ("0", "out of range"), ("70000", "out of range"), ("::1:9464", "brackets"),
    ("[::1]", r"\[ADDR\]:PORT"), ("host.example:80", "not an IP address"), ("x", "port"),
])
def test_metrics_address_errors(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        metrics_address(text)


# ---------------------------------------------------------------- capabilities
@pytest.mark.parametrize("capeff, missing", [
    (0x3000, []), ((1 << 41) - 1, []), (0x1000, ["CAP_NET_RAW"]),
    (0x2000, ["CAP_NET_ADMIN"]), (0, ["CAP_NET_ADMIN", "CAP_NET_RAW"]),
])
def test_missing_capabilities(capeff, missing):
    assert service.missing_capabilities(capeff) == missing


def test_effective_capabilities_read_from_status(tmp_path):
    p = tmp_path / "status"
    p.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n")
    assert service.effective_capabilities(str(p)) == 0x3000
    assert service.effective_capabilities(str(tmp_path / "none")) == 0


# ---------------------------------------------------------------- the unit
UNIT = service.data_text("mptcp-proxy.service")


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_least_privilege():
    s = unit_settings(UNIT)
    assert s["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert s["DynamicUser"] == ["yes"] and "User" not in s
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces",
                "RestrictSUIDSGID", "LockPersonality"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "ProtectKernelTunables" not in s  # rp_filter is written at run time
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert s["RuntimeDirectory"] == ["mptcp-proxy"]
    # the control socket's default lives in the RuntimeDirectory
    from mptcp_proxy.ctlproto import DEFAULT_CONTROL
    assert DEFAULT_CONTROL.startswith("/run/mptcp-proxy/")
    start = s["ExecStart"][0].split()
    assert start[1:3] == ["--config", "/etc/mptcp-proxy/mptcp-proxy.conf"]
    assert "--log=journal" in start
    # clean-up after a crash runs with the same configuration as the daemon
    assert s["ExecStopPost"][0].split() == [start[0], "--config", start[2], "--cleanup"]
    assert "RestartPreventExitStatus" in s and s["RestartPreventExitStatus"][0].split() == [
        "2", "3"]


def test_render_unit_binary_and_group():
    unit = service.render_unit("/opt/mptcp-proxy/bin/mptcp-proxy", "netadmin")
    s = unit_settings(unit)
    assert s["ExecStart"][0].startswith("/opt/mptcp-proxy/bin/mptcp-proxy --config")
    assert s["ExecStopPost"][0].startswith("/opt/mptcp-proxy/bin/mptcp-proxy --config")
    assert s["SupplementaryGroups"] == ["netadmin"]
    assert "SupplementaryGroups" not in unit_settings(service.render_unit("/x", None))


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        msg = "systemd-analyze not installed (tools/bootstrap installs the systemd package)"
        if STRICT:
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def test_unit_passes_systemd_analyze_verify(tmp_path):
    exe = _systemd_analyze()
    binary = Path(sys.executable).with_name("mptcp-proxy")
    if not binary.exists():  # the console script of the checkout's venv
        binary = Path(sys.executable)
    unit = tmp_path / "mptcp-proxy.service"
    unit.write_text(service.render_unit(str(binary), None))
    man8 = tmp_path / "man" / "man8"  # Documentation=man:...: verify looks the pages up
    man8.mkdir(parents=True)
    root = Path(service.__file__).resolve().parent.parent
    for page in ("mptcp-proxy.8", "mptcpctl.8"):
        shutil.copy(root / "man" / page, man8 / page)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_COLOR="0")
    cp = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True,
                        timeout=60, env=env)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    # and the same check catches a broken unit
    unit.write_text(service.render_unit(str(binary), None).replace("Type=notify",
                                                                   "Type=sometimes"))
    cp = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True,
                        timeout=60, env=env)
    assert "Failed to parse service type" in cp.stderr, cp.stderr


def test_unit_exposure_is_low(tmp_path):
    exe = _systemd_analyze()
    unit = tmp_path / "mptcp-proxy.service"
    unit.write_text(service.render_unit("/usr/bin/true", None))
    cp = subprocess.run([exe, "security", "--offline=true", str(unit)], capture_output=True,
                        text=True, timeout=60)
    m = re.search(r"Overall exposure level for mptcp-proxy.service: ([\d.]+)", cp.stdout)
    assert m, cp.stdout[-500:] + cp.stderr
    assert float(m.group(1)) <= 3.0, cp.stdout  # "OK" on systemd's 0-10 scale


# ---------------------------------------------------------------- install-service
def test_install_service_into_a_root(tmp_path, capsys):
    root = tmp_path / "root"
    binary = tmp_path / "venv" / "bin" / "mptcp-proxy"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (binary.parent / "mptcpctl").write_text("#!/bin/sh\n")
    group = __import__("grp").getgrgid(os.getgid()).gr_name
    rc = service.install_main(["--root", str(root), "--bin", str(binary), "--group", group])
    assert rc == 0, capsys.readouterr().err
    unit = (root / "etc/systemd/system/mptcp-proxy.service").read_text()
    assert unit_settings(unit)["ExecStart"][0].startswith(f"{binary} --config")
    assert unit_settings(unit)["SupplementaryGroups"] == [group]
    conf = (root / "etc/mptcp-proxy/mptcp-proxy.conf").read_text()
    assert conf.endswith(f'control-group = "{group}"\n')
    link = root / "usr/local/bin/mptcpctl"
    assert link.is_symlink() and link.resolve() == (binary.parent / "mptcpctl").resolve()
    # a second run keeps the administrator's configuration
    (root / "etc/mptcp-proxy/mptcp-proxy.conf").write_text('iface = ["eth0"]\n')
    assert service.install_main(["--root", str(root), "--bin", str(binary)]) == 0
    assert (root / "etc/mptcp-proxy/mptcp-proxy.conf").read_text() == 'iface = ["eth0"]\n'
    assert "kept" in capsys.readouterr().out


def test_install_service_unknown_group(tmp_path, capsys):
    rc = service.install_main(["--root", str(tmp_path), "--bin", "/x/mptcp-proxy",
                               "--group", "no-such-group-xyz"])
    assert rc == 2 and "no group 'no-such-group-xyz'" in capsys.readouterr().err
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------- debug-dump
def test_debug_dump_without_a_daemon(tmp_path, monkeypatch):
    """The bundle is still written when the daemon cannot be asked, and says why."""
    import tarfile

    from mptcp_proxy import debugdump
    from mptcp_proxy.ctl import Client
    monkeypatch.setattr(debugdump, "_run", lambda argv: f"$ {' '.join(argv)}\n(skipped)\n")
    out = tmp_path / "b.tar.gz"
    path, names = debugdump.write_bundle(Client(str(tmp_path / "none.sock"), 1.0), str(out))
    assert path == str(out) and oct(out.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()
                 for m in tar.getmembers()}
    assert set(files) == set(names) == {"README.txt", "versions.txt", "sysctl.txt", "ip.txt",
                                        "netfilter.txt", "kernel.txt", "daemon.txt"}
    assert "daemon not running" in files["daemon.txt"]
    assert f"mptcp-proxy {__import__('mptcp_proxy').__version__}" in files["versions.txt"]
    assert re.search(r"^net\.mptcp\.\w+ = ", files["sysctl.txt"], re.M) or not Path(
        "/proc/sys/net/mptcp").exists()
