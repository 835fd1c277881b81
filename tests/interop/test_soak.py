"""``tools/soak`` in short: 20 connections through the proxy against native MPTCP for 40 s,
a handover every 2 s, every byte checked both ways, no stuck connection, the daemon's
RSS flat; and a run whose stall limit is below the connections' pacing must fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netns import ns_pids

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "soak"


def _soak(tmp_path: Path, *args: str, timeout: float = 400) -> tuple[int, dict, str]:
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, str(TOOL), *args, "--json", str(out)],
                         capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"no report (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
    report = json.loads(out.read_text())
    left = [n for n in report["namespaces"] if os.path.exists(f"/run/netns/{n}")]
    assert report["namespaces"] and not left and not ns_pids(report["namespaces"]), left
    return res.returncode, report, res.stdout + res.stderr[-3000:]


def test_soak_short_run_holds(netns_ok: None, tmp_path: Path) -> None:
    rc, report, out = _soak(tmp_path, "--connections", "20", "--seconds", "40",
                            "--handover-every", "2")
    assert report["violations"] == [] and report["ok"] and rc == 0, out
    it, ho, rss = report["integrity"], report["handovers"], report["rss"]
    assert it["intact"] == 20 and it["bytes_up"] > 20 * 500_000, it
    assert it["bytes_down"] > 20 * 500_000, it
    # a handover every 2 s for 40 s, each moving (nearly) every connection
    assert ho["commands"] >= 15 and ho["moves"] >= 15 * 18, ho
    assert report["counters"]["proxy"]["Handovers"] == ho["moves"], report["counters"]
    assert report["counters"]["server"]["MPPrioRx"] >= 2 * ho["moves"] * 0.9, report["counters"]
    assert rss["warm_kb"] and rss["final_kb"] and len(rss["samples"]) >= 5, rss
    assert abs(rss["change_pct"]) <= 10, rss


def test_soak_reports_a_stall(netns_ok: None, tmp_path: Path) -> None:
    """Paced at 200 kbit/s in 8 KB pieces, a connection receives every ~0.33 s: a stall
    limit of 0.15 s must be reported as a violation, with a non-zero exit."""
    rc, report, out = _soak(tmp_path, "--connections", "3", "--seconds", "12",
                            "--handover-every", "2", "--stall-limit", "0.15",
                            "--warmup", "4", timeout=200)
    assert rc == 1 and not report["ok"], out
    assert report["integrity"]["intact"] == 3, report["integrity"]  # the data was fine
    stalls = [v for v in report["violations"] if "received no" in v]
    assert len(stalls) == 2, report["violations"]  # both directions
    assert report["progress"]["down"]["stalled"] and report["progress"]["up"]["stalled"]
