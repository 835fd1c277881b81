"""Every TCP segment of a proxied connection is converted whatever its TOS/DSCP, ECN bits,
priority or mark, with either queue backend — tried with real OpenSSH (ssh, scp, sftp,
rsync over ssh, default options) and with sockets whose options the test sets.

Why it needs a test: Linux adds ``NFQA_PRIORITY`` to the queue message of a packet whose
``skb->priority`` is not 0 (``SO_PRIORITY``, or ``IP_TOS`` which sets it), and fnfqueue
1.1.2 then lost the payload: such connections were counted ``PktNotTcp`` and left plain TCP
(mptcp_proxy/fnfq.py, docs/queue-backends.md). The server side runs under ``mptcpize run``;
its ``MPTcpExt`` counters prove each connection arrived as MPTCP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netns import Topology, wait_until
from netns.nstat import assert_no_errors, diff, mptcp_counters, nonzero
from netns.peer import expected_sha, run_client, start_server
from netns.proxyd import _py

pytestmark = pytest.mark.interop

MB = 1_000_000
SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222
HERE = Path(__file__).resolve().parent
BACKENDS = ["fnfqueue", "netfilterqueue"]


# ------------------------------------------------------------------ an sshd in the server ns

class Sshd:
    """OpenSSH's sshd on port 2222 of the server namespace, made MPTCP by ``mptcpize run``,
    with its own host key, client key and configuration under ``tmp``."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo, self.tmp = topo, tmp
        self.made_privsep = False
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp / name],
                           check=True, capture_output=True)
        shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
                     if os.path.exists(p)), "internal-sftp")
        (tmp / "sshd_config").write_text(
            f"Port {SSH_PORT}\nListenAddress 0.0.0.0\nListenAddress ::\n"
            f"HostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
            f"AuthorizedKeysFile {tmp}/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\n"
            f"Subsystem sftp {sftp}\n")
        privsep = Path("/run/sshd")  # sshd refuses to start without it
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            self.made_privsep = True
        self.proc = topo.popen(topo.server, ["mptcpize", "run", SSHD, "-D", "-e", "-f",
                                             tmp / "sshd_config"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        listening = wait_until(lambda: self.proc.poll() is not None or f":{SSH_PORT}" in
                               topo.run(topo.server, ["ss", "-Hltn"]).stdout, 15, 0.1)
        if self.proc.poll() is not None or not listening:
            raise RuntimeError(f"sshd did not start: {self.proc.stderr.read()[-2000:]}")

    def ssh_opts(self) -> list[str]:
        """Options naming our key and host; nothing about QoS: OpenSSH's defaults apply."""
        return ["-F", "/dev/null", "-i", str(self.tmp / "client_key"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.made_privsep:
            try:
                Path("/run/sshd").rmdir()
            except OSError:
                pass


@pytest.fixture
def sshd(topo: Topology, tmp_path: Path):
    if not os.path.exists(SSHD):
        pytest.skip("needs openssh-server (tools/bootstrap installs it)")
    d = Sshd(topo, tmp_path)
    yield d
    d.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _converted(topo: Topology, px, p0: dict, s0: dict, conns: int, reparse: bool) -> None:
    """``conns`` connections became MPTCP on the wire; none was passed as non-TCP.
    ``reparse``: whether the fnfqueue driver must have met the priority attribute."""
    pd, sd = diff(p0, px.stats()), diff(s0, mptcp_counters(topo.server))
    assert pd.get("PktNotTcp", 0) == 0, nonzero(pd)
    assert pd["MPCapableSYNTX"] == conns and pd["MPCapableSYNACKRX"] == conns, nonzero(pd)
    assert pd.get("FallbackConnections", 0) == 0, nonzero(pd)
    assert pd.get("InternalErrors", 0) == 0, nonzero(pd)
    assert sd["MPCapableSYNRX"] == conns and sd["MPCapableACKRX"] == conns, nonzero(sd)
    assert_no_errors(sd)
    assert (pd.get("QueueAttrReparse", 0) > 0) is reparse, nonzero(pd)


# ------------------------------------------------------------------ OpenSSH, default options

@pytest.mark.parametrize("backend", BACKENDS)
def test_openssh_converted(topo: Topology, run_proxy, sshd: Sshd, tmp_path: Path,
                           backend: str) -> None:
    """ssh (a command with stdin/stdout), scp both ways, sftp and rsync over ssh, each with
    OpenSSH's default IPQoS, through the proxy: data intact and every connection MPTCP."""
    px = run_proxy(topo, extra=["--subflows", "manual", "--backend", backend])
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 * MB))
    dst = f"root@{topo.server_addr}"
    ssh = ["ssh", *sshd.ssh_opts(), "-p", str(SSH_PORT)]
    scp = ["scp", *sshd.ssh_opts(), "-P", str(SSH_PORT)]
    p0, s0 = px.stats(), mptcp_counters(topo.server)
    conns = 0

    with open(src, "rb") as f:  # 1. ssh: the remote end hashes what we pipe in
        out = topo.run(topo.client, [*ssh, dst, "sha256sum"], stdin=f, timeout=60)
    conns += 1
    assert out.stdout.split()[0] == _sha(src)

    topo.run(topo.client, [*scp, src, f"{dst}:{tmp_path}/up.bin"], timeout=60)  # 2. scp up
    conns += 1
    assert _sha(tmp_path / "up.bin") == _sha(src)
    topo.run(topo.client, [*scp, f"{dst}:{tmp_path}/up.bin", tmp_path / "down.bin"],
             timeout=60)  # 3. scp down
    conns += 1
    assert _sha(tmp_path / "down.bin") == _sha(src)

    batch = tmp_path / "sftp.batch"  # 4. sftp get
    batch.write_text(f"get {tmp_path}/up.bin {tmp_path}/sftp.bin\n")
    topo.run(topo.client, ["sftp", *sshd.ssh_opts(), "-P", str(SSH_PORT), "-b", batch, dst],
             timeout=60)
    conns += 1
    assert _sha(tmp_path / "sftp.bin") == _sha(src)

    if shutil.which("rsync"):  # 5. rsync over ssh (tools/bootstrap installs rsync)
        rsh = " ".join([*ssh])
        topo.run(topo.client, ["rsync", "-e", rsh, src, f"{dst}:{tmp_path}/rsync.bin"],
                 timeout=60)
        conns += 1
        assert _sha(tmp_path / "rsync.bin") == _sha(src)

    wait_until(lambda: diff(s0, mptcp_counters(topo.server))["MPCapableACKRX"] >= conns, 5)
    # OpenSSH's QoS gives its packets a priority: the fnfqueue driver met the attribute
    _converted(topo, px, p0, s0, conns, reparse=backend == "fnfqueue")


# ------------------------------------------------------------------ socket options one by one

SOCKOPTS = {
    "priority": ["--priority", "6"],                # SO_PRIORITY alone
    "dscp-af21": ["--tos", "0x48"],                 # OpenSSH's interactive class
    "dscp-ef-ecn": ["--tos", "0xb9"],               # EF, ECN bits set (TCP keeps its own)
    "mark": ["--mark", "0x10"],                     # an application's own fwmark
    "all": ["--priority", "4", "--tos", "0x2a", "--mark", "0x7"],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opts", list(SOCKOPTS), ids=list(SOCKOPTS))
def test_socket_options_converted(topo: Topology, run_proxy, backend: str, opts: str) -> None:
    """A socket with SO_PRIORITY, IP_TOS (DSCP and ECN bits) or SO_MARK set by the app is
    converted like any other (both ways, hash-checked, native MPTCP on the server)."""
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--subflows", "manual", "--backend", backend])
    p0, s0 = px.stats(), mptcp_counters(topo.server)
    seed = 70 + list(SOCKOPTS).index(opts)
    argv = [_py(), HERE / "sockopt_peer.py", *SOCKOPTS[opts], "--", "client", "--addr",
            topo.server_addr, "--port", "5001", "--upload", str(2 * MB), "--download",
            str(2 * MB), "--seed", str(seed), "--timeout", "30"]
    res = topo.run(topo.client, argv, check=False, timeout=70)
    (cli,) = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    (rec,) = srv.wait(1, timeout=30)
    assert cli["error"] is None and rec["error"] is None, (cli, rec, res.stderr[-2000:])
    assert rec["recv_sha256"] == expected_sha(seed, 2 * MB, "up")
    assert cli["recv_sha256"] == expected_sha(seed, 2 * MB, "down")
    assert rec["is_mptcp"] and rec["fallback"] is False, rec
    # a mark alone gives no priority; netfilterqueue never needs the re-read
    _converted(topo, px, p0, s0, 1, reparse=backend == "fnfqueue" and opts != "mark")


def test_ecn_negotiated_connection_converted(topo: Topology, run_proxy) -> None:
    """With ECN on both ends (``tcp_ecn=1``: ECE/CWR in the handshake, ECT on data) the
    connection is converted and intact."""
    for ns in (topo.client, topo.server):
        topo.sysctl(ns, "net.ipv4.tcp_ecn", 1)
    srv = start_server(topo, 5001, mptcp=True)
    px = run_proxy(topo, extra=["--subflows", "manual"])
    p0, s0 = px.stats(), mptcp_counters(topo.server)
    (cli,) = run_client(topo, topo.server_addr, 5001, upload=4 * MB, download=4 * MB, seed=79,
                        timeout=30)
    (rec,) = srv.wait(1, timeout=30)
    assert cli["error"] is None and rec["error"] is None, (cli, rec)
    assert rec["recv_sha256"] == expected_sha(79, 4 * MB, "up")
    assert cli["recv_sha256"] == expected_sha(79, 4 * MB, "down")
    assert rec["is_mptcp"] and rec["fallback"] is False, rec
    pd, sd = diff(p0, px.stats()), diff(s0, mptcp_counters(topo.server))
    assert pd["MPCapableSYNACKRX"] == 1 and pd.get("PktNotTcp", 0) == 0, nonzero(pd)
    assert sd["MPCapableACKRX"] == 1, nonzero(sd)
    assert_no_errors(sd)
