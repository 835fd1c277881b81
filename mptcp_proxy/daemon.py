"""``mptcp-proxy``: the daemon (DESIGN.md §1).

Runs in the foreground in the current network namespace, as root::

    mptcp-proxy --iface eth0 [--iface wlan0 ...] [--port 80 --port 443]
                [--queue N] [--control PATH] [--log-level info] [--checksum]

The first ``--iface`` is the primary path. It binds NFQUEUE ``N`` (outbound) and
``N+1`` (inbound), installs its own netfilter chains, prints a line containing
``ready`` once traffic is being converted, and on SIGINT/SIGTERM resets the
MPTCP connections it carries, removes every rule it installed and exits 0.

Exit codes: 0 clean exit; 1 runtime failure; 2 bad command line; 3 not root;
4 unusable interface (lo, given twice); 5 queue already bound; 6 rules could not be
installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .core.events import INFO_EVENTS, Event
from .core.proxy import Proxy, ProxyConfig
from .links import is_pattern

log = logging.getLogger("mptcp_proxy")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_ROOT, EXIT_IFACE, EXIT_QUEUE, EXIT_RULES = range(7)
DEFAULT_QUEUE = 4700
DEFAULT_MARK = 0x4D500000
DEFAULT_CONTROL = "/run/mptcp-proxy.sock"
FALLBACK_TABLE_BASE = 10000  # routing table FALLBACK_TABLE_BASE + queue number
FALLBACK_RULE_PREF = 40000  # after main (32766) and default (32767)
ROUTE_TABLE_BASE = 1_000_000  # + 16 * queue + interface index (0..14): source routing
# tables; + 15: the route of last resort out of lo (mptcp_proxy/routing.py)
ROUTE_RULE_PREF = 30000  # + interface index: before main (32766)


def _port(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {v}")
    return v


def _queue(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a queue number: {text!r}") from None
    if not 0 <= v <= 65534:
        raise argparse.ArgumentTypeError(f"queue number out of range 0-65534: {v}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {v}")
    return v


def _mark(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a mark: {text!r}") from None
    if not 0 < v < 1 << 32:
        raise argparse.ArgumentTypeError("mark must be a nonzero 32-bit value")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptcp-proxy",
        description="Lightweight MPTCP proxy: converts the plain TCP of local applications "
                    "into MPTCP v1 (RFC 8684) on the wire by header rewriting.")
    p.add_argument("--iface", "-i", action="append", required=True, metavar="IF",
                   help="interface the proxy may use (repeat; the first is the primary path); "
                        "one that does not exist yet is used when it appears; 'PREFIX*' "
                        "takes every interface whose name starts with PREFIX, now and later")
    p.add_argument("--port", "-p", action="append", type=_port, default=[], metavar="PORT",
                   help="convert only connections to this destination port (repeat; "
                        "default: all TCP)")
    p.add_argument("--queue", "-q", type=_queue, default=DEFAULT_QUEUE, metavar="N",
                   help=f"NFQUEUE numbers N (outbound) and N+1 (inbound) (default {DEFAULT_QUEUE})")
    p.add_argument("--control", "-c", default=DEFAULT_CONTROL, metavar="PATH",
                   help=f"control socket path, root-only (default {DEFAULT_CONTROL}; "
                        "'none' disables it)")
    p.add_argument("--mark", type=_mark, default=DEFAULT_MARK, metavar="MARK",
                   help=f"fwmark of forged packets, skipped by the queue rules "
                        f"(default {DEFAULT_MARK:#x})")
    p.add_argument("--subflows", choices=["backup", "active", "manual"], default="backup",
                   help="extra MP_JOIN subflows from the other interfaces at connection "
                        "setup: as backup paths (default; ready for make-before-break), as "
                        "active paths (the peer may send on all), or only on command")
    p.add_argument("--no-rejoin", action="store_true",
                   help="do not re-create subflows when an interface comes back")
    p.add_argument("--no-fallback-routes", action="store_true",
                   help="do not keep the managed interfaces' addresses routable through the "
                        "other interfaces when their link is down (a table of last resort)")
    p.add_argument("--no-manage-routes", action="store_true",
                   help="do not set up policy routing by source address for the interfaces "
                        "(tables and rules of the daemon's own, following each interface's "
                        "gateway); the host's own routing must then send each address's "
                        "packets out of its interface")
    p.add_argument("--no-keep-addresses", action="store_true",
                   help="do not keep an address that vanishes from an interface local (on lo) "
                        "while connections are bound to it")
    p.add_argument("--prefer", action="append", default=[], metavar="IF",
                   help="interface preference, most preferred first (repeat; default: the "
                        "--iface order): traffic returns to a preferred interface that comes "
                        "back")
    p.add_argument("--no-return", action="store_true",
                   help="stay on the interface failed over to when a preferred one returns")
    p.add_argument("--stale-rtos", type=_positive, default=2.0, metavar="N",
                   help="a path is stale when data sent on it is unanswered for N RTOs "
                        "(default 2)")
    p.add_argument("--stale-min", type=_positive, default=0.3, metavar="S",
                   help="... and for at least S seconds (default 0.3)")
    p.add_argument("--stale-probes", type=int, default=2, metavar="N",
                   help="a path is stale when N probes go unanswered after the peer's data "
                        "stopped (default 2)")
    p.add_argument("--no-detect", action="store_true",
                   help="do not detect silent path failures (only link and address events "
                        "move connections)")
    p.add_argument("--freeze-max", type=_positive, default=900.0, metavar="S",
                   help="reset a connection that had no path for S seconds (default 900)")
    p.add_argument("--no-freeze-icmp", action="store_true",
                   help="while no path is left, do not answer the local stack's "
                        "retransmissions with ICMP unreachables (they stop its RTO "
                        "back-off, RFC 6069; an application with IP_RECVERR sees them)")
    p.add_argument("--checksum", action="store_true",
                   help="ask the peer for DSS checksums (RFC 8684 §3.3)")
    p.add_argument("--no-rp-filter", action="store_true",
                   help="do not switch the interfaces to loose reverse-path filtering")
    p.add_argument("--backend", choices=["netfilterqueue", "fnfqueue"], default="fnfqueue",
                   help="queue library: netfilterqueue (one packet at a time), or fnfqueue "
                        "(batched reads, GSO super-packets: faster)")
    p.add_argument("--accept-all", action="store_true",
                   help="benchmark floor: bind the queues and accept every packet unmodified "
                        "(no conversion at all)")
    p.add_argument("--log-level", "-l", default="info",
                   choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def fail(code: int, msg: str) -> int:
    print(f"mptcp-proxy: error: {msg}", file=sys.stderr, flush=True)
    return code


class RpFilter:
    """Switch interfaces to loose reverse-path filtering (rp_filter=2) where the
    effective value is strict, and restore them (DESIGN.md §3.10)."""

    def __init__(self, ifaces: list[str]) -> None:
        self.ifaces = ifaces
        self.saved: dict[str, str] = {}

    @staticmethod
    def _path(name: str) -> Path:
        return Path("/proc/sys/net/ipv4/conf") / name / "rp_filter"

    def apply(self) -> None:
        try:
            all_v = int(self._path("all").read_text())
        except OSError:
            return
        for name in self.ifaces:
            p = self._path(name)
            try:
                v = int(p.read_text())
            except OSError:
                continue
            if max(all_v, v) == 1:
                self.saved[name] = str(v)
                p.write_text("2")
                log.info("%s: rp_filter %d -> 2 (loose) while the proxy runs", name, v)

    def restore(self) -> None:
        for name, v in self.saved.items():
            try:
                self._path(name).write_text(v)
            except OSError:
                pass
        self.saved.clear()


def log_event(ev: Event) -> None:
    """One log line per event, in the shape of ``ip mptcp monitor``."""
    level = logging.INFO if ev.kind in INFO_EVENTS else logging.DEBUG
    if log.isEnabledFor(level):
        f = ev.fields()
        del f["type"], f["time"]
        log.log(level, "[%14s] %s", ev.kind.value, " ".join(f"{k}={v}" for k, v in f.items()))


def pm_config(args):
    """The path manager's settings from the command line."""
    from .core.policy import PmConfig
    return PmConfig(subflows=args.subflows, rejoin=not args.no_rejoin,
                    prefer=tuple(args.prefer), return_to_preferred=not args.no_return,
                    detect=not args.no_detect, stale_rtos=args.stale_rtos,
                    stale_min=args.stale_min, stale_probes=args.stale_probes,
                    freeze_max=args.freeze_max, freeze_icmp=not args.no_freeze_icmp)


def host_state(args, names: list[str], proxy, pm, loop, fallback, rp):
    """Routes and kept addresses per the command line (:mod:`.hoststate`)."""
    from .addresses import KeptAddresses
    from .hoststate import HostState
    from .routing import ManagedRoutes
    routes = None
    last_resort = None if args.no_fallback_routes else \
        (ROUTE_TABLE_BASE + 16 * args.queue + 15, FALLBACK_RULE_PREF + 1)
    if not args.no_manage_routes or last_resort is not None:
        routes = ManagedRoutes(names, table_base=ROUTE_TABLE_BASE + 16 * args.queue,
                               pref_base=ROUTE_RULE_PREF,
                               ignore_tables=(FALLBACK_TABLE_BASE + args.queue,),
                               manage=not args.no_manage_routes, last_resort=last_resort)
    kept = None if args.no_keep_addresses else KeptAddresses(list(names))
    return HostState(names, proxy, pm, loop, routes=routes, kept=kept, fallback=fallback,
                     rp=rp)


async def collect_addresses(loop, host, every: float = 1.0) -> None:
    """Now and then: which addresses live connections use; kept ones no longer used go."""
    while True:
        await asyncio.sleep(every)
        try:
            if host.collect():
                await loop.run_in_executor(None, host.release)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("releasing kept addresses failed")


async def run(args, ifaces: dict[str, dict]) -> int:
    from .control import ControlServer
    from .core.policy import LocalIface, PathManager
    from .links import FallbackRoutes, LinkMonitor, PortReservations
    from .nfqueue import Injector, NfqueueDriver, QueueBusyError
    from .rules import RuleParams, RulesError, RuleSet, load_ruleset

    loop = asyncio.get_running_loop()
    config = ProxyConfig(ports=frozenset(args.port), checksum=args.checksum)
    ports = PortReservations()
    pm = PathManager(
        [LocalIface(name, addr_id=i + 1, v4=list(info["v4"]), v6=list(info["v6"]),
                    up=info["up"] and bool(info["v4"] or info["v6"]))
         for i, (name, info) in enumerate(ifaces.items())],
        pm_config(args), alloc_port=ports.alloc, release_port=ports.release)
    proxy = Proxy(config, random_bytes=os.urandom, pm=pm)
    local_addrs = {a for info in ifaces.values() for a in info["v4"] + info["v6"]}
    injector = Injector(args.mark, local_addrs)
    if args.backend == "fnfqueue":
        from .fnfq import FnfqueueDriver
        driver = FnfqueueDriver(proxy, args.queue, args.queue + 1, injector,
                                accept_all=args.accept_all)
    else:
        driver = NfqueueDriver(proxy, args.queue, args.queue + 1, injector,
                               accept_all=args.accept_all)
    driver.on_event = log_event
    try:
        driver.bind()
    except QueueBusyError as e:
        return fail(EXIT_QUEUE, str(e))
    patterns = [n for n in args.iface if is_pattern(n)]
    params = RuleParams(ifaces=list(ifaces) + [p[:-1] + "+" for p in patterns],
                        queue_out=args.queue, queue_in=args.queue + 1, mark=args.mark,
                        ports=sorted(args.port))
    rp = RpFilter(list(ifaces))
    rules = None
    control = None

    def on_link(name: str, up: bool, v4: list, v6: list) -> None:
        now = time.monotonic()
        injector.local_addrs.update(v4 + v6)
        if up:
            pm.link_up(name, now, v4, v6)
        else:
            pm.link_down(name, now)
        driver.flush_outputs()

    fallback = None
    if not args.no_fallback_routes:
        fallback = FallbackRoutes(list(ifaces), table=FALLBACK_TABLE_BASE + args.queue,
                                  pref=FALLBACK_RULE_PREF)
    host = host_state(args, list(ifaces), proxy, pm, loop, fallback,
                      None if args.no_rp_filter else rp)
    monitor = LinkMonitor(list(ifaces), on_link,
                          in_thread=(lambda name, up: fallback.refresh() if up else None)
                          if fallback is not None else None,
                          patterns=patterns, on_new=host.on_new, after=host.after)
    try:
        try:
            rules = RuleSet(load_ruleset("endhost", params))
            rules.install()
        except RulesError as e:
            return fail(EXIT_RULES, str(e))
        if not args.no_rp_filter:
            rp.apply()
        if fallback is not None:
            await loop.run_in_executor(None, fallback.install)
        await loop.run_in_executor(None, host.install, ifaces)
        driver.start(loop)
        monitor.start(loop)
        collector = loop.create_task(collect_addresses(loop, host))
        if args.control and args.control != "none":
            control = ControlServer(args.control, proxy, driver, ifaces, pm)
            try:
                await control.start()
            except OSError as e:
                return fail(EXIT_FAIL, f"control socket {args.control}: {e.strerror or e}")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        port_txt = ",".join(map(str, params.ports)) or "all"
        print(f"mptcp-proxy ready: ifaces={','.join(ifaces)} ports={port_txt} "
              f"queues={args.queue},{args.queue + 1}", flush=True)
        await stop.wait()
        log.info("stopping: resetting %d connection(s)", len(proxy.connections))
        proxy.abort_all(time.monotonic())
        driver.flush()
        return EXIT_OK
    finally:
        # every step on its own: the rules must go even if another step fails
        steps = [driver.unbind, ports.close]
        if rules is not None:
            steps.append(rules.remove)
        steps += [rp.restore, injector.close]
        if "collector" in locals():
            collector.cancel()
        if control is not None:
            try:
                await control.stop()
            except Exception:
                log.exception("stopping the control socket failed")
        try:  # (the link monitor first: its thread would put routes back)
            monitor.stop()
            await loop.run_in_executor(None, host.remove)
        except Exception:
            log.exception("removing the routes and kept addresses failed")
        if fallback is not None:
            try:
                await loop.run_in_executor(None, fallback.remove)
            except Exception:
                log.exception("removing the fallback routes failed")
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("cleanup step %s failed", getattr(step, "__qualname__", step))


def _prefix_pattern(p: str) -> bool:
    return p.endswith("*") and len(p) > 1 and not any(c in p[:-1] for c in "*?[")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    import pyroute2  # noqa: F401  (imported first: importing it resets its loggers)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        return fail(EXIT_NOT_ROOT, "must run as root (NFQUEUE, iptables and raw sockets)")
    from .links import is_pattern, matching_ifaces, read_ifaces
    bad = [p for p in args.iface if is_pattern(p) and not _prefix_pattern(p)]
    if bad:
        return fail(EXIT_USAGE, f"interface pattern {bad[0]!r}: only 'PREFIX*' is supported "
                                "(netfilter matches interface names by prefix)")
    names = [n for n in args.iface if not is_pattern(n)]
    try:
        names += [n for n in matching_ifaces([p for p in args.iface if is_pattern(p)])
                  if n not in names]
        ifaces = read_ifaces(names, allow_missing=True)
    except ValueError as e:
        return fail(EXIT_IFACE, str(e))
    except Exception as e:
        return fail(EXIT_IFACE, f"cannot read interfaces: {e}")
    missing = [n for n, info in ifaces.items() if info.get("missing")]
    if missing:
        log.warning("interface(s) %s do not exist (yet): used when they appear",
                    ", ".join(missing))
    try:
        return asyncio.run(run(args, ifaces))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
