"""The soak's judgement: every byte both ways, no stuck connection, memory flat, the
handovers done, no error counter, a clean daemon. Each failed check is a violation (a
sentence in the report); the run passes when there is none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..nstat import ERROR_COUNTERS, nonzero

if TYPE_CHECKING:
    from .run import Soak

__all__ = ["report", "summary"]

PROXY_ERRORS = ("InternalErrors", "FallbackConnections")


def _by_seed(recs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in recs if "seed" in r}


def _connection(seed: int, cli: dict | None, srv: dict | None) -> list[str]:
    """Violations of one connection: missing or failed ends, bytes lost or off the
    pattern in either direction."""
    name = f"connection seed {seed}"
    if cli is None or srv is None:
        return [f"{name}: no record from the {'client' if cli is None else 'server'}"]
    out = []
    for role, rec in (("client", cli), ("server", srv)):
        if rec.get("error"):
            out.append(f"{name}: {role} error {rec['error']}")
    for what, tx, rx in (("upload", cli, srv), ("download", srv, cli)):
        if not rx.get("pattern_ok"):
            out.append(f"{name}: {what} off the pattern at byte {rx.get('bad_at')}")
        if tx.get("sent") != rx.get("received"):
            out.append(f"{name}: {what} sent {tx.get('sent')} bytes, {rx.get('received')} "
                       "arrived")
        elif tx.get("sent_sha256") != rx.get("recv_sha256"):
            out.append(f"{name}: {what} hashes differ")
        if not tx.get("sent"):
            out.append(f"{name}: no {what} at all")
    return out


def _integrity(s: Soak) -> tuple[dict[str, Any], list[str]]:
    cli, srv = _by_seed(s.client_recs), _by_seed(s.server_recs)
    seeds = range(1, s.a.connections + 1)
    violations = [v for seed in seeds for v in _connection(seed, cli.get(seed), srv.get(seed))]
    done = [seed for seed in seeds if seed in cli and seed in srv
            and not _connection(seed, cli[seed], srv[seed])]
    gaps = {"down": max((round(r.get("max_gap_s") or 0, 3) for r in cli.values()),
                        default=None),
            "up": max((round(r.get("max_gap_s") or 0, 3) for r in srv.values()),
                      default=None)}
    facts = {"connections": s.a.connections, "intact": len(done),
             "bytes_up": sum(r.get("received", 0) for r in srv.values()),
             "bytes_down": sum(r.get("received", 0) for r in cli.values()),
             "max_gap_s": gaps,
             "server_not_mptcp": sum(1 for r in srv.values() if r.get("fallback") is not False)}
    if facts["server_not_mptcp"]:
        violations.append(f"{facts['server_not_mptcp']} server socket(s) not MPTCP (fallback)")
    return facts, violations


def _progress(s: Soak, gaps: dict[str, float | None]) -> tuple[dict[str, Any], list[str]]:
    """No connection went silent longer than the limit, live or in its final record."""
    facts = {"down": s.down.summary(), "up": s.up.summary(), "limit_s": s.a.stall_limit,
             "snapshots": s.snapshots}
    out = []
    for p in (s.down, s.up):
        if p.stalled:
            worst = max(v["idle_s"] for v in p.stalled.values())
            out.append(f"{len(p.stalled)} connection(s) received no {p.direction}load byte "
                       f"for more than {s.a.stall_limit:g} s (worst {worst:.1f} s)")
        if p.bad:
            out.append(f"{len(p.bad)} connection(s) received {p.direction}load bytes off "
                       "the pattern")
        if p.events == 0:
            out.append(f"no progress report on the {p.direction}load direction")
    for d, g in gaps.items():
        if g is not None and g > s.a.stall_limit:
            out.append(f"{'an' if d == 'up' else 'a'} {d}load delivery gap of {g:.1f} s "
                       f"(limit {s.a.stall_limit:g} s)")
    return facts, out


def _rss(s: Soak, first_end: float | None) -> tuple[dict[str, Any], list[str]]:
    """RSS after the warm-up against RSS at the end of the steady phase (before the first
    connection ended)."""
    t_warm = s.t_start + s.warmup
    end = first_end if first_end is not None else s.t_end
    steady = [x for x in s.rss.samples if t_warm <= x[0] <= end]
    facts: dict[str, Any] = {"every_s": s.a.rss_every, "warmup_s": s.warmup,
                             "tolerance_pct": s.a.rss_tolerance,
                             "samples": [[round(t - s.t_start, 1), kb, n]
                                         for t, kb, n in s.rss.samples],
                             "warm_kb": None, "final_kb": None, "change_pct": None}
    if len(steady) < 2:
        return facts, ["too few RSS samples after the warm-up (run longer, or --warmup "
                       "shorter)"]
    warm, final = steady[0][1], steady[-1][1]
    change = 100.0 * (final - warm) / warm
    facts.update(warm_kb=warm, final_kb=final, change_pct=round(change, 2),
                 peak_kb=max(x[1] for x in steady),
                 connections_held=[min(x[2] for x in steady), max(x[2] for x in steady)])
    if abs(change) > s.a.rss_tolerance:
        return facts, [f"daemon RSS went from {warm} KiB after the warm-up to {final} KiB "
                       f"({change:+.1f} %, tolerance {s.a.rss_tolerance:g} %)"]
    return facts, []


def _handovers(s: Soak) -> tuple[dict[str, Any], list[str]]:
    facts = s.handovers.summary()
    out = []
    expected = int((s.seconds - 1.0) // s.a.handover_every)  # until the transfers end
    if facts["commands"] < max(1, expected - 1):
        out.append(f"only {facts['commands']} handovers commanded (expected ~{expected})")
    if facts["failed_commands"]:
        out.append(f"{len(facts['failed_commands'])} handover command(s) failed")
    if facts["connection_errors"]:
        out.append(f"{facts['connection_errors']} connection(s) could not be handed over")
    return facts, out


def _counters(s: Soak) -> tuple[dict[str, Any], list[str]]:
    facts = {"server": nonzero(s.server_delta), "proxy": nonzero(s.proxy_delta),
             "daemon": s.daemon}
    out = [f"server {k} +{s.server_delta[k]}" for k in ERROR_COUNTERS
           if s.server_delta.get(k)]
    out += [f"proxy {k} +{s.proxy_delta[k]}" for k in PROXY_ERRORS if s.proxy_delta.get(k)]
    d = s.daemon
    if d.get("exited_early") or d.get("exit_code") != 0:
        out.append(f"the daemon did not exit cleanly (code {d.get('exit_code')})")
    if d.get("rules_left"):
        out.append(f"{d['rules_left']} MPTCP_PROXY rule(s) left after the daemon")
    if d.get("log_errors"):
        out.append(f"the daemon logged {len(d['log_errors'])} error line(s)")
    return facts, out


def report(s: Soak) -> dict[str, Any]:
    """The JSON report of a finished run: facts per check, ``violations``, ``ok``."""
    ends = [r["t_end"] for r in s.client_recs if r.get("t_end")]
    integrity, v_int = _integrity(s)
    progress, v_prog = _progress(s, integrity["max_gap_s"])
    rss, v_rss = _rss(s, min(ends) if ends else None)
    handovers, v_hand = _handovers(s)
    counters, v_count = _counters(s)
    violations = s.problems + v_int + v_prog + v_rss + v_hand + v_count
    return {
        "settings": {"connections": s.a.connections, "seconds": s.seconds,
                     "handover_every_s": s.a.handover_every, "rate_kbit": s.a.rate_kbit,
                     "stagger_s": s.a.stagger, "delay_ms": s.a.delay_ms,
                     "rate_mbit": s.a.rate_mbit, "stall_limit_s": s.a.stall_limit,
                     "warmup_s": s.warmup, "rss_tolerance_pct": s.a.rss_tolerance},
        "duration_s": round(s.t_end - s.t_start, 1),
        "integrity": integrity, "progress": progress, "rss": rss, "handovers": handovers,
        "counters": counters, "namespaces": s.namespaces, "violations": violations,
        "ok": not violations,
    }


def summary(r: dict[str, Any]) -> str:
    """The printed summary of report ``r``."""
    st, it, rss, ho = r["settings"], r["integrity"], r["rss"], r["handovers"]
    pr = r["progress"]
    took = ho["took_s"]
    lines = [
        f"soak: {st['connections']} connections through mptcp-proxy for {r['duration_s']} s, "
        f"a handover every {st['handover_every_s']:g} s, {st['rate_kbit']:g} kbit/s each way "
        "per connection",
        f"  data         {it['intact']}/{it['connections']} connections intact both ways; "
        f"{it['bytes_up'] / 1e6:.1f} MB up, {it['bytes_down'] / 1e6:.1f} MB down, every "
        "byte checked",
        f"  progress     longest silence down {pr['down']['max_idle_s']} s / up "
        f"{pr['up']['max_idle_s']} s (limit {pr['limit_s']:g} s); longest delivery gap "
        f"down {it['max_gap_s']['down']} s / up {it['max_gap_s']['up']} s",
        f"  handovers    {ho['commands']} commands ({ho['moves']} connection moves), "
        f"{len(ho['failed_commands'])} failed, {ho['connection_errors']} connection errors;"
        f" command took median {took['median']} s, max {took['max']} s",
        f"  daemon RSS   {_kib(rss['warm_kb'])} after the {rss['warmup_s']:g} s warm-up -> "
        f"{_kib(rss['final_kb'])} at the end ({_pct(rss['change_pct'])}, tolerance "
        f"{rss['tolerance_pct']:g} %)",
        f"  counters     server {r['counters']['server']}",
        f"               proxy {r['counters']['proxy']}",
    ]
    lines += [f"  VIOLATION: {v}" for v in r["violations"][:50]]
    lines.append("  result       " + ("OK" if r["ok"] else
                                      f"{len(r['violations'])} violation(s)"))
    return "\n".join(lines)


def _kib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MiB"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} %"
