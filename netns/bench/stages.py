"""The measuring stages of the benchmark: throughput (bulk both ways, with the daemons'
CPU per packet), setup latency, connection rate and memory per idle connection. Each
``stage_*`` takes the :class:`~netns.bench.runner.Bench` and appends to ``bench.raw``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..peer import PeerError
from .bed import CLK_TCK, Bed, BenchError, log
from .configs import CONFIGS, MEMORY_CONFIG, MSS, latency_configs
from .results import median

if TYPE_CHECKING:
    from .runner import Bench

__all__ = ["transfer", "stage_throughput", "stage_setup", "stage_cps", "stage_memory"]


# ---------------------------------------------------------------------- throughput

def transfer(b: Bench, config: str, direction: str, seconds: float, max_bytes: int,
             run: int | None) -> dict[str, Any]:
    """One bulk transfer of ``config``: its receive rate, bytes and, with a daemon, the
    daemons' CPU and queued packets over it."""
    cfg, bed = CONFIGS[config], b.bed(config)
    rec: dict[str, Any] = {"config": config, "direction": direction, "run": run}
    if not b.ensure_daemon(config, "throughput", run):
        rec["error"] = "daemon unavailable"
        return rec
    before = (bed.status(), bed.cpu_ticks()) if cfg.daemons else None
    seed = b.next_seed()
    try:
        res = bed.call("bulk", wait=seconds + 40, addr=bed.topo.server_addr, port=cfg.port,
                       mptcp=cfg.mptcp, direction=direction, max_bytes=max_bytes,
                       seconds=seconds, timeout=15.0, seed=seed)
    except BenchError as exc:
        res = {"error": str(exc)}
    err = res.get("error")
    if direction == "down" and err is None:
        err = _download_verdict(bed, seed, res)
    if before is not None:
        err = _daemon_cost(bed, before, rec, err)
    rec.update(mbps=res.get("mbps"), bytes=res.get("received"),
               elapsed=res.get("elapsed"), facts=res.get("facts"))
    if "cpu_s" in rec:
        _per_payload(rec)
    if err:
        rec["error"] = err
        rec["mbps"] = None
        rec["us_per_packet"] = rec["us_per_mss"] = None
    return rec


def _download_verdict(bed: Bed, seed: int, res: dict[str, Any]) -> str | None:
    """The server's record of the download that just ended: its facts, and whether it
    sent what the client got."""
    from ..peer import brief_facts
    try:
        ev = bed.server.record(5.0, seed=seed)
    except PeerError:
        return "the server reported nothing about the download"
    if ev.get("error"):
        return f"server: {ev.get('error')}"
    res["facts"] = brief_facts(ev)
    if ev.get("sent") != res.get("received"):
        return f"server sent {ev.get('sent')} bytes, client got {res.get('received')}"
    return None


def _daemon_cost(bed: Bed, before: tuple, rec: dict[str, Any], err: str | None) -> str | None:
    """CPU and queued packets of the bed's daemons since ``before`` into ``rec``."""
    dead = bed.daemon_dead()
    if dead is not None:
        return f"{err}; {dead}" if err else dead
    (st0, cpu0), cpu1, st1 = before, bed.cpu_ticks(), bed.status()
    pk = st1["packets"] - st0["packets"]
    rec["packets"] = pk
    rec["user_s"] = (cpu1[0] - cpu0[0]) / CLK_TCK
    rec["sys_s"] = (cpu1[1] - cpu0[1]) / CLK_TCK
    rec["cpu_s"] = rec["user_s"] + rec["sys_s"]
    rec["us_per_packet"] = rec["cpu_s"] * 1e6 / pk if pk else None
    rec["us_per_packet_sys"] = rec["sys_s"] * 1e6 / pk if pk else None
    return err


def _per_payload(rec: dict[str, Any]) -> None:
    nbytes, pk = rec["bytes"] or 0, rec["packets"]
    rec["mss"] = nbytes / MSS
    rec["us_per_mss"] = rec["cpu_s"] * 1e6 / rec["mss"] if nbytes else None
    rec["bytes_per_packet"] = nbytes / pk if pk else None


def stage_throughput(b: Bench) -> None:
    a = b.a
    configs = b.runnable()
    max_bytes = int(a.max_mb * 1e6)
    if a.warmup > 0:
        for c in configs:
            for d in ("up", "down"):
                r = transfer(b, c, d, a.warmup, max_bytes, None)
                if r.get("error"):
                    b.error(c, "warm-up", None, r["error"])
    for run in range(1, a.runs + 1):
        for c in configs:
            for d in ("up", "down"):
                r = transfer(b, c, d, a.seconds, max_bytes, run)
                b.raw["throughput"].append(r)
                if r.get("error"):
                    b.error(c, f"throughput_{d}", run, r["error"])
                else:
                    b.check_facts(c, r.get("facts"))
        log(f"throughput run {run}/{a.runs}: " + "  ".join(
            f"{c}={_fmt_run(b, c, run)}" for c in configs))


def _fmt_run(b: Bench, config: str, run: int) -> str:
    xs = [r for r in b.raw["throughput"] if r["config"] == config and r["run"] == run]
    return "/".join("err" if r.get("mbps") is None else f"{r['mbps']:.0f}" for r in xs)


# ---------------------------------------------------------------------- setup latency

def stage_setup(b: Bench) -> None:
    configs = latency_configs(b.configs)
    for run in range(1, b.a.setup_runs + 1):
        for c in configs:
            if b.ensure_daemon(c, "setup", run):
                _setup_run(b, c, run)
        log(f"setup run {run}: " + "  ".join(
            f"{r['config']}={r['median_ms']:.3f}ms" if r["median_ms"] else f"{r['config']}=err"
            for r in b.raw["setup"] if r["run"] == run))


def _setup_run(b: Bench, c: str, run: int) -> None:
    cfg, bed = CONFIGS[c], b.bed(c)
    try:
        res = bed.call("rr", wait=60 + b.a.rr_count, addr=bed.topo.server_addr,
                       port=cfg.port, mptcp=cfg.mptcp, count=b.a.rr_count)
    except BenchError as exc:
        res = {"ms": [], "errors": {str(exc): 1}}
    rec = {"config": c, "run": run, "ms": [round(x, 4) for x in res["ms"]],
           "median_ms": median(res["ms"]), "errors": res.get("errors") or {}}
    dead = bed.daemon_dead()
    if dead:
        rec["errors"][dead] = 1
    b.raw["setup"].append(rec)
    if rec["errors"]:
        b.error(c, "setup", run, f"{sum(rec['errors'].values())} failed of "
                f"{b.a.rr_count}: {rec['errors']}")


# ---------------------------------------------------------------------- connections/s

def stage_cps(b: Bench) -> None:
    configs = latency_configs(b.configs)
    for run in range(1, b.a.cps_runs + 1):
        for c in configs:
            if b.ensure_daemon(c, "cps", run):
                _cps_run(b, c, run)
        log(f"cps run {run}: " + "  ".join(
            f"{r['config']}={r['cps']:.0f}/s" if r.get("cps") else f"{r['config']}=err"
            for r in b.raw["cps"] if r["run"] == run))


def _cps_run(b: Bench, c: str, run: int) -> None:
    cfg, bed = CONFIGS[c], b.bed(c)
    try:
        res = bed.call("cps", wait=b.a.cps_seconds + 60, addr=bed.topo.server_addr,
                       port=cfg.port, mptcp=cfg.mptcp, threads=b.a.cps_threads,
                       seconds=b.a.cps_seconds)
    except BenchError as exc:
        res = {"completed": 0, "cps": None, "errors": {str(exc): 1}}
    rec = {"config": c, "run": run, **res}
    dead = bed.daemon_dead()
    if dead:
        rec["errors"] = {**rec.get("errors", {}), dead: 1}
        rec["cps"] = None
    b.raw["cps"].append(rec)
    if rec.get("errors"):
        b.error(c, "cps", run, f"{sum(rec['errors'].values())} failed exchanges "
                f"({rec.get('completed', 0)} completed): {rec['errors']}")


# ---------------------------------------------------------------------- memory

WARM_CONNS = 10  # held before the baseline RSS is read (first-connection allocations)


def stage_memory(b: Bench) -> None:
    if MEMORY_CONFIG not in b.runnable():
        return
    bed = b.bed(MEMORY_CONFIG)
    for run in range(1, b.a.memory_runs + 1):
        rec: dict[str, Any] = {"run": run, "warm": WARM_CONNS, "points": {}}
        b.raw["memory"].append(rec)
        try:
            _memory_run(b, bed, rec, run)
        except BenchError as exc:
            b.error(MEMORY_CONFIG, "memory", run, str(exc))
            try:
                bed.call("release", wait=120)
            except BenchError:
                pass
    problem = bed.restart_daemon()
    if problem:
        b.error(MEMORY_CONFIG, "memory", None, f"after the idle connections: {problem}")


def _memory_run(b: Bench, bed: Bed, rec: dict[str, Any], run: int) -> None:
    problem = bed.restart_daemon()  # a fresh daemon: no lingering state
    if problem:
        b.error(MEMORY_CONFIG, "memory", run, problem)
    _hold(b, bed, WARM_CONNS)
    time.sleep(0.3)
    rec["rss0_kb"] = bed.rss_kb()
    held = WARM_CONNS
    for n in (int(x) for x in b.a.idle_conns):
        held = _memory_point(b, bed, rec, run, n, held)
        dead = bed.daemon_dead()
        if dead:
            raise BenchError(dead)
    t0 = time.monotonic()
    bed.call("release", wait=120)
    rec["release_s"] = round(time.monotonic() - t0, 3)


def _memory_point(b: Bench, bed: Bed, rec: dict[str, Any], run: int, n: int,
                  held: int) -> int:
    """Hold ``n`` idle connections in all (``held`` are open); one point of the ramp."""
    warm, rss0 = WARM_CONNS, rec["rss0_kb"]
    t0 = time.monotonic()
    res = _hold(b, bed, n - (held - warm))
    held = res["held"]
    conns = _settle(bed, held)
    rss = bed.rss_kb()
    point = {"held": held - warm, "proxy_connections": conns - warm, "rss_kb": rss,
             "open_s": round(time.monotonic() - t0, 3),
             "bytes_per_conn": (rss - rss0) * 1024 / (held - warm) if held > warm else None,
             "errors": res.get("errors") or {}}
    rec["points"][str(n)] = point
    log(f"memory run {run}: {held - warm} idle connections held (proxy has {conns - warm}) "
        f"in {point['open_s']:.1f} s, RSS {rss0 / 1024:.1f} -> {rss / 1024:.1f} MiB, "
        f"{point['bytes_per_conn'] or 0:.0f} B/conn")
    if point["errors"]:
        b.error(MEMORY_CONFIG, f"memory_{n}", run, f"{sum(point['errors'].values())} "
                f"connections failed: {point['errors']}")
    if point["proxy_connections"] != point["held"]:
        b.warn(MEMORY_CONFIG, f"memory_{n}", f"the proxy holds {point['proxy_connections']}"
               f" connections for {point['held']} open sockets")
    return held


def _hold(b: Bench, bed: Bed, n: int) -> dict[str, Any]:
    cfg = CONFIGS[MEMORY_CONFIG]
    return bed.call("hold", wait=300, addr=bed.topo.server_addr, port=cfg.port,
                    mptcp=cfg.mptcp, n=n, window=b.a.hold_window, timeout=240)


def _settle(bed: Bed, want: int, timeout: float = 10.0) -> int:
    """The daemon's connection count once it equals ``want`` or stops changing."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        n = int(bed.status()["connections"])
        if n == want or (n == last) or time.monotonic() > deadline:
            return n
        last = n
        time.sleep(0.2)
