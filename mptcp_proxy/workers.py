"""``mptcp-proxy --workers N``: N processes serve N queue pairs, each owning the
connections whose packets reach it; the control socket, ``mptcpctl`` and the counters
show one proxy (docs/workers.md has the design and the measurements).

- **Who owns a connection.** The netfilter rules (``rules.spread_match``) send a packet to
  worker ``rules.port_owner(local port, N)``: bits 1-4 of the port on our side (TCP source
  port outbound, destination port inbound) pick one of 16 buckets, bucket ``b`` belongs
  to worker ``b % N``. Both directions of a 4-tuple meet in the same worker.
- **Every subflow with its connection.** The TCP side's port is the local stack's; the
  proxy's own subflows (joins at setup, on command, toward ADD_ADDR addresses) take a
  local port the worker reserves only if it lands in its own buckets
  (``PortReservations(owns=...)``). Joins a peer opens toward us (the anchor role) have
  the peer's ports: for them a worker's tokens are its index modulo N
  (``ProxyConfig.worker``), so the worker a join SYN reaches can name the owner from the
  token and hand the packet over (an ``NF_QUEUE`` verdict to the owner's queue).
- **One proxy.** Worker 0 is the daemon itself: rules, journal, interfaces' sysctls,
  fallback routes, the public control socket and the metrics endpoint. Workers 1..N-1
  (``python -m mptcp_proxy.workers``) run the core and a private control socket; the
  daemon merges their replies into its own (:meth:`WorkerPool.merge`), republishes their
  events to ``mptcpctl monitor`` and adds their counters to its metrics. Connection ids
  are ``worker + 1 + k*N``: an id names its worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter

from .control import ControlServer, command
from .ctlproto import MAX_LINE

log = logging.getLogger("mptcp_proxy.workers")

__all__ = ["build_worker", "WorkerPool", "main"]

READY_TIMEOUT = 30.0  # s for a worker to bind its queues (a loaded machine)
REFRESH_S = 1.0  # how often the daemon reads the other workers' counters for its metrics
STOP_TIMEOUT = 10.0
SUMMED = ("connections", "packets")
BY_CONNECTION = ("subflows", "add-subflow", "remove-subflow", "prio", "handover")


def pm_config(args: argparse.Namespace):
    """The path manager's settings (:class:`~.core.policy.PmConfig`) from the command
    line."""
    from .core.policy import PmConfig
    return PmConfig(subflows=args.subflows, rejoin=not args.no_rejoin,
                    join_announced=args.join_announced, peer_joins=args.peer_joins,
                    announce=list(args.announce), prefer=tuple(args.prefer),
                    return_to_preferred=not args.no_return, detect=not args.no_detect,
                    stale_rtos=args.stale_rtos, stale_min=args.stale_min,
                    stale_probes=args.stale_probes, freeze_max=args.freeze_max,
                    freeze_icmp=not args.no_freeze_icmp)


def build_worker(args: argparse.Namespace, ifaces: dict[str, dict], index: int):
    """The core and its queue driver for worker ``index`` of ``args.workers``:
    ``(proxy, pm, ports, injector, driver)``; its queues are ``args.queue + 2*index`` and
    the next one."""
    from .core.policy import LocalIface, PathManager
    from .core.proxy import Proxy, ProxyConfig
    from .links import PortReservations
    from .nfqueue import Injector, NfqueueDriver
    from .rules import port_owner
    n = args.workers
    per = -(-args.max_connections // n) if args.max_connections else 0
    per_syn = -(-args.max_syn_sent // n) if args.max_syn_sent else 0
    config = ProxyConfig(ports=frozenset(args.port), checksum=args.checksum,
                         max_connections=per, max_syn_sent=per_syn, worker=index, workers=n,
                         client=not args.anchor, serve=frozenset(args.serve),
                         anchor=args.anchor)
    ports = PortReservations(None if n == 1 else (lambda p: port_owner(p, n) == index))
    pm = PathManager(
        [LocalIface(name, addr_id=i + 1, v4=list(info["v4"]), v6=list(info["v6"]),
                    up=info["up"] and bool(info["v4"] or info["v6"]))
         for i, (name, info) in enumerate(ifaces.items())],
        pm_config(args), alloc_port=ports.alloc, release_port=ports.release)
    proxy = Proxy(config, random_bytes=os.urandom, pm=pm)
    local_addrs = {a for info in ifaces.values() for a in info["v4"] + info["v6"]}
    injector = Injector(args.mark, local_addrs)
    q = args.queue + 2 * index
    if args.backend == "fnfqueue":
        from .fnfq import FnfqueueDriver
        driver = FnfqueueDriver(proxy, q, q + 1, injector, accept_all=args.accept_all,
                                floor_mangle=args.accept_all and args.floor_mangle)
    else:
        driver = NfqueueDriver(proxy, q, q + 1, injector, accept_all=args.accept_all)
    return proxy, pm, ports, injector, driver


@command("worker-snapshot")
def _worker_snapshot(srv: ControlServer, args: dict) -> dict:
    """A worker's metrics snapshot (counters, events, states, packets) for the daemon."""
    if srv.snapshot is None:
        return {}
    snap = srv.snapshot()
    return {k: dict(v) if isinstance(v, dict) else v for k, v in snap.items()}


class _Worker:
    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None
        self.snapshot: dict = {}


class WorkerPool:
    """Workers 1..N-1 of a daemon (worker 0): started, asked, followed and stopped."""

    def __init__(self, args: argparse.Namespace, argv: list[str] | None, metrics) -> None:
        self.args = args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.metrics = metrics
        self.dir = tempfile.mkdtemp(prefix=f"mptcp-proxy-{args.queue}-")  # mode 0700
        self.workers = [_Worker(i, os.path.join(self.dir, f"worker{i}.sock"))
                        for i in range(1, args.workers)]
        self.tasks: list[asyncio.Task] = []
        self.stopping = False
        self.failed: str | None = None
        metrics.extra = self.snapshots

    # ------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start every worker and wait for its ``ready`` line. Raises
        :class:`~.nfqueue.QueueBusyError` if a worker's queue is taken, RuntimeError if
        a worker fails otherwise."""
        from .nfqueue import QueueBusyError
        for w in self.workers:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mptcp_proxy.workers", "--index", str(w.index),
                "--control", w.path, "--", *self.argv, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)  # (the daemon's signals are its own to pass on)
        for w in self.workers:
            line = b""
            try:
                line = await asyncio.wait_for(w.proc.stdout.readline(), READY_TIMEOUT)
            except asyncio.TimeoutError:
                pass
            if b"ready" not in line:
                rc = w.proc.returncode if w.proc.returncode is not None else \
                    await _exit_code(w.proc)
                msg = f"worker {w.index} did not start (exit code {rc})"
                raise QueueBusyError(msg + ": its queues are taken") if rc == 5 \
                    else RuntimeError(msg)
            self.tasks.append(asyncio.create_task(_drain(w.proc.stdout)))

    def follow(self, control: ControlServer | None, stop: asyncio.Event) -> None:
        """Run in the daemon's loop: the workers' events go to ``control``'s monitor
        clients and the metrics; their counters are read every :data:`REFRESH_S`; a worker
        that exits sets ``stop`` (its connections would pass unconverted)."""
        for w in self.workers:
            self.tasks.append(asyncio.create_task(self._events(w, control)))
            self.tasks.append(asyncio.create_task(self._watch(w, stop)))
        self.tasks.append(asyncio.create_task(self._refresh()))

    def signal(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(sig)

    async def stop(self) -> None:
        """Stop every worker (SIGTERM: each resets its connections and unbinds), killing
        one that does not exit within :data:`STOP_TIMEOUT`. Safe to call twice."""
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        self.tasks = []
        self.signal(signal.SIGTERM)
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.error("worker %d did not stop: killed", w.index)
                w.proc.kill()
                await w.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _watch(self, w: _Worker, stop: asyncio.Event) -> None:
        rc = await w.proc.wait()
        if not self.stopping:
            self.failed = f"worker {w.index} exited with code {rc}: stopping the daemon"
            log.error("%s", self.failed)
            stop.set()

    # ------------------------------------------------------------ asking the workers
    async def ask(self, w: _Worker, line: bytes, timeout: float = 5.0) -> dict:
        """One request to worker ``w``'s control socket; a reply object (a fault one if
        the worker does not answer)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(w.path, limit=MAX_LINE), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return {"ok": False, "error": {"code": 1, "name": "internal",
                                           "message": f"worker {w.index}: {e}"}}
        try:
            writer.write(line if line.endswith(b"\n") else line + b"\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), timeout)
            return json.loads(reply)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            return {"ok": False, "error": {"code": 1, "name": "internal",
                                           "message": f"worker {w.index}: {e}"}}
        finally:
            writer.close()

    async def merge(self, line: bytes, local: dict) -> dict:
        """The reply of the whole proxy to a request that worker 0 answered ``local``."""
        try:
            cmd = json.loads(line).get("cmd")
        except (ValueError, AttributeError):
            return local
        if cmd not in ("status", "connections", "stats") + BY_CONNECTION:
            return local  # the daemon's own: metrics (summed there), log, monitor...
        if cmd == "handover" and not local.get("ok") and \
                local.get("error", {}).get("name") != "unknown_connection":
            return local  # a bad request is bad everywhere
        replies = await asyncio.gather(*(self.ask(w, line) for w in self.workers))
        return merge_replies(cmd, json.loads(line).get("args") or {}, local, list(replies),
                             [w.proc.pid if w.proc else None for w in self.workers])

    async def _events(self, w: _Worker, control: ControlServer | None) -> None:
        """Follow worker ``w``'s ``monitor`` stream for as long as it runs."""
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_unix_connection(w.path, limit=MAX_LINE)
                writer.write(b'{"cmd": "monitor"}\n')
                await writer.drain()
                await reader.readline()  # {"ok": true, "result": {"stream": "events"}}
                while True:
                    raw = await reader.readline()
                    if not raw:
                        break
                    msg = json.loads(raw)
                    if "event" in msg:
                        self.metrics.observe_fields(msg["event"])
                        if control is not None:
                            control.publish(msg["event"])
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.5)

    async def _refresh(self) -> None:
        line = b'{"cmd": "worker-snapshot"}\n'
        while True:
            for w in self.workers:
                r = await self.ask(w, line)
                if r.get("ok"):
                    w.snapshot = r["result"]
            await asyncio.sleep(REFRESH_S)

    def snapshots(self) -> list[dict]:
        """The other workers' last metrics snapshots (for :class:`~.metrics.Metrics`)."""
        return [w.snapshot for w in self.workers if w.snapshot]


def merge_replies(cmd: str, args: dict, local: dict, others: list[dict],
                  pids: list[int | None]) -> dict:
    """One reply from the replies of every worker (``local`` is worker 0's)."""
    replies = [local, *others]
    oks = [r for r in replies if r.get("ok")]
    if cmd in BY_CONNECTION and not (cmd == "handover" and args.get("all")):
        if oks:  # only the owner knows the connection: its answer, or its error
            return oks[0]
        return next((r for r in replies
                     if r.get("error", {}).get("name") != "unknown_connection"), local)
    if not oks:
        return local
    if cmd == "handover":  # --all: every worker's connections
        return {"ok": True, "result": [x for r in oks for x in r["result"]]}
    if cmd == "connections":
        rows = [x for r in oks for x in r["result"]]
        return {"ok": True, "result": sorted(rows, key=lambda c: c.get("id", 0))}
    if cmd == "stats":
        total: Counter = Counter()
        for r in oks:
            total.update(r["result"])
        return {"ok": True, "result": dict(sorted(total.items()))}
    # status: the daemon's, with the workers' connections and packets added
    res = dict(local["result"])
    for k in SUMMED:
        res[k] = sum(r["result"].get(k, 0) for r in oks)
    if all("verdicts" in r["result"] for r in oks):
        res["verdicts"] = {d: {k: sum(r["result"]["verdicts"][d][k] for r in oks)
                               for k in res["verdicts"][d]} for d in res["verdicts"]}
    res["workers"] = [{"index": 0, "pid": local["result"].get("pid"),
                       "connections": local["result"].get("connections"),
                       "packets": local["result"].get("packets")}]
    res["workers"] += [{"index": i + 1, "pid": pids[i],
                        "connections": r["result"].get("connections") if r.get("ok") else None,
                        "packets": r["result"].get("packets") if r.get("ok") else None}
                       for i, r in enumerate(others)]
    return {"ok": True, "result": res}


def _die_with_parent() -> None:
    """SIGTERM this worker when the daemon that started it dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG): its queues and connections must not outlive the daemon."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the daemon is already gone
        sys.exit(0)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _exit_code(proc: asyncio.subprocess.Process) -> int | None:
    try:
        return await asyncio.wait_for(proc.wait(), 2.0)
    except asyncio.TimeoutError:
        proc.kill()
        return await proc.wait()


# ---------------------------------------------------------------------- a worker process

async def run_worker(args: argparse.Namespace, ifaces: dict[str, dict], index: int,
                     control_path: str, parser, argv: list[str]) -> int:
    """Worker ``index``: its queues, the core, link events, a private control socket;
    ``ready`` on stdout; on SIGTERM its connections are reset and it exits 0."""
    from .links import LinkMonitor
    from .logsetup import RingHandler
    from .nfqueue import QueueBusyError
    from .runtime import Runtime
    loop = asyncio.get_running_loop()
    proxy, pm, ports, injector, driver = build_worker(args, ifaces, index)
    rt = Runtime(args, parser, argv, proxy, driver, pm, RingHandler(), loop)
    driver.on_event = rt.on_event
    try:
        driver.bind()
    except QueueBusyError as e:
        print(f"mptcp-proxy worker {index}: {e}", file=sys.stderr, flush=True)
        return 5

    def on_link(name: str, up: bool, v4: list, v6: list) -> None:
        now = time.monotonic()
        if up:
            pm.link_up(name, now, v4, v6)
        else:
            pm.link_down(name, now)
        driver.flush_outputs()

    monitor = LinkMonitor(list(ifaces), on_link)
    server = ControlServer(control_path, proxy, driver, ifaces, pm,
                           snapshot=rt.metrics.snapshot, **rt.control_extras())
    try:
        driver.start(loop)
        monitor.start(loop)
        await server.start()
        rt.control = server
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, rt.reload)
        print(f"mptcp-proxy worker {index} ready: queues {args.queue + 2 * index},"
              f"{args.queue + 2 * index + 1}", flush=True)
        await stop.wait()
        proxy.abort_all(time.monotonic())
        driver.flush()
        return 0
    finally:
        await server.stop()
        for step in (monitor.stop, driver.unbind, ports.close, injector.close):
            try:
                step()
            except Exception:
                log.exception("worker %d: cleanup step failed", index)


def main(argv: list[str] | None = None) -> int:
    """``python -m mptcp_proxy.workers --index I --control PATH -- DAEMON-ARGS``: what
    the daemon starts for each worker but the first (not a command for users)."""
    from .config import parse_command_line
    from .daemon import build_parser
    from .links import read_ifaces
    from .logsetup import RingHandler, configure
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="mptcp_proxy.workers")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--control", required=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    own = p.parse_args(argv)
    _die_with_parent()
    rest = own.rest[1:] if own.rest[:1] == ["--"] else own.rest
    parser = build_parser()
    args = parse_command_line(parser, rest)
    configure(args.log, args.log_level, RingHandler())
    import pyroute2  # noqa: F401  (first: importing it resets its loggers)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    ifaces = read_ifaces(args.iface)
    try:
        return asyncio.run(run_worker(args, ifaces, own.index, own.control, parser, rest))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
