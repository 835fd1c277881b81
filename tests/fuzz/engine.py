"""Episodes of the fuzzer: replay a recorded trace into a fresh proxy and inject
mutated or crafted packets along the way, checking every invariant on every call.

Two ways to inject, chosen per episode:

- **branch**: at a trace position, the live proxy is deep-copied and the copy gets
  the mutants (and a few following trace inputs, timers firing as the driver would);
  the original run goes on untouched, so every later mutant meets a real state.
- **inline**: the mutants go into the run itself, which then continues with the rest
  of the trace (states after garbage, timers firing as the driver would).

Until the first inline mutation an episode is an exact replay: each verdict is compared
with the recorded one (``replay_diverged`` would mean the harness, not the proxy, is
wrong). Every violation class keeps its first occurrence as a reproducer: the setup and
every input the failing proxy got, which :func:`minimize` shrinks and :func:`replay`
re-runs (``tools/fuzz --replay FILE``).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from mptcp_proxy.core.tcp import CSUM_GSO, CSUM_PARTIAL

from . import craft, mutate, wire
from .build import CSUM_UNVERIFIED, FULL_CSUM, make_proxy
from .fork import fork
from .invariants import Checker, Violation
from .traces import SCENARIOS, Trace, apply_pm_op, digest_verdict, record

# most severe first (the order of the summary)
SEVERITY = ("exception", "replay_diverged", "unconverted_passthrough", "accept_modified",
            "csum_laundered", "verdict_malformed", "forged_malformed", "bad_csum_state_change",
            "bad_csum_output", "unbounded_state", "timer_stuck", "forged_oversize",
            "forged_unknown_tuple", "verdict_type", "input_defect_carried")


def _enc(op) -> list:
    if op[0] in ("out", "in"):
        return [op[0], op[1], bytes(op[2]).hex(), op[3]]
    if op[0] == "timer":
        return ["timer", op[1]]
    return ["pm", op[1], op[2], op[3]]


def _dec(op) -> tuple:
    if op[0] in ("out", "in"):
        return (op[0], op[1], bytes.fromhex(op[2]), op[3])
    if op[0] == "timer":
        return ("timer", op[1])
    return ("pm", op[1], op[2], op[3])


@dataclass
class Stats:
    packets: int = 0  # every packet fed to the core
    mutants: int = 0  # of which injected (mutated or crafted)
    timers: int = 0
    episodes: int = 0
    branches: int = 0
    seconds: float = 0.0  # fuzzing time (the slowest job), trace recording excluded
    wall: float = 0.0  # whole run, recording and process start included
    labels: Counter = field(default_factory=Counter)
    scenarios: Counter = field(default_factory=Counter)  # trace name -> episodes
    counts: Counter = field(default_factory=Counter)  # violation class -> occurrences
    first: dict = field(default_factory=dict)  # class -> reproducer dict
    core_counters: Counter = field(default_factory=Counter)  # the proxy's own counters

    def merge(self, o: "Stats") -> None:
        self.packets += o.packets
        self.mutants += o.mutants
        self.timers += o.timers
        self.episodes += o.episodes
        self.branches += o.branches
        self.seconds = max(self.seconds, o.seconds)
        self.labels.update(o.labels)
        self.scenarios.update(o.scenarios)
        self.counts.update(o.counts)
        self.core_counters.update(o.core_counters)
        for k, v in o.first.items():
            self.first.setdefault(k, v)


class _Run:
    """One proxy being fed, with the log of what it got."""

    def __init__(self, fuzzer: "Fuzzer", proxy, pm, chk: Checker, prefix: list) -> None:
        self.f = fuzzer
        self.proxy, self.pm, self.chk = proxy, pm, chk
        self.prefix = prefix  # (shared, read-only) ops before this run's own
        self.ops: list = []
        self.seen = 0  # violations already taken from chk

    def _collect(self) -> None:
        vs = self.chk.violations
        if len(vs) == self.seen:
            return
        new = vs[self.seen:]
        self.seen = len(vs)
        st = self.f.stats
        for v in new:
            st.counts[v.cls] += 1
            if v.cls not in st.first:
                st.first[v.cls] = {
                    "class": v.cls, "invariant": v.invariant, "message": v.message,
                    "setup": self.f.setup, "trace": self.f.trace_name,
                    "ops": [_enc(o) for o in self.prefix + self.ops],
                }

    def packet(self, d: str, data: bytes, now: float, csum: int, mutant: bool = False):
        self.ops.append((d, now, data, csum))
        self.f.stats.packets += 1
        if mutant:
            self.f.stats.mutants += 1
        v = self.chk.packet(d, data, now, csum)
        self._collect()
        return v

    def timer(self, now: float) -> None:
        self.ops.append(("timer", now))
        self.f.stats.timers += 1
        self.chk.timer(now)
        self._collect()

    def due(self, until: float) -> None:
        for _ in range(64):
            try:
                t = self.proxy.get_timer()
            except Exception:  # noqa: BLE001 - the checker reports it on the next call
                return
            if t is None or t > until:
                return
            self.timer(t)

    def pm_op(self, now: float, name: str, args) -> None:
        self.ops.append(("pm", now, name, args))
        self.chk.command(apply_pm_op, self.proxy, self.pm, name, now, args)
        self._collect()

    def op(self, op, *, drive_timers: bool) -> object:
        if drive_timers:
            self.due(op[1])
        if op[0] in ("out", "in"):
            return self.packet(op[0], op[2], op[1], op[3])
        if op[0] == "timer":
            self.timer(op[1])
        else:
            self.pm_op(op[1], op[2], op[3])
        return None


class Fuzzer:
    def __init__(self, traces: list[Trace], seed: int, *, branch_follow: int = 8) -> None:
        self.traces = traces
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.branch_follow = branch_follow
        self.setup: dict = {}
        self.trace_name = ""

    def _mutants(self, ctx, d, data, csum, inline: bool = False) -> list:
        rng = self.rng
        syn = len(data) > 40 and craft.tcp_flags(data) & 0x02
        for attempt in range(4):
            # handshake packets are rare in a trace: their options get a better chance
            fn = mutate.m_syn_opts if syn and attempt == 0 and rng.random() < 0.4 else \
                mutate.pick(rng, inline=inline)
            try:
                inputs = fn(rng, ctx, d, data, csum)
            except Exception as exc:  # a harness bug: say so loudly
                raise RuntimeError(f"mutator {fn.__name__} failed") from exc
            if inputs:
                for i in inputs:
                    self.stats.labels[i.label] += 1
                return inputs
        return []

    def episode(self, trace: Trace) -> None:
        rng = self.rng
        st = self.stats
        st.episodes += 1
        st.scenarios[trace.name] += 1
        self.setup, self.trace_name = trace.setup, trace.name
        proxy, pm = make_proxy(trace.setup)
        main = _Run(self, proxy, pm, Checker(proxy, pm), [])
        hist = {"out": deque(maxlen=48), "in": deque(maxlen=48)}
        ctx = craft.Ctx(proxy, hist)
        mode = rng.choice(("branch", "branch", "inline"))
        rate = rng.choice((0.02, 0.1, 0.3, 1.0))
        exact = True
        ops = trace.ops
        for i, op in enumerate(ops):
            if op[0] in ("out", "in") and rng.random() < rate:
                inputs = self._mutants(ctx, op[0], op[2], op[3], inline=mode == "inline")
                if inputs:
                    if mode == "branch":
                        self._branch(main, proxy, pm, inputs, ops, i)
                    else:
                        exact = False
                        for inp in inputs:
                            main.packet(inp.direction, inp.data, op[1], inp.csum, mutant=True)
            v = main.op(op, drive_timers=not exact)
            if exact and op[0] in ("out", "in") and digest_verdict(v) != trace.digests[i]:
                main.chk.violations.append(Violation(
                    "replay_diverged", trace.name,
                    f"op {i}: verdict {digest_verdict(v)} != recorded {trace.digests[i]}"))
                main._collect()
                exact = False
            if op[0] in ("out", "in"):
                hist[op[0]].append((op[0], op[2], op[3]))
        main.chk.finish()
        main._collect()
        st.core_counters.update(proxy.counters)

    def _branch(self, main: _Run, proxy, pm, inputs, ops, i: int) -> None:
        self.stats.branches += 1
        bproxy, bpm = fork((proxy, pm))
        chk = Checker(bproxy, bpm)
        chk.local_mss = main.chk.local_mss
        run = _Run(self, bproxy, bpm, chk, main.ops)
        ctx = craft.Ctx(bproxy, {})
        j = i
        for group in range(self.rng.choice((1, 1, 1, 2, 3))):
            if group:  # a further mutation, of a later packet, on the branch's own state
                if j >= len(ops) or ops[j][0] not in ("out", "in"):
                    break
                inputs = self._mutants(ctx, ops[j][0], ops[j][2], ops[j][3])
            now = ops[min(j, len(ops) - 1)][1]
            for inp in inputs:
                run.packet(inp.direction, inp.data, now, inp.csum, mutant=True)
            k = j + self.rng.randint(0, self.branch_follow)
            for op in ops[j:k]:
                run.op(op, drive_timers=True)
            j = k
        chk.finish(min_calls=16)
        run._collect()

    def run(self, packets: int, deadline: float | None = None) -> Stats:
        t0 = time.monotonic()
        first = list(self.traces)  # every trace once (in a random order), then at random:
        self.rng.shuffle(first)  # a short run still covers every scenario and role
        while self.stats.packets < packets:
            if deadline is not None and time.monotonic() > deadline:
                break
            self.episode(first.pop() if first else self.rng.choice(self.traces))
        self.stats.seconds = time.monotonic() - t0
        return self.stats


# ----------------------------------------------------------------- traces, jobs
def load_traces(names=None, seeds=(1, 2, 3)) -> list[Trace]:
    out = []
    for name in names or SCENARIOS:
        for s in seeds:
            out.append(record(name, s))
    return out


def _job(args) -> Stats:
    seed, packets, names, seeds, deadline = args
    traces = load_traces(names, seeds)
    return Fuzzer(traces, seed).run(packets, deadline)


def run_jobs(packets: int, seed: int, jobs: int = 1, names=None, seeds=(1, 2, 3),
             deadline: float | None = None) -> Stats:
    """Run ``packets`` packets split over ``jobs`` processes; merged statistics."""
    t0 = time.monotonic()
    per = -(-packets // jobs)
    args = [(seed * 1000 + j, per, names, seeds, deadline) for j in range(jobs)]
    if jobs == 1:
        results = [_job(args[0])]
    else:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_job, args)
    total = Stats()
    for r in results:
        total.merge(r)
    total.wall = time.monotonic() - t0
    return total


# ------------------------------------------------------------- reproducers
def replay(rep: dict, *, stop_on: str | None = None) -> list[Violation]:
    """Feed a reproducer's inputs to a fresh proxy built from its setup; the violations
    (all of them, or up to the first of class ``stop_on``)."""
    proxy, pm = make_proxy(rep["setup"])
    chk = Checker(proxy, pm, bound_every=10 ** 9)
    for raw in rep["ops"]:
        op = _dec(raw)
        if op[0] in ("out", "in"):
            chk.packet(op[0], op[2], op[1], op[3])
        elif op[0] == "timer":
            chk.timer(op[1])
        else:
            chk.command(apply_pm_op, proxy, pm, op[2], op[1], op[3])
        if stop_on and any(v.cls == stop_on for v in chk.violations):
            return chk.violations
    chk.finish()
    return chk.violations


def minimize(rep: dict, budget_s: float = 20.0) -> dict:
    """Shrink the inputs of a reproducer (delta debugging over whole inputs) while the
    same violation class still occurs; bounded by ``budget_s`` seconds."""
    cls = rep["class"]
    ops = list(rep["ops"])
    t_end = time.monotonic() + budget_s

    def fails(cand) -> bool:
        return any(v.cls == cls for v in replay(dict(rep, ops=cand), stop_on=cls))

    if not fails(ops):
        return dict(rep, minimized=False, note="did not reproduce alone")
    # the failing input is usually the last one: cut what follows the first failure
    n = 2
    while len(ops) >= 2 and time.monotonic() < t_end:
        chunk = -(-len(ops) // n)
        for k in range(n):
            cand = ops[:k * chunk] + ops[(k + 1) * chunk:]
            if cand and fails(cand):
                ops = cand
                n = max(n - 1, 2)
                break
            if time.monotonic() > t_end:
                break
        else:
            if n >= len(ops):
                break
            n = min(len(ops), 2 * n)
    vs = [v for v in replay(dict(rep, ops=ops), stop_on=cls) if v.cls == cls]
    return dict(rep, ops=ops, minimized=True, original_inputs=len(rep["ops"]),
                message=vs[0].message if vs else rep["message"])


def describe(raw) -> str:
    """One line per input of a reproducer."""
    op = _dec(raw)
    if op[0] == "timer":
        return f"t={op[1]:.4f} timer"
    if op[0] == "pm":
        return f"t={op[1]:.4f} {op[2]}{tuple(op[3])}"
    d, now, data, csum = op
    lo = wire.layout(data)
    if lo is None or lo.th < 0:
        return f"t={now:.4f} {d} {len(data)} bytes (not TCP/unreadable) csum={csum}"
    th = lo.th
    flags = data[th + 13] if th + 14 <= len(data) else 0
    f = "".join(c for c, b in zip("FSRPAUEC", range(8)) if flags >> b & 1)
    seq = int.from_bytes(data[th + 4:th + 8], "big") if th + 8 <= len(data) else 0
    ack = int.from_bytes(data[th + 8:th + 12], "big") if th + 12 <= len(data) else 0
    hl = (data[th + 12] >> 4) * 4 if th + 13 <= len(data) else 20
    opts = []
    for k, off, n in craft.option_list(data):
        o = data[off:off + n]
        opts.append(f"mptcp{o[2] >> 4}/{n}:{o[2:].hex()}" if k == 30 and n > 2 else f"{k}/{n}")
    extra = [x for x, on in (("frag", lo.frag), ("ext", lo.ext), ("len0", lo.jumbo)) if on]
    sums = ("ok" if wire.csum_valid(data) else "BAD-CHECKSUM") if csum in FULL_CSUM else \
        {CSUM_PARTIAL: "partial", CSUM_GSO: "gso"}.get(csum, "?")
    if csum == CSUM_UNVERIFIED:
        sums = "unverified " + sums
    return (f"t={now:.4f} {d} {len(data)}B {f} seq={seq} ack={ack} "
            f"plen={max(0, lo.end - th - hl)} csum={sums} {' '.join(extra)} "
            f"opts=[{', '.join(opts)}]")


def slug(cls: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", cls.lower()).strip("_")[:60]


def save(rep: dict, path: Path) -> None:
    path.write_text(json.dumps(rep, indent=1) + "\n")


def severity(cls: str) -> int:
    inv = cls.split(":", 1)[0]
    return SEVERITY.index(inv) if inv in SEVERITY else len(SEVERITY)
