"""``mptcp-proxy``: the daemon.

Runs in the foreground in the current network namespace, as root or as any user
holding ``CAP_NET_ADMIN`` and ``CAP_NET_RAW`` (what the systemd unit gives it)::

    mptcp-proxy [--config FILE] --iface eth0 [--iface wlan0 ...] [--port 80 --port 443]
                [--serve PORT ...] [--announce ADDR[:PORT] ...]
                [--queue N] [--control PATH] [--log stderr|journal|syslog]
                [--log-level info] [--metrics [ADDR:]PORT] [--checksum]
    mptcp-proxy --anchor --iface IF [--iface IF ...] [--announce ADDR[:PORT] ...]
    mptcp-proxy install-service [--group GROUP] ...

The first ``--iface`` is the primary path. ``--serve`` also converts incoming MPTCP
connections to local plain listeners (server role); ``--anchor`` runs on a router, where
the ``--iface`` are the interfaces towards the MPTCP clients, and converts forwarded MPTCP
connections whose server answers without MPTCP. Options may also come from a
configuration file (:mod:`mptcp_proxy.config`; the command line wins). It binds NFQUEUE
``N`` (outbound) and ``N+1`` (inbound), installs its own netfilter chains, prints a line
containing ``ready`` (and tells systemd ``READY=1``) once traffic is being converted,
re-reads its configuration file on SIGHUP, and on SIGINT/SIGTERM resets the MPTCP
connections it carries, removes every rule it installed and exits 0.

Exit codes: 0 clean exit; 1 runtime failure; 2 bad command line or configuration file;
3 missing capability (CAP_NET_ADMIN, CAP_NET_RAW); 4 unknown or unusable interface;
5 queue already bound; 6 rules could not be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG, ConfigError, parse_command_line
from .ctlproto import DEFAULT_CONTROL
from .logsetup import LEVELS, TARGETS, LogSetupError, RingHandler

log = logging.getLogger("mptcp_proxy")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_ROOT, EXIT_IFACE, EXIT_QUEUE, EXIT_RULES = range(7)
DEFAULT_QUEUE = 4700
DEFAULT_MARK = 0x4D500000
DEFAULT_STATE_DIR = "/run/mptcp-proxy"
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


def _metrics_addr(text: str) -> tuple[str, int]:
    from .metrics import metrics_address
    try:
        return metrics_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _endpoint(text: str) -> tuple[bytes, int | None]:
    from .anchor import parse_endpoint
    try:
        return parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


EPILOG = f"""\
configuration file:
  every long option is also a key of the TOML file given by --config (default
  {DEFAULT_CONFIG} when it exists): iface = ["wlan0", "wwan0"],
  port = [80, 443], subflows = "backup", checksum = true... The command line wins.
  SIGHUP re-reads it: port, subflows and log-level change at once; the rest needs a
  restart (the daemon says which).

install as a service:
  mptcp-proxy install-service [--group GROUP]  (see mptcp-proxy install-service --help)

exit codes:
  0  clean exit            4  unknown or unusable interface
  1  runtime failure       5  NFQUEUE already bound by another process
  2  bad command line or   6  netfilter rules could not be installed
     configuration file
  3  missing capability (needs CAP_NET_ADMIN and CAP_NET_RAW: root, or the unit's
     AmbientCapabilities)
"""


def _count(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {v}")
    return v


MAX_WORKERS = 16  # the port buckets of rules.PORT_BUCKETS


def _workers(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= v <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"workers must be 1-{MAX_WORKERS}: {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptcp-proxy", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Lightweight MPTCP proxy: converts the plain TCP of local applications "
                    "into MPTCP v1 (RFC 8684) on the wire by header rewriting.")
    actions: list[argparse.Action] = []

    def add(*names: str, **kw) -> None:
        actions.append(p.add_argument(*names, **kw))

    add("--config", metavar="FILE",
        help=f"configuration file (TOML; keys = long options; default {DEFAULT_CONFIG} "
             "if it exists; 'none': no file)")
    add("--iface", "-i", action="append", default=None, metavar="IF",
        help="interface the proxy may use (repeat; the first is the primary path; "
             "required here or in the configuration file); one that does not exist yet is "
             "used when it appears; 'PREFIX*' takes every interface whose name starts "
             "with PREFIX, now and later")
    add("--port", "-p", action="append", type=_port, default=None, metavar="PORT",
        help="convert only connections to this destination port (repeat; "
             "default: all TCP)")
    add("--queue", "-q", type=_queue, default=DEFAULT_QUEUE, metavar="N",
        help=f"NFQUEUE numbers N (outbound) and N+1 (inbound) (default "
             f"{DEFAULT_QUEUE})")
    add("--control", "-c", default=DEFAULT_CONTROL, metavar="PATH",
        help=f"control socket path (default {DEFAULT_CONTROL}; 'none' disables "
             "it); open to root, the daemon's user and --control-group")
    add("--control-group", metavar="GROUP",
        help="group (name or number) whose members may use the control socket (mptcpctl)")
    add("--mark", type=_mark, default=DEFAULT_MARK, metavar="MARK",
        help=f"fwmark of forged packets, skipped by the queue rules "
             f"(default {DEFAULT_MARK:#x})")
    add("--subflows", choices=["backup", "active", "manual"], default="backup",
        help="extra MP_JOIN subflows from the other interfaces at connection "
             "setup: as backup paths (default; ready for make-before-break), as "
             "active paths (the peer may send on all), or only on command")
    add("--join-announced", choices=["off", "global", "any"], default="global",
        help="join the addresses the server announces (ADD_ADDR): never, only globally "
             "routable ones (default: a server must not make the proxy connect into the "
             "client's own networks), or any")
    add("--no-rejoin", action="store_true",
        help="do not re-create subflows when an interface comes back")
    add("--no-fallback-routes", action="store_true",
        help="do not keep the managed interfaces' addresses routable through the "
             "other interfaces when their link is down (a table of last resort)")
    add("--no-manage-routes", action="store_true",
        help="do not set up policy routing by source address for the interfaces "
             "(tables and rules of the daemon's own, following each interface's "
             "gateway); the host's own routing must then send each address's "
             "packets out of its interface")
    add("--no-keep-addresses", action="store_true",
        help="do not keep an address that vanishes from an interface local (on lo) "
             "while connections are bound to it")
    add("--prefer", action="append", default=None, metavar="IF",
        help="interface preference, most preferred first (repeat; default: the "
             "--iface order): traffic returns to a preferred interface that comes "
             "back")
    add("--no-return", action="store_true",
        help="stay on the interface failed over to when a preferred one returns")
    add("--stale-rtos", type=_positive, default=2.0, metavar="N",
        help="a path is stale when data sent on it is unanswered for N RTOs "
             "(default 2)")
    add("--stale-min", type=_positive, default=0.3, metavar="S",
        help="... and for at least S seconds (default 0.3)")
    add("--stale-probes", type=_count, default=2, metavar="N",
        help="a path is stale when N probes go unanswered after the peer's data "
             "stopped (default 2)")
    add("--no-detect", action="store_true",
        help="do not detect silent path failures (only link and address events "
             "move connections)")
    add("--freeze-max", type=_positive, default=900.0, metavar="S",
        help="reset a connection that had no path for S seconds (default 900)")
    add("--no-freeze-icmp", action="store_true",
        help="while no path is left, do not answer the local stack's "
             "retransmissions with ICMP unreachables (they stop its RTO "
             "back-off, RFC 6069; an application with IP_RECVERR sees them)")
    add("--serve", action="append", type=_port, default=None, metavar="PORT",
        help="also convert incoming MPTCP connections to the local plain TCP listener on "
             "PORT (server role; repeat)")
    add("--anchor", action="store_true",
        help="run on a router as a mobility anchor: convert forwarded MPTCP connections "
             "whose server answers without MPTCP (the --iface are the interfaces towards "
             "the MPTCP clients)")
    add("--announce", action="append", type=_endpoint, default=None, metavar="ADDR[:PORT]",
        help="announce this address of the host (ADD_ADDR) on every connection, and "
             "accept the peer's joins there (repeat)")
    add("--peer-joins", choices=["accept", "refuse"], default="accept",
        help="the peer's own MP_JOIN subflows to our addresses: accept them (default) or "
             "refuse them with a reset")
    add("--checksum", action="store_true",
        help="ask the peer for DSS checksums (RFC 8684 §3.3)")
    add("--no-rp-filter", action="store_true",
        help="do not switch the interfaces to loose reverse-path filtering")
    add("--workers", type=_workers, default=1, metavar="N",
        help="processes serving the queues (default 1): N queue pairs from --queue on, "
             "connections spread by their local port, every subflow with its connection; "
             "one control socket and one set of counters (docs/workers.md)")
    add("--backend", choices=["netfilterqueue", "fnfqueue"], default="fnfqueue",
        help="queue library: netfilterqueue (one packet at a time), or fnfqueue "
             "(batched reads, GSO super-packets: faster)")
    add("--accept-all", action="store_true",
        help="benchmark floor: bind the queues and accept every packet unmodified "
             "(no conversion at all)")
    add("--floor-mangle", action="store_true",
        help="with --accept-all: every packet goes back rewritten, grown by up to 20 bytes "
             "of NOP options as the proxy grows a segment by its DSS (the kernel's cost of a "
             "rewriting proxy without its protocol work; a benchmark floor)")
    add("--log", default="stderr", choices=list(TARGETS),
        help="where the log goes: stderr (default), journal (systemd's, with structured "
             "fields MPTCP_EVENT, MPTCP_CONN, MPTCP_TOKEN...) or syslog (/dev/log)")
    add("--log-level", "-l", default="info", choices=list(LEVELS),
        help="log level (info: one line per handover, subflow or fallback event; debug: "
             "every connection event and more)")
    add("--metrics", type=_metrics_addr, default=None, metavar="[ADDR:]PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (off by default; a bare "
             "PORT listens on 127.0.0.1; [::1]:PORT for IPv6)")
    add("--max-connections", type=_count, default=65536, metavar="N",
        help="connections tracked at once (default 65536, about 4 KB each; 0: no limit); "
             "beyond it new connections are left as plain TCP")
    add("--max-syn-sent", type=_count, default=8192, metavar="N",
        help="of them, connections still in their handshake (half open: waiting for the "
             "server's SYN/ACK, or in the server role for the peer's third ACK; default "
             "8192; 0: no limit)")
    add("--state-dir", default=str(DEFAULT_STATE_DIR), metavar="DIR",
        help=f"where the state journal goes: what the daemon changed outside itself, undone "
             f"after a crash by the next start or --cleanup (default {DEFAULT_STATE_DIR}; "
             "the systemd unit's runtime directory)")
    add("--cleanup", action="store_true",
        help="do not run: undo what a daemon of the same --queue killed in this network "
             "namespace left behind (rules, sysctls, routes), then exit (for a service "
             "manager's stop-post step)")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    p.option_actions = actions  # what the configuration file reads (config.py)
    return p


def host_state(args, names: list[str], proxy, pm, loop, fallback, rp, journal=None):
    """Routes and kept addresses per the command line (:mod:`.hoststate`); an anchor on
    a router manages neither (its routing is the router's). Every change is recorded in
    ``journal`` (:class:`~.recovery.Journal`) before it is made."""
    from .addresses import KeptAddresses
    from .hoststate import HostState
    from .routing import ManagedRoutes
    def record(kind: str, fields: dict) -> None:
        if journal is not None:
            journal.record(kind, **fields)
    routes = None
    last_resort = None if args.no_fallback_routes or args.anchor else \
        (ROUTE_TABLE_BASE + 16 * args.queue + 15, FALLBACK_RULE_PREF + 1)
    manage = not args.no_manage_routes and not args.anchor
    if manage or last_resort is not None:
        routes = ManagedRoutes(names, table_base=ROUTE_TABLE_BASE + 16 * args.queue,
                               pref_base=ROUTE_RULE_PREF,
                               ignore_tables=(FALLBACK_TABLE_BASE + args.queue,),
                               manage=manage, last_resort=last_resort, record=record)
    kept = None if args.no_keep_addresses or args.anchor else \
        KeptAddresses(list(names), record=record)
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


def fail(code: int, msg: str) -> int:
    print(f"mptcp-proxy: error: {msg}", file=sys.stderr, flush=True)
    return code


async def run(args, ifaces: dict[str, dict], parser: argparse.ArgumentParser | None = None,
              argv: list[str] | None = None, ring: RingHandler | None = None,
              group: int | None = None) -> int:
    from .control import ControlServer
    from .links import FallbackRoutes, LinkMonitor, RpFilter, is_pattern
    from .nfqueue import QueueBusyError
    from .recovery import Journal, journal_path, process_age, recover_all
    from .rules import RuleParams, RulesError, RuleSet, load_ruleset
    from .runtime import Runtime
    from .service import notify
    from .workers import WorkerPool, build_worker

    loop = asyncio.get_running_loop()
    proxy, pm, ports, injector, driver = build_worker(args, ifaces, 0)
    rt = Runtime(args, parser or build_parser(), argv, proxy, driver, pm,
                 ring or RingHandler(), loop)
    driver.on_event = rt.on_event
    pool = None
    if args.workers > 1:  # the other workers first: their queues bound before the rules
        pool = WorkerPool(args, argv, rt.metrics)
        try:
            await pool.start()
        except (OSError, RuntimeError) as e:
            await pool.stop()
            return fail(EXIT_QUEUE if isinstance(e, QueueBusyError) else EXIT_FAIL, str(e))
    if args.metrics:
        try:
            rt.metrics.serve(*args.metrics)
        except OSError as e:
            return fail(EXIT_FAIL, f"metrics endpoint {args.metrics[0]}:{args.metrics[1]}: "
                                   f"{e.strerror or e}")
    try:
        driver.bind()
    except QueueBusyError as e:
        if pool is not None:
            await pool.stop()
        return fail(EXIT_QUEUE, str(e))
    patterns = [n for n in args.iface if is_pattern(n)]
    params = RuleParams(ifaces=list(ifaces) + [p[:-1] + "+" for p in patterns],
                        queue_out=args.queue, queue_in=args.queue + 1, mark=args.mark,
                        ports=sorted(args.port), serve=sorted(args.serve),
                        workers=args.workers)
    # the queues are ours: undo what a killed daemon of this queue left, then journal ours
    try:
        chains = load_ruleset("anchor" if args.anchor else "endhost", params)
    except RulesError as e:
        driver.unbind()
        return fail(EXIT_RULES, str(e))
    try:
        _undone, failed = await loop.run_in_executor(  # (pyroute2's sync API: not in the loop)
            None, recover_all, args.queue, chains, FALLBACK_TABLE_BASE + args.queue,
            FALLBACK_RULE_PREF, Path(args.state_dir))
    except ValueError as e:  # an unreadable journal: left for the user to look at
        driver.unbind()
        return fail(EXIT_FAIL, str(e))
    journal = Journal(journal_path(args.queue, Path(args.state_dir)), args.queue)
    if failed:  # kept in our journal: tried again when we stop
        log.error("could not undo %d change(s) of an earlier daemon", len(failed))
        journal.adopt(failed)
    rp = RpFilter(list(ifaces), journal)
    accept_local = None
    if args.anchor and args.announce:
        from .anchor import AcceptLocal
        accept_local = AcceptLocal(args.server_ifaces, journal)
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
    if not args.no_fallback_routes and not args.anchor:
        fallback = FallbackRoutes(list(ifaces), table=FALLBACK_TABLE_BASE + args.queue,
                                  pref=FALLBACK_RULE_PREF, journal=journal)
    host = host_state(args, list(ifaces), proxy, pm, loop, fallback,
                      None if args.no_rp_filter else rp, journal)
    monitor = LinkMonitor(list(ifaces), on_link,
                          in_thread=(lambda name, up: fallback.refresh() if up else None)
                          if fallback is not None else None,
                          patterns=patterns, on_new=host.on_new, after=host.after)
    collector = None
    try:
        try:
            rules = RuleSet(chains, journal=journal)
            rules.install()
            rt.rules, rt.params = rules, params
        except RulesError as e:
            return fail(EXIT_RULES, str(e))
        if not args.no_rp_filter:
            rp.apply()
        if accept_local is not None:
            accept_local.apply()
        if fallback is not None:
            await loop.run_in_executor(None, fallback.install)
        await loop.run_in_executor(None, host.install, ifaces)
        driver.start(loop)
        monitor.start(loop)
        collector = loop.create_task(collect_addresses(loop, host))
        if args.control and args.control != "none":
            server = ControlServer(args.control, proxy, driver, ifaces, pm, group=group,
                                   workers=pool, snapshot=rt.metrics.snapshot,
                                   **rt.control_extras())
            try:
                await server.start()
            except OSError as e:
                return fail(EXIT_FAIL, f"control socket {args.control}: {e.strerror or e}")
            control = rt.control = server
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, rt.reload if pool is None else
                                lambda: (rt.reload(), pool.signal(signal.SIGHUP)))
        if pool is not None:
            pool.follow(control, stop)
        port_txt = ",".join(map(str, params.ports)) or "all"
        extra = f" serve={','.join(map(str, params.serve))}" if params.serve else ""
        if args.announce:
            from .anchor import endpoint_text
            extra += " announce=" + ",".join(endpoint_text(a, p) for a, p in args.announce)
        queues = f"{args.queue}-{args.queue + 2 * args.workers - 1}" if pool is not None \
            else f"{args.queue},{args.queue + 1}"
        print(f"mptcp-proxy ready: mode={'anchor' if args.anchor else 'endhost'} "
              f"ifaces={','.join(ifaces)} ports={port_txt}{extra} "
              f"queues={queues}" + (f" workers={args.workers}" if pool else ""), flush=True)
        notify("READY=1")
        notify(f"STATUS=converting TCP on {','.join(ifaces)} (ports {port_txt})")
        log.info("ready %.3f s after the process started", process_age())
        await stop.wait()
        notify("STOPPING=1")
        log.info("stopping: resetting %d connection(s)", len(proxy.connections))
        proxy.abort_all(time.monotonic())
        driver.flush()
        if pool is not None:
            failed = pool.failed
            await pool.stop()  # they reset theirs
            if failed:
                log.error("%s", failed)
                return EXIT_FAIL
        return EXIT_OK
    finally:
        # every step on its own: the rules must go even if another step fails
        steps = [driver.unbind, ports.close, rt.metrics.close]
        if rules is not None:
            steps.append(rules.remove)
        steps += [rp.restore, injector.close]
        if accept_local is not None:
            steps.append(accept_local.restore)
        if control is not None:
            try:
                await control.stop()
            except Exception:
                log.exception("stopping the control socket failed")
        if collector is not None:
            collector.cancel()
        if pool is not None:
            await pool.stop()
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
                            queue_in=args.queue + 1, mark=args.mark, ports=sorted(args.port),
                            serve=sorted(args.serve))
        chains = load_ruleset("anchor" if args.anchor else "endhost", params)
        undone, failed = recover_all(args.queue, chains, FALLBACK_TABLE_BASE + args.queue,
                                     FALLBACK_RULE_PREF, Path(args.state_dir))
    except (RulesError, ValueError) as e:
        return fail(EXIT_FAIL, str(e))
    finally:
        probe.unbind()
    print(f"mptcp-proxy cleanup: queue {args.queue}: {undone} recorded change(s) undone"
          + (f", {len(failed)} could not be" if failed else ""), flush=True)
    return EXIT_FAIL if failed else EXIT_OK


def _prefix_pattern(p: str) -> bool:
    return p.endswith("*") and len(p) > 1 and not any(c in p[:-1] for c in "*?[")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["install-service"]:
        from .service import install_main
        return install_main(argv[1:])
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except ConfigError as e:
        return fail(EXIT_USAGE, str(e))
    except OSError as e:
        return fail(EXIT_USAGE, f"cannot read configuration file {e.filename}: "
                                f"{e.strerror or e}")
    if not args.iface:
        parser.error("--iface is required (on the command line, or iface = [...] in the "
                     "configuration file)")
    group = None
    if args.control_group:
        try:
            group = _group_id(args.control_group)
        except KeyError:
            return fail(EXIT_USAGE, f"--control-group: no group {args.control_group!r}")
    from .logsetup import configure
    ring = RingHandler()
    try:
        configure(args.log, args.log_level, ring)
    except LogSetupError as e:
        return fail(EXIT_FAIL, str(e))
    import pyroute2  # noqa: F401  (imported first: importing it resets its loggers)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    from .service import missing_capabilities
    missing = missing_capabilities()
    if missing:
        return fail(EXIT_NOT_ROOT,
                    f"missing {' and '.join(missing)}: run as root, or as a user holding "
                    "CAP_NET_ADMIN and CAP_NET_RAW (the systemd unit grants exactly these: "
                    "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)")
    if args.anchor and args.serve:
        return fail(EXIT_USAGE, "--serve converts local listeners of an end host; an "
                                "--anchor converts forwarded connections (use one)")
    if args.workers > 1 and (args.anchor or args.serve):
        return fail(EXIT_USAGE, "--workers spreads an end host's client connections by "
                                "their local port; --serve and --anchor run in one process "
                                "(leave --workers out)")
    if args.queue + 2 * args.workers - 1 > 65535:
        return fail(EXIT_USAGE, f"--queue {args.queue} leaves no room for {args.workers} "
                                f"queue pairs (the last queue would be "
                                f"{args.queue + 2 * args.workers - 1} > 65535)")
    if args.cleanup:
        return cleanup(args)
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
    if args.announce:
        from .anchor import endpoint_text, local_addresses
        local = local_addresses()
        for addr, port in args.announce:
            if addr not in local:
                return fail(EXIT_USAGE, f"--announce {endpoint_text(addr, port)}: not an "
                                        "address of this host (configure it first)")
    # (read here: pyroute2's synchronous API cannot run inside the event loop)
    args.server_ifaces = []
    if args.anchor and args.announce:
        from .anchor import other_interfaces
        args.server_ifaces = other_interfaces(args.iface)
    try:
        return asyncio.run(run(args, ifaces, parser, argv, ring, group))
    except KeyboardInterrupt:
        return EXIT_OK


def _group_id(name: str) -> int:
    """A group name or number → gid; ``KeyError`` if there is no such group."""
    import grp
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


if __name__ == "__main__":
    sys.exit(main())
