"""Experiment (d) of docs/platform.md: a Linux TCP sender facing a zero receive window.

    sudo .venv/bin/python tools/experiments/zero_window.py

Bed: A (sender, a0 10.9.1.1) -- B (receiver, b0 10.9.1.2), veth, RTT ~0.1 ms (so the RTO
is its 200 ms floor). B's sink has a 4 KB receive buffer and does not read at first, so its
window closes. Segments are captured on a0. Parts:

1. probes answered: B reads after 8 s. Reports the zero-window probes A sent (times and
   intervals), whether it ever gave up, and how long after B's window update A sent data;
2. probes unanswered: 1.5 s into the zero window B's answers are dropped; A has
   tcp_retries2=3. Reports the probes and when (and with which error) A's socket died;
3. orphan, unanswered: A's application closes the socket with unsent data queued, B's
   answers are dropped, tcp_orphan_retries=2 on A;
4. orphan, answered, tcp_rto_max_ms=1000 on A: does a zero-window orphan die although
   its probes are answered?
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from nsbed import Bed

LINE = re.compile(r"^(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\].*?"
                  r"(?:seq (\d+)(?::(\d+))?, )?(?:ack (\d+), )?win (\d+).*length (\d+)")


def build(bed: Bed) -> None:
    bed.link("A", "a0", "B", "b0")
    bed.sh("A", "ip addr add 10.9.1.1/24 dev a0")
    bed.sh("B", "ip addr add 10.9.1.2/24 dev b0")


def capture(bed: Bed) -> subprocess.Popen:
    p = bed.popen("A", ["tcpdump", "-l", "-n", "-tt", "-S", "-i", "a0", "tcp port 5001"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stderr.readline()
    return p


def parse(text: str) -> list[dict]:
    segs = []
    for line in text.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        t, src, sp, dst, dp, fl, s0, s1, ack, win, ln = m.groups()
        segs.append({"t": float(t), "dir": "A>B" if src == "10.9.1.1" else "B>A", "flags": fl,
                     "win": int(win), "len": int(ln)})
    return segs


def analyse(segs: list[dict]) -> dict:
    zero = next((s["t"] for s in segs if s["dir"] == "B>A" and s["win"] == 0
                 and "S" not in s["flags"]), None)
    if zero is None:
        return {"zero_window": False}
    probes = [s["t"] for s in segs if s["dir"] == "A>B" and s["t"] > zero and s["len"] == 0
              and "F" not in s["flags"] and "R" not in s["flags"]]
    reopen = next((s["t"] for s in segs if s["dir"] == "B>A" and s["t"] > zero and s["win"] > 0),
                  None)
    if reopen is not None:
        probes = [p for p in probes if p < reopen]
    data_after = next((s["t"] for s in segs if reopen is not None and s["dir"] == "A>B"
                       and s["t"] >= reopen and s["len"] > 0), None)
    answers = [s["t"] for s in segs if s["dir"] == "B>A" and s["t"] > zero and s["win"] == 0]
    rst = [round(s["t"] - zero, 3) for s in segs if "R" in s["flags"]]
    return {
        "zero_window": True,
        "probes": len(probes),
        "probe_at_s": [round(p - zero, 3) for p in probes],
        "intervals_s": [round(b - a, 3) for a, b in zip([zero] + probes, probes)],
        "zero_window_answers_from_B": len(answers),
        "window_update_at_s": None if reopen is None else round(reopen - zero, 3),
        "data_after_update_ms": (None if data_after is None
                                 else round((data_after - reopen) * 1000, 3)),
        "rst_at_s": rst,
    }


def sink(bed: Bed, read_after: float) -> subprocess.Popen:
    p = bed.python("B", "traffic.py", "sink", "--port", "5001", "--bind", "10.9.1.2",
                   "--rcvbuf", "4096", "--read-after", str(read_after),
                   stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    return p


def source(bed: Bed, *extra: str) -> subprocess.Popen:
    p = bed.python("A", "traffic.py", "source", "--to", "10.9.1.2", "--port", "5001",
                   "--bytes", "4000000", *extra, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    return p


def a_socket(bed: Bed) -> str:
    return bed.sh("A", "ss -tnoiH '( dport = :5001 )'").strip()


def part(bed: Bed, title: str, read_after: float, src_args: tuple, block_at: float | None,
         wait_s: float, until_gone: bool) -> dict:
    cap = capture(bed)
    n0, m0 = bed.nstat("A"), bed.nstat("B")
    t0 = time.monotonic()
    k = sink(bed, read_after)
    s = source(bed, *src_args)
    ss_samples = []
    blocked = False
    died_at = None
    while time.monotonic() - t0 < wait_s:
        now = time.monotonic() - t0
        if block_at is not None and not blocked and now >= block_at:
            bed.sh("B", "iptables-legacy -A OUTPUT -p tcp --sport 5001 -j DROP")
            blocked = True
        st = a_socket(bed)
        if st and len(ss_samples) < 400:
            ss_samples.append((round(now, 1), re.search(r"timer:\([^)]*\)", st).group(0)
                               if "timer:" in st else "-"))
        if until_gone and not st and died_at is None:
            died_at = round(now, 2)
            break
        if s.poll() is not None and not until_gone and k.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    n1, m1 = bed.nstat("A"), bed.nstat("B")
    if blocked:
        bed.sh("B", "iptables-legacy -D OUTPUT -p tcp --sport 5001 -j DROP")
    for p in (s, k):
        bed.stop(p)
    src_out = [json.loads(line) for line in s.stdout.read().splitlines() if line.strip()]
    cap.terminate()
    res = {"part": title, **analyse(parse(cap.communicate(timeout=10)[0])),
           "source_result": src_out[-1] if src_out else None,
           "A_socket_gone_at_s": died_at,
           "A_counters": {c: n1.get(c, 0) - n0.get(c, 0) for c in
                          ("TcpExtTCPWinProbe", "TcpExtTCPAbortOnTimeout", "TcpExtTCPTimeouts")},
           "B_counters": {c: m1.get(c, 0) - m0.get(c, 0) for c in
                          ("TcpExtTCPACKSkippedSeq", "TcpExtTCPToZeroWindowAdv",
                           "TcpExtTCPFromZeroWindowAdv")},
           "A_timer_samples": ss_samples[::10]}
    print(json.dumps(res, indent=1), flush=True)
    return res


def main() -> int:
    with Bed("A", "B") as bed:
        build(bed)
        part(bed, "1 probes answered, B reads after 8 s", 8.0, (), None, 20.0, False)
        bed.sysctl("A", "net.ipv4.tcp_retries2", 3)
        part(bed, "2 probes unanswered from 1.5 s, tcp_retries2=3", 600.0, (), 1.5, 60.0, True)
        bed.sysctl("A", "net.ipv4.tcp_retries2", 15)
        bed.sysctl("A", "net.ipv4.tcp_orphan_retries", 2)
        part(bed, "3 orphan, probes unanswered from 1.5 s, tcp_orphan_retries=2", 600.0,
             ("--orphan",), 1.5, 60.0, True)
        bed.sysctl("A", "net.ipv4.tcp_orphan_retries", 0)
        bed.sysctl("A", "net.ipv4.tcp_rto_max_ms", 1000)
        part(bed, "4 orphan, probes answered, tcp_rto_max_ms=1000", 600.0, ("--orphan",), None,
             60.0, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
