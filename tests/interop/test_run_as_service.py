"""Running the daemon as a service, in network namespaces against Linux native MPTCP:
the metrics endpoint scraped during a transfer, ``mptcpctl monitor`` seeing a
handover's events in order, ``mptcpctl debug-dump`` without key material, the daemon as
an unprivileged user with only CAP_NET_ADMIN and CAP_NET_RAW (and the control socket
open to its group only), systemd's readiness protocol, the configuration file with a
SIGHUP reload, structured journal fields, and a second daemon that must not take the
first one's control socket.

Each bed: client links c0/c1 at 20 Mbit/s and 10 ms one way, so a 12 MB download lasts
about 5 s: long enough to act on it while it runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import mptcp_proxy
from mptcp_proxy.core.counters import COUNTERS
from netns import Topology, wait_until
from netns.capture import capture
from netns.emulation import Emulation
from netns.peer import run_client, start_server
from netns.proxyd import ProxyHandle, _py, count_proxy_rules
from netns.topology import REPO_ROOT

pytestmark = pytest.mark.interop

MB = 1_000_000
PORT = 5001
RATE_MBIT = 20
DELAY_MS = 10
NOBODY = 65534
CAPS = ["--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"]
# This machine's interpreter lives under /root (pyenv); setuptools' distutils shim, which
# python-iptables imports, stats a path there and gets EACCES as an unprivileged user.
# The standard library's distutils treats that as "absent". Nothing to do with the proxy.
UNPRIV_ENV = {"SETUPTOOLS_USE_DISTUTILS": "stdlib"}
# What the daemon imports from the virtualenv: copied for the unprivileged runs, since the
# checkout itself may sit in a directory only root can read (as an installed package
# would be readable by its service user)
RUNTIME_MODULES = ("pyroute2", "iptc", "fnfqueue", "netfilterqueue", "cffi", "cysystemd",
                   "cysystemd.libs", "prometheus_client")
RUNTIME_GLOBS = ("_cffi_backend*.so", "libxtwrapper*.so")


# ------------------------------------------------------------------ beds and helpers

@pytest.fixture
def bed(make_topology) -> Iterator[tuple[Topology, Any]]:
    topo = make_topology()
    with Emulation(topo) as emu:
        for link in range(len(topo.client_ifaces)):
            emu.rate(link, RATE_MBIT)
            emu.delay(link, DELAY_MS)
        srv = start_server(topo, PORT, mptcp=True, timeout=30)
        yield topo, srv


@pytest.fixture(scope="module")
def unpriv_runtime() -> Iterator[tuple[str, dict]]:
    """``(interpreter, env)`` for running the daemon as an unprivileged user: the base
    interpreter and a world-readable copy of the package and of what it imports from the
    virtualenv (PYTHONPATH), whatever the permissions of the checkout's directory."""
    import shutil
    import sysconfig
    site = Path(sysconfig.get_paths()["purelib"])
    d = Path(tempfile.mkdtemp(prefix="mpsvc-rt-", dir="/tmp"))
    try:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / "mptcp_proxy", d / "mptcp_proxy", ignore=ignore)
        for name in RUNTIME_MODULES:
            if (site / name).is_dir():
                shutil.copytree(site / name, d / name, ignore=ignore)
        for pattern in RUNTIME_GLOBS:
            for f in site.glob(pattern):
                shutil.copy2(f, d / f.name)
        for root, dirs, files in os.walk(d):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644 if not f.endswith(".so") else 0o755)
        env = dict(os.environ, PYTHONPATH=str(d), PYTHONNOUSERSITE="1", **UNPRIV_ENV)
        yield os.path.realpath(_py()), env
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory any user may enter (control sockets, notify sockets, archives)."""
    d = Path(tempfile.mkdtemp(prefix="mpsvc-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


class Download:
    """One proxied download in a thread (``run_client``), after a 100 kB request (the
    client's first data completes MPTCP's handshake, RFC 8684 §3.1: the proxy opens its
    joins once the connection is fully established); ``result()`` joins it."""

    def __init__(self, topo: Topology, size: int, seed: int, port: int = PORT,
                 addr: str | None = None, request: int = 100_000) -> None:
        self.rec: dict | None = None
        self.exc: BaseException | None = None

        def run() -> None:
            try:
                (self.rec,) = run_client(topo, addr or topo.server_addr, port,
                                         upload=request, download=size, seed=seed,
                                         timeout=30)
            except BaseException as e:  # reported by result()
                self.exc = e
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout: float = 90) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the download did not end"
        if self.exc is not None:
            raise self.exc
        assert self.rec is not None and self.rec["error"] is None, self.rec
        return self.rec


def start_daemon(topo: Topology, argv: list[str], control: str, ns: str | None = None,
                 pre: list[str] = (), env: dict | None = None,
                 ready: bool = True, py: str | None = None) -> ProxyHandle:
    """``[pre...] python -m mptcp_proxy.daemon ARGV`` in ``ns`` (default: the client);
    ``py``/``env``: another interpreter and environment (an unprivileged run's)."""
    ns = ns or topo.client
    full = [*pre, py or _py(), "-m", "mptcp_proxy.daemon", *argv]
    e = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    e.update(env or {})
    proc = topo.popen(ns, full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                      env=e)
    h = ProxyHandle(topo, ns, proc, control)
    if ready:
        try:
            h.wait_ready()
        except Exception:
            h.stop()
            raise
    return h


@pytest.fixture
def daemons() -> Iterator[list[ProxyHandle]]:
    """Handles registered here are stopped at teardown (their logs printed on failure)."""
    hs: list[ProxyHandle] = []
    yield hs
    for h in hs:
        try:
            h.stop()
        except Exception as exc:
            print(f"--- stopping a daemon failed: {exc!r}")
        print(f"--- daemon in {h.ns}: exit {h.exit_code}, rules left {h.rules_left}; log:")
        print("\n".join(h.log[-60:]))


def scrape(topo: Topology, port: int) -> str:
    cp = topo.run(topo.client, ["curl", "-sS", "--max-time", "5",
                                f"http://127.0.0.1:{port}/metrics"], check=False)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_log(h: ProxyHandle, pattern: str, timeout: float = 10.0) -> str:
    rx = re.compile(pattern)
    found = wait_until(lambda: next((ln for ln in list(h.log) if rx.search(ln)), None),
                       timeout)
    assert found, f"no log line matching {pattern!r}:\n" + "\n".join(h.log[-30:])
    return found


# ------------------------------------------------------------------ metrics

def test_metrics_scraped_during_a_transfer(bed, run_proxy) -> None:
    topo, srv = bed
    px = run_proxy(topo, extra=["--subflows", "manual", "--metrics", "9464"])
    before = samples(scrape(topo, 9464))
    dl = Download(topo, 12 * MB, seed=301)

    def established() -> dict | None:
        s = samples(scrape(topo, 9464))
        return s if s['mptcp_proxy_connections{state="established"}'] == 1 else None
    during1 = wait_until(established, 10, 0.2)
    assert during1, "the scrape never showed the established connection"
    wait_until(lambda: samples(scrape(topo, 9464))["mptcp_proxy_DSSRx_total"]
               > during1["mptcp_proxy_DSSRx_total"] + 100, 10, 0.2)
    during2 = samples(scrape(topo, 9464))
    assert dl.running, "the transfer ended before the second scrape"
    rec = dl.result()
    srv.wait(1, timeout=30)
    text = scrape(topo, 9464)
    after = samples(text)

    # counters rise while the transfer runs, and keep the kernel's names with _total
    assert before["mptcp_proxy_DSSRx_total"] == 0
    assert during1["mptcp_proxy_DSSRx_total"] < during2["mptcp_proxy_DSSRx_total"] \
        <= after["mptcp_proxy_DSSRx_total"]
    assert during2["mptcp_proxy_packets_total"] > during1["mptcp_proxy_packets_total"]
    assert after["mptcp_proxy_MPCapableSYNACKRX_total"] == 1
    for name, help_ in COUNTERS.items():
        assert f"# HELP mptcp_proxy_{name}_total {help_}\n" in text
    # gauges and the setup-time histogram
    assert after['mptcp_proxy_connections{state="established"}'] == 0
    assert after["mptcp_proxy_connection_setup_seconds_count"] == 1
    setup = after["mptcp_proxy_connection_setup_seconds_sum"]
    assert 0.02 <= setup < 2.0, setup  # one RTT: 2 x 10 ms plus the queues
    build = [k for k in after if k.startswith("mptcp_proxy_build_info{")]
    assert build and f'version="{mptcp_proxy.__version__}"' in build[0]
    # the same text without a listener, and the same values as mptcpctl stats
    stats = px.stats()
    prom = samples(px.ctl_raw("stats", "--prometheus").stdout)
    for name in ("DSSRx", "DSSTx", "DataAckTx", "MPCapableSYNTX"):
        assert prom[f"mptcp_proxy_{name}_total"] == stats[name] \
            == after[f"mptcp_proxy_{name}_total"], name
    assert rec["recv_sha256"]
    # off by default, loopback when on: nothing listens on the client's own addresses
    cp = topo.run(topo.client, ["curl", "-sS", "--max-time", "3",
                                f"http://{topo.client_addrs[0]}:9464/metrics"], check=False)
    assert cp.returncode != 0


# ------------------------------------------------------------------ monitor

def test_monitor_sees_a_handover_in_order(bed, run_proxy) -> None:
    topo, srv = bed
    px = run_proxy(topo, extra=["--subflows", "backup"])
    mon = topo.popen(topo.client, [_py(), "-m", "mptcp_proxy.ctl", "--socket", px.control,
                                   "--json", "monitor"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: [lines.append(json.loads(ln))
                                              for ln in mon.stdout], daemon=True)
    reader.start()
    human = topo.popen(topo.client, [_py(), "-m", "mptcp_proxy.ctl", "--socket", px.control,
                                     "monitor"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    time.sleep(0.5)  # both subscribed (a missed event would show below as absent)
    dl = Download(topo, 12 * MB, seed=302)
    conn = px.wait_connection("established", timeout=10)
    cid = conn["id"]
    assert wait_until(lambda: any(e["type"] == "SF_ESTABLISHED" and e["conn"] == cid
                                  for e in list(lines)), 10), lines
    time.sleep(1.0)
    px.ctl("handover", str(cid), "--to", "c1")
    assert wait_until(lambda: any(e["type"] == "RESUMED" for e in list(lines)), 10), lines
    assert dl.running, "the download ended before the handover resumed"
    dl.result()
    assert wait_until(lambda: any(e["type"] == "CLOSED" for e in list(lines)), 20), lines
    for p in (mon, human):
        os.killpg(p.pid, signal.SIGINT)
    assert mon.wait(10) == 0 and human.wait(10) == 0
    reader.join(5)
    human_out = human.stdout.read()

    mine = [e for e in lines if e["conn"] == cid]
    kinds = [e["type"] for e in mine]
    order = ["CREATED", "ESTABLISHED", "SF_ESTABLISHED", "HANDOVER", "RESUMED", "CLOSED"]
    idx = [kinds.index(k) for k in order]
    assert idx == sorted(idx), kinds
    first = mine[0]
    assert first["saddr"] == topo.client_addrs[0] and first["daddr"] == topo.server_addr
    assert first["dport"] == PORT and re.fullmatch(r"[0-9a-f]{8}", first["token"])
    sf = mine[kinds.index("SF_ESTABLISHED")]
    assert (sf["subflow"], sf["iface"], sf["backup"]) == (1, "c1", 1)
    ho = mine[kinds.index("HANDOVER")]
    assert (ho["subflow"], ho["from_subflow"]) == (1, 0)
    gap = mine[kinds.index("RESUMED")]["elapsed"]
    assert 0 < gap < 2.0, gap
    assert all(isinstance(e["wall"], float) and abs(e["wall"] - time.time()) < 120
               for e in mine)
    # the human monitor printed the same events, one line each, like ip mptcp monitor
    hl = [ln for ln in human_out.splitlines() if f"conn={cid} " in ln + " "]
    assert [re.search(r"\[ *([A-Z_]+)\]", ln).group(1) for ln in hl] == kinds
    handover_line = hl[kinds.index("HANDOVER")]
    assert re.search(r"\[      HANDOVER\] token=[0-9a-f]{8} remid=0 locid=2 saddr4=",
                     handover_line), handover_line
    # the handover gap reached the histogram too
    prom = samples(px.ctl_raw("stats", "--prometheus").stdout)
    assert prom["mptcp_proxy_handover_gap_seconds_count"] == kinds.count("RESUMED")
    assert prom['mptcp_proxy_events_total{type="HANDOVER"}'] == kinds.count("HANDOVER")


# ------------------------------------------------------------------ debug-dump

def _keys_from_capture(pcap: str) -> set[int]:
    cp = subprocess.run(["tshark", "-n", "-r", pcap, "-Y", "tcp.options.mptcp.sendkey",
                         "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
                         "-e", "tcp.options.mptcp.sendkey", "-e", "tcp.options.mptcp.recvkey"],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return {int(v) for v in re.split(r"[\s,]+", cp.stdout) if v.strip()}


def test_debug_dump_is_readable_and_holds_no_key(bed, run_proxy, scratch) -> None:
    topo, srv = bed
    px = run_proxy(topo, extra=["--subflows", "backup", "--log-level", "debug"])
    pcap = str(scratch / "c0.pcap")
    with capture(topo, "client", "c0", pcap, filter=f"tcp port {PORT}"):
        dl = Download(topo, 12 * MB, seed=303)
        cid = px.wait_connection("established", timeout=10)["id"]
        out = scratch / "bundle.tar.gz"
        cp = px.ctl_raw("debug-dump", "--out", str(out), timeout=60)
        assert cp.returncode == 0, cp.stderr
        assert dl.running, "the download ended before the dump: nothing live in it"
        dl.result()
    keys = _keys_from_capture(pcap)
    assert len(keys) >= 2, "the capture shows no MP_CAPABLE keys"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()
                   for m in tar.getmembers() if m.isfile()}
    for name in ("README.txt", "versions.txt", "sysctl.txt", "ip.txt", "netfilter.txt",
                 "kernel.txt", "status.json", "connections.json", "subflows.json",
                 "stats.json", "metrics.txt", "log.txt"):
        assert members.get(name), f"{name} missing or empty"
    assert "daemon.txt" not in members
    assert f"mptcp-proxy {mptcp_proxy.__version__}" in members["versions.txt"]
    assert "net.mptcp.enabled = 1" in members["sysctl.txt"]
    assert re.search(r"net\.ipv4\.conf\.c0\.rp_filter = \d", members["sysctl.txt"])
    assert "-A MPTCP_PROXY_OUT_4700 -o c0" in members["netfilter.txt"]
    assert topo.client_addrs[0] in members["ip.txt"]
    conns = json.loads(members["connections.json"])
    assert [c["id"] for c in conns] == [cid]
    assert [s["iface"] for s in json.loads(members["subflows.json"])[str(cid)]] == ["c0", "c1"]
    assert json.loads(members["status.json"])["version"] == mptcp_proxy.__version__
    assert json.loads(members["stats.json"])["MPCapableSYNACKRX"] == 1
    assert "mptcp_proxy_DSSRx_total" in members["metrics.txt"]
    assert "[   ESTABLISHED] token=" in members["log.txt"]
    # no key in any form: decimal, hex (any case, with or without 0x, zero-padded)
    blob = "\n".join(members.values()).lower()
    for key in keys:
        for form in (str(key), f"{key:x}", f"{key:016x}"):
            assert form not in blob, f"key material {form} in the bundle"
        assert key.to_bytes(8, "big").hex() not in blob


# ------------------------------------------------------------------ unprivileged daemon

def test_runs_unprivileged_with_two_capabilities(bed, daemons, scratch,
                                                unpriv_runtime) -> None:
    topo, srv = bed
    py, unpriv_env = unpriv_runtime
    sockdir = scratch / "run"
    sockdir.mkdir()
    os.chown(sockdir, NOBODY, NOBODY)
    control = str(sockdir / "control.sock")
    group = 4242
    daemon_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                   f"--groups={group}", *CAPS]
    # its own runtime directory for the control socket and the state journal (as systemd's
    # RuntimeDirectory gives the unit's user)
    argv = ["--iface", "c0", "--iface", "c1", "--subflows", "manual", "--control", control,
            "--control-group", str(group), "--state-dir", str(sockdir)]
    px = start_daemon(topo, argv, control, pre=daemon_user, env=unpriv_env, py=py)
    daemons.append(px)
    # it really is unprivileged, with exactly the two capabilities
    status = Path(f"/proc/{px.proc.pid}/status").read_text()
    fields = dict(ln.split(":\t", 1) for ln in status.splitlines() if ":\t" in ln)
    assert fields["Uid"].split()[:2] == [str(NOBODY)] * 2
    assert int(fields["CapEff"], 16) == (1 << 12) | (1 << 13)
    st = os.stat(control)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, group, 0o660)

    # it converts: rules, queues, raw sockets and a join all work without uid 0
    (cli,) = run_client(topo, topo.server_addr, PORT, upload=MB, download=MB, seed=304)
    (rec,) = srv.wait(1, timeout=30)
    assert cli["error"] is None and rec["is_mptcp"] and rec["fallback"] is False, rec
    assert cli["sent_sha256"] == rec["recv_sha256"]
    assert px.stats()["MPCapableSYNACKRX"] == 1

    # the control socket: root yes (px.stats above), the group yes, anyone else no
    def ctl_as(uid: int, groups: str) -> subprocess.CompletedProcess:
        return topo.run(topo.client, ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                      groups, py, "-m", "mptcp_proxy.ctl", "--socket",
                                      control, "--json", "status"], check=False,
                        env=unpriv_env)
    member = ctl_as(12345, f"--groups={group}")
    assert member.returncode == 0 and json.loads(member.stdout)["connections"] >= 0, \
        member.stderr
    other = ctl_as(12346, "--clear-groups")
    assert other.returncode == 6 and "permission denied" in other.stderr, other.stderr

    assert px.stop() == 0 and px.rules_left == 0
    assert not os.path.exists(control)


def test_missing_capability_is_exit_3(bed, scratch, unpriv_runtime) -> None:
    topo, _srv = bed
    py, unpriv_env = unpriv_runtime
    control = str(scratch / "c.sock")
    only_admin = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                  "--inh-caps=+net_admin", "--ambient-caps=+net_admin"]
    cp = topo.run(topo.client, [*only_admin, py, "-m", "mptcp_proxy.daemon", "--iface",
                                "c0", "--control", control], check=False, env=unpriv_env)
    assert cp.returncode == 3, (cp.stdout, cp.stderr)
    (err,) = [ln for ln in cp.stderr.splitlines() if ln.startswith("mptcp-proxy: error:")]
    assert "missing CAP_NET_RAW" in err and "CAP_NET_ADMIN and CAP_NET_RAW" in err
    assert "ready" not in cp.stdout and count_proxy_rules(topo, topo.client) == 0


# ------------------------------------------------------------------ systemd notify

def test_readiness_reload_and_stop_reach_systemd(bed, daemons, scratch) -> None:
    topo, _srv = bed
    path = str(scratch / "notify")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(20)
    control = str(scratch / "c.sock")
    try:
        px = start_daemon(topo, ["--iface", "c0", "--control", control], control,
                          env={"NOTIFY_SOCKET": path}, ready=False)
        daemons.append(px)
        msgs = [rx.recv(4096).decode()]
        rules_at_ready = count_proxy_rules(topo, topo.client)
        msgs.append(rx.recv(4096).decode())
        assert msgs[0] == "READY=1" and msgs[1].startswith("STATUS=converting TCP on c0")
        assert rules_at_ready > 0  # ready means: the rules are in place
        os.killpg(px.proc.pid, signal.SIGHUP)
        assert [rx.recv(4096).decode() for _ in range(2)] == ["RELOADING=1", "READY=1"]
        px.stop()
        assert rx.recv(4096).decode() == "STOPPING=1"
        assert px.exit_code == 0
    finally:
        rx.close()


# ------------------------------------------------------------------ configuration file

def test_config_file_and_sighup_reload(bed, daemons, scratch) -> None:
    topo, srv = bed
    srv2 = start_server(topo, PORT + 1, mptcp=True, timeout=30)
    conf = scratch / "mptcp-proxy.conf"
    conf.write_text(textwrap.dedent(f"""\
        # as an administrator would write it
        iface = ["c0", "c1"]
        port = [{PORT}]
        subflows = "manual"
        """))
    control = str(scratch / "c.sock")
    px = start_daemon(topo, ["--config", str(conf), "--control", control], control)
    daemons.append(px)
    assert "ports=5001 " in px.ready_line
    st = px.ctl("status")
    assert (st["config"], st["subflows"], st["ports"]) == (str(conf), "manual", [PORT])

    def fetch(port: int, srv_, n: int, seed: int) -> dict:
        (cli,) = run_client(topo, topo.server_addr, port, upload=100_000, download=MB,
                            seed=seed)
        rec = srv_.wait(n, timeout=30)[n - 1]
        assert cli["error"] is None and cli["recv_sha256"] == rec["sent_sha256"]
        return rec

    assert fetch(PORT + 1, srv2, 1, 305)["is_mptcp"] is False  # not in port = [...]
    assert px.ctl("status")["unconverted"]["port_filter"] >= 1
    assert fetch(PORT, srv, 1, 309)["is_mptcp"] is True
    assert px.stats()["MPJoinSynTx"] == 0  # subflows = "manual"

    conf.write_text(textwrap.dedent(f"""\
        iface = ["c0", "c1"]
        port = [{PORT}, {PORT + 1}]
        subflows = "backup"
        checksum = true
        """))
    os.killpg(px.proc.pid, signal.SIGHUP)
    wait_log(px, r"SIGHUP: port = \[5001, 5002\]")
    wait_log(px, r"SIGHUP: checksum changed in .*: takes effect after a restart")
    st = px.ctl("status")
    assert (st["subflows"], st["ports"], st["checksum"]) == ("backup", [PORT, PORT + 1], False)
    assert fetch(PORT + 1, srv2, 2, 306)["is_mptcp"] is True  # converted after the reload
    assert px.stats()["MPJoinSynTx"] >= 1  # and it got its backup join (subflows = "backup")

    # a broken file changes nothing: the error names the file and the line
    conf.write_text(f'iface = ["c0", "c1"]\nport = [{PORT}]\nsubflows = "often"\n')
    os.killpg(px.proc.pid, signal.SIGHUP)
    wait_log(px, re.escape(f"{conf}:3: subflows: invalid choice 'often'") +
             r".*keeping the running configuration")
    assert px.ctl("status")["ports"] == [PORT, PORT + 1]
    assert fetch(PORT + 1, srv2, 3, 307)["is_mptcp"] is True
    assert px.proc.poll() is None


def test_bad_config_file_at_start_is_exit_2(bed, scratch) -> None:
    topo, _srv = bed
    conf = scratch / "bad.conf"
    conf.write_text('iface = ["c0"]\n\nqueues = 4800\n')
    cp = topo.run(topo.client, [_py(), "-m", "mptcp_proxy.daemon", "--config", str(conf),
                                "--control", str(scratch / "c.sock")], check=False,
                  env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.strip() == (f"mptcp-proxy: error: {conf}:3: unknown key 'queues' "
                                 "(did you mean queue?)")
    assert count_proxy_rules(topo, topo.client) == 0


# ------------------------------------------------------------------ journal

JOURNAL_HELPER = r"""
import json, os, socket, subprocess, sys, threading, time
os.makedirs("/run/systemd/journal", exist_ok=True)
rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind("/run/systemd/journal/socket")
records, closed = [], threading.Event()


def drain():  # as journald does: always reading (a full queue would block the sender)
    while True:
        data = rx.recv(65536).decode(errors="replace")
        rec = dict(ln.split("=", 1) for ln in data.splitlines() if "=" in ln)
        records.append(rec)
        if rec.get("MPTCP_EVENT") == "CLOSED":
            closed.set()


threading.Thread(target=drain, daemon=True).start()
daemon = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(json.dumps({"ready": daemon.stdout.readline().strip()}), flush=True)
closed.wait(40)
daemon.terminate()
daemon.wait(20)
time.sleep(0.2)
print(json.dumps({"records": list(records), "exit": daemon.returncode}), flush=True)
"""


def test_journal_records_carry_structured_fields(bed, scratch) -> None:
    """--log=journal against a journal socket of the test's own: the daemon and the
    listener share a private mount namespace with a tmpfs on /run/systemd."""
    topo, srv = bed
    helper = scratch / "journal_helper.py"
    helper.write_text(JOURNAL_HELPER)
    control = str(scratch / "c.sock")
    daemon = [_py(), "-m", "mptcp_proxy.daemon", "--iface", "c0", "--iface", "c1",
              "--control", control, "--log=journal", "--log-level", "debug"]
    shell = "mount -t tmpfs none /run/systemd && exec " + " ".join(
        [_py(), str(helper), *daemon])
    proc = topo.popen(topo.client, ["unshare", "--mount", "--propagation", "private", "sh",
                                    "-c", shell], stdout=subprocess.PIPE, text=True,
                      env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        first = json.loads(proc.stdout.readline())
        assert "ready" in first["ready"], first
        (cli,) = run_client(topo, topo.server_addr, PORT, upload=100_000, download=MB,
                            seed=308)
        assert cli["error"] is None
        last = json.loads(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert last["exit"] == 0
    events = [r for r in last["records"] if "MPTCP_EVENT" in r]
    kinds = [r["MPTCP_EVENT"] for r in events]
    assert kinds[0] == "CREATED" and "ESTABLISHED" in kinds and kinds[-1] == "CLOSED", kinds
    est = events[kinds.index("ESTABLISHED")]
    assert est["SYSLOG_IDENTIFIER"] == "mptcp-proxy" and est["PRIORITY"] == "7"  # debug
    assert re.fullmatch(r"[0-9a-f]{8}", est["MPTCP_TOKEN"]) and est["MPTCP_CONN"] == "1"
    assert (est["MPTCP_SADDR"], est["MPTCP_DADDR"], est["MPTCP_DPORT"]) == (
        topo.client_addrs[0], topo.server_addr, str(PORT))
    assert est["MESSAGE"].startswith("[   ESTABLISHED] token=" + est["MPTCP_TOKEN"])
    sf = [r for r in events if r["MPTCP_EVENT"] == "SF_ESTABLISHED"]
    assert sf and sf[0]["PRIORITY"] == "6" and sf[0]["MPTCP_SUBFLOW"] == "1"  # info


# ------------------------------------------------------------------ control socket owner

def test_second_daemon_leaves_the_live_socket_alone(bed, daemons, scratch) -> None:
    """Issue seen in the field: a second daemon with the same control path (another
    namespace: /run is shared) failed as it should, but deleted the first one's socket."""
    topo, _srv = bed
    control = str(scratch / "shared.sock")
    first = start_daemon(topo, ["--iface", "c0", "--control", control], control)
    daemons.append(first)
    inode = os.stat(control).st_ino
    cp = topo.run(topo.server, [_py(), "-m", "mptcp_proxy.daemon", "--iface",
                                topo.server_ifaces[0], "--control", control], check=False,
                  timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert cp.returncode == 1, cp.stderr
    assert f"control socket {control}: another daemon is listening on it" in cp.stderr
    assert count_proxy_rules(topo, topo.server) == 0  # it removed its own rules
    assert os.stat(control).st_ino == inode
    assert first.ctl("status")["pid"] == first.proc.pid
    # a stale socket (its daemon killed) is replaced by the next start
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert os.path.exists(control)
    second = start_daemon(topo, ["--iface", "c0", "--control", control], control)
    daemons.append(second)
    assert any("removing stale control socket" in ln for ln in second.log), second.log
    assert second.ctl("status")["pid"] == second.proc.pid
    assert second.stop() == 0 and not os.path.exists(control)


# ------------------------------------------------------------------ native MPTCP sockets

def test_native_mptcp_socket_is_left_alone(bed, run_proxy) -> None:
    """A local socket that speaks MPTCP itself: its SYN already carries MP_CAPABLE, so
    the proxy must not convert it again; status counts it as already_mptcp."""
    topo, srv = bed
    px = run_proxy(topo, extra=["--subflows", "manual"])
    (cli,) = run_client(topo, topo.server_addr, PORT, upload=MB, download=MB, seed=310,
                        mptcp=True)
    (rec,) = srv.wait(1, timeout=30)
    assert cli["error"] is None and rec["error"] is None, (cli, rec)
    assert cli["sent_sha256"] == rec["recv_sha256"]
    assert rec["is_mptcp"] and rec["fallback"] is False, rec  # native end to end
    st = px.ctl("status")
    assert st["unconverted"]["already_mptcp"] >= 1, st["unconverted"]
    assert px.connections() == [] and px.stats()["MPCapableSYNTX"] == 0
