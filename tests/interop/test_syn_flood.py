"""A SYN flood from the local side: 100,000 SYNs to a server port that never answers, with
the daemon's memory measured (issue: bounded state). Each SYN a local socket sends makes
a SYN_SENT connection in the core; ``--max-connections``/``--max-syn-sent`` bound them.

The SYNs come from a raw socket in the client namespace (sources c0 and c1, 50,000 ports
each), paced so the queue (4096 packets) never overflows; the server namespace drops
them (an INPUT rule that goes with the namespace), so nothing ever answers.
"""

from __future__ import annotations

import json
import os

import pytest

from netns import Topology, wait_until

pytestmark = pytest.mark.interop

CAP_ENFORCED = True  # the core enforces --max-connections/--max-syn-sent
SYNS = 100_000
MAX_CONNECTIONS = 20_000
MAX_SYN_SENT = 10_000
PORT = 9999
BYTES_PER_CONN = 8192  # stated bound per tracked connection, with room (README: ~3.8 KB)
SLACK = 32 * 2**20  # interpreter arenas, the queue buffers, the control socket

FLOOD = r"""
import socket, sys, time
from mptcp_proxy.core.forge import build_segment
src = [socket.inet_aton(a) for a in sys.argv[1].split(",")]
dst = socket.inet_aton(sys.argv[2]); port = int(sys.argv[3]); n = int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = 0
opts = b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07"
while sent < n:
    for _ in range(500):
        a = src[sent % len(src)]
        sport = 10000 + sent // len(src)
        pkt = build_segment(a, dst, sport, port, sent * 7919, 0, 0x02, 64240, opts)
        s.sendto(pkt, (sys.argv[2], 0))
        sent += 1
        if sent == n:
            break
    time.sleep(0.02)  # ~25,000 SYNs/s at most: below what the queue holds
print(sent)
"""


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _daemon_pid(px) -> int:
    return px.ctl("status")["pid"]


def test_local_syn_flood_memory_bounded(topo: Topology, run_proxy) -> None:
    topo.run(topo.server, ["iptables-legacy", "-I", "INPUT", "-p", "tcp", "--dport", str(PORT),
                           "-j", "DROP"])
    px = run_proxy(topo, extra=["--subflows", "manual",
                                "--max-connections", str(MAX_CONNECTIONS),
                                "--max-syn-sent", str(MAX_SYN_SENT)])
    pid = _daemon_pid(px)
    rss0 = _rss(pid)
    p0, q0 = px.stats(), px.ctl("status")["packets"]
    out = topo.run(topo.client, ["python3", "-c", FLOOD, ",".join(topo.client_addrs[:2]),
                                 topo.server_addr, str(PORT), str(SYNS)],
                   timeout=300, env=dict(os.environ))
    assert int(out.stdout.strip()) == SYNS
    # every SYN reached the core (bounded poll: the queue drains at its own pace)
    seen = wait_until(lambda: px.ctl("status")["packets"] - q0 >= SYNS, 120, 1.0)
    tracked = px.ctl("status")["connections"]
    rss1 = _rss(pid)
    pd = {k: v - p0.get(k, 0) for k, v in px.stats().items() if v != p0.get(k, 0)}
    print(json.dumps({"syns": SYNS, "tracked": tracked, "rss_before": rss0, "rss_after": rss1,
                      "growth_per_syn": round((rss1 - rss0) / SYNS, 1),
                      "queue_overruns": pd.get("QueueOverrun", 0), "proxy": pd}))
    assert seen, pd
    assert pd.get("InternalErrors", 0) == 0, pd
    assert px.proc.poll() is None, "the daemon died"
    assert rss1 - rss0 <= tracked * BYTES_PER_CONN + SLACK, (tracked, rss0, rss1)
    if CAP_ENFORCED:
        assert tracked <= MAX_SYN_SENT, tracked  # none is ever answered: all in SYN_SENT
        assert pd.get("SynSentLimit", 0) >= SYNS - MAX_SYN_SENT - tracked, pd
        assert rss1 - rss0 <= MAX_CONNECTIONS * BYTES_PER_CONN + SLACK, (rss0, rss1)
