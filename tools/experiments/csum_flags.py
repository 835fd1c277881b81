"""Experiment (a) of docs/platform.md: NFQUEUE checksum metadata per kind of packet.

    sudo .venv/bin/python tools/experiments/csum_flags.py

Bed: A (a0 10.9.1.1) -- R (router) -- B (b0 10.9.2.1), veth, default offloads. Queues:
A mangle OUTPUT (locally generated TCP), R mangle FORWARD (forwarded), B raw PREROUTING
(received from a veth peer). Each case runs once with NFQA_CFG_F_GSO off and once on, and
reports, per hook, how many packets carried each NFQA_SKB_INFO combination, how many were
bigger than the MTU (GSO super-packets) and how many had a TCP checksum that verifies in
the bytes handed to userspace. Then it injects hand-made segments with a wrong (and a
right) TCP checksum on a raw socket, from R into B and from A through R, and reports the
flags they arrived with and the receivers' TcpInCsumErrors.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

from nsbed import HERE, Bed

FLAG_NAMES = {1: "CSUMNOTREADY", 2: "GSO", 4: "CSUM_NOTVERIFIED"}
QA, QR, QB = 10, 20, 30


def flags(info: int) -> str:
    return "|".join(n for b, n in FLAG_NAMES.items() if info & b) or "none"


def build(bed: Bed) -> None:
    bed.link("A", "a0", "R", "ra")
    bed.link("R", "rb", "B", "b0")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0; ip route add default via 10.9.1.254")
    bed.sh("R", "ip addr add 10.9.1.254/24 dev ra; ip addr add 10.9.2.254/24 dev rb")
    bed.sh("B", "ip addr add 10.9.2.1/24 dev b0; ip route add default via 10.9.2.254")
    bed.sysctl("R", "net.ipv4.ip_forward", 1)


RULES = {"A": f"-t mangle OUTPUT -p tcp --dport 5001 -j NFQUEUE --queue-num {QA}",
         "R": f"-t mangle FORWARD -p tcp --dport 5001 -j NFQUEUE --queue-num {QR}",
         "B": f"-t raw PREROUTING -p tcp --dport 5001 -j NFQUEUE --queue-num {QB}"}
QUEUES = {"A": QA, "R": QR, "B": QB}


def rules(bed: Bed, where: str, op: str) -> None:
    for ns in where:
        t, chain, rest = RULES[ns].split(" ", 3)[1:]
        bed.sh(ns, f"iptables-legacy -t {t} {op} {chain} {rest}")


def start_probes(bed: Bed, gso: bool, where: str) -> dict:
    probes = {}
    for ns in where:
        q = QUEUES[ns]
        p = bed.python(ns, "nfq_probe.py", "--queue", str(q), *(["--gso"] if gso else []),
                       stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", f"probe in {ns} did not start"
        probes[ns] = p
    return probes


def stop_probes(bed: Bed, probes: dict) -> dict:
    out = {}
    for p in probes.values():
        p.terminate()
    for ns, p in probes.items():
        out[ns] = json.loads(p.communicate(timeout=60)[0])["packets"]
    return out


def summarize(records: list[dict], mtu: int = 1500) -> dict:
    by = collections.Counter()
    for r in records:
        kind = "data" if r.get("payload", 0) > 0 else "no-data"
        big = "super" if r.get("ip_len", 0) > mtu else "mtu"
        ok = {True: "csum-ok", False: "csum-not-final", None: "-"}[r.get("csum_ok")]
        by[(r["hook"], kind, big, flags(r["info"]), ok)] += 1
    return {" ".join(k): v for k, v in sorted(by.items())}


def transfer(bed: Bed, nbytes: int) -> dict:
    sink = bed.python("B", "traffic.py", "sink", "--port", "5001", stdout=subprocess.PIPE,
                      text=True)
    sink.stdout.readline()
    src = bed.python("A", "traffic.py", "source", "--to", "10.9.2.1", "--port", "5001",
                     "--bytes", str(nbytes), stdout=subprocess.PIPE, text=True)
    src.wait(60)
    res = [json.loads(line) for line in sink.stdout.read().splitlines() if line.strip()]
    sink.wait(10)
    return res[-1]


def case(bed: Bed, title: str, gso: bool, where: str, action) -> dict:
    probes = start_probes(bed, gso, where)
    rules(bed, where, "-A")
    try:
        detail = action()
    finally:
        rules(bed, where, "-D")
        recs = stop_probes(bed, probes)
    result = {"case": title, "gso_flag": gso, "queues": where, "detail": detail,
              **{ns: summarize(r) for ns, r in recs.items()}}
    print(json.dumps(result, indent=1), flush=True)
    return result


def inject(bed: Bed, ns: str, src: str, bad: bool, payload: int = 0) -> dict:
    before = bed.nstat("B")
    out = bed.sh(ns, f"{sys.executable} {HERE / 'inject.py'} --src {src} "
                     f"--dst 10.9.2.1 --dport 5001 --flags {'PA' if payload else 'S'} "
                     f"--payload {payload} {'--bad-csum' if bad else ''}")
    time.sleep(0.5)
    after = bed.nstat("B")
    d = {k: after.get(k, 0) - before.get(k, 0) for k in
         ("TcpInCsumErrors", "TcpInErrs", "TcpOutRsts", "IpInReceives")}
    return {"sent": out.strip(), "B_counters": d}


def main() -> int:
    with Bed("A", "R", "B") as bed:
        build(bed)

        def bulk() -> dict:
            return transfer(bed, 10_000_000)

        for gso in (False, True):
            case(bed, "bulk A->B, default offloads, queue at the receiver only", gso, "B", bulk)
            case(bed, "bulk A->B, default offloads, queue at the sender only", gso, "A", bulk)
            case(bed, "bulk A->B, default offloads, queue at the router only", gso, "R", bulk)
            case(bed, "bulk A->B, default offloads, queues everywhere", gso, "ARB", bulk)
        bed.sh("A", "ethtool -K a0 tx off >/dev/null")
        for gso in (False, True):
            case(bed, "bulk A->B, tx checksum offload off on a0", gso, "AB",
                 lambda: transfer(bed, 2_000_000))
        bed.sh("A", "ethtool -K a0 tx on >/dev/null")
        for gso in (False, True):
            case(bed, "raw segment R->B, wrong TCP checksum", gso, "B",
                 lambda: inject(bed, "R", "10.9.2.254", True))
            case(bed, "raw segment R->B, right TCP checksum", gso, "B",
                 lambda: inject(bed, "R", "10.9.2.254", False))
            case(bed, "raw segment A->R->B (forwarded), wrong TCP checksum, 100 B payload",
                 gso, "RB", lambda: inject(bed, "A", "10.9.1.1", True, 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
