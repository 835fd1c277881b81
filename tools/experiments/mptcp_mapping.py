"""Experiment (e) of docs/platform.md: how Linux native MPTCP reacts to a data segment
without DSS, to a DSS with data-level length 0 on a pure ACK, and to MP_FAIL.

    sudo .venv/bin/python tools/experiments/mptcp_mapping.py

Bed: C (client, c0 10.9.1.1, c1 10.9.2.1) and S (server, s0 10.9.1.2, s1 10.9.2.2), two
veth links, TSO/GSO off on C's links so every segment carries its own DSS. Both ends are
native MPTCP sockets (IPPROTO_MPTCP) exchanging 30 x 1000 bytes each way, 0.1 s apart. An
NFQUEUE in C's mangle OUTPUT (tools/experiments/mangle.py) rewrites one of C's segments.
Each case runs on a fresh connection, with one subflow, and again with a second subflow
(C endpoint 10.9.2.1 'subflow', joined before the rewrite). Two more cases corrupt the join
itself: one bit of the HMAC in the SYN/ACK C receives (queue in C's raw PREROUTING), and in
the third ACK C sends. Reported: the data each side
received (complete and intact?), TCP_IS_MPTCP at the end, the rewritten option, and every
MPTcpExt counter that moved on either side.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

from nsbed import Bed

CASES = [
    ("strip-dss", 8, "a data segment of C loses its DSS"),
    ("dss-dll0", 3, "a pure ACK of C carries DSS DATA_ACK + mapping with data-level length 0"),
    ("mp-fail", 3, "a pure ACK of C carries MP_FAIL instead of its DSS"),
]


def build(bed: Bed) -> None:
    bed.link("C", "c0", "S", "s0")
    bed.link("C", "c1", "S", "s1")
    bed.sh("C", "ip addr add 10.9.1.1/24 dev c0; ip addr add 10.9.2.1/24 dev c1")
    bed.sh("S", "ip addr add 10.9.1.2/24 dev s0; ip addr add 10.9.2.2/24 dev s1")
    for dev in ("c0", "c1"):
        bed.sh("C", f"ethtool -K {dev} tso off gso off >/dev/null")
    for ns in ("C", "S"):
        bed.sysctl(ns, "net.mptcp.enabled", 1)
        bed.sh(ns, "ip mptcp limits set subflows 2 add_addr_accepted 0")


def mptcp_delta(a: dict, b: dict) -> dict:
    return {k[len("MPTcpExt"):]: b[k] - a.get(k, 0) for k in b
            if k.startswith("MPTcpExt") and b[k] != a.get(k, 0) and k != "MPTcpExtMPCurrEstab"}


def tshark(pcap: str, display: str, *fields: str) -> list[list[str]]:
    r = subprocess.run(["tshark", "-r", pcap, "-Y", display, "-T", "fields",
                        *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True)
    return [line.split("\t") for line in r.stdout.splitlines() if line.strip()]


def wire_facts(pcap: str) -> dict:
    """What the capture on C's links shows: MP_FAIL options per sender and the time they
    spanned, RSTs with their MP_TCPRST reason, and infinite mappings on data."""
    fails = tshark(pcap, "tcp.options.mptcp.subtype == 6", "frame.time_relative", "ip.src")
    per_src = collections.Counter(f[1] for f in fails)
    span = (round(float(fails[-1][0]) - float(fails[0][0]), 4) if fails else None)
    rsts = tshark(pcap, "tcp.flags.reset == 1", "ip.src", "tcp.options.mptcp.rst_reason")
    inf = tshark(pcap, "tcp.options.mptcp.subtype == 2 && tcp.options.mptcp.datalvllen == 0 "
                 "&& tcp.len > 0", "ip.src")
    return {"mp_fail_packets_by_sender": dict(per_src), "mp_fail_span_s": span,
            "rst": [f"{r[0]} reason={r[1] if len(r) > 1 and r[1] else '-'}" for r in rsts],
            "infinite_mappings_by_sender": dict(collections.Counter(i[0] for i in inf))}


def run_case(bed: Bed, action: str, nth: int, title: str, two_subflows: bool,
             inbound: bool = False) -> dict:
    bed.sh("C", "ip mptcp endpoint flush")
    rule = ("raw PREROUTING -p tcp --sport 5001" if inbound else
            "mangle OUTPUT -p tcp --dport 5001")
    table, chain, match = rule.split(" ", 2)
    bed.sh("C", "iptables-legacy -t mangle -F OUTPUT; iptables-legacy -t raw -F PREROUTING")
    bed.sh("C", f"iptables-legacy -t {table} -A {chain} {match} -j NFQUEUE --queue-num 50")
    if two_subflows:
        bed.sh("C", "ip mptcp endpoint add 10.9.2.1 dev c1 subflow")
    m = bed.python("C", "mangle.py", "--queue", "50", "--action", action, "--nth", str(nth),
                   stdout=subprocess.PIPE, text=True)
    assert m.stdout.readline().strip() == "ready"
    pcap = f"/tmp/{bed.prefix}-{action}-{2 if two_subflows else 1}.pcap"
    cap = bed.popen("C", ["tcpdump", "-i", "any", "-s", "160", "-w", pcap, "tcp port 5001"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    c0, s0 = bed.nstat("C"), bed.nstat("S")
    srv = bed.python("S", "mptcp_pair.py", "server", "--port", "5001", stdout=subprocess.PIPE,
                     text=True)
    srv.stdout.readline()
    cli = bed.python("C", "mptcp_pair.py", "client", "--to", "10.9.1.2", "--port", "5001",
                     stdout=subprocess.PIPE, text=True)
    outs = {}
    for name, p in (("client", cli), ("server", srv)):
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            bed.stop(p)
            out = p.stdout.read() if p.stdout else ""
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        outs[name] = next((d for d in lines if d.get("event") == "done"), {"event": "hung"})
        outs[name].pop("event", None)
        outs[name].pop("role", None)
    time.sleep(0.5)
    c1, s1 = bed.nstat("C"), bed.nstat("S")
    cap.terminate()
    cap.wait(10)
    m.terminate()
    mout = [json.loads(line) for line in m.communicate(timeout=10)[0].splitlines() if line.strip()]
    res = {"case": f"{action}: {title}", "subflows": 2 if two_subflows else 1,
           "rewritten": [m for m in mout if m.get("event") == "rewritten"],
           "client": outs["client"], "server": outs["server"],
           "client_MPTcpExt": mptcp_delta(c0, c1), "server_MPTcpExt": mptcp_delta(s0, s1),
           "wire": wire_facts(pcap)}
    os.unlink(pcap)
    print(json.dumps(res, indent=1), flush=True)
    return res


def main() -> int:
    with Bed("C", "S") as bed:
        build(bed)
        for action, nth, title in CASES:
            for two in (False, True):
                run_case(bed, action, nth, title, two)
        run_case(bed, "bad-synack-hmac", 1, "the join SYN/ACK C receives has a wrong HMAC",
                 True, inbound=True)
        run_case(bed, "bad-ack-hmac", 1, "the join third ACK C sends has a wrong HMAC", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
