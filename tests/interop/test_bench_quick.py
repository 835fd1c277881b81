"""``tools/bench --quick`` runs to the end and writes every key of its JSON with a number.

Benchmarks are not tests (speed is measured side by side and reported as ratios, never
asserted): nothing here checks a timing or a ratio. This only proves that the benchmark
itself works on this machine — every configuration, namespace, daemon and helper comes up,
runs and goes away — so that its figures can be trusted to exist.
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
NFQ_CONFIGS = ["nfqueue_floor_nfq", "proxy_nfq"]  # --backend netfilterqueue
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
    missing += _newer_keys(res)
    assert not missing, ("keys without a number: " + ", ".join(missing)
                         + f"\nerrors: {json.dumps(res.get('errors'), indent=1)[:3000]}")
    assert res["throughput_mbps"].get("proxy_proxy", "absent") is None  # the n/a hook
    # everything the bench built is gone: its namespaces and every process in them
    names = res.get("namespaces") or []
    assert names, "the bench lists no namespaces"
    left = [n for n in names if os.path.exists(f"/run/netns/{n}")]
    assert not left and not ns_pids(names), f"left behind: {left}"


def _newer_keys(res: dict) -> list[str]:
    """Keys added with the second queue backend, checked only where the JSON has them
    (the netfilterqueue configurations may be left out of a run: then ``not_run`` says
    so)."""
    missing = []
    backend = res.get("backend")
    if backend is not None:
        for c in THROUGHPUT_CONFIGS:
            if c not in backend:
                missing.append(f"backend.{c}")
        for c in ("nfqueue_floor", "proxy", "proxy_2sf"):
            if c in backend and backend[c] != "fnfqueue":
                missing.append(f"backend.{c}={backend[c]!r} (the default is fnfqueue)")
    for key in ("us_per_mss", "us_per_mss_down"):
        if key in res:
            for c in ("proxy", "nfqueue_floor"):
                if not _is_number(res[key].get(c)):
                    missing.append(f"{key}.{c}={res[key].get(c)!r}")
    not_run = res.get("not_run") or {}
    for c in NFQ_CONFIGS:
        if c in not_run or c not in (res.get("throughput_mbps") or {}):
            continue  # left out of this run (stated in not_run)
        if backend is not None and backend.get(c) != "netfilterqueue":
            missing.append(f"backend.{c}={backend.get(c)!r}")
        for key in ("throughput_mbps", "throughput_down_mbps", "us_per_packet",
                    "us_per_mss"):
            if key in res and not _is_number(res[key].get(c)):
                missing.append(f"{key}.{c}={res[key].get(c)!r}")
    if "proxy_nfq" in (res.get("throughput_mbps") or {}) and "proxy_nfq" not in not_run:
        for key in ("proxy_nfq_vs_floor_nfq", "proxy_vs_proxy_nfq"):
            if key in res.get("ratios", {}) and not _is_number(res["ratios"][key]):
                missing.append(f"ratios.{key}={res['ratios'][key]!r}")
    for name, t in (res.get("targets") or {}).items():
        if not isinstance(t, dict) or "met" not in t:
            missing.append(f"targets.{name}")
    return missing


@pytest.mark.parametrize("argv", [["--help"]])
def test_bench_help(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "--quick" in proc.stdout and "--json" in proc.stdout
