"""``tools/handover`` runs end to end: both handover kinds complete through the proxy, the
data arrives intact and the report has every key (no timing thresholds: handover quality
is measured by the tool, not asserted by tests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from netns.handover.report import REPORT_KEYS

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "handover"


@pytest.mark.parametrize("kind,extra", [
    pytest.param("make", [], id="make"),
    pytest.param("break", ["--fallback-route"], id="break-fallback-route"),
    # the bed's client has a default route via c0 only: the daemon's fallback routes
    # keep the local socket's address routable when c0 goes down
    pytest.param("break", ["--grace", "10"], id="break"),
    pytest.param("break", ["--grace", "10", "--no-sack", "--proxy-subflows", "backup"],
                 id="break-nosack-backup"),
])
def test_handover_tool_completes(netns_ok: None, tmp_path: Path, kind: str,
                                 extra: list[str]) -> None:
    out = tmp_path / "report.json"
    plot = tmp_path / "plot.png"
    cmd = [str(TOOL), "--kind", kind, "--duration", "4", "--at", "2", "--delay-ms", "5",
           "--rate-mbit", "20", "--json", str(out), "--plot", str(plot), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.exists(), f"no report (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
    report = json.loads(out.read_text())
    missing = [k for k in REPORT_KEYS if k not in report]
    assert not missing, missing
    assert report["scenario"]["kind"] == kind
    assert "RetransSegs" in report["retransmissions"]
    assert plot.exists() and plot.stat().st_size > 0
    assert report["integrity"] is True, (report["integrity_detail"], report["warnings"])
    assert res.returncode == 0, res.stdout + res.stderr
