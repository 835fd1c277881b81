"""Experiment (c) of docs/platform.md: what happens to a local TCP socket's segments once its
source address is no longer configured, and what keeping the address on a link-less device
costs in ARP behaviour.

    sudo .venv/bin/python tools/experiments/lost_source.py

Bed: A and B joined by two veth links: a0 10.9.1.1/24 -- b0 10.9.1.2/24 and
a1 10.9.2.1/24 -- b1 10.9.2.2/24. A sink listens on 10.9.1.2:5001; A's source, bound to
10.9.1.1, writes 1000 bytes every 0.1 s. A counts, in mangle OUTPUT, the segments of that
connection (the hook the proxy's outbound queue sits on). Phases, 3 s each:

1. baseline;
2. 10.9.1.1 deleted from a0 (a0 stays up), no other route to 10.9.1.2;
3. the same, plus a route 10.9.1.2 via 10.9.2.2 dev a1;
3b. the address put back on a0 (is the old connection still usable, with which MSS?);
4. 10.9.1.1/32 kept on a link-less device d0 (``ifb``: this kernel has no ``dummy``), with
   the route of phase 3; default arp_ignore/arp_announce;
5. as 4 with arp_ignore=1, arp_announce=2 on A.

Per phase: the mangle OUTPUT packet counter, IpOutNoRoutes, packets sent on a0/a1, bytes
the sink received, and the ARP traffic B saw: who answered B's requests for 10.9.1.1 on b0
and which sender address A's requests on a1 carried.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from nsbed import Bed

# tcpdump -e on "any": "<time> b0 In|Out|B ... Request who-has X tell Y" / "Reply X is-at M"
ARP = re.compile(r"\s(b\d)\s+(In|Out|B)\s.*?(Request who-has \S+ tell \S+|Reply \S+ is-at \S+)")
RULE = "OUTPUT -p tcp -s 10.9.1.1 -d 10.9.1.2 --dport 5001 -j ACCEPT"


def build(bed: Bed) -> None:
    bed.link("A", "a0", "B", "b0")
    bed.link("A", "a1", "B", "b1")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0; ip addr add 10.9.2.1/24 dev a1")
    bed.sh("B", "ip addr add 10.9.1.2/24 dev b0; ip addr add 10.9.2.2/24 dev b1")
    bed.sh("A", f"iptables-legacy -t mangle -A {RULE}")


def snapshot(bed: Bed) -> dict:
    out = bed.sh("A", "iptables-legacy -t mangle -L OUTPUT -v -x -n")
    pk = 0
    for line in out.splitlines():
        if "10.9.1.1" in line and "dpt:5001" in line:
            pk = int(line.split()[0])
    links = {}
    for dev in ("a0", "a1"):
        j = json.loads(bed.sh("A", f"ip -s -j link show {dev}"))[0]
        links[dev] = j["stats64"]["tx"]["packets"]
    ns = bed.nstat("A")
    return {"mangle_OUTPUT_pkts": pk, "IpOutNoRoutes": ns.get("IpOutNoRoutes", 0),
            "TcpRetransSegs": ns.get("TcpRetransSegs", 0), "a0_tx": links["a0"],
            "a1_tx": links["a1"]}


def delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def arp_capture(bed: Bed) -> subprocess.Popen:
    p = bed.popen("B", ["tcpdump", "-l", "-n", "-e", "-i", "any", "arp"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stderr.readline()  # "listening on any ..."
    return p


def arp_lines(p: subprocess.Popen) -> list[str]:
    time.sleep(0.3)
    p.terminate()
    out = p.communicate(timeout=10)[0]
    keep = []
    for line in out.splitlines():
        m = ARP.search(line)
        if m:
            way = "Out" if m.group(2) == "Out" else "In"
            keep.append(f"{m.group(1)} {way}: {m.group(3).rstrip(',')}")
    return keep


def connect(bed: Bed) -> tuple[subprocess.Popen, subprocess.Popen]:
    sink = bed.python("B", "traffic.py", "sink", "--port", "5001", "--bind", "10.9.1.2",
                      stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    src = bed.python("A", "traffic.py", "source", "--to", "10.9.1.2", "--port", "5001",
                     "--bind", "10.9.1.1", "--bytes", "10000000", "--chunk", "1000",
                     "--gap", "0.1", stdout=subprocess.PIPE, text=True)
    src.stdout.readline()
    return sink, src


def sink_bytes(bed: Bed) -> int:
    out = bed.sh("B", "ss -tinH state established '( sport = :5001 )'")
    m = re.search(r"bytes_received:(\d+)", out)
    return int(m.group(1)) if m else -1


def phase(bed: Bed, name: str, setup: str | None, seconds: float = 4.0) -> dict:
    cap = arp_capture(bed)
    if setup:
        bed.sh("A", setup)
    bed.sh("B", "ip neigh flush dev b0; ip neigh flush dev b1")
    bed.sh("A", "ip neigh flush dev a0; ip neigh flush dev a1")
    s0, r0 = snapshot(bed), sink_bytes(bed)
    time.sleep(seconds)
    s1, r1 = snapshot(bed), sink_bytes(bed)
    res = {"phase": name, **delta(s0, s1), "sink_rx_bytes": r1 - r0,
           "arp_seen_by_B": arp_lines(cap),
           "A_socket": " ".join(bed.sh("A", "ss -tnH '( dport = :5001 )'").split()[:1]) or "gone"}
    print(json.dumps(res, indent=1), flush=True)
    return res


def main() -> int:
    with Bed("A", "B") as bed:
        build(bed)
        sink, src = connect(bed)
        phase(bed, "1 baseline", None)
        phase(bed, "2 address deleted from a0, no route to 10.9.1.2",
              "ip addr del 10.9.1.1/24 dev a0")
        phase(bed, "3 address deleted, route 10.9.1.2 via 10.9.2.2 dev a1",
              "ip route add 10.9.1.2/32 via 10.9.2.2 dev a1")
        print(bed.sh("A", "ss -tinH '( dport = :5001 )'"), flush=True)
        phase(bed, "3b address back on a0 (same connection)", "ip addr add 10.9.1.1/24 dev a0",
              seconds=8.0)
        print(bed.sh("A", "ss -tinH '( dport = :5001 )'"), flush=True)
        bed.sh("A", "ip addr del 10.9.1.1/24 dev a0")
        bed.stop(src)
        bed.stop(sink)
        # fresh connections from an address that lives on a link-less device
        bed.sh("A", "ip link add d0 type ifb; ip link set d0 up; ip addr add 10.9.1.1/32 dev d0")
        strict_arp = ("sysctl -qw net.ipv4.conf.all.arp_ignore=1 "
                      "net.ipv4.conf.all.arp_announce=2")
        for title, sysctls in (
                ("4 address on link-less d0 (ifb), arp_ignore=0 arp_announce=0", None),
                ("5 address on d0, arp_ignore=1 arp_announce=2", strict_arp)):
            if sysctls:
                bed.sh("A", sysctls)
            sink, src = connect(bed)
            phase(bed, title, None, seconds=4.0)
            bed.stop(src)
            bed.stop(sink)
    return 0


if __name__ == "__main__":
    sys.exit(main())
