"""The command line of ``tools/soak`` (see :mod:`netns.soak`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from . import __doc__ as DOC
from .run import Soak, log
from .verdict import report, summary

__all__ = ["build_parser", "main"]


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/soak", description=DOC.split("\nModules:")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=_positive(int), default=200,
                   help="connections through the proxy (default 200)")
    p.add_argument("--handover-every", type=_positive(float), default=2.0, metavar="S",
                   help="seconds between handovers, alternating c1 and c0 (default 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=_positive(float), default=30.0,
                   help="how long every connection transfers (default 30)")
    g.add_argument("--seconds", type=_positive(float), help="the same, in seconds")
    p.add_argument("--rate-kbit", type=_positive(float), default=200.0,
                   help="pace of each connection, each direction, kbit/s (default 200)")
    p.add_argument("--stagger", type=float, default=0.02, metavar="S",
                   help="seconds between connection starts (default 0.02)")
    p.add_argument("--stall-limit", type=_positive(float), default=10.0, metavar="S",
                   help="longest time a connection may go without receiving (default 10)")
    p.add_argument("--warmup", type=_positive(float), metavar="S",
                   help="seconds before the RSS reference sample (default: a quarter of "
                        "the run, 10 to 60 s)")
    p.add_argument("--rss-tolerance", type=_positive(float), default=10.0, metavar="PCT",
                   help="largest RSS change from the warm-up to the end, %% (default 10)")
    p.add_argument("--rss-every", type=_positive(float), default=5.0, metavar="S",
                   help="seconds between RSS samples (default 5)")
    p.add_argument("--progress", type=_positive(float), default=1.0, metavar="S",
                   help="seconds between the peers' progress reports (default 1)")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="one-way delay of each client path (default none)")
    p.add_argument("--rate-mbit", type=float, default=0.0,
                   help="rate of each client path, both ways (default: unlimited)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON here")
    return p


def _settle(a: argparse.Namespace) -> None:
    a.seconds = a.seconds or a.minutes * 60
    if a.warmup is None:
        a.warmup = min(60.0, max(10.0, a.seconds / 4))


_MAIN_PID = os.getpid()


def _sigterm(*_: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a child forked by pyroute2 (netns helper): just die
        os._exit(128 + signal.SIGTERM)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    _settle(a)
    if a.warmup >= a.seconds:
        p.error(f"--warmup {a.warmup:g} s leaves nothing of a {a.seconds:g} s run")
    if os.geteuid() != 0:
        print("tools/soak: must run as root (network namespaces, NFQUEUE)", file=sys.stderr)
        return 3
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm)
    log(f"{a.connections} connections, {a.seconds:g} s, a handover every "
        f"{a.handover_every:g} s, {a.rate_kbit:g} kbit/s each way per connection")
    soak = Soak(a)
    try:
        soak.execute()
    except KeyboardInterrupt:
        log("interrupted: everything torn down")
        return 130
    res = report(soak)
    print(summary(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["ok"] else 1
