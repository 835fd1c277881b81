"""``--profile``: py-spy on one configuration's daemon during a bulk transfer, summarised
as the main thread's top functions by self and inclusive time."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .bed import log
from .configs import CONFIGS
from .stages import transfer

if TYPE_CHECKING:
    from .runner import Bench

__all__ = ["stage_profile", "summarize_profile"]

ROOT = Path(__file__).resolve().parents[2]


def stage_profile(b: Bench) -> None:
    """py-spy on the ``--profile-target`` daemon during one bulk transfer (``--profile``)."""
    out = Path(b.a.profile)
    pyspy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    config, direction = b.a.profile_target.split(":")
    if not Path(pyspy).exists() or config not in b.runnable() \
            or not CONFIGS[config].daemons:
        b.error(config, "profile", None, "py-spy not installed, or the configuration has no "
                "daemon or is not selected")
        return
    bed = b.bed(config)
    b.ensure_daemon(config, "profile", None)
    raw = out.with_suffix(".collapsed")
    secs = max(b.a.seconds, 3.0)
    by = [] if b.a.profile_lines else ["--function"]
    rec = subprocess.Popen([pyspy, "record", "--pid", str(bed.pids[0]), "--format", "raw",
                            "--rate", "500", "--idle", *by, "--output", str(raw),
                            "--duration", str(int(secs) + 1), *b.a.py_spy_arg],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = transfer(b, config, direction, secs, int(10e9), None)
    _, err = rec.communicate(timeout=60)
    if rec.returncode != 0 or not raw.exists():
        b.error(config, "profile", None, f"py-spy failed: {err.strip()[-500:]}")
        return
    b.raw["profile"] = [r]
    out.write_text(f"py-spy of the {config} daemon (backend {CONFIGS[config].backend}) "
                   f"during a {secs:.0f} s bulk "
                   f"{'upload' if direction == 'up' else 'download'} "
                   f"({r.get('mbps') or 0:.0f} Mbit/s, {r.get('us_per_packet') or 0:.1f} "
                   f"µs/queued packet, {r.get('us_per_mss') or 0:.2f} µs/MSS, "
                   f"{r.get('packets') or 0} packets); collapsed stacks in {raw}"
                   f"\n\n{summarize_profile(raw.read_text(), top=30)}")
    log(f"profile written to {out}")


def _tally(collapsed: str) -> tuple[dict[str, int], dict[str, int], int, int, int]:
    """(self, inclusive, total, idle, other) sample counts of the main thread."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = other = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if not any(f.startswith("_run_module_as_main") for f in frames[:3]):
            other += n
            continue
        total += n
        if any(f.startswith("EpollSelector.select") for f in frames):  # (--native: + libc)
            idle += n
            continue
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    return self_n, incl, total, idle, other


_SKIP = ("_run_module_as_main", "_run_code", "<module>", "main (", "run (asyncio",
         "Runner.run", "BaseEventLoop.", "Handle._run")


def summarize_profile(collapsed: str, top: int = 20) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks (``--idle``).

    Only the daemon's main thread (the event loop that runs the queues) counts: the link
    monitor thread sits in pyroute2's own select and would be half of every ``--idle``
    profile. Shares are of the main thread's busy samples (not waiting in select)."""
    self_n, incl, total, idle, other = _tally(collapsed)
    busy = total - idle
    if not busy:
        return "no busy samples of the main thread\n"
    lines = [f"main thread: {total} samples, {100 * idle / total:.1f} % waiting in the event "
             f"loop's select, {busy} busy; other threads: {other} samples (ignored)",
             "shares below are of the main thread's BUSY samples", "",
             f"top {top} by SELF time:"]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / busy:6.2f} %  {f}")
    lines += ["", f"top {top} by INCLUSIVE time:"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1]):
        if f.startswith(_SKIP):
            continue
        lines.append(f"  {100 * n / busy:6.2f} %  {f}")
        if len(lines) > 2 * top + 8:
            break
    return "\n".join(lines) + "\n"
