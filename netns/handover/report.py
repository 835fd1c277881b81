"""The handover report: from what a :class:`~netns.handover.scenario.Run` observed to the
JSON (:data:`REPORT_KEYS` and more) and the printed summary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..nstat import ERROR_COUNTERS
from .captures import capture_metrics, decode_captures
from .kinds import KINDS
from .plot import plot
from .stacks import STACKS, stack_name
from .trace import read_trace, return_metrics, trace_metrics

if TYPE_CHECKING:
    from .scenario import Run

__all__ = ["REPORT_KEYS", "build_report", "summary", "title"]

REPO = Path(__file__).resolve().parents[2]

# Keys of the --json report (the interop test checks they are all present).
REPORT_KEYS = (
    "scenario", "handover", "integrity", "integrity_detail", "bytes", "max_gap_s",
    "max_gap_from_s", "max_gap_near_s", "max_gap_overall_s", "recovery_s",
    "recovery_nominal_s",
    "first_byte_after_s",
    "rate_before_mbit", "rate_after_mbit", "goodput_mbit", "retransmissions",
    "server_mptcp", "client_mptcp", "proxy_stats", "error_counters", "errors_ok",
    "warnings", "capture", "plot", "pcaps",
)
TRACE_KEYS = ("max_gap_s", "max_gap_from_s", "max_gap_near_s", "max_gap_near_from_s",
              "max_gap_overall_s", "recovery_s", "recovery_nominal_s", "first_byte_after_s",
              "rate_before_mbit", "rate_after_mbit", "goodput_mbit")
SENDER_TCP = ("RetransSegs", "TCPTimeouts", "TCPLossProbes", "TCPFastRetrans",
              "TCPSlowStartRetrans", "TCPLostRetransmit", "TCPSackRecovery",
              "TCPRenoRecovery", "TCPSpuriousRTOs", "TCPDSACKRecv")
MPTCP_KEYS = ("MPTCPRetrans", "MPPrioTx", "MPPrioRx", "RmAddr", "RmAddrTx", "RmSubflow",
              "MPJoinSynRx", "MPJoinSynBackupRx", "MPJoinAckRx", "MPJoinSynTx",
              "MPJoinSynAckRx", "SubflowStale", "SubflowRecover", "DuplicateData",
              "OFOQueue", "MPRstTx", "MPRstRx", "MPCurrEstab")
PROXY_ERRORS = ("DSSNoMapping", "DSSNoMatchTCP", "DSSNotMatching", "DSSPartialMapping",
                "DataCsumErr", "DataCsumMissing", "DataFinMismatch", "InfiniteMapRx",
                "InternalErrors", "MPJoinSynAckHMacFailure", "MPJoinSynAckNoMPJoin",
                "MPFailRx", "MPCapableFallbackSYNACK", "MPCapableDataFallback",
                "FallbackConnections", "OptMalformed", "PktMalformed", "PktBadChecksum")


def title(a: argparse.Namespace) -> str:
    who = STACKS[stack_name(a)].label
    return (f"{who}: {KINDS[a.kind].title(a)}, {'SACK' if a.sack else 'no SACK'}, "
            f"{a.direction}, {a.delay_ms:g} ms one-way, {a.rate_mbit:g} Mbit/s per path")


def _commit() -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no", "mptcp_proxy"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() + ("+dirty" if dirty else "")) if r.returncode == 0 else None


def _delta(before: dict, after: dict, group: str) -> dict[str, int]:
    b, a = before.get(group, {}), after.get(group, {})
    return {k: a.get(k, 0) - b.get(k, 0) for k in a}


def scenario(run: Run) -> dict[str, Any]:
    a = run.a
    return {"kind": a.kind, "sack": a.sack, "delay_ms": a.delay_ms, "rate_mbit": a.rate_mbit,
            "direction": a.direction, "duration_s": a.duration, "at_s": a.at,
            **KINDS[a.kind].scenario(a), "native": a.native, "plain": a.plain,
            "client": stack_name(a), "ipv6": a.ipv6, "user_routing": not a.no_user_routing,
            "proxy_subflows": None if a.native or a.plain else run.subflows,
            "fallback_route": a.fallback_route, "router_rp_filter": 1, "commit": _commit(),
            "cc": run.cc}


def build_report(run: Run) -> dict[str, Any]:
    """The report of a finished run (see ``tools/handover --help`` for the metrics)."""
    report: dict[str, Any] = {k: None for k in REPORT_KEYS}
    report["scenario"] = scenario(run)
    report["handover"] = run.handover
    report["proxy_stats"] = run.proxy_stats
    _proxy(run, report)
    sender, receiver = ((run.server_rec, run.client_rec) if run.a.direction == "down"
                        else (run.client_rec, run.server_rec))
    _integrity(run, report, sender, receiver)
    times, sizes = _receiver_trace(run)
    _trace(run, report, times, sizes, sender, receiver)
    _counters(run, report)
    cap = _captures(run, report)
    if run.a.plot:
        plot(run.a.plot, title(run.a), cap, times, sizes, run.t0, run.t_h,
             report["recovery_s"], f"max gap {report['max_gap_s']} s, recovery "
             f"{report['recovery_s']} s, integrity {report['integrity']}",
             t_recv_end=receiver.get("t_end"))
        report["plot"] = run.a.plot
    report["warnings"] = run.warnings
    return report


def _proxy(run: Run, report: dict[str, Any]) -> None:
    px = run.px
    if px is None:
        return
    report["proxy_connections"] = run.proxy_connections
    if run.a.keep_pcap:
        with open(os.path.join(run.a.keep_pcap, "proxy.log"), "w") as f:
            f.write("\n".join(px.log) + "\n")
    bad_log = [ln for ln in px.log if " ERROR " in ln or "Traceback" in ln]
    report["proxy_exit_code"] = px.exit_code
    report["proxy_log_errors"] = bad_log[:20]
    if bad_log:
        run.warnings.append(f"proxy logged {len(bad_log)} error line(s)")


def _integrity(run: Run, report: dict[str, Any], sender: dict, receiver: dict) -> None:
    """Same byte count and SHA-256 at both ends, every byte the expected one."""
    srv, cli = run.server_rec, run.client_rec
    ok = (sender.get("error") is None and receiver.get("error") is None
          and sender.get("sent") is not None and sender.get("sent") == receiver.get("received")
          and sender.get("sent_sha256") == receiver.get("recv_sha256")
          and receiver.get("bad_at") is None and (sender.get("sent") or 0) > 0)
    report["integrity"] = bool(ok)
    report["integrity_detail"] = {
        "sent": sender.get("sent"), "received": receiver.get("received"),
        "sha_match": sender.get("sent_sha256") == receiver.get("recv_sha256"),
        "first_bad_offset": receiver.get("bad_at"),
        "sender_error": sender.get("error"), "receiver_error": receiver.get("error"),
        "server_is_mptcp": srv.get("is_mptcp"), "client_is_mptcp": cli.get("is_mptcp"),
    }
    if not ok:
        run.warnings.append("data integrity check FAILED")
    if srv.get("is_mptcp") is False:
        run.warnings.append("the server socket is not MPTCP (fallback to TCP)")


def _receiver_trace(run: Run) -> tuple[list[float], list[int]]:
    path = run.traces["client" if run.a.direction == "down" else "server"]
    return read_trace(path) if os.path.exists(path) else ([], [])


def _trace(run: Run, report: dict[str, Any], times: list[float], sizes: list[int],
           sender: dict, receiver: dict) -> None:
    a = run.a
    m = trace_metrics(times, sizes, run.t0, run.t_h, sender.get("t_send_end"),
                      receiver.get("t_end"), nominal_mbit=a.rate_mbit)
    if a.keep_pcap:
        trace = run.traces["client" if a.direction == "down" else "server"]
        if os.path.exists(trace):
            shutil.copy(trace, os.path.join(a.keep_pcap, "receiver.trace"))
        with open(os.path.join(a.keep_pcap, "results.json"), "w") as f:
            json.dump({"server": run.server_rec, "client": run.client_rec, "t0": run.t0,
                       "t_h": run.t_h, "clock_offset": run.offset}, f, indent=1)
    report["bytes"] = m["bytes"]
    report.update({k: m[k] for k in TRACE_KEYS})
    t_ret = run.handover.pop("t_return", None)
    if t_ret is not None:
        run.handover["return_at_s"] = round(t_ret - run.t0, 4)
        report["after_return"] = return_metrics(times, sizes, run.t_h, t_ret,
                                                receiver.get("t_end"))
    report["trace"] = {k: m[k] for k in ("recv_calls", "first_byte_s", "last_byte_s",
                                         "max_gap_overall_from_s")}
    if m["recovery_s"] is None:
        run.warnings.append("delivery never came back to 90 % of the previous rate")


def _counters(run: Run, report: dict[str, Any]) -> None:
    """Retransmissions of the sending namespace, MPTcpExt of both, error counters."""
    down = run.a.direction == "down"
    send_ns = (run.s_before, run.s_after) if down else (run.c_before, run.c_after)
    tcp_d = {**_delta(*send_ns, "Tcp"), **_delta(*send_ns, "TcpExt")}
    s_mp = _delta(run.s_before, run.s_after, "MPTcpExt")
    c_mp = _delta(run.c_before, run.c_after, "MPTcpExt")
    report["retransmissions"] = {
        "sender_ns": "server" if down else "client",
        **{k: tcp_d.get(k, 0) for k in SENDER_TCP},
        "MPTCPRetrans_server": s_mp.get("MPTCPRetrans", 0),
        "MPTCPRetrans_client": c_mp.get("MPTCPRetrans", 0),
        "proxy_Retransmits": (report["proxy_stats"] or {}).get("Retransmits", 0)
        if run.px is not None else None,
    }
    report["server_mptcp"] = {k: s_mp.get(k, 0) for k in MPTCP_KEYS}
    report["server_mptcp_nonzero"] = {k: v for k, v in sorted(s_mp.items()) if v}
    report["client_mptcp"] = {k: v for k, v in sorted(c_mp.items()) if v}
    c_ip = _delta(run.c_before, run.c_after, "Ip")
    report["client_ip"] = {k: c_ip.get(k, 0) for k in ("OutNoRoutes", "OutRequests")}
    if c_ip.get("OutNoRoutes"):
        run.warnings.append(
            f"{c_ip['OutNoRoutes']} packet(s) of the client namespace found no route "
            "(Ip OutNoRoutes): they never reached the proxy's OUTPUT hook")
    errs = {f"server:{k}": s_mp[k] for k in ERROR_COUNTERS if s_mp.get(k)}
    errs.update({f"client:{k}": c_mp[k] for k in ERROR_COUNTERS if c_mp.get(k)})
    errs.update({f"proxy:{k}": v for k, v in (report["proxy_stats"] or {}).items()
                 if k in PROXY_ERRORS and v})
    report["error_counters"] = errs
    report["errors_ok"] = not errs
    if errs:
        run.warnings.append(f"error counters moved: {errs}")


def _captures(run: Run, report: dict[str, Any]) -> Any:
    present = {i: p for i, p in run.pcaps.items() if os.path.exists(p)}
    cap = None
    try:
        cap = decode_captures(present, ["10.0.1.1", "10.0.2.1"], run.a.direction, run.offset)
        report["capture"] = capture_metrics(cap, run.t0, run.t_h, "c0", "c1")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        run.warnings.append(f"capture decoding failed: {e}")
        report["capture"] = {}
    report["pcaps"] = sorted(present.values()) if run.a.keep_pcap else []
    return cap


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}{unit}"
    return f"{v}{unit}"


def summary(r: dict, a: argparse.Namespace) -> str:
    """The printed summary of report ``r``."""
    rt = r["retransmissions"] or {}
    sm = r["server_mptcp"] or {}
    cap = r["capture"] or {}
    lines = [
        title(a),
        f"  handover at {_fmt(r['handover']['at_s'], ' s')} "
        f"(action took {_fmt(r['handover']['action_s'], ' s')})",
        f"  integrity        {r['integrity']}  ({r['bytes']} bytes delivered)",
        f"  max gap          {_fmt(r['max_gap_s'], ' s')} from {_fmt(r['max_gap_from_s'], ' s')}"
        f"   (within [at-1, at+3]: {_fmt(r['max_gap_near_s'], ' s')}; whole run "
        f"{_fmt(r['max_gap_overall_s'], ' s')})",
        f"  recovery         {_fmt(r['recovery_s'], ' s')} (to 80 % of the path rate "
        f"{_fmt(r['recovery_nominal_s'], ' s')})   first byte after stall "
        f"{_fmt(r['first_byte_after_s'], ' s')}",
        f"  rate before/after {_fmt(r['rate_before_mbit'])} / {_fmt(r['rate_after_mbit'])} "
        f"Mbit/s (goodput {_fmt(r['goodput_mbit'])})",
        f"  retransmissions  RetransSegs {rt.get('RetransSegs')} ({rt.get('sender_ns')} ns), "
        f"timeouts {rt.get('TCPTimeouts')}, MPTCPRetrans {rt.get('MPTCPRetrans_server')}, "
        f"proxy {rt.get('proxy_Retransmits')}",
        f"  server MPTcpExt  MPPrioRx {sm.get('MPPrioRx')}, RmAddr {sm.get('RmAddr')}, "
        f"MPJoinSynRx {sm.get('MPJoinSynRx')}, MPJoinAckRx {sm.get('MPJoinAckRx')}, "
        f"SubflowStale {sm.get('SubflowStale')}",
        f"  capture          first data on c1 {_fmt(cap.get('new_path_first_data_s'), ' s')} "
        f"after, last data on c0 {_fmt(cap.get('old_path_last_data_s'), ' s')} after "
        f"({cap.get('old_path_data_after')} segments)",
        f"  error counters   {'none' if r['errors_ok'] else r['error_counters']}",
    ]
    ar = r.get("after_return")
    if ar:
        lines.append(f"  after the return first byte {_fmt(ar['first_byte_s'], ' s')}, back to "
                     f"90 % of the previous rate {_fmt(ar['recovery_s'], ' s')} (80 % of the "
                     f"path rate {_fmt(ar.get('recovery_nominal_s'), ' s')})")
    if r.get("proxy_stats") is not None:
        lines.append(f"  proxy counters   {r['proxy_stats']}")
    if r["plot"]:
        lines.append(f"  plot             {r['plot']}")
    for w in r["warnings"]:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)
