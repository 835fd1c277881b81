"""The command line of ``tools/bench`` (see :mod:`netns.bench` for what it measures)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from . import __doc__ as DOC
from .bed import log
from .configs import ALL_CONFIGS, CONFIGS, FNFQ, NFQ, NFQ_CONFIGS, PROFILES, STAGES
from .report import table
from .runner import Bench

__all__ = ["build_parser", "main", "description"]

_LABELS = {FNFQ: "fnfqueue (GSO)", NFQ: "netfilterqueue"}


def description() -> str:
    """The tool's help text, with the table of the registered configurations."""
    rows = ["  config             backend          what"]
    for c in CONFIGS.values():
        first, *rest = c.what.split("\n")
        rows.append(f"  {c.name:<19}{_LABELS.get(c.backend or '', '-'):<17}{first}")
        rows += [" " * 38 + line for line in rest]
    return DOC.split("\nModules:")[0].replace("{configs}", "\n".join(rows))


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} "
                                             f"(choose from {', '.join(choices)})")
        return items
    return parse


def _target(text: str) -> str:
    config, _, direction = text.partition(":")
    if config not in CONFIGS or direction not in ("up", "down"):
        raise argparse.ArgumentTypeError(f"expected CONFIG:up or CONFIG:down, got {text!r}")
    return text


def _csv_ints(text: str) -> list[str]:
    try:
        return [str(int(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text}") from None


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="fewer runs and shorter transfers, every configuration (the "
                        "netfilterqueue ones included): everything in under a minute")
    p.add_argument("--configs", type=_csv(ALL_CONFIGS), default=ALL_CONFIGS,
                   help=f"comma list of configurations (default all: {','.join(ALL_CONFIGS)}"
                        f"; the netfilterqueue ones: {','.join(NFQ_CONFIGS)})")
    p.add_argument("--runs", type=int, help="alternating throughput runs (full 5, quick 3)")
    p.add_argument("--seconds", type=float, help="max seconds per transfer (full 3, quick 0.6)")
    p.add_argument("--max-mb", type=float,
                   help="max MB per transfer, whichever limit comes first (full 2000, quick "
                        "600; native MPTCP's receive window ramps up slowly: short transfers "
                        "understate it)")
    p.add_argument("--rr-count", type=int, help="connections per setup-latency run (200/100)")
    p.add_argument("--setup-runs", type=int, help="setup-latency runs (3/1)")
    p.add_argument("--cps-runs", type=int, help="connection-rate runs (3/1)")
    p.add_argument("--cps-seconds", type=float, help="seconds per connection-rate run (3/1)")
    p.add_argument("--cps-threads", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--memory-runs", type=int, help="idle-connection ramps (2/1)")
    p.add_argument("--idle-conns", type=_csv_ints, default=["1000", "10000"],
                   help="idle connection counts of the memory ramp (default 1000,10000)")
    p.add_argument("--hold-window", type=int, default=128,
                   help="handshakes in flight while opening idle connections (default 128)")
    p.add_argument("--warmup", type=float, help="seconds of untimed transfer per config")
    p.add_argument("--skip", type=_csv(STAGES), default=[],
                   help=f"comma list of stages to skip ({','.join(STAGES)})")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every mptcp-proxy daemon (repeat), e.g. "
                        "--proxy-arg=--log-level=warning")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="FILE",
                   help="also run py-spy on the proxy daemon during one bulk upload and "
                        "write the top functions to FILE")
    p.add_argument("--profile-target", default="proxy:up", metavar="CONFIG:DIR",
                   type=_target, help="configuration and direction (up/down) to profile "
                                      "(default proxy:up)")
    p.add_argument("--profile-lines", action="store_true",
                   help="profile by source line instead of by function (time spent in C "
                        "calls, syscalls included, shows on the calling line)")
    p.add_argument("--py-spy-arg", action="append", default=[], metavar="ARG",
                   help="extra py-spy record argument (e.g. --py-spy-arg=--native)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")


def build_parser() -> argparse.ArgumentParser:
    text = description()
    p = argparse.ArgumentParser(prog="tools/bench", description=text.split("Examples:")[0],
                                epilog="examples:" + text.split("Examples:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_options(p)
    _output_options(p)
    return p


_MAIN_PID = os.getpid()


def _sigterm(*_: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a child forked by pyroute2 (netns helper): just die
        os._exit(128 + signal.SIGTERM)
    raise KeyboardInterrupt


def _announce(args: argparse.Namespace) -> None:
    log(f"configs {','.join(args.configs)}; {args.runs} runs of {args.seconds} s / "
        f"{args.max_mb} MB per transfer; load average {os.getloadavg()[0]:.2f}")
    log("backends: " + ", ".join(f"{c}={CONFIGS[c].backend}" for c in args.configs
                                 if CONFIGS[c].implemented and CONFIGS[c].backend))
    skipped = [c for c in NFQ_CONFIGS if c not in args.configs]
    if skipped:
        log(f"not run (--configs): {', '.join(skipped)}: no netfilterqueue vs fnfqueue "
            "comparison in this run")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for k, v in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if os.geteuid() != 0:
        print("tools/bench: must run as root (network namespaces, NFQUEUE)", file=sys.stderr)
        return 2
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm)
    _announce(args)
    try:
        res = Bench(args).run()
    except KeyboardInterrupt:
        log("interrupted: everything torn down")
        return 130
    print(table(res, args.configs))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in res["timing_s"].items() if k != "total_s")
    print(f"total {res['timing_s']['total_s']:.1f} s ({stages})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0
