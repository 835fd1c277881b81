"""The command line of ``tools/handover`` (see :mod:`netns.handover`)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from . import __doc__ as DOC
from . import mobility  # noqa: F401  (registers the mobility kinds)
from . import trace as tr
from .kinds import KINDS
from .report import build_report, summary
from .scenario import Run

__all__ = ["build_parser", "main"]

EPILOG_TAIL = f"""\
  The access router validates source addresses (rp_filter=1, BCP 38): a packet that
  leaves by the wrong link with its old source address is dropped, as a real access
  network would; --fallback-route adds a second default route (via c1) to the client.
  The handover instant is taken just before the action, in time.monotonic(), the clock
  of the transfer programs too (the control request is sent in-process over the
  daemon's socket, as mptcpctl sends it, so no interpreter start-up skews it).

metrics (from the receiving application's trace: time.monotonic() and size of every
recv() that returned data; t_h = handover instant):
  max_gap_s           longest time between two data-returning recv() calls, among
                      the gaps ending at or after t_h - {tr.GAP_WINDOW_S:g} s (a trailing
                      silence until the receiver was stopped counts);
                      max_gap_near_s: among the gaps overlapping [t_h - {tr.GAP_WINDOW_S:g} s,
                      t_h + {tr.NEAR_AFTER_S:g} s] (the handover's own stall);
                      max_gap_overall_s: over the whole transfer
  recovery_s          t - t_h for the first t in {{t_h}} U {{recv times >= t_h}} such that
                      the bytes delivered in [t, t + {tr.RATE_WINDOW_S:g} s] reach
                      {tr.RATE_FRACTION:.0%} of R x {tr.RATE_WINDOW_S:g} s, where R is the mean
                      delivery rate over the {tr.REF_WINDOW_S:g} s before t_h (null: never)
  recovery_nominal_s  the same, but the window must carry {tr.NOMINAL_FRACTION:.0%} of --rate-mbit
                      (instead of {tr.RATE_FRACTION:.0%} of R): fairer when the rate before
                      t_h was already low (without SACK)
  first_byte_after_s  end of the longest gap that ends after t_h, minus t_h (null when
                      delivery never resumed)
  rate_before_mbit    R; rate_after_mbit: mean rate over the {tr.REF_WINDOW_S:g} s before the
                      sender stopped (not before t_h)
  retransmissions     deltas of the sending namespace's Tcp/TcpExt counters (server for
                      down, client for up: RetransSegs, TCPTimeouts ...), MPTcpExt
                      MPTCPRetrans, and the proxy's own Retransmits
  error_counters      the MPTcpExt counters that must stay 0 (netns.nstat.ERROR_COUNTERS;
                      server, and client for --native) and the proxy's error counters
  integrity           same byte count and SHA-256 at both ends, and the receiver found
                      the expected pattern byte for byte
  capture             from tcpdump on c0/c1 in the client namespace: first data on c1
                      and last data on c0 after t_h, tshark-flagged retransmissions,
                      signalling (MP_PRIO, REMOVE_ADDR, MP_JOIN, RST) around t_h
plot: DSN (data sent, per segment: mapping DSN + offset) and DAN (DATA_ACK) relative to
  the data sender's IDSN+1, per interface, and the application's delivered bytes,
  against time since the transfer start; top: the handover, bottom: the full run.
"""


def epilog() -> str:
    return ("what happens:\n" + "\n".join(k.describe for k in KINDS.values()) + "\n"
            + EPILOG_TAIL)


def _options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sack", dest="sack", action="store_true", default=True,
                   help="the client's stack uses SACK (default)")
    g.add_argument("--no-sack", dest="sack", action="store_false",
                   help="net.ipv4.tcp_sack=0 in the client namespace")
    p.add_argument("--delay-ms", type=float, default=30.0,
                   help="one-way delay per path and direction (default 30)")
    p.add_argument("--rate-mbit", type=float, default=20.0,
                   help="rate per path and direction (default 20)")
    p.add_argument("--direction", choices=("down", "up"), default="down",
                   help="down: server to client (the paper's), up: client to server")
    p.add_argument("--duration", type=float, default=12.0,
                   help="seconds the sender streams (default 12)")
    p.add_argument("--at", type=float, default=4.0,
                   help="handover this many seconds after the connection (default 4)")


def _kind_options(p: argparse.ArgumentParser) -> None:
    """Each kind's own options (two kinds must not define the same one)."""
    for kind in KINDS.values():
        kind.add_options(p)


def _output_options(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--native", action="store_true",
                     help="no proxy: native MPTCP client with the kernel path manager")
    who.add_argument("--plain", action="store_true",
                     help="no proxy, no MPTCP: a plain TCP client (the server falls back)")
    p.add_argument("--ipv6", action="store_true",
                   help="the transfer over IPv6 (the bed is dual stack)")
    p.add_argument("--no-user-routing", action="store_true",
                   help="no policy routing by source address in the client (one default "
                        "route per link, as DHCP leaves it): only the proxy's own")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for mptcp-proxy (repeat; e.g. --proxy-arg=--prefer "
                        "--proxy-arg=c1)")
    p.add_argument("--plot", metavar="PNG", help="write the DSN/DAN plot here")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON here")
    p.add_argument("--keep-pcap", metavar="DIR",
                   help="keep the captures (c0.pcap, c1.pcap), the proxy's log, the "
                        "receiver trace and the programs' results in DIR")
    p.add_argument("--fallback-route", action="store_true",
                   help="give the client namespace a second default route, via c1 "
                        "(metric 100), as a host with DHCP on both links has; without it "
                        "a socket bound to c0's address has no route once c0 is down")
    p.add_argument("--cc", metavar="NAME",
                   help="congestion control of the client and server namespaces "
                        "(default: the kernel's, bbr here; bbr's PROBE_RTT dips the rate "
                        "for ~0.2 s every 10 s; namespaces may only pick from the host's "
                        "net.ipv4.tcp_allowed_congestion_control)")
    p.add_argument("--proxy-subflows", choices=["backup", "active", "manual"],
                   help="the proxy's --subflows (default: backup for make, manual for break "
                        "— the paper's break setup has only the initial subflow)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds after --duration before a hung transfer is stopped "
                        "(default 60)")
    p.add_argument("--proxy-log-level", default="info",
                   choices=("debug", "info", "warning"), help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/handover", description=DOC.split("\n\n", 1)[1].split("\nModules:")[0]
        .strip(), epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=tuple(KINDS), required=True,
                   help=" or ".join(k.help for k in KINDS.values()))
    _options(p)
    _kind_options(p)
    _output_options(p)
    return p


def _check_setup(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    if not 0 < a.at < a.duration:
        p.error("--at must be within (0, --duration)")
    if os.geteuid() != 0:
        print("tools/handover: must run as root (network namespaces)", file=sys.stderr)
        return 3
    for tool in ("tcpdump", "tshark", "ip"):
        if shutil.which(tool) is None:
            print(f"tools/handover: {tool} not found", file=sys.stderr)
            return 3
    return 0


def _signals() -> None:
    owner = os.getpid()

    def on_signal(signum: int, frame: Any) -> None:
        # pyroute2 opens namespace sockets in forked children and stops them with SIGTERM
        # (Ctrl-C reaches them too): a child must just die, not unwind our stack and run
        # the bed's cleanup (which deadlocks the parent waiting for it).
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    rc = _check_setup(a, p)
    if rc:
        return rc
    if a.keep_pcap:
        os.makedirs(a.keep_pcap, exist_ok=True)
    if a.plot:
        os.makedirs(os.path.dirname(os.path.abspath(a.plot)), exist_ok=True)
    _signals()
    workdir = tempfile.mkdtemp(prefix="handover-")
    try:
        run = Run(a, workdir, a.keep_pcap or workdir)
        run.execute()
        report = build_report(run)
    except KeyboardInterrupt:
        print("tools/handover: interrupted; test bed removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary(report, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True, default=str)
    return 0 if report["integrity"] else 1
