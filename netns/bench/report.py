"""The benchmark's printed report: one row per configuration, then the ratios, setup
overhead, memory per idle connection, targets, errors and warnings."""

from __future__ import annotations

from typing import Any

from .configs import CONFIGS, MSS

__all__ = ["table"]


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "n/a" if x is None else fmt.format(x)


HEAD = (f"{'config':<17} {'backend':<14} {'upload Mbit/s':>13} {'(min-max)':>11} "
        f"{'download':>8} {'(min-max)':>11} {'µs/pkt up':>9} {'dn':>5} "
        f"{'µs/MSS up':>9} {'dn':>5} {'B/pkt up':>8} {'dn':>6} {'setup ms':>8} "
        f"{'conn/s':>6} {'errors':>6}")
NOT_IMPLEMENTED = (f"{'-':<14} {'n/a':>13} {'':>11} {'n/a':>8} {'':>11} {'n/a':>9} "
                   f"{'n/a':>5} {'n/a':>9} {'n/a':>5} {'n/a':>8} {'n/a':>6} {'n/a':>8} "
                   f"{'n/a':>6} {'-':>6}   (not implemented)")


def _row(res: dict[str, Any], c: str, errs: dict[str, int]) -> str:
    raw = res["raw"]["throughput"]

    def rng(d: str) -> str:
        xs = [r["mbps"] for r in raw if r["config"] == c and r["direction"] == d
              and r.get("mbps") is not None]
        return f"{min(xs):.0f}-{max(xs):.0f}" if len(xs) > 1 else ""

    if not CONFIGS[c].implemented:
        return f"{c:<17} {NOT_IMPLEMENTED}"
    bpp = res["bytes_per_packet"].get(c) or {}
    return (f"{c:<17} {CONFIGS[c].backend or '-':<14} "
            f"{_f(res['throughput_mbps'].get(c)):>13} {rng('up'):>11} "
            f"{_f(res['throughput_down_mbps'].get(c)):>8} {rng('down'):>11} "
            f"{_f(res['us_per_packet'].get(c), '{:.1f}'):>9} "
            f"{_f(res['us_per_packet_down'].get(c), '{:.1f}'):>5} "
            f"{_f(res['us_per_mss'].get(c), '{:.2f}'):>9} "
            f"{_f(res['us_per_mss_down'].get(c), '{:.2f}'):>5} "
            f"{_f(bpp.get('up')):>8} {_f(bpp.get('down')):>6} "
            f"{_f(res['setup_ms'].get(c), '{:.3f}'):>8} "
            f"{_f(res['conn_per_s'].get(c)):>6} {errs.get(c, 0) or '-':>6}")


def _ratios(r: dict[str, Any]) -> list[str]:
    return [
        "", "µs/pkt: daemon CPU per queued packet (a GSO super-packet with fnfqueue); "
        f"µs/MSS: per {MSS} payload bytes moved (comparable across backends); "
        "B/pkt: payload bytes per queued packet",
        "",
        "ratios (upload, the headline): "
        f"proxy / nfqueue_floor = {_f(r['proxy_vs_floor'], '{:.3f}')}   "
        f"proxy / native_mptcp = {_f(r['proxy_vs_native'], '{:.3f}')}   "
        f"proxy_2sf / proxy = {_f(r['proxy_2sf_vs_proxy'], '{:.3f}')}",
        "ratios (download):            "
        f"proxy / nfqueue_floor = {_f(r['down_proxy_vs_floor'], '{:.3f}')}   "
        f"proxy / native_mptcp = {_f(r['down_proxy_vs_native'], '{:.3f}')}",
        "netfilterqueue (up / down):   "
        f"proxy_nfq / nfqueue_floor_nfq = {_f(r['proxy_nfq_vs_floor_nfq'], '{:.3f}')} / "
        f"{_f(r['down_proxy_nfq_vs_floor_nfq'], '{:.3f}')}   "
        f"proxy_nfq / native_mptcp = {_f(r['proxy_nfq_vs_native'], '{:.3f}')}",
        "fnfqueue vs netfilterqueue:   "
        f"proxy / proxy_nfq = {_f(r['proxy_vs_proxy_nfq'], '{:.2f}')} / "
        f"{_f(r['down_proxy_vs_proxy_nfq'], '{:.2f}')}   "
        f"nfqueue_floor / nfqueue_floor_nfq = {_f(r['floor_vs_floor_nfq'], '{:.2f}')} / "
        f"{_f(r['down_floor_vs_floor_nfq'], '{:.2f}')}  (up / down)"]


def _connections(res: dict[str, Any]) -> list[str]:
    out = []
    ov = res["setup_overhead_ms"]
    if ov:
        out.append("setup overhead vs native_mptcp: " + "   ".join(
            f"{c} {_f(v, '{:+.3f}')} ms" for c, v in ov.items()))
    for n, v in res["bytes_per_conn"].items():
        held = res["idle_conns_held"].get(n) or []
        uniq = sorted({(h, p) for h, p in held})
        held_s = ", ".join(f"{h} open / {p} in the proxy" for h, p in uniq) or "not measured"
        if len(held) > 1 and len(uniq) == 1:
            held_s += f", each of {len(held)} runs"
        out.append(f"proxy memory with {int(n):>6,} idle connections: "
                   f"{_f(v, '{:,.0f}')} bytes/connection ({held_s})")
    return out


def _targets(res: dict[str, Any]) -> list[str]:
    out = ["", "targets (this run):"]
    for t in res["targets"].values():
        v = t["value"]
        verdict = "n/a (not measured)" if t["met"] is None else (
            "met" if t["met"] else "NOT MET")
        fmt = "{:,.3f}" if v is not None and v < 100 else "{:,.0f}"
        out.append(f"  {t['what']:<58} {_f(v, fmt):>10}  target {t['target']:<8} {verdict}")
    if res.get("not_run"):
        out.append("not run: " + ", ".join(f"{c} ({why})" for c, why in res["not_run"].items()))
    out.append(f"runs: {res['runs']} alternating; medians; machine: {res['machine']}; "
               f"code: {res['code']}")
    return out


def _problems(res: dict[str, Any]) -> list[str]:
    out = []
    if res["errors"]:
        out += ["", f"ERRORS ({len(res['errors'])}):"]
        out += [f"  {e['config']} {e['metric']} run {e['run']}: {e['error'][:300]}"
                for e in res["errors"][:40]]
    if res["warnings"]:
        out += ["", "warnings:"] + [f"  {w['config']} {w['metric']}: {w['warning']}"
                                    for w in res["warnings"]]
    return out


def table(res: dict[str, Any], configs: list[str]) -> str:
    """The report of ``res`` (the run's JSON) for ``configs``."""
    errs: dict[str, int] = {}
    for e in res["errors"]:
        errs[e["config"]] = errs.get(e["config"], 0) + 1
    out = [HEAD, "-" * len(HEAD), *(_row(res, c, errs) for c in configs)]
    out += _ratios(res["ratios"]) + _connections(res) + _targets(res) + _problems(res)
    return "\n".join(out)
