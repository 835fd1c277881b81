"""The benchmark run: beds up, the stages in order (each its own module function over a
:class:`Bench`), beds down, results. A stage is a function ``stage(bench)`` in
:data:`STAGE_FUNCS`; a failing stage is recorded and the others still run."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from contextlib import ExitStack
from typing import Any, Callable

from . import profile, stages
from .bed import Bed, log
from .configs import CONFIGS, STAGES, runnable
from .results import code_state, results

__all__ = ["Bench", "STAGE_FUNCS"]


class Bench:
    """State of one run: arguments, beds, errors, warnings and raw samples per stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.configs = [c for c in args.configs if c in CONFIGS]
        self.beds: dict[str, Bed] = {}
        self.errors: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.raw: dict[str, list] = {"throughput": [], "setup": [], "cps": [], "memory": []}
        self.timing: dict[str, float] = {}
        self.code: dict[str, Any] = {}
        self._seed = 1000

    # -------------------------------------------------------------- helpers
    def error(self, config: str, metric: str, run: int | None, msg: str) -> None:
        self.errors.append({"config": config, "metric": metric, "run": run, "error": msg})
        log(f"ERROR {config} {metric} run {run}: {msg}")

    def warn(self, config: str, metric: str, msg: str) -> None:
        entry = {"config": config, "metric": metric, "warning": msg}
        if entry not in self.warnings:
            self.warnings.append(entry)
            log(f"warning {config} {metric}: {msg}")

    def runnable(self) -> list[str]:
        return runnable(self.configs)

    def bed(self, config: str) -> Bed:
        return self.beds[CONFIGS[config].bed]

    def next_seed(self) -> int:
        """A seed no other transfer of this run had (the server's record is found by it)."""
        self._seed += 1
        return self._seed

    def ensure_daemon(self, config: str, metric: str, run: int | None) -> bool:
        """Restart a daemon that died (recording it); False if it cannot be had."""
        bed = self.bed(config)
        if not CONFIGS[config].daemons:
            return True
        dead = bed.daemon_dead() if bed.proxies else "daemon not running"
        if dead is None:
            return True
        self.error(config, metric, run, dead)
        try:
            bed.stop_daemon()
            bed.start_daemon()
            return True
        except Exception as exc:
            self.error(config, metric, run, f"daemon restart failed: {exc}")
            return False

    def check_facts(self, config: str, facts: dict[str, Any] | None) -> None:
        """Warn when the server's socket is not what the configuration promises."""
        if not facts or "error" in facts:
            return
        want = CONFIGS[config].expect
        is_mptcp = bool(facts.get("mptcp_socket")) and not facts.get("fallback")
        if want == "fallback" and is_mptcp:
            self.warn(config, "throughput", "the server saw MPTCP, expected a TCP fallback")
        elif want in ("mptcp", "mptcp2") and not is_mptcp:
            self.warn(config, "throughput", "the server saw plain TCP (fallback): this is "
                      "not an MPTCP figure")
        elif want == "mptcp2" and is_mptcp and not facts.get("subflows"):
            self.warn(config, "throughput", "no second subflow at the server "
                      f"(MPTCP_INFO subflows={facts.get('subflows')})")

    # -------------------------------------------------------------- set-up
    def setup(self, stack: ExitStack) -> None:
        t0 = time.monotonic()
        names: list[str] = []
        for c in self.runnable():
            if CONFIGS[c].bed not in names:
                names.append(CONFIGS[c].bed)
        for n in names:
            daemons = next(CONFIGS[c].daemons for c in self.runnable() if CONFIGS[c].bed == n)
            bed = Bed(n, daemons, self.a.proxy_arg)
            stack.callback(bed.close)
            bed.build()
            self.beds[n] = bed
        for bed in self.beds.values():
            bed.start()
        for bed in self.beds.values():  # the daemons start side by side
            bed.start_daemon(wait=False)
        for bed in self.beds.values():
            bed.wait_daemon()
        self.timing["beds_s"] = round(time.monotonic() - t0, 2)
        log(f"set up {len(self.beds)} bed(s) in {self.timing['beds_s']:.1f} s")

    # -------------------------------------------------------------- run all
    def run(self) -> dict[str, Any]:
        t_start = time.monotonic()
        self.code = code_state()
        with ExitStack() as stack:
            self.setup(stack)
            for stage in STAGES + ["profile"]:
                if stage in self.a.skip or (stage == "profile" and not self.a.profile):
                    continue
                self._stage(stage)
            t0 = time.monotonic()
            for bed in self.beds.values():
                problem = bed.stop_daemon()
                if problem:
                    self.error(bed.name, "daemon", None, problem)
        self.timing["teardown_s"] = round(time.monotonic() - t0, 2)
        self.timing["total_s"] = round(time.monotonic() - t_start, 2)
        return results(self)

    def _stage(self, stage: str) -> None:
        t0 = time.monotonic()
        try:
            STAGE_FUNCS[stage](self)
        except Exception as exc:
            # a bug or a broken bed must not lose the other stages' results
            traceback.print_exc(file=sys.stderr)
            self.error("*", stage, None, f"stage failed: {type(exc).__name__}: {exc}")
        self.timing[f"{stage}_s"] = round(time.monotonic() - t0, 2)


STAGE_FUNCS: dict[str, Callable[[Bench], None]] = {
    "throughput": stages.stage_throughput, "setup": stages.stage_setup,
    "cps": stages.stage_cps, "memory": stages.stage_memory, "profile": profile.stage_profile,
}
