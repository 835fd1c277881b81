"""The measurement tools' logic without a bed (no root): the benchmark's registries and
results, the handover kinds and trace metrics, the soak's checks."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest

from netns.bench import cli as bench_cli
from netns.bench import configs as bc
from netns.bench import results as bench_results
from netns.bench.report import table
from netns.handover import cli as handover_cli
from netns.handover.kinds import KINDS, Break
from netns.handover.trace import trace_metrics
from netns.soak import verdict
from netns.soak.monitor import Progress

# ---------------------------------------------------------------------- bench


def test_bench_registry_is_consistent() -> None:
    text = bench_cli.description()
    for name, cfg in bc.CONFIGS.items():
        assert f"  {name} " in text, name
        assert cfg.port in (bc.PLAIN_PORT, bc.MPTCP_PORT)
        assert bool(cfg.daemons) == (cfg.backend is not None), name
    for key, (num, den, direction) in bc.RATIOS.items():
        assert num in bc.CONFIGS and den in bc.CONFIGS and direction in ("up", "down"), key
        assert key.startswith("down_") == (direction == "down"), key
    assert bc.latency_configs(bc.ALL_CONFIGS) == ["plain_tcp", "native_mptcp", "proxy",
                                                  "proxy_nfq"]
    assert "proxy_proxy" not in bc.cpu_configs(bc.ALL_CONFIGS)
    with pytest.raises(ValueError):
        bc.register(bc.Config("proxy", "x", mptcp=False, port=bc.PLAIN_PORT))


def _bench(samples: list[dict[str, Any]], configs: list[str]) -> SimpleNamespace:
    args = bench_cli.build_parser().parse_args(["--quick", "--configs", ",".join(configs)])
    for k, v in bc.PROFILES["quick"].items():
        setattr(args, k, getattr(args, k) if getattr(args, k) is not None else v)
    return SimpleNamespace(a=args, configs=configs, beds={}, errors=[], warnings=[],
                           timing={"total_s": 1.0}, code={"commit": "x"},
                           raw={"throughput": samples, "setup": [], "cps": [], "memory": []})


def test_bench_results_are_medians_of_the_same_run() -> None:
    samples = [{"config": c, "direction": d, "run": r, "mbps": v}
               for c, vals in (("proxy", (100, 300, 200)), ("nfqueue_floor", (400, 500, 600)))
               for d in ("up", "down") for r, v in enumerate(vals, 1)]
    samples.append({"config": "proxy", "direction": "up", "run": 4, "mbps": None,
                    "error": "x"})
    res = bench_results.results(_bench(samples, ["proxy", "nfqueue_floor", "proxy_proxy"]))
    assert res["throughput_mbps"]["proxy"] == 200 and res["throughput_mbps"]["proxy_proxy"] is None
    assert res["ratios"]["proxy_vs_floor"] == pytest.approx(0.4)
    assert res["ratios"]["down_proxy_vs_floor"] == pytest.approx(0.4)
    assert res["ratios"]["proxy_vs_native"] is None  # not measured
    assert res["targets"]["bulk_proxy_vs_floor_up"]["met"] is False
    assert res["targets"]["conn_per_s"]["met"] is None
    assert res["throughput_spread_pct"]["proxy"]["up"] == pytest.approx(100.0)
    assert "plain_tcp" in res["not_run"] and "proxy_proxy" not in res["not_run"]
    text = table(res, ["proxy", "nfqueue_floor", "proxy_proxy"])
    assert "(not implemented)" in text and "0.400" in text and "NOT MET" in text


# ---------------------------------------------------------------------- handover


def test_handover_parser_offers_every_kind() -> None:
    p = handover_cli.build_parser()
    a = p.parse_args(["--kind", "break", "--trigger", "command"])
    assert (a.kind, a.trigger, a.sack, a.native) == ("break", "command", True, False)
    for name, kind in KINDS.items():
        assert kind.describe.strip().startswith(name) and kind.describe in p.epilog
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "sideways"])


def test_break_by_command_cuts_and_commands_at_one_instant() -> None:
    calls: list[Any] = []
    run = SimpleNamespace(
        a=argparse.Namespace(trigger="command"),
        emu=SimpleNamespace(down=lambda link: calls.append(("down", link))),
        client_stack=SimpleNamespace(
            switch=lambda run, to, brk: calls.append(("switch", to, brk)) or {"reply": []}))
    info = Break().act(run)
    assert sorted(calls, key=str) == [("down", 0), ("switch", "c1", True)]
    assert info["link"] == "c0 down" and info["reply"] == [] and info["t"] > 0
    run.a.trigger = "link"
    calls.clear()
    assert Break().act(run)["link"] == "c0 down" and calls == [("down", 0)]


def test_trace_metrics_gap_and_recovery() -> None:
    # 10 kB every 10 ms (8 Mbit/s) for 5 s, silence from 3.0 to 3.5 s, then the same rate
    times = [i * 0.01 for i in range(1, 301)] + [3.5 + i * 0.01 for i in range(150)]
    sizes = [10_000] * len(times)
    m = trace_metrics(times, sizes, t0=0.0, t_h=3.0, t_send_end=5.0, nominal_mbit=8.0)
    assert m["max_gap_s"] == pytest.approx(0.5) and m["max_gap_from_s"] == pytest.approx(3.0)
    assert m["max_gap_near_s"] == pytest.approx(0.5)
    assert m["rate_before_mbit"] == pytest.approx(8.0, rel=0.01)
    assert m["recovery_s"] == pytest.approx(0.5, abs=0.02)
    assert m["first_byte_after_s"] == pytest.approx(0.5)
    assert m["bytes"] == 450 * 10_000
    # a receiver that never got data again: the trailing silence is the gap
    m = trace_metrics(times[:300], sizes[:300], 0.0, 3.0, t_recv_end=9.0)
    assert m["max_gap_s"] == pytest.approx(6.0) and m["recovery_s"] is None


# ---------------------------------------------------------------------- soak


def _rec(seed: int, sent: int, received: int, **kw: Any) -> dict[str, Any]:
    return {"seed": seed, "sent": sent, "received": received, "error": None,
            "pattern_ok": True, "bad_at": None, "sent_sha256": f"s{sent}",
            "recv_sha256": f"s{received}", **kw}


def test_soak_connection_checks() -> None:
    ok_cli, ok_srv = _rec(1, 100, 200), _rec(1, 200, 100)
    assert verdict._connection(1, ok_cli, ok_srv) == []
    assert verdict._connection(1, ok_cli, None) == ["connection seed 1: no record from the "
                                                    "server"]
    bad = verdict._connection(1, _rec(1, 100, 200, pattern_ok=False, bad_at=7), ok_srv)
    assert bad == ["connection seed 1: download off the pattern at byte 7"]
    short = verdict._connection(1, ok_cli, _rec(1, 200, 90))
    assert short == ["connection seed 1: upload sent 100 bytes, 90 arrived"]
    hashes = verdict._connection(1, ok_cli, _rec(1, 200, 100, recv_sha256="other"))
    assert hashes == ["connection seed 1: upload hashes differ"]
    err = verdict._connection(1, _rec(1, 100, 200, error="reset"), ok_srv)
    assert err == ["connection seed 1: client error reset"]


def test_soak_progress_keeps_stalls_and_bad_bytes() -> None:
    p = Progress("down", limit=2.0)
    p({"t": 1.0, "conns": [[1, 0, 10, 0.3, True], [2, 0, 10, 0.4, True]]})
    p({"t": 2.0, "conns": [[1, 0, 20, 2.5, True], [2, 0, 20, 0.1, False]]})
    p({"t": 3.0, "conns": [[1, 0, 20, 3.5, True]]})
    s = p.summary()
    assert s["max_idle_s"] == 3.5 and s["max_idle_seed"] == 1 and s["events"] == 3
    assert s["stalled"] == {"1": {"first_t": 2.0, "idle_s": 3.5}} and s["off_pattern"] == [2]


def _soak_with_rss(samples: list[list[float]], tolerance: float = 10.0) -> SimpleNamespace:
    return SimpleNamespace(t_start=0.0, t_end=100.0, warmup=20.0,
                           a=SimpleNamespace(rss_every=5.0, rss_tolerance=tolerance),
                           rss=SimpleNamespace(samples=samples))


def test_soak_rss_is_judged_from_the_warm_up_to_the_steady_end() -> None:
    flat = [[t, 50_000 + (30_000 if t < 20 else 0) + t, 200] for t in range(5, 100, 5)]
    facts, v = verdict._rss(_soak_with_rss(flat), first_end=90.0)
    assert v == [] and facts["warm_kb"] == 50_020 and facts["final_kb"] == 50_090
    growing = [[t, 50_000 + 100 * t, 200] for t in range(5, 100, 5)]
    facts, v = verdict._rss(_soak_with_rss(growing), first_end=90.0)
    assert len(v) == 1 and facts["change_pct"] == pytest.approx(100 * 7000 / 52000, abs=0.01)
    _, v = verdict._rss(_soak_with_rss(growing[:4]), first_end=90.0)
    assert v and "too few RSS samples" in v[0]
