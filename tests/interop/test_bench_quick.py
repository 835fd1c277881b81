"""``tools/bench --quick`` runs to the end and writes every key of its JSON with a number.

Benchmarks are not tests (DESIGN.md §5): nothing here checks a timing or a ratio. This only
proves that the benchmark itself works on this machine — every configuration, namespace,
daemon and helper comes up, runs and goes away — so that its figures can be trusted to exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netns import ns_pids

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "tools" / "bench"

THROUGHPUT_CONFIGS = ["plain_tcp", "native_mptcp", "nfqueue_floor", "proxy", "proxy_2sf"]
REQUIRED: dict[str, list[str]] = {
    "throughput_mbps": THROUGHPUT_CONFIGS,
    "throughput_down_mbps": THROUGHPUT_CONFIGS,
    "ratios": ["proxy_vs_floor", "proxy_vs_native"],
    "us_per_packet": ["proxy", "nfqueue_floor"],
    "setup_ms": ["proxy", "native_mptcp", "plain_tcp"],
    "bytes_per_conn": ["1000", "10000"],
    "conn_per_s": ["proxy", "native_mptcp"],
    "machine": ["cpus"],
}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_bench_quick_completes(netns_ok: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"tools/bench exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n"
                                  f"{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    missing = []
    for key, subkeys in REQUIRED.items():
        for sub in subkeys:
            if not _is_number(res.get(key, {}).get(sub)):
                missing.append(f"{key}.{sub}={res.get(key, {}).get(sub)!r}")
    for key in ("runs",):
        if not _is_number(res.get(key)):
            missing.append(f"{key}={res.get(key)!r}")
    for key in ("kernel", "python"):
        if not isinstance(res.get("machine", {}).get(key), str):
            missing.append(f"machine.{key}")
    if not isinstance(res.get("raw"), dict) or not res["raw"].get("throughput"):
        missing.append("raw.throughput")
    assert not missing, ("keys without a number: " + ", ".join(missing)
                         + f"\nerrors: {json.dumps(res.get('errors'), indent=1)[:3000]}")
    assert res["throughput_mbps"].get("proxy_proxy", "absent") is None  # the n/a hook
    # everything the bench built is gone: its namespaces and every process in them
    names = res.get("namespaces") or []
    assert names, "the bench lists no namespaces"
    left = [n for n in names if os.path.exists(f"/run/netns/{n}")]
    assert not left and not ns_pids(names), f"left behind: {left}"


@pytest.mark.parametrize("argv", [["--help"]])
def test_bench_help(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "--quick" in proc.stdout and "--json" in proc.stdout
