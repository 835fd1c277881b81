"""Experiment (h) of docs/platform.md: a TCP sender cut off with data in flight, and what
a proxy with no path left can do about its retransmission back-off.

    sudo .venv/bin/python tools/experiments/rto_revert.py

Bed: A (sender, a0 10.9.1.1, fd00:9:1::1) -- B (receiver, b0 .2), veth with TSO/GSO off,
RTT ~0.1 ms (the RTO is its 200 ms floor). A streams ~8 Mbit/s to B (10 KB every 10 ms, so
data is always in flight). ``freezer.py`` sits on a queue in A's mangle OUTPUT: 2 s into
the transfer it drops every segment of A (the path is gone), answering each as the case
says; ``--cut`` seconds later the path returns. Cases (IPv4 and IPv6):

- ``none``: nothing answers (a plain outage);
- ``icmp``: each retransmission of the head gets an ICMP net unreachable (IPv6: no route);
- ``zero-window``: each segment gets a zero-window ACK acknowledging nothing new;
- ``zero-window+icmp``: both; on the return a window update and one more ICMP.

Reports per case the times of A's segments during the cut (its retransmissions), how long
after the return A sent its next segment, whether A's socket survived, and the counters
(``TCPTimeouts``, ``TCPLossProbes``...). A second round repeats ``icmp`` and
``zero-window+icmp`` with ``tcp_retries2=3`` on A (its normal give-up after ~3 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from nsbed import Bed

QUEUE = 10
PORT = 5001
CASES = {"none": (), "icmp": ("--icmp",), "zero-window": ("--zero-window",),
         "zero-window+icmp": ("--icmp", "--zero-window")}


def build(bed: Bed) -> None:
    bed.link("A", "a0", "B", "b0")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0; ip addr add fd00:9:1::1/64 dev a0 nodad")
    bed.sh("B", "ip addr add 10.9.1.2/24 dev b0; ip addr add fd00:9:1::2/64 dev b0 nodad")
    for n, i in (("A", "a0"), ("B", "b0")):
        bed.sh(n, f"ethtool -K {i} tso off gso off gro off >/dev/null 2>&1 || true")
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        bed.sh("A", f"{tool} -t mangle -A OUTPUT -p tcp --dport {PORT} "
                    f"-j NFQUEUE --queue-num {QUEUE}")


def a_socket(bed: Bed) -> str:
    return bed.sh("A", f"ss -tnoiH '( dport = :{PORT} )'").strip()


def run_case(bed: Bed, name: str, v6: bool, cut_s: float) -> dict:
    dst = "fd00:9:1::2" if v6 else "10.9.1.2"
    fz = bed.python("A", "freezer.py", "--queue", str(QUEUE), *CASES[name],
                    stdout=subprocess.PIPE, text=True)
    assert fz.stdout.readline().strip() == "ready"
    k = bed.python("B", "traffic.py", "sink", "--port", str(PORT), "--bind", dst,
                   stdout=subprocess.PIPE, text=True)
    k.stdout.readline()
    n0 = bed.nstat("A")
    s = bed.python("A", "traffic.py", "source", "--to", dst, "--port", str(PORT),
                   "--bytes", str(10**9), "--chunk", "10000", "--gap", "0.01",
                   stdout=subprocess.PIPE, text=True)
    s.stdout.readline()
    time.sleep(2.0)
    fz.send_signal(10)  # SIGUSR1: the path is gone
    time.sleep(cut_s)
    alive_before_back = bool(a_socket(bed))
    timer = a_socket(bed)
    fz.send_signal(12)  # SIGUSR2: the path returns
    time.sleep(3.0)
    alive = bool(a_socket(bed))
    n1 = bed.nstat("A")
    for p in (s, k, fz):
        bed.stop(p)
    events = [json.loads(x) for x in fz.stdout.read().splitlines() if x.startswith("{")]
    src = [json.loads(x) for x in s.stdout.read().splitlines() if x.startswith("{")]
    segs = [e for e in events if e["event"] == "seg" and e["len"]]
    times = [e["t"] for e in segs]
    first = next((e for e in events if e["event"] == "first_after"), None)
    summary = next((e for e in events if e["event"] == "summary"), {})
    return {
        "case": name, "family": "ipv6" if v6 else "ipv4", "cut_s": cut_s,
        "data_segments_during_cut": len(segs),
        "first_at_s": times[:3],
        "intervals_s": [round(b - a, 3) for a, b in zip(times, times[1:])][-6:],
        "timer_before_return": (timer.split("timer:")[1].split(")")[0] + ")"
                                if "timer:" in timer else None),
        "alive_before_return": alive_before_back,
        "next_segment_after_return_s": first and first["delay_s"],
        "alive_3s_after_return": alive,
        "source_error": src[-1].get("error") if src and src[-1]["event"] == "done" else None,
        "answers": {k2: v for k2, v in summary.items() if k2 != "event"},
        "A_counters": {c: n1.get(c, 0) - n0.get(c, 0) for c in
                       ("TcpExtTCPTimeouts", "TcpExtTCPAbortOnTimeout", "TcpExtTCPLossProbes",
                        "TcpExtTCPSpuriousRTOs", "Icmp6InDestUnreachs", "IcmpInDestUnreachs")},
    }


def main() -> int:
    results = []
    with Bed("A", "B") as bed:
        build(bed)
        for v6 in (False, True):
            for name in CASES:
                results.append(run_case(bed, name, v6, 10.0))
                print(json.dumps(results[-1]), flush=True)
        bed.sysctl("A", "net.ipv4.tcp_retries2", 3)
        for name in ("icmp", "zero-window+icmp"):
            results.append({**run_case(bed, name, False, 10.0), "tcp_retries2": 3})
            print(json.dumps(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
