"""Throw-away network namespaces for the platform experiments (docs/platform.md).

Every experiment builds its namespaces through :class:`Bed`, which names them
``dx<pid>-<name>`` and deletes them (and kills, by PID, every process it started in them)
on :meth:`Bed.close`, on ``__exit__`` and at interpreter exit, also when the experiment
fails half way. Nothing here touches the namespace the experiment is started from.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PYTHON = sys.executable


class Bed:
    """A set of network namespaces and the processes started in them."""

    def __init__(self, *names: str) -> None:
        self.prefix = f"dx{os.getpid()}"
        self.names = list(names)
        self.procs: list[subprocess.Popen] = []
        self._closed = False
        atexit.register(self.close)
        try:
            for n in names:
                subprocess.run(["ip", "netns", "add", self.ns(n)], check=True)
                self.sh(n, "ip link set lo up")
                self.sysctl(n, "net.ipv4.conf.all.rp_filter", 0)
                self.sysctl(n, "net.ipv4.conf.default.rp_filter", 0)
                self.sysctl(n, "net.ipv6.conf.all.accept_dad", 0)
                self.sysctl(n, "net.ipv6.conf.default.accept_dad", 0)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Bed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def sh(self, name: str, cmd: str, check: bool = True) -> str:
        """Run ``cmd`` (a shell line) in namespace ``name``; return its stdout."""
        r = subprocess.run(["ip", "netns", "exec", self.ns(name), "sh", "-c", cmd],
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{name}] {cmd}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def sysctl(self, name: str, key: str, value: object) -> None:
        self.sh(name, f"sysctl -qw {key}={value}")

    def popen(self, name: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], **kw)
        self.procs.append(p)
        return p

    def python(self, name: str, script: str, *args: str, **kw) -> subprocess.Popen:
        return self.popen(name, [PYTHON, str(HERE / script), *args], **kw)

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair ``a_if`` (in ``a``) -- ``b_if`` (in ``b``), both up."""
        subprocess.run(["ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth",
                        "peer", "name", b_if, "netns", self.ns(b)], check=True)
        self.sh(a, f"ip link set {a_if} up")
        self.sh(b, f"ip link set {b_if} up")

    def nstat(self, name: str) -> dict[str, int]:
        """Every absolute counter of ``nstat -asz`` in ``name``."""
        out = self.sh(name, "nstat -asz")
        vals: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                vals[parts[0]] = int(parts[1])
        return vals

    def stop(self, p: subprocess.Popen, timeout: float = 3.0) -> None:
        """SIGTERM then SIGKILL one process this bed started."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in self.procs:
            self.stop(p)
        for n in self.names:
            ns = self.ns(n)
            # anything else still running in the namespace (started by a child), by PID
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for(pred, timeout: float, step: float = 0.05):
    """Poll ``pred`` until it returns something true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)
