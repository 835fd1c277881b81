"""``mptcp-proxy``: the daemon (DESIGN.md §1).

Runs in the foreground in the current network namespace, as root::

    mptcp-proxy --iface eth0 [--iface wlan0 ...] [--port 80 --port 443]
                [--queue N] [--control PATH] [--log-level info] [--checksum]

The first ``--iface`` is the primary path. It binds NFQUEUE ``N`` (outbound) and
``N+1`` (inbound), installs its own netfilter chains, prints a line containing
``ready`` once traffic is being converted, and on SIGINT/SIGTERM resets the
MPTCP connections it carries, removes every rule it installed and exits 0.

Exit codes: 0 clean exit; 1 runtime failure; 2 bad command line; 3 not root;
4 unknown or unusable interface; 5 queue already bound; 6 rules could not be
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
from . import __version__
from .core.events import INFO_EVENTS, Event
from .core.proxy import Proxy, ProxyConfig

log = logging.getLogger("mptcp_proxy")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_ROOT, EXIT_IFACE, EXIT_QUEUE, EXIT_RULES = range(7)
DEFAULT_QUEUE = 4700
DEFAULT_MARK = 0x4D500000
DEFAULT_CONTROL = "/run/mptcp-proxy.sock"
FALLBACK_TABLE_BASE = 10000  # routing table FALLBACK_TABLE_BASE + queue number
FALLBACK_RULE_PREF = 40000  # after main (32766) and default (32767)


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


def _mark(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a mark: {text!r}") from None
    if not 0 < v < 1 << 32:
        raise argparse.ArgumentTypeError("mark must be a nonzero 32-bit value")
    return v


def _count(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptcp-proxy",
        description="Lightweight MPTCP proxy: converts the plain TCP of local applications "
                    "into MPTCP v1 (RFC 8684) on the wire by header rewriting.")
    p.add_argument("--iface", "-i", action="append", required=True, metavar="IF",
                   help="interface the proxy may use (repeat; the first is the primary path)")
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
    p.add_argument("--max-connections", type=_count, default=0, metavar="N",
                   help="connections tracked at once (0: no limit)")
    p.add_argument("--max-syn-sent", type=_count, default=0, metavar="N",
                   help="of them, connections still in SYN_SENT (0: no limit)")
    p.add_argument("--cleanup", action="store_true",
                   help="do not run: undo what a daemon of the same --queue killed in this "
                        "network namespace left behind (rules, sysctls, routes), then exit "
                        "(for a service manager's stop-post step)")
    p.add_argument("--log-level", "-l", default="info",
                   choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def fail(code: int, msg: str) -> int:
    print(f"mptcp-proxy: error: {msg}", file=sys.stderr, flush=True)
    return code


def log_event(ev: Event) -> None:
    """One log line per event, in the shape of ``ip mptcp monitor``."""
    level = logging.INFO if ev.kind in INFO_EVENTS else logging.DEBUG
    if log.isEnabledFor(level):
        f = ev.fields()
        del f["type"], f["time"]
        log.log(level, "[%14s] %s", ev.kind.value, " ".join(f"{k}={v}" for k, v in f.items()))


async def run(args, ifaces: dict[str, dict]) -> int:
    from .control import ControlServer
    from .core.pm import LocalIface, PathManager, PmConfig
    from .links import FallbackRoutes, LinkMonitor, PortReservations
    from .links import RpFilter
    from .nfqueue import Injector, NfqueueDriver, QueueBusyError
    from .recovery import Journal, journal_path, process_age, recover_all
    from .rules import RuleParams, RulesError, RuleSet, load_ruleset

    loop = asyncio.get_running_loop()
    config = ProxyConfig(ports=frozenset(args.port), checksum=args.checksum,
                         max_connections=args.max_connections,
                         max_syn_sent=args.max_syn_sent)
    proxy = Proxy(config, random_bytes=os.urandom)
    ports = PortReservations()
    pm = PathManager(
        proxy,
        [LocalIface(name, addr_id=i + 1, v4=list(info["v4"]), v6=list(info["v6"]),
                    up=info["up"]) for i, (name, info) in enumerate(ifaces.items())],
        PmConfig(subflows=args.subflows, rejoin=not args.no_rejoin),
        alloc_port=ports.alloc)
    pm.release_port = ports.release
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
    params = RuleParams(ifaces=list(ifaces), queue_out=args.queue, queue_in=args.queue + 1,
                        mark=args.mark, ports=sorted(args.port))
    # the queues are ours: undo what a killed daemon of this queue left, then journal ours
    try:
        chains = load_ruleset("endhost", params)
    except RulesError as e:
        driver.unbind()
        return fail(EXIT_RULES, str(e))
    try:
        _undone, failed = await loop.run_in_executor(  # (pyroute2's sync API: not in the loop)
            None, recover_all, args.queue, chains, FALLBACK_TABLE_BASE + args.queue,
            FALLBACK_RULE_PREF)
    except ValueError as e:  # an unreadable journal: left for the user to look at
        driver.unbind()
        return fail(EXIT_FAIL, str(e))
    journal = Journal(journal_path(args.queue), args.queue)
    if failed:  # kept in our journal: tried again when we stop
        log.error("could not undo %d change(s) of an earlier daemon", len(failed))
        journal.adopt(failed)
    rp = RpFilter(list(ifaces), journal)
    rules = None
    control = None

    def on_link(name: str, up: bool, v4: list, v6: list) -> None:
        now = time.monotonic()
        if up:
            pm.link_up(name, now, v4, v6)
        else:
            pm.link_down(name, now)
        driver._after()

    fallback = None
    if not args.no_fallback_routes:
        fallback = FallbackRoutes(list(ifaces), table=FALLBACK_TABLE_BASE + args.queue,
                                  pref=FALLBACK_RULE_PREF, journal=journal)
    monitor = LinkMonitor(list(ifaces), on_link,
                          in_thread=(lambda name, up: fallback.refresh() if up else None)
                          if fallback is not None else None)
    try:
        try:
            rules = RuleSet(chains, journal=journal)
            rules.install()
        except RulesError as e:
            return fail(EXIT_RULES, str(e))
        if not args.no_rp_filter:
            rp.apply()
        if fallback is not None:
            await loop.run_in_executor(None, fallback.install)
        driver.start(loop)
        monitor.start(loop)
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
        log.info("ready %.3f s after the process started", process_age())
        await stop.wait()
        log.info("stopping: resetting %d connection(s)", len(proxy.connections))
        proxy.abort_all(time.monotonic())
        driver.flush()
        return EXIT_OK
    finally:
        # every step on its own: the rules must go even if another step fails
        steps = [monitor.stop, driver.unbind, ports.close]
        if rules is not None:
            steps.append(rules.remove)
        steps += [rp.restore, injector.close]
        if control is not None:
            try:
                await control.stop()
            except Exception:
                log.exception("stopping the control socket failed")
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
        # whatever a step above could not undo: one more try
        left = await loop.run_in_executor(None, journal.undo_all)
        if left:
            log.error("%d change(s) could not be undone; kept in %s for "
                      "'mptcp-proxy --cleanup'", len(left), journal.path)


def cleanup(args) -> int:
    """``--cleanup``: undo what a daemon of ``args.queue`` left in this network namespace
    (its state journal, then its chains and fallback rule by name). Holds the queues while
    it works, so it never pulls the rules from under a running daemon (exit 5 then)."""
    from .fnfq import FnfqueueDriver
    from .nfqueue import QueueBusyError
    from .recovery import recover_all
    from .rules import RuleParams, RulesError, load_ruleset
    probe = FnfqueueDriver(None, args.queue, args.queue + 1, None)
    try:
        probe.bind()
    except QueueBusyError as e:
        return fail(EXIT_QUEUE, f"{e}: a daemon is running, nothing cleaned up")
    try:
        params = RuleParams(ifaces=list(args.iface), queue_out=args.queue,
                            queue_in=args.queue + 1, mark=args.mark, ports=sorted(args.port))
        chains = load_ruleset("endhost", params)
        undone, failed = recover_all(args.queue, chains, FALLBACK_TABLE_BASE + args.queue,
                                     FALLBACK_RULE_PREF)
    except (RulesError, ValueError) as e:
        return fail(EXIT_FAIL, str(e))
    finally:
        probe.unbind()
    print(f"mptcp-proxy cleanup: queue {args.queue}: {undone} recorded change(s) undone"
          + (f", {len(failed)} could not be" if failed else ""), flush=True)
    return EXIT_FAIL if failed else EXIT_OK


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
    if args.cleanup:
        return cleanup(args)
    from .links import read_ifaces
    try:
        ifaces = read_ifaces(args.iface)
    except ValueError as e:
        return fail(EXIT_IFACE, str(e))
    except Exception as e:
        return fail(EXIT_IFACE, f"cannot read interfaces: {e}")
    try:
        return asyncio.run(run(args, ifaces))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
