"""Running the daemon as a system service: what it needs from the kernel (two
capabilities, not uid 0), readiness and reload notices to systemd, and
``mptcp-proxy install-service``.

The daemon needs ``CAP_NET_ADMIN`` (NFQUEUE, iptables, routes and rules, the
``rp_filter`` sysctls, ``SO_MARK``) and ``CAP_NET_RAW`` (raw sockets for the segments
it forges). The systemd unit (``mptcp_proxy/data/mptcp-proxy.service``) runs it as a
dynamic, unprivileged user holding exactly those two as ambient capabilities.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

log = logging.getLogger("mptcp_proxy.service")

__all__ = ["REQUIRED_CAPS", "missing_capabilities", "notify", "install_main"]

# include/uapi/linux/capability.h
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
REQUIRED_CAPS = {"CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_NET_RAW": CAP_NET_RAW}

UNIT_NAME = "mptcp-proxy.service"
CONFIG_PATH = "/etc/mptcp-proxy/mptcp-proxy.conf"


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The process's effective capability set (``CapEff`` bits); 0 if unreadable."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing_capabilities(eff: int | None = None) -> list[str]:
    """Names of the required capabilities not in the effective set (empty: all held)."""
    if eff is None:
        eff = effective_capabilities()
    return [name for name, bit in REQUIRED_CAPS.items() if not eff >> bit & 1]


# ---------------------------------------------------------------- systemd notify
def notify(state: str) -> None:
    """Tell systemd ``READY=1``, ``RELOADING=1``, ``STOPPING=1`` or ``STATUS=...`` when
    it started us as ``Type=notify`` (``$NOTIFY_SOCKET`` set); otherwise nothing."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from cysystemd.daemon import Notification
        from cysystemd.daemon import notify as sd_notify
    except Exception as e:
        log.warning("cannot notify systemd (cysystemd unavailable: %s)", e)
        return
    name, _, value = state.partition("=")
    kind = Notification[name]
    err = sd_notify(kind, value if kind.value.constant is None else None)
    if isinstance(err, Exception):
        log.warning("systemd notification %s failed: %s", name, err)


# ---------------------------------------------------------------- install-service
def data_text(name: str) -> str:
    """A file shipped in ``mptcp_proxy/data``."""
    return resources.files("mptcp_proxy").joinpath("data", name).read_text()


def render_unit(binary: str, group: str | None) -> str:
    """The unit file for ``binary`` (absolute path of ``mptcp-proxy``); ``group`` joins
    the service's user to that group so it can give it the control socket."""
    unit = data_text("mptcp-proxy.service").replace("/usr/local/bin/mptcp-proxy", binary)
    if group:
        unit = unit.replace("# SupplementaryGroups=", f"SupplementaryGroups={group}\n#", 1)
    return unit


def _binary() -> str:
    exe = Path(sys.argv[0])
    if exe.name == "mptcp-proxy" and exe.exists():
        return str(exe.resolve())
    found = shutil.which("mptcp-proxy")
    if found:
        return str(Path(found).resolve())
    raise SystemExit("mptcp-proxy install-service: error: cannot find the mptcp-proxy "
                     "command; give its path with --bin")


def _write(path: Path, text: str, mode: int, dry: bool) -> None:
    if dry:
        print(f"would write {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    print(f"wrote {path}")


def _man_pages() -> list[Path]:
    d = Path(sys.prefix) / "share" / "man" / "man8"
    return [p for p in (d / "mptcp-proxy.8", d / "mptcpctl.8") if p.exists()]


def build_install_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptcp-proxy install-service",
        description="Install the systemd unit of mptcp-proxy, an example configuration "
                    "file (kept if one exists), links to both commands and their manual "
                    "pages, then reload systemd. Start it with: systemctl enable --now "
                    "mptcp-proxy")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="install under DIR instead of / (for packaging; no systemctl)")
    p.add_argument("--bin", metavar="PATH",
                   help="the mptcp-proxy command the unit runs (default: this one)")
    p.add_argument("--group", metavar="GROUP",
                   help="group whose members may use mptcpctl (sets control-group in a new "
                        "configuration file and joins the service's user to it)")
    p.add_argument("--links", default="/usr/local/bin", metavar="DIR",
                   help="where to link mptcp-proxy and mptcpctl ('none': no links; "
                        "default /usr/local/bin)")
    p.add_argument("--dry-run", action="store_true", help="say what would be written")
    return p


def install_main(argv: list[str]) -> int:
    """``mptcp-proxy install-service [...]``; exit 0 on success, 2 on a bad option, 1 if
    a file cannot be written."""
    ns = build_install_parser().parse_args(argv)
    root = Path(ns.root)
    binary = ns.bin or _binary()
    if ns.group:
        try:
            grp.getgrnam(ns.group)
        except KeyError:
            print(f"mptcp-proxy install-service: error: no group {ns.group!r} (create it: "
                  f"groupadd {ns.group})", file=sys.stderr)
            return 2
    for hidden in ("/home/", "/root/", "/run/user/"):
        if binary.startswith(hidden):
            print(f"mptcp-proxy install-service: warning: {binary} is under {hidden}, which "
                  "the unit hides (ProtectHome=yes): install into /opt or /usr/local",
                  file=sys.stderr)
    try:
        _write(root / "etc/systemd/system" / UNIT_NAME, render_unit(binary, ns.group),
               0o644, ns.dry_run)
        conf = root / CONFIG_PATH.lstrip("/")
        if conf.exists():
            print(f"kept {conf}" + (f" (set control-group = \"{ns.group}\" in it)"
                                    if ns.group else ""))
        else:
            text = data_text("mptcp-proxy.conf")
            if ns.group:
                text += f'\ncontrol-group = "{ns.group}"\n'
            _write(conf, text, 0o644, ns.dry_run)
        if ns.links != "none":
            bindir = Path(binary).parent
            for name in ("mptcp-proxy", "mptcpctl"):
                link = root / ns.links.lstrip("/") / name
                target = bindir / name
                if link.resolve() == target.resolve():
                    continue
                if ns.dry_run:
                    print(f"would link {link} -> {target}")
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(target)
                print(f"linked {link} -> {target}")
        for page in _man_pages():
            dest = root / "usr/local/share/man/man8" / page.name
            if dest.resolve() != page.resolve():
                _write(dest, page.read_text(), 0o644, ns.dry_run)
    except OSError as e:
        print(f"mptcp-proxy install-service: error: {e.filename or ''}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    if str(root) == "/" and not ns.dry_run and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print(f"next: edit {root / CONFIG_PATH.lstrip('/')} (at least iface = [...]), then "
          "systemctl enable --now mptcp-proxy; logs: journalctl -u mptcp-proxy")
    return 0
