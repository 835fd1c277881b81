"""From the raw samples of a run to the benchmark's JSON: medians, spreads, ratios,
targets, and the machine and code the figures belong to."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .configs import (
    ALL_CONFIGS,
    CONFIGS,
    DEFINITIONS,
    HEADLINE,
    MSS,
    RATIOS,
    TARGETS,
    cpu_configs,
    latency_configs,
)

if TYPE_CHECKING:
    from .runner import Bench

__all__ = ["median", "spread", "ratio", "machine", "code_state", "results", "targets"]

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("quick", "runs", "seconds", "max_mb", "rr_count", "setup_runs", "cps_runs",
            "cps_seconds", "cps_threads", "memory_runs", "idle_conns", "hold_window",
            "proxy_arg", "skip", "configs")


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> float | None:
    """(max - min) / median, in percent: how noisy the repeated samples were."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return 100.0 * (max(xs) - min(xs)) / m if m else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for dist in ("fnfqueue", "NetfilterQueue"):
        try:
            from importlib.metadata import version
            libs[dist] = version(dist)
        except Exception:
            libs[dist] = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "queue_libs": libs,
            "loadavg": [round(x, 2) for x in load]}


def code_state() -> dict[str, Any]:
    """The checkout measured: commit, and whether the daemon's code differs from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", "mptcp_proxy", "netns",
                              "tables"))}


def _tp(b: Bench, config: str, direction: str, key: str = "mbps") -> list[float]:
    return [r[key] for r in b.raw["throughput"] if r["config"] == config
            and r["direction"] == direction and r.get(key) is not None]


def _throughput(b: Bench, cfgs: list[str]) -> dict[str, Any]:
    up = {c: median(_tp(b, c, "up")) for c in cfgs}
    down = {c: median(_tp(b, c, "down")) for c in cfgs}
    med = {"up": up, "down": down}
    cpu = cpu_configs(cfgs)

    def per_dir(key: str, direction: str) -> dict[str, float | None]:
        return {c: median(_tp(b, c, direction, key)) for c in cpu}

    return {
        "backend": {c: CONFIGS[c].backend for c in cfgs},
        "throughput_mbps": up,
        "throughput_down_mbps": down,
        "throughput_spread_pct": {c: {"up": spread(_tp(b, c, "up")),
                                      "down": spread(_tp(b, c, "down"))} for c in cfgs},
        "ratios": {k: ratio(med[d].get(n), med[d].get(m)) for k, (n, m, d) in RATIOS.items()},
        "us_per_packet": per_dir("us_per_packet", "up"),
        "us_per_packet_down": per_dir("us_per_packet", "down"),
        "us_per_mss": per_dir("us_per_mss", "up"),
        "us_per_mss_down": per_dir("us_per_mss", "down"),
        "bytes_per_packet": {c: {d: median(_tp(b, c, d, "bytes_per_packet"))
                                 for d in ("up", "down")} for c in cpu},
        "us_per_packet_sys": {c: {d: median(_tp(b, c, d, "us_per_packet_sys"))
                                  for d in ("up", "down")} for c in cpu},
    }


def _connections(b: Bench, cfgs: list[str]) -> dict[str, Any]:
    lat = latency_configs(cfgs)
    setup = {c: median([r["median_ms"] for r in b.raw["setup"] if r["config"] == c])
             for c in lat}
    native = setup.get("native_mptcp")
    return {
        "setup_ms": setup,
        "setup_overhead_ms": {c: (setup[c] - native) if setup.get(c) is not None
                              and native is not None else None
                              for c in setup if CONFIGS[c].daemons},
        "bytes_per_conn": {},
        "conn_per_s": {c: median([r["cps"] for r in b.raw["cps"] if r["config"] == c])
                       for c in lat},
    }


def _memory(b: Bench, res: dict[str, Any]) -> None:
    for n in b.a.idle_conns:
        xs = [m["points"][n]["bytes_per_conn"] for m in b.raw["memory"]
              if n in m.get("points", {}) and m["points"][n]["bytes_per_conn"] is not None]
        res["bytes_per_conn"][n] = median(xs)
    res["idle_conns_held"] = {
        n: [(m["points"][n]["held"], m["points"][n]["proxy_connections"])
            for m in b.raw["memory"] if n in m.get("points", {})]
        for n in b.a.idle_conns}


def results(b: Bench) -> dict[str, Any]:
    """The JSON of the run (``--json``): every figure, how it was measured, and the raw
    samples."""
    cfgs = list(b.configs)
    res: dict[str, Any] = {
        **_throughput(b, cfgs), **_connections(b, cfgs),
        "definitions": {**DEFINITIONS, "mss_bytes": MSS},
        "runs": b.a.runs, "machine": machine(), "code": b.code,
        "settings": {k: getattr(b.a, k) for k in SETTINGS},
        "not_run": {c: "not selected (--configs)" for c in ALL_CONFIGS
                    if c not in cfgs and CONFIGS[c].implemented},
        "timing_s": b.timing,
        "namespaces": [n for bed in b.beds.values() for n in bed.topo.namespaces],
        "errors": b.errors, "warnings": b.warnings, "raw": b.raw,
    }
    _memory(b, res)
    for c in cfgs:
        if not CONFIGS[c].implemented:
            res["throughput_mbps"][c] = res["throughput_down_mbps"][c] = None
    res["targets"] = targets(res)
    return res


def targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each judged on figures of this run: value, threshold, met
    (None when not measured)."""
    r = res["ratios"]
    mem = [v for v in res["bytes_per_conn"].values() if v is not None]
    values = {
        "bulk_proxy_vs_floor_up": r.get("proxy_vs_floor"),
        "bulk_proxy_vs_floor_down": r.get("down_proxy_vs_floor"),
        "setup_overhead_ms": res["setup_overhead_ms"].get(HEADLINE),
        "bytes_per_idle_conn": max(mem) if mem else None,
        "conn_per_s": res["conn_per_s"].get(HEADLINE),
    }
    out = {}
    for k, (desc, thr, op) in TARGETS.items():
        v = values[k]
        met = None if v is None else (v >= thr if op == ">=" else v <= thr)
        out[k] = {"what": desc, "value": v, "target": f"{op} {thr}", "met": met}
    return out
