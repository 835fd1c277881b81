#!/usr/bin/env python3
"""Accept-all NFQUEUE floor: netfilterqueue (as the daemon uses it) against fnfqueue.

Standalone: builds its own test bed (client ns -> router -> server ns), installs the
daemon's two hooks by hand in the client namespace (mangle OUTPUT -> queue N, raw PREROUTING
-> queue N+1, --queue-bypass, iptables-legacy), and runs one accept-every-packet handler at
a time, alternating implementations run by run, with bulk transfers both ways through it
(netns.peer: every byte checked). Per transfer: Mbit/s, packets the handler saw,
handler CPU (utime+stime of all its threads, /proc) per packet.

Implementations (``--impls``):
  none            rules installed, no handler bound (queue bypass): the no-queue reference
  nfq_asyncio     netfilterqueue 1.1, two queues on one asyncio loop (add_reader +
                  run(block=False)), get_payload() + accept(): exactly the daemon's
                  --accept-all path
  fnfq_thread     fnfqueue's documented API: its reader thread batches reads with recvmmsg,
                  `for p in conn`: p.payload, p.accept()
  fnfq_batch      fnfqueue's cffi layer in one thread: receive() up to --batch packets per
                  recvmmsg (MSG_WAITFORONE), payload copied to bytes, one verdict per packet
  fnfq_batchv     the same, but one NFQNL_MSG_VERDICT_BATCH per queue per batch
  fnfq_gso        fnfq_batchv with NFQA_CFG_F_GSO (GSO super-packets reach userspace: fewer,
                  larger packets; the proxy would have to rewrite them as such)

fnfqueue is not a project dependency: install it in any venv of the same Python and pass
that interpreter with --fnfqueue-python (default: this interpreter if it imports fnfqueue).

Example:
  python3 -m venv /tmp/fnfq && /tmp/fnfq/bin/pip install fnfqueue
  tools/nfqueue_floor.py --runs 5 --fnfqueue-python /tmp/fnfq/bin/python --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUEUE = 4800
RCVBUF = 8 * 1024 * 1024
IMPLS = ["none", "nfq_asyncio", "fnfq_thread", "fnfq_batch", "fnfq_batchv", "fnfq_gso"]


# ====================================================================== handlers
# Run inside the client namespace as `nfqueue_floor.py handler --impl X`. Print
# {"ready": pid} once bound; on SIGUSR1 print {"packets": n}.

class Counter:
    n = 0


def _report(*_: Any) -> None:
    sys.stdout.write(json.dumps({"packets": Counter.n}) + "\n")
    sys.stdout.flush()


def _ready() -> None:
    sys.stdout.write(json.dumps({"ready": os.getpid()}) + "\n")
    sys.stdout.flush()


def handler_nfq_asyncio() -> None:
    import asyncio

    from netfilterqueue import COPY_PACKET, NetfilterQueue

    def cb(p: Any) -> None:
        Counter.n += 1
        p.get_payload()
        p.accept()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        qs = []
        for num in (QUEUE, QUEUE + 1):
            q = NetfilterQueue()
            q.bind(num, cb, max_len=4096, mode=COPY_PACKET, range=0xFFFF, sock_len=RCVBUF)
            loop.add_reader(q.get_fd(), lambda q=q: q.run(block=False))
            qs.append(q)
        loop.add_signal_handler(signal.SIGUSR1, _report)
        _ready()
        await asyncio.Event().wait()

    asyncio.run(main())


def _force_rcvbuf(fd: int) -> None:
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
    finally:
        s.close()


def handler_fnfq_thread() -> None:
    import fnfqueue

    conn = fnfqueue.Connection()
    _force_rcvbuf(conn._conn.fd)
    for num in (QUEUE, QUEUE + 1):
        q = conn.bind(num)
        q.set_mode(fnfqueue.MAX_PAYLOAD, fnfqueue.COPY_PACKET)
        q.set_maxlen(4096)
    signal.signal(signal.SIGUSR1, _report)
    _ready()
    while True:
        try:
            for p in conn:
                Counter.n += 1
                p.payload
                p.accept()
        except fnfqueue.BufferOverflowException:
            conn.reset()


def handler_fnfq_batch(batch: int, batch_verdict: bool, gso: bool) -> None:
    import errno

    from fnfqueue import ffi, lib

    conn = ffi.new("struct nfq_connection *")
    if lib.init_connection(conn) == -1:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    _force_rcvbuf(conn.fd)
    bufs = []
    pkts = ffi.new("struct nfq_packet*[]", batch)
    for i in range(batch):
        p = ffi.new("struct nfq_packet *")
        b = ffi.new("char []", 20 * 4096)
        p.buffer, p.len = b, 20 * 4096
        bufs.append((p, b))
        pkts[i] = p
    seq = [0]

    def call(fn: Any, *args: Any) -> None:
        seq[0] += 1
        if fn(conn, *args, 1, seq[0]) == -1:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        while True:  # nothing is queued yet (bypass): the next message is the ack
            if lib.receive(conn, pkts, 1) == -1:
                raise OSError(ffi.errno, os.strerror(ffi.errno))
            err = lib.parse_packet(pkts[0])
            if pkts[0].seq == seq[0]:
                if err not in (-1, 0):
                    raise OSError(err, os.strerror(err))
                return

    for num in (QUEUE, QUEUE + 1):
        call(lib.bind_queue, num)
        call(lib.set_mode, num, 0xFFFF, lib.NFQNL_COPY_PACKET)
        call(lib.set_maxlen, num, 4096)
        if gso:
            call(lib.set_flags, num, lib.NFQA_CFG_F_GSO, lib.NFQA_CFG_F_GSO)
    signal.signal(signal.SIGUSR1, _report)
    _ready()
    receive, parse, verdict, vbatch = (lib.receive, lib.parse_packet, lib.set_verdict,
                                       lib.set_verdict_batch)
    ACCEPT, PAYLOAD = lib.NF_ACCEPT, lib.NFQA_PAYLOAD
    cast, unpack = ffi.cast, ffi.unpack
    while True:
        n = receive(conn, pkts, batch)
        if n == -1:
            if ffi.errno in (errno.EINTR, errno.ENOBUFS, errno.EAGAIN):
                continue
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        last = {}
        for i in range(n):
            p = pkts[i]
            if parse(p) != 0:
                continue
            a = p.attr[PAYLOAD]
            unpack(cast("char *", a.buffer), a.len)  # the payload as bytes, like the daemon
            Counter.n += 1
            if batch_verdict:
                last[p.queue_id] = p
            else:
                verdict(conn, p, ACCEPT, 0, 0, 0)
        for p in last.values():
            vbatch(conn, p, ACCEPT, 0, 0, 0)


def handler_main(impl: str, batch: int) -> int:
    if impl == "nfq_asyncio":
        handler_nfq_asyncio()
    elif impl == "fnfq_thread":
        handler_fnfq_thread()
    else:
        handler_fnfq_batch(batch, impl in ("fnfq_batchv", "fnfq_gso"), impl == "fnfq_gso")
    return 0


# ====================================================================== driver

def _cpu_ticks(pid: int) -> int:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


class Handler:
    def __init__(self, topo: Any, impl: str, python: str, batch: int) -> None:
        self.impl = impl
        self.proc = topo.popen(topo.client, [python, str(Path(__file__).resolve()), "handler",
                                             "--impl", impl, "--batch", str(batch)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.cond = threading.Condition()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.pid = int(self._next(15)["ready"])

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append({"eof": True})
            self.cond.notify_all()

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.impl}: no answer")
                self.cond.wait(left)
            obj = self.lines.pop(0)
        if "eof" in obj:
            raise RuntimeError(f"{self.impl} exited {self.proc.poll()}: {''.join(self.err)}")
        return obj

    def snapshot(self) -> tuple[int, int]:
        os.kill(self.pid, signal.SIGUSR1)
        return self._next(5)["packets"], _cpu_ticks(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def install_rules(topo: Any, iface: str) -> None:
    for table, chain, match in (("mangle", "OUTPUT", ["-o", iface]),
                                ("raw", "PREROUTING", ["-i", iface])):
        q = QUEUE if chain == "OUTPUT" else QUEUE + 1
        topo.run(topo.client, ["iptables-legacy", "-t", table, "-I", chain, *match, "-p",
                               "tcp", "-j", "NFQUEUE", "--queue-num", str(q),
                               "--queue-bypass"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/nfqueue_floor.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    hp = sub.add_parser("handler", help=argparse.SUPPRESS)
    hp.add_argument("--impl", choices=IMPLS[1:], required=True)
    hp.add_argument("--batch", type=int, default=64)
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help=f"comma list (default {','.join(IMPLS)})")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=64, help="packets per recvmmsg (fnfq_batch*)")
    ap.add_argument("--fnfqueue-python", default=sys.executable,
                    help="interpreter that imports fnfqueue")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if a.cmd == "handler":
        return handler_main(a.impl, a.batch)

    sys.path.insert(0, str(ROOT))
    from netns import Topology
    from netns.peer import start_agent, start_server
    venv = ROOT / ".venv" / "bin" / "python"
    nfq_python = str(venv) if venv.exists() else sys.executable
    impls = [x for x in a.impls.split(",") if x]
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    with Topology(client_links=1, ipv6=False) as topo:
        topo.sysctls(topo.client, {"net.ipv4.tcp_no_metrics_save": 1})
        topo.sysctls(topo.server, {"net.ipv4.tcp_no_metrics_save": 1})
        start_server(topo, 5001, mptcp=False, bind="0.0.0.0", extra=["--listen", "5002:mptcp"])
        agent = start_agent(topo)
        seeds = iter(range(1, 1 << 30))

        def bulk(direction: str) -> dict[str, Any]:
            return agent.call("bulk", 3 * a.seconds + 60, addr=topo.server_addr, port=5001,
                              mptcp=False, direction=direction, max_bytes=4 * 10**9,
                              seconds=a.seconds, seed=next(seeds))

        install_rules(topo, topo.client_ifaces[0])
        for run in range(a.runs):
            for impl in impls:
                h = None
                try:
                    if impl != "none":
                        py = a.fnfqueue_python if impl.startswith("fnfq") else nfq_python
                        h = Handler(topo, impl, py, a.batch)
                    for d in ("up", "down"):
                        if h:
                            p0, c0 = h.snapshot()
                        r = bulk(d)
                        rec = {"impl": impl, "run": run, "direction": d, "mbps": r.get("mbps"),
                               "error": r.get("error")}
                        if h:
                            p1, c1 = h.snapshot()
                            rec["packets"] = p1 - p0
                            rec["cpu_s"] = (c1 - c0) / os.sysconf("SC_CLK_TCK")
                            rec["us_per_packet"] = (rec["cpu_s"] * 1e6 / rec["packets"]
                                                    if rec["packets"] else None)
                        samples.append(rec)
                except Exception as exc:
                    samples.append({"impl": impl, "run": run, "error": repr(exc)})
                finally:
                    if h:
                        h.stop()
            print(f"run {run + 1}: " + "  ".join(
                f"{s['impl']}={s.get('mbps') or 0:.0f}" for s in samples
                if s["run"] == run and s.get("direction") == "up"), file=sys.stderr)

    def med(impl: str, d: str, key: str) -> float | None:
        xs = [s[key] for s in samples if s["impl"] == impl and s.get("direction") == d
              and s.get(key) is not None and not s.get("error")]
        return statistics.median(xs) if xs else None

    summary = {impl: {f"{k}_{d}": med(impl, d, k) for d in ("up", "down")
                      for k in ("mbps", "us_per_packet", "packets")} for impl in impls}
    print(f"{'impl':<13} {'up Mbit/s':>10} {'down':>8} {'µs/pkt up':>10} {'µs/pkt dn':>10} "
          f"{'pkts up':>9} {'pkts dn':>9}")
    for impl, m in summary.items():
        def f(x: float | None, fmt: str) -> str:
            return "-" if x is None else fmt.format(x)
        print(f"{impl:<13} {f(m['mbps_up'], '{:.0f}'):>10} {f(m['mbps_down'], '{:.0f}'):>8} "
              f"{f(m['us_per_packet_up'], '{:.2f}'):>10} "
              f"{f(m['us_per_packet_down'], '{:.2f}'):>10} {f(m['packets_up'], '{:.0f}'):>9} "
              f"{f(m['packets_down'], '{:.0f}'):>9}")
    errors = [s for s in samples if s.get("error")]
    for e in errors:
        print(f"error: {e}")
    print(f"{a.runs} alternating runs of {a.seconds} s per transfer; total "
          f"{time.monotonic() - t_start:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "samples": samples,
                                            "runs": a.runs, "seconds": a.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
