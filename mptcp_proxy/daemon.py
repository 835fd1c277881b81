"""``mptcp-proxy``: the daemon (DESIGN.md §1).

Runs in the foreground in the current network namespace, as root::

    mptcp-proxy --iface eth0 [--iface wlan0 ...] [--port 80 --port 443]
                [--serve PORT ...] [--announce ADDR[:PORT] ...]
                [--queue N] [--control PATH] [--log-level info] [--checksum]
    mptcp-proxy --anchor --iface IF [--iface IF ...] [--announce ADDR[:PORT] ...]

The first ``--iface`` is the primary path. ``--serve`` also converts incoming MPTCP
connections to local plain listeners (server role); ``--anchor`` runs on a router, where
the ``--iface`` are the interfaces towards the MPTCP clients, and converts forwarded MPTCP
connections whose server answers without MPTCP. It binds NFQUEUE ``N`` (outbound) and
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
from pathlib import Path

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


def _endpoint(text: str) -> tuple[bytes, int | None]:
    from .anchor import parse_endpoint
    try:
        return parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    p.add_argument("--serve", action="append", type=_port, default=[], metavar="PORT",
                   help="also convert incoming MPTCP connections to the local plain TCP "
                        "listener on PORT (server role; repeat)")
    p.add_argument("--anchor", action="store_true",
                   help="run on a router as a mobility anchor: convert forwarded MPTCP "
                        "connections whose server answers without MPTCP (the --iface are "
                        "the interfaces towards the MPTCP clients)")
    p.add_argument("--announce", action="append", type=_endpoint, default=[],
                   metavar="ADDR[:PORT]",
                   help="announce this address of the host (ADD_ADDR) on every connection, "
                        "and accept the peer's joins there (repeat)")
    p.add_argument("--peer-joins", choices=["accept", "refuse"], default="accept",
                   help="the peer's own MP_JOIN subflows to our addresses: accept them "
                        "(default) or refuse them with a reset")
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


async def run(args, ifaces: dict[str, dict]) -> int:
    from .control import ControlServer
    from .core.policy import LocalIface, PathManager, PmConfig
    from .links import FallbackRoutes, LinkMonitor, PortReservations
    from .nfqueue import Injector, NfqueueDriver, QueueBusyError
    from .rules import RuleParams, RulesError, RuleSet, load_ruleset

    loop = asyncio.get_running_loop()
    config = ProxyConfig(ports=frozenset(args.port), checksum=args.checksum,
                         client=not args.anchor, serve=frozenset(args.serve),
                         anchor=args.anchor)
    ports = PortReservations()
    pm = PathManager(
        [LocalIface(name, addr_id=i + 1, v4=list(info["v4"]), v6=list(info["v6"]),
                    up=info["up"]) for i, (name, info) in enumerate(ifaces.items())],
        PmConfig(subflows=args.subflows, rejoin=not args.no_rejoin,
                 peer_joins=args.peer_joins, announce=list(args.announce)),
        alloc_port=ports.alloc, release_port=ports.release)
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
    params = RuleParams(ifaces=list(ifaces), queue_out=args.queue, queue_in=args.queue + 1,
                        mark=args.mark, ports=sorted(args.port), serve=sorted(args.serve))
    accept_local = None
    if args.anchor and args.announce:
        from .anchor import AcceptLocal
        accept_local = AcceptLocal(args.server_ifaces)
    rp = RpFilter(list(ifaces))
    rules = None
    control = None

    def on_link(name: str, up: bool, v4: list, v6: list) -> None:
        now = time.monotonic()
        if up:
            pm.link_up(name, now, v4, v6)
        else:
            pm.link_down(name, now)
        driver.flush_outputs()

    fallback = None
    if not args.no_fallback_routes and not args.anchor:
        fallback = FallbackRoutes(list(ifaces), table=FALLBACK_TABLE_BASE + args.queue,
                                  pref=FALLBACK_RULE_PREF)
    monitor = LinkMonitor(list(ifaces), on_link,
                          in_thread=(lambda name, up: fallback.refresh() if up else None)
                          if fallback is not None else None)
    try:
        try:
            rules = RuleSet(load_ruleset("anchor" if args.anchor else "endhost", params))
            rules.install()
        except RulesError as e:
            return fail(EXIT_RULES, str(e))
        if not args.no_rp_filter:
            rp.apply()
        if accept_local is not None:
            accept_local.apply()
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
        extra = f" serve={','.join(map(str, params.serve))}" if params.serve else ""
        if args.announce:
            from .anchor import endpoint_text
            extra += " announce=" + ",".join(endpoint_text(a, p) for a, p in args.announce)
        print(f"mptcp-proxy ready: mode={'anchor' if args.anchor else 'endhost'} "
              f"ifaces={','.join(ifaces)} ports={port_txt}{extra} "
              f"queues={args.queue},{args.queue + 1}", flush=True)
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
        if accept_local is not None:
            steps.append(accept_local.restore)
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
    if args.anchor and args.serve:
        return fail(EXIT_USAGE, "--serve converts local listeners of an end host; an "
                                "--anchor converts forwarded connections (use one)")
    from .links import read_ifaces
    try:
        ifaces = read_ifaces(args.iface)
    except ValueError as e:
        return fail(EXIT_IFACE, str(e))
    except Exception as e:
        return fail(EXIT_IFACE, f"cannot read interfaces: {e}")
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
        return asyncio.run(run(args, ifaces))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
