#!/usr/bin/env python3
"""Cost of the sans-I/O core per packet, without the kernel: µs per call of
``Proxy.outbound``/``Proxy.inbound`` on a recorded, realistic packet sequence.

It records one established single-subflow connection of the unit-test model
(tests/unit/lockstep/: a Linux-like MPTCP peer and a local TCP stack) doing an
upload and a download of MSS-sized segments, then replays the exact same input
sequence into a fresh proxy (same seed, so keys and ISNs match) and times it.
The figures are the core's own per-packet cost, the part of the ~20 µs above the
NFQUEUE floor that Python code decides (tools/bench measures the whole path).

    .venv/bin/python tools/microbench.py [--bytes N] [--reps R] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))


def _recording_pair():
    from lockstep.pair import ProxyPair
    pair = ProxyPair(seed=7)
    pair.handshake()
    pair.transfer(b"x" * 2000, b"y" * 2000)  # fully established, both ways
    log = []
    real_out, real_in = pair.proxy.outbound, pair.proxy.inbound

    def out(buf, now):
        log.append(("out", bytes(buf), now))
        return real_out(buf, now)

    def inb(buf, now):
        log.append(("in", bytes(buf), now))
        return real_in(buf, now)

    pair.proxy.outbound, pair.proxy.inbound = out, inb
    return pair, log


def record(nbytes: int):
    """Two recordings, each from a fresh connection (same seed as :func:`fresh`): an
    upload, and a download with one mapping per 64 KB copied on every segment (as
    Linux does with GSO/TSO)."""
    data = bytes(range(256)) * (nbytes // 256 + 1)
    pair, up = _recording_pair()
    pair.transfer(data[:nbytes], b"")
    pair, down = _recording_pair()
    pair.transfer(b"", data[:nbytes], segs_per_map=45, map_mode="every")
    return up, down


def fresh():
    from lockstep.pair import ProxyPair
    pair = ProxyPair(seed=7)
    pair.handshake()
    pair.transfer(b"x" * 2000, b"y" * 2000)
    return pair


def replay(seq, pair, inbound_csum=None) -> dict[str, tuple[int, float]]:
    """Feed ``seq`` to the pair's proxy; return per kind (count, seconds). Inbound packets
    carry checksum state ``inbound_csum`` (None: the core's default, unverified)."""
    proxy = pair.proxy
    out, inb = proxy.outbound, proxy.inbound
    args = () if inbound_csum is None else (inbound_csum,)
    stats: dict[str, list] = {}
    clock = time.perf_counter
    for direction, buf, now in seq:
        b = bytearray(buf)
        kind = f"{direction}-{'data' if len(buf) > 200 else 'ack'}"
        t0 = clock()
        if direction == "out":
            out(b, now)
        else:
            inb(b, now, *args)
        dt = clock() - t0
        st = stats.setdefault(kind, [0, 0.0])
        st[0] += 1
        st[1] += dt
        proxy.packets_to_send()
    return {k: (v[0], v[1]) for k, v in stats.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=2_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one replay")
    ap.add_argument("--verified", action="store_true",
                    help="inbound checksums already verified (as the queue reports for "
                         "NIC-checked packets): the core skips its own check")
    args = ap.parse_args(argv)
    from mptcp_proxy.core.tcp import CSUM_OK
    csum = CSUM_OK if args.verified else None
    up, down = record(args.bytes)
    if args.profile:
        import cProfile
        import pstats
        pair = fresh()
        pr = cProfile.Profile()
        pr.enable()
        replay(up + down, pair, csum)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return 0
    results: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for _ in range(args.reps):
        for name, seq in (("upload", up), ("download", down)):
            r = replay(seq, fresh(), csum)
            for kind, (n, sec) in r.items():
                results.setdefault(f"{name}/{kind}", []).append(sec / n * 1e6)
                counts[f"{name}/{kind}"] = n
    print(f"{'phase/packet kind':28} {'packets':>8} {'median µs':>10} {'min µs':>8}")
    for k in sorted(results):
        v = results[k]
        print(f"{k:28} {counts[k]:8d} {statistics.median(v):10.2f} {min(v):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
