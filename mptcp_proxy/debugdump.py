"""``mptcpctl debug-dump``: one archive with what a bug report needs.

Written by the client, on the host the daemon runs on (what the daemon knows comes
over the control socket; the rest is read from ``/proc`` and the usual tools):

==================  =============================================================
``README.txt``      what each file holds, when and where it was made
``versions.txt``    mptcp-proxy, Python, the libraries, kernel, OS, iproute2, iptables
``sysctl.txt``      ``net.mptcp.*``, ``rp_filter`` of every interface, ``tcp_sack``,
                    ``tcp_timestamps``... (name = value)
``ip.txt``          links, addresses, policy rules, every routing table (v4, v6),
                    ``ip mptcp endpoint`` and ``limits``
``netfilter.txt``   the proxy's own chains and the jumps into them (legacy iptables)
``kernel.txt``      the kernel's MPTCP counters (``nstat``) and MPTCP sockets (``ss``)
``status.json``     the daemon's status, ``connections.json``, ``subflows.json``
                    (by connection id), ``stats.json``, ``metrics.txt``
``log.txt``         the daemon's last log lines (kept in its memory)
==================  =============================================================

Nothing secret: the daemon's replies carry tokens (public on the wire, in every
MP_JOIN) but never a key, and the log holds no key either; a unit test and an
interop test check the archive for the keys of a live connection.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tarfile
import time
from importlib import metadata
from pathlib import Path

from . import __version__

__all__ = ["write_bundle", "collect"]

CMD_TIMEOUT = 10.0
LIBRARIES = ("fnfqueue", "NetfilterQueue", "python-iptables", "pyroute2",
             "prometheus-client", "cysystemd")
SYSCTLS = ("net/ipv4/tcp_sack", "net/ipv4/tcp_timestamps", "net/ipv4/tcp_window_scaling",
           "net/ipv4/tcp_ecn", "net/ipv4/tcp_congestion_control", "net/ipv4/ip_forward",
           "net/ipv4/tcp_mtu_probing", "net/core/rmem_max", "net/core/wmem_max",
           "net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/all/forwarding")

README = """\
mptcp-proxy debug bundle, made by mptcpctl debug-dump {version}
at {when} on {host} (kernel {kernel}).

versions.txt     versions of mptcp-proxy, Python, libraries, kernel, OS and tools
sysctl.txt       net.mptcp.*, rp_filter per interface, TCP options in use
ip.txt           links, addresses, policy rules, routes (all tables), ip mptcp
netfilter.txt    the proxy's chains (MPTCP_PROXY_*) and the jumps into them
kernel.txt       the kernel's MPTCP counters (nstat) and MPTCP sockets (ss)
status.json      the daemon's status; connections.json, subflows.json, stats.json
metrics.txt      the daemon's Prometheus metrics
log.txt          the daemon's last log lines
daemon.txt       only when the daemon could not be asked: why

It holds this host's addresses and routes; it holds no MPTCP key.
"""


def _run(argv: list[str]) -> str:
    """``$ argv`` and its output (or why it failed)."""
    head = "$ " + " ".join(argv) + "\n"
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                            check=False)
    except FileNotFoundError:
        return head + "(not installed)\n\n"
    except subprocess.TimeoutExpired:
        return head + f"(timed out after {CMD_TIMEOUT:g}s)\n\n"
    out = cp.stdout
    if cp.returncode != 0:
        out += f"(exit {cp.returncode}) {cp.stderr.strip()}\n"
    return head + out + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        return f"({e.strerror})"


def versions() -> str:
    lines = [f"mptcp-proxy {__version__}", f"python {platform.python_version()} "
             f"({platform.python_implementation()})", f"kernel {platform.release()} "
             f"{platform.version()} {platform.machine()}"]
    for lib in LIBRARIES:
        try:
            lines.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{lib} (not installed)")
    out = "\n".join(lines) + "\n\n"
    out += "/etc/os-release:\n" + _read(Path("/etc/os-release")) + "\n\n"
    for argv in (["ip", "-V"], ["iptables-legacy", "--version"], ["nft", "--version"]):
        out += _run(argv)
    return out


def sysctls() -> str:
    base = Path("/proc/sys")
    names = [p for p in sorted((base / "net/mptcp").glob("*")) if p.is_file()]
    names += sorted((base / "net/ipv4/conf").glob("*/rp_filter"))
    names += [base / n for n in SYSCTLS]
    return "".join(f"{str(p.relative_to(base)).replace('/', '.')} = {_read(p)}\n"
                   for p in names)


def ip_state() -> str:
    cmds = [["ip", "-d", "link"], ["ip", "addr"], ["ip", "-4", "rule"], ["ip", "-6", "rule"],
            ["ip", "-4", "route", "show", "table", "all"],
            ["ip", "-6", "route", "show", "table", "all"],
            ["ip", "mptcp", "endpoint", "show"], ["ip", "mptcp", "limits", "show"]]
    return "".join(_run(c) for c in cmds)


def netfilter() -> str:
    """The proxy's chains and the jump rules into them, from both families."""
    out = ""
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        text = _run([tool])
        keep = [ln for ln in text.splitlines()
                if ln.startswith(("$", "*", "(")) or "MPTCP_PROXY" in ln]
        out += "\n".join(keep) + "\n\n"
    return out


def kernel_mptcp() -> str:
    return _run(["nstat", "-asz", "MPTcp*"]) + _run(["ss", "-Mtni"])


def _daemon(client, log_lines: int) -> dict[str, str]:
    """The daemon's view, one file each; a failure is recorded in ``daemon.txt``."""
    from .ctl import CtlError
    files: dict[str, str] = {}
    try:
        files["status.json"] = _json(client.call("status"))
        conns = client.call("connections")
        files["connections.json"] = _json(conns)
        subflows = {}
        for c in conns if isinstance(conns, list) else []:
            try:
                subflows[str(c.get("id"))] = client.call("subflows", {"conn": c.get("id")})
            except CtlError as e:  # the connection ended meanwhile
                subflows[str(c.get("id"))] = {"error": e.message}
        files["subflows.json"] = _json(subflows)
        files["stats.json"] = _json(client.call("stats"))
        try:
            files["metrics.txt"] = str(client.call("metrics"))
        except CtlError as e:
            files["metrics.txt"] = f"({e.message})\n"
        lines = client.call("log", {"lines": log_lines})
        files["log.txt"] = "\n".join(map(str, lines)) + "\n"
    except CtlError as e:
        files["daemon.txt"] = f"the daemon could not be asked: {e.message}\n"
    return files


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def collect(client, log_lines: int = 1000) -> dict[str, str]:
    """File name → text of every file of the bundle."""
    uname = platform.uname()
    files = {"README.txt": README.format(version=__version__, host=uname.node,
                                         kernel=uname.release,
                                         when=time.strftime("%Y-%m-%d %H:%M:%S %z")),
             "versions.txt": versions(), "sysctl.txt": sysctls(), "ip.txt": ip_state(),
             "netfilter.txt": netfilter(), "kernel.txt": kernel_mptcp()}
    files.update(_daemon(client, log_lines))
    return files


def write_bundle(client, out: str | None = None, log_lines: int = 1000
                 ) -> tuple[str, list[str]]:
    """Write the archive (mode 0600: it describes the host's network); returns its path
    and the names of the files in it. Raises ``OSError`` if it cannot be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out or f"mptcp-proxy-debug-{stamp}.tar.gz"
    files = collect(client, log_lines)
    top = f"mptcp-proxy-debug-{stamp}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        now = time.time()
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o600
            tar.addfile(info, io.BytesIO(data))
    return path, list(files)
