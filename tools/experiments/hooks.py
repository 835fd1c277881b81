"""Experiment for docs/platform.md §6: what the kernel does after the proxy's queues rewrite
an address.

    sudo .venv/bin/python tools/experiments/hooks.py

Bed: A and B joined by two veth links, a0 10.9.1.1 -- b0 10.9.1.2 and a1 10.9.2.1 --
b1 10.9.2.2; TSO/GSO off. A routes by source address: ``from 10.9.2.1 lookup 102``, and
table 102 reaches 10.9.1.2 via 10.9.2.2 on a1.

1. Outbound: a TCP client on A bound to 10.9.1.1 connects to 10.9.1.2:5001. An NFQUEUE
   rewrites its packets' source to 10.9.2.1, once in mangle OUTPUT and once in mangle
   POSTROUTING. Which link do they leave by (packets counted on a0/a1 and on b0/b1)?
2. Inbound: B's answers to 10.9.2.1 arrive on a1; an NFQUEUE in A's raw PREROUTING rewrites
   their destination back to 10.9.1.1 (the socket's address) -- the path the proxy takes for
   a second subflow. With rp_filter 1 (strict) and 2 (loose) on A: does the connection
   complete, and does TcpExtIPReversePathFilter rise?
"""

from __future__ import annotations

import json
import subprocess
import sys

from nsbed import HERE, Bed


def build(bed: Bed) -> None:
    bed.link("A", "a0", "B", "b0")
    bed.link("A", "a1", "B", "b1")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0; ip addr add 10.9.2.1/24 dev a1")
    bed.sh("B", "ip addr add 10.9.1.2/24 dev b0; ip addr add 10.9.2.2/24 dev b1")
    bed.sh("A", "ip rule add from 10.9.2.1 lookup 102; "
                "ip route add 10.9.1.2/32 via 10.9.2.2 dev a1 table 102")
    for ns, devs in (("A", ("a0", "a1")), ("B", ("b0", "b1"))):
        for d in devs:
            bed.sh(ns, f"ethtool -K {d} tso off gso off >/dev/null")


def tx(bed: Bed, ns: str, dev: str, rx: bool = False) -> int:
    j = json.loads(bed.sh(ns, f"ip -s -j link show {dev}"))[0]
    return j["stats64"]["rx" if rx else "tx"]["packets"]


def attempt(bed: Bed) -> dict:
    """One short connection 10.9.1.1 -> 10.9.1.2:5001; its outcome and link counters."""
    sink = bed.python("B", "traffic.py", "sink", "--port", "5001", stdout=subprocess.PIPE,
                      text=True)
    sink.stdout.readline()
    before = {f"A:{d}": tx(bed, "A", d) for d in ("a0", "a1")}
    before.update({f"B:{d}": tx(bed, "B", d, rx=True) for d in ("b0", "b1")})
    n0 = bed.nstat("A")
    src = bed.popen("A", ["timeout", "6", sys.executable,
                          str(HERE / "traffic.py"), "source", "--to",
                          "10.9.1.2", "--port", "5001", "--bytes", "20000", "--bind",
                          "10.9.1.1"], stdout=subprocess.PIPE, text=True)
    out, _ = src.communicate(timeout=15)
    bed.stop(sink)
    n1 = bed.nstat("A")
    after = {f"A:{d}": tx(bed, "A", d) for d in ("a0", "a1")}
    after.update({f"B:{d}": tx(bed, "B", d, rx=True) for d in ("b0", "b1")})
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {"client": lines[-1] if lines else "no connection (timed out)",
            "A_tx_packets": {k: after[k] - before[k] for k in after if k.startswith("A")},
            "B_rx_packets": {k: after[k] - before[k] for k in after if k.startswith("B")},
            "IPReversePathFilter": n1.get("TcpExtIPReversePathFilter", 0)
            - n0.get("TcpExtIPReversePathFilter", 0)}


def with_queues(bed: Bed, rules: list[tuple[str, str]], rewriters: list[tuple[int, str]]) -> dict:
    procs = []
    for q, arg in rewriters:
        p = bed.python("A", "rewrite.py", "--queue", str(q), *arg.split(),
                       stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
    for table, rule in rules:
        bed.sh("A", f"iptables-legacy -t {table} -A {rule}")
    try:
        res = attempt(bed)
    finally:
        for table, rule in rules:
            bed.sh("A", f"iptables-legacy -t {table} -D {rule}")
        for p in procs:
            p.terminate()
        res["rewriters"] = [json.loads(p.communicate(timeout=10)[0].splitlines()[-1])
                            for p in procs]
    return res


def main() -> int:
    out_rule = "-p tcp -s 10.9.1.1 -d 10.9.1.2 --dport 5001 -j NFQUEUE --queue-num 60"
    in_rule = ("raw", "PREROUTING -p tcp -s 10.9.1.2 -d 10.9.2.1 --sport 5001 "
                      "-j NFQUEUE --queue-num 61")
    with Bed("A", "B") as bed:
        build(bed)
        print(json.dumps({"case": "0 no rewriting", **attempt(bed)}), flush=True)
        for chain in ("OUTPUT", "POSTROUTING"):
            for rp in (1, 2):
                bed.sysctl("A", "net.ipv4.conf.all.rp_filter", rp)
                bed.sysctl("A", "net.ipv4.conf.a0.rp_filter", rp)
                bed.sysctl("A", "net.ipv4.conf.a1.rp_filter", rp)
                rewriters = [(60, "--src 10.9.1.1=10.9.2.1"), (61, "--dst 10.9.2.1=10.9.1.1")]
                res = with_queues(bed, [("mangle", f"{chain} {out_rule}"), in_rule], rewriters)
                print(json.dumps({"case": f"source rewritten in mangle {chain}, destination "
                                          f"rewritten back in raw PREROUTING, rp_filter={rp}",
                                  **res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
