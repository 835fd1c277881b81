"""Experiment (b) of docs/platform.md: which queue a packet lands in with --queue-balance,
--queue-cpu-fanout, and HMARK-based steering.

    sudo .venv/bin/python tools/experiments/queue_balance.py

Bed: A -- B (veth); A has 8 IPv4 and 8 IPv6 addresses. In B, inbound TCP to port 5001 is
queued in raw PREROUTING and B's answers in mangle OUTPUT, both to queues 40..43 (one probe
per queue). For each scheme it opens 8 connections from one source address (different
ports) and 8 from 8 source addresses, v4 and v6, and reports for every connection the set
of queues its inbound and its outbound packets reached.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

from nsbed import Bed

QUEUES = range(40, 44)
V4 = [f"10.9.1.{i}" for i in range(11, 19)]
V6 = [f"fd00:9::{i:x}" for i in range(0x11, 0x19)]


def build(bed: Bed) -> None:
    bed.link("A", "a0", "B", "b0")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0; ip -6 addr add fd00:9::1/64 dev a0 nodad")
    for a4, a6 in zip(V4, V6):
        bed.sh("A", f"ip addr add {a4}/24 dev a0; ip -6 addr add {a6}/64 dev a0 nodad")
    bed.sh("B", "ip addr add 10.9.1.2/24 dev b0; ip -6 addr add fd00:9::2/64 dev b0 nodad")


SCHEMES = {
    "queue-balance": [
        "-t raw -A PREROUTING -p tcp --dport 5001 -j NFQUEUE --queue-balance 40:43",
        "-t mangle -A OUTPUT -p tcp --sport 5001 -j NFQUEUE --queue-balance 40:43"],
    "queue-balance + queue-cpu-fanout": [
        "-t raw -A PREROUTING -p tcp --dport 5001 -j NFQUEUE --queue-balance 40:43 "
        "--queue-cpu-fanout",
        "-t mangle -A OUTPUT -p tcp --sport 5001 -j NFQUEUE --queue-balance 40:43 "
        "--queue-cpu-fanout"],
    "HMARK src,dst,sport,dport then mark -> queue": [
        "-t raw -A PREROUTING -p tcp --dport 5001 -j HMARK --hmark-tuple src,dst,sport,dport,proto "
        "--hmark-mod 4 --hmark-offset 40 --hmark-rnd 0x5eed",
        "-t mangle -A OUTPUT -p tcp --sport 5001 -j HMARK --hmark-tuple src,dst,sport,dport,proto "
        "--hmark-mod 4 --hmark-offset 40 --hmark-rnd 0x5eed",
        *[f"-t raw -A PREROUTING -p tcp --dport 5001 -m mark --mark {q} -j NFQUEUE --queue-num {q}"
          for q in QUEUES],
        *[f"-t mangle -A OUTPUT -p tcp --sport 5001 -m mark --mark {q} -j NFQUEUE --queue-num {q}"
          for q in QUEUES]],
}


def apply(bed: Bed, rules: list[str], add: bool) -> None:
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for r in (rules if add else rules[::-1]):
            r2 = r if add else r.replace(" -A ", " -D ", 1)
            bed.sh("B", f"{tool} {r2}")


def connections(bed: Bed, dst: str, sources: list[str]) -> None:
    for src in sources:
        sink = bed.python("B", "traffic.py", "sink", "--port", "5001",
                          "--bind", "::" if ":" in dst else "0.0.0.0", stdout=subprocess.PIPE,
                          text=True)
        sink.stdout.readline()
        src_p = bed.python("A", "traffic.py", "source", "--to", dst, "--port", "5001",
                           "--bytes", "200000", "--bind", src, stdout=subprocess.PIPE, text=True)
        src_p.wait(30)
        sink.wait(30)


def run_scheme(bed: Bed, name: str, rules: list[str]) -> dict:
    probes = []
    for q in QUEUES:
        p = bed.python("B", "nfq_probe.py", "--queue", str(q), "--gso", stdout=subprocess.PIPE,
                       text=True)
        assert p.stdout.readline().strip() == "ready"
        probes.append(p)
    apply(bed, rules, True)
    try:
        connections(bed, "10.9.1.2", ["10.9.1.1"] * 8)
        connections(bed, "10.9.1.2", V4)
        connections(bed, "fd00:9::2", ["fd00:9::1"] * 8)
        connections(bed, "fd00:9::2", V6)
    finally:
        apply(bed, rules, False)
        for p in probes:
            p.terminate()
    recs = []
    for p in probes:
        recs += json.loads(p.communicate(timeout=60)[0])["packets"]
    flows: dict = collections.defaultdict(lambda: {"in": set(), "out": set()})
    for r in recs:
        if r["dport"] == 5001:
            key, d = (r["src"], r["sport"]), "in"
        else:
            key, d = (r["dst"], r["dport"]), "out"
        flows[key][d].add(r["queue"])
    lines = []
    for (addr, port), q in sorted(flows.items(), key=lambda kv: (":" in kv[0][0], kv[0])):
        lines.append(f"{addr:>14} :{port:<5}  in {sorted(q['in'])}  out {sorted(q['out'])}")
    per_queue = collections.Counter(r["queue"] for r in recs)
    return {"scheme": name, "packets_per_queue": dict(sorted(per_queue.items())),
            "flows": lines}


def main() -> int:
    with Bed("A", "B") as bed:
        build(bed)
        for name, rules in SCHEMES.items():
            res = run_scheme(bed, name, rules)
            print(f"## {res['scheme']}  packets per queue {res['packets_per_queue']}")
            for line in res["flows"]:
                print("   ", line)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
