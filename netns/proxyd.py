"""Run ``mptcp-proxy`` inside a test-bed namespace and talk to it with ``mptcpctl``.

Library::

    with start_proxy(topo, ifaces=["c0", "c1"], extra=["--subflows", "manual"]) as px:
        px.ctl("connections")            # parsed JSON result of mptcpctl --json
        px.stats()                        # the daemon's counters
        px.query("subflows", conn=0)      # a control request in-process (for polling)
    # on exit: SIGTERM, exit code 0 expected, no MPTCP_PROXY rule left (px.exit_code,
    # px.rules_left)

The daemon is started through ``Topology.popen`` (so the bed kills it if a test dies)
with the checkout's own interpreter (``python -m mptcp_proxy.daemon``), which needs no
installed console script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent


def _py() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class ProxyError(RuntimeError):
    pass


class ProxyHandle:
    """A running daemon in ``ns``; collects its stderr log lines."""

    def __init__(self, topo: Any, ns: str, proc: subprocess.Popen, control: str) -> None:
        self.topo = topo
        self.ns = ns
        self.proc = proc
        self.control = control
        self.log: list[str] = []
        self.ready_line = ""
        self.exit_code: int | None = None
        self.rules_left: int | None = None
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._err.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    time.sleep(0.1)
                    raise ProxyError(f"mptcp-proxy exited {self.proc.returncode}: "
                                     + "\n".join(self.log[-20:]))
                continue
            if "ready" in line:
                self.ready_line = line.strip()
                return self.ready_line
        raise ProxyError("mptcp-proxy did not print ready in time:\n" + "\n".join(self.log[-20:]))

    def ctl_raw(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Run ``mptcpctl --socket <control> ARGS`` in the namespace."""
        argv = [_py(), "-m", "mptcp_proxy.ctl", "--socket", self.control, *args]
        return self.topo.run(self.ns, argv, check=False, timeout=timeout)

    def ctl(self, *args: str, timeout: float = 10.0) -> Any:
        """``mptcpctl --json ARGS``; returns the parsed result, raises on non-zero exit."""
        cp = self.ctl_raw("--json", *args, timeout=timeout)
        if cp.returncode != 0:
            raise ProxyError(f"mptcpctl {' '.join(args)} exited {cp.returncode}: "
                             f"{cp.stderr.strip()}")
        return json.loads(cp.stdout)

    def stats(self) -> dict[str, int]:
        return self.ctl("stats")

    def connections(self) -> list[dict]:
        return self.ctl("connections")

    def wait_connection(self, state: str = "established", timeout: float = 10.0,
                        after: int = 0) -> dict:
        """The first connection in ``state`` whose id is above ``after`` (ids grow, so a
        loop that opens connection after connection passes the last id it used and never
        gets the previous one, still closing), polled for up to ``timeout`` s; raises
        ProxyError if none appeared."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.connections():
                if c["state"] == state and c["id"] > after:
                    return c
            time.sleep(0.05)
        raise ProxyError(f"no {state} connection within {timeout}s")

    def conn_id(self, timeout: float = 10.0) -> int:
        """The id of the first established connection (waits up to ``timeout`` s)."""
        return self.wait_connection("established", timeout)["id"]

    def query(self, cmd: str, **args: Any) -> Any:
        """A control request sent in-process, as mptcpctl sends it (cheap enough to poll;
        :meth:`ctl` runs mptcpctl itself). Raises ``mptcp_proxy.ctl``'s errors."""
        from mptcp_proxy.ctl import Client
        return Client(self.control, timeout=5).call(cmd, args)

    def subflows(self, cid: int) -> list[dict]:
        """The proxy's view of a connection, through mptcpctl (``--json subflows CONN``)."""
        return self.ctl("subflows", str(cid))

    def wait_subflow(self, cid: int, pred: Callable[[dict], bool], timeout: float,
                     what: str) -> dict:
        """The first subflow of ``cid`` for which ``pred`` holds, polled for up to
        ``timeout`` s; raises AssertionError naming ``what`` if none appeared."""
        deadline = time.monotonic() + timeout
        while True:
            sfs = self.query("subflows", conn=cid)
            found = next((s for s in sfs if pred(s)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not seen within {timeout} s; subflows: "
                                     f"{brief(sfs)}")
            time.sleep(0.05)

    def pid(self) -> int:
        """The daemon's PID, as it reports it (``status``)."""
        return int(self.query("status")["pid"])

    def rss_kb(self, pid: int | None = None) -> int:
        """The daemon's resident set size (VmRSS of /proc/PID/status), KiB."""
        for line in Path(f"/proc/{pid or self.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ProxyError("no VmRSS for the daemon")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM; wait; record the exit code and how many proxy rules are left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
        self.rules_left = count_proxy_rules(self.topo, self.ns)
        return self.exit_code

    def __enter__(self) -> "ProxyHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def brief(sfs: list[dict]) -> list[str]:
    """One line per subflow of a ``subflows`` answer: id, iface, state, ACTIVE, b (our
    backup flag), pb (the peer's), bytes received and sent."""
    return [f"{s['id']}:{s['iface']}:{s['state']}{':ACTIVE' if s['active'] else ''}"
            f"{':b' if s['backup'] else ''}{':pb' if s['peer_backup'] else ''}"
            f" rx={s['bytes_received']} tx={s['bytes_sent']}" for s in sfs]


def active(sfs: list[dict]) -> dict:
    """The one active subflow of a ``subflows`` answer (ValueError if not exactly one)."""
    (act,) = [s for s in sfs if s["active"]]
    return act


def count_proxy_rules(topo: Any, ns: str) -> int:
    """Lines mentioning MPTCP_PROXY in iptables-legacy-save and ip6tables-legacy-save."""
    n = 0
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        cp = topo.run(ns, [tool], check=False, timeout=10)
        n += sum(1 for line in cp.stdout.splitlines() if "MPTCP_PROXY" in line)
    return n


# what the daemon creates in routing and addresses (mptcp_proxy/daemon.py, routing.py,
# links.py, addresses.py): tables from 1,000,000 and the fallback table 10000 + queue,
# rules of priority 30000-30015 and 40000-40001, addresses on lo
DAEMON_TABLES_FROM = 1_000_000
DAEMON_RULE_PREFS = set(range(30000, 30016)) | {40000, 40001}


def daemon_traces(topo: Any, ns: str, queue: int = 4700) -> list[str]:
    """What a daemon left in namespace ``ns``: its policy-routing rules and routes, an
    address kept on lo, its netfilter rules. Empty before a daemon starts and after it
    stopped cleanly."""
    out = []
    for fam in ("-4", "-6"):
        for line in topo.run(ns, ["ip", fam, "rule"], check=False).stdout.splitlines():
            pref = line.split(":", 1)[0].strip()
            if pref.isdigit() and int(pref) in DAEMON_RULE_PREFS:
                out.append(f"rule {line.strip()}")
        for line in topo.run(ns, ["ip", fam, "route", "show", "table", "all"],
                             check=False).stdout.splitlines():
            words = line.split()
            if "table" in words:
                t = words[words.index("table") + 1]
                if t.isdigit() and (int(t) >= DAEMON_TABLES_FROM or int(t) == 10000 + queue):
                    out.append(f"route {line.strip()}")
        for line in topo.run(ns, ["ip", "-o", fam, "addr", "show", "dev", "lo"],
                             check=False).stdout.splitlines():
            addr = line.split()[3]
            if addr not in ("127.0.0.1/8", "::1/128"):
                out.append(f"address {addr} on lo")
    if count_proxy_rules(topo, ns):
        out.append("netfilter rules MPTCP_PROXY")
    return out


def start_proxy(topo: Any, ifaces: Sequence[str] | None = None, extra: Sequence[str] = (),
                ns: str | None = None, queue: int = 4700, ready: bool = True) -> ProxyHandle:
    """Start the daemon in the client namespace (default: every client link)."""
    ns = ns or topo.client
    ifaces = list(ifaces or topo.client_ifaces)
    control = f"/run/mptcp-proxy-{ns}-{queue}.sock"
    argv = [_py(), "-m", "mptcp_proxy.daemon", "--queue", str(queue), "--control", control]
    for i in ifaces:
        argv += ["--iface", i]
    argv += list(extra)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = topo.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                      env=env)
    h = ProxyHandle(topo, ns, proc, control)
    if ready:
        try:
            h.wait_ready()
        except Exception:
            h.stop()
            raise
    return h
