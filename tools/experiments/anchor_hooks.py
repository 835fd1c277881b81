"""Experiment for docs/platform.md §9: where an anchor on a router can rewrite the servers'
packets, and what the kernel does with them.

    sudo .venv/bin/python tools/experiments/anchor_hooks.py

Bed: C (c0 10.9.1.1, c1 10.9.2.1) -- R (r0 10.9.1.254, r1 10.9.2.254, r2 10.9.3.254, a
forwarding router) -- S (s0 10.9.3.1, default via r2); TSO/GSO off. S sends 10 hand-made
TCP segments to 10.9.1.1:5001 (reached by r0).

1. An NFQUEUE on R rewrites their destination to 10.9.2.1 (C's other link, reached by r1),
   once in mangle PREROUTING and once in mangle FORWARD: which link of R do they leave by?
2. The queue in mangle PREROUTING rewrites their source to 10.9.2.254 (R's own address, as
   for a subflow to an address the anchor announced): are they forwarded, with
   ``accept_local`` 0 and 1 on r2?
3. IPv6 rules installed through python-iptables with ``-i r0 -j ACCEPT`` / ``-j DROP``: do
   they match a packet that arrives on r2 (the interface mask python-iptables writes)?
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from nsbed import HERE, REPO, Bed

sys.path.insert(0, str(REPO))


def build(bed: Bed) -> None:
    bed.link("C", "c0", "R", "r0")
    bed.link("C", "c1", "R", "r1")
    bed.link("S", "s0", "R", "r2")
    bed.sh("C", "ip addr add 10.9.1.1/24 dev c0; ip addr add 10.9.2.1/24 dev c1")
    bed.sh("R", "ip addr add 10.9.1.254/24 dev r0; ip addr add 10.9.2.254/24 dev r1; "
                "ip addr add 10.9.3.254/24 dev r2; sysctl -qw net.ipv4.ip_forward=1")
    bed.sh("S", "ip addr add 10.9.3.1/24 dev s0; ip route add default via 10.9.3.254")
    bed.sh("C", "ip route add 10.9.3.0/24 via 10.9.1.254")
    for ns, devs in (("C", ("c0", "c1")), ("R", ("r0", "r1", "r2")), ("S", ("s0",))):
        for d in devs:
            bed.sh(ns, f"ethtool -K {d} tso off gso off gro off >/dev/null")


def tx(bed: Bed, dev: str) -> int:
    return json.loads(bed.sh("R", f"ip -s -j link show {dev}"))[0]["stats64"]["tx"]["packets"]


def martian_src(bed: Bed) -> int:
    """``in_martian_src`` of /proc/net/stat/rt_cache, summed over the CPUs."""
    lines = bed.sh("R", "cat /proc/net/stat/rt_cache").split("\n")
    col = lines[0].split().index("in_martian_src")
    return sum(int(x.split()[col], 16) for x in lines[1:] if x.strip())


def send(bed: Bed, n: int = 10) -> None:
    for i in range(n):
        bed.sh("S", f"{sys.executable} {HERE / 'inject.py'} --src 10.9.3.1 --dst 10.9.1.1 "
                    f"--sport {41000 + i} --dport 5001 --flags A --payload 100")


def case(bed: Bed, hook: str, field: str, new: str, accept_local: int = 0) -> dict:
    """Rewrite ``field`` of S's segments in mangle ``hook`` on R; where did they go?"""
    old = "10.9.1.1" if field == "dst" else "10.9.3.1"
    bed.sysctl("R", "net.ipv4.conf.r2.accept_local", accept_local)
    bed.sysctl("R", "net.ipv4.conf.all.accept_local", 0)
    bed.sh("R", f"iptables-legacy -t mangle -A {hook} -i r2 -p tcp -j NFQUEUE --queue-num 7")
    rw = bed.python("R", "rewrite.py", "--queue", "7", f"--{field}", f"{old}={new}",
                    stdout=subprocess.PIPE, text=True)
    rw.stdout.readline()
    before = {d: tx(bed, d) for d in ("r0", "r1")}
    m0 = martian_src(bed)
    send(bed)
    time.sleep(0.5)
    m1 = martian_src(bed)
    bed.stop(rw)
    bed.sh("R", f"iptables-legacy -t mangle -D {hook} -i r2 -p tcp -j NFQUEUE --queue-num 7")
    left = {d: tx(bed, d) - before[d] for d in ("r0", "r1")}
    return {"hook": hook, "rewrite": f"{field} {old} -> {new}", "accept_local": accept_local,
            "left_by": left, "in_martian_src": m1 - m0}


def ipv6_masks(bed: Bed) -> dict:
    """A python-iptables IPv6 rule ``-i r0``: does it match a packet from r2 (python-
    iptables 1.0.1 as is, then with the mask as iptables writes it)?"""
    bed.sh("R", "ip -6 addr add fd09:3::fe/64 dev r2 nodad; sysctl -qw "
                "net.ipv6.conf.all.forwarding=1")
    bed.sh("S", "ip -6 addr add fd09:3::1/64 dev s0 nodad")
    code = (
        "import sys, iptc\n"
        "from iptc import easy\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from mptcp_proxy.rules import encode_rule\n"
        "fix = sys.argv[1] == 'fixed'\n"
        "spec = {'in-interface': 'r0', 'protocol': 'tcp'}\n"
        "rule = encode_rule(spec, True) if fix else easy.encode_iptc_rule(dict(spec), True)\n"
        "t = iptc.Table6('raw'); t.refresh(); iptc.Chain(t, 'PREROUTING').insert_rule(rule)\n")
    out = {}
    for mode in ("python-iptables", "fixed"):
        bed.sh("R", f"{sys.executable} -c \"{code}\" {mode}")
        bed.sh("S", "for i in 1 2 3; do timeout 0.3 bash -c "
                    "'exec 3<>/dev/tcp/fd09:3::fe/9'; done", check=False)
        rows = bed.sh("R", "ip6tables-legacy -t raw -L PREROUTING -v -n -x")
        pk = [int(line.split()[0]) for line in rows.splitlines()
              if " r0 " in f" {line} " and line.split()[0].isdigit()]
        out[mode] = {"rule -i r0 matched packets from r2": pk[0] if pk else None}
        bed.sh("R", "ip6tables-legacy -t raw -F PREROUTING")
    return out


def main() -> int:
    with Bed("C", "R", "S") as bed:
        build(bed)
        results = [
            case(bed, "PREROUTING", "dst", "10.9.2.1"),
            case(bed, "FORWARD", "dst", "10.9.2.1"),
            case(bed, "PREROUTING", "src", "10.9.2.254", accept_local=0),
            case(bed, "PREROUTING", "src", "10.9.2.254", accept_local=1),
        ]
        for r in results:
            print(json.dumps(r))
        print(json.dumps({"ipv6_interface_masks": ipv6_masks(bed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
