"""Prometheus metrics of the daemon (prometheus-client).

Exported names (the same text from ``--metrics ADDR:PORT`` and ``mptcpctl stats
--prometheus``):

- ``mptcp_proxy_<Counter>_total`` for every counter of
  :data:`~mptcp_proxy.core.counters.COUNTERS`, with its help text; the names keep the
  kernel's ``MPTcpExt`` spelling (node_exporter exports the kernel's as
  ``node_netstat_MPTcpExt_<Name>``), so both read side by side;
- ``mptcp_proxy_connections{state}`` and ``mptcp_proxy_subflows{state}``: gauges of
  what the proxy holds now, every state listed (0 included);
- ``mptcp_proxy_interface_up{iface}``: 1 while a managed interface is usable;
- ``mptcp_proxy_packets_total``: packets handled from the queues;
- ``mptcp_proxy_events_total{type}``: connection events by ``ip mptcp monitor`` name;
- ``mptcp_proxy_handover_gap_seconds``: histogram of the time from a handover (by
  command, or a break) to the next data segment delivered to the local stack (the
  ``elapsed`` of ``RESUMED`` events);
- ``mptcp_proxy_connection_setup_seconds``: histogram of the time from the local SYN to
  the MP_CAPABLE SYN/ACK (``elapsed`` of ``ESTABLISHED``);
- ``mptcp_proxy_build_info{version,python,backend}``, and prometheus-client's
  ``process_*`` (CPU, RSS, open files, start time).

No label names a connection: the series stay few however many connections there are.

The proxy's state belongs to the asyncio loop; a scrape arrives on prometheus-client's
HTTP thread, so :class:`Metrics` takes its snapshot in the loop
(``call_soon_threadsafe``) and waits for it; a scrape from the loop itself (the
control socket) reads it directly.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import platform
import threading
from collections import Counter

from . import __version__
from .core.counters import COUNTERS
from .core.events import Event, EventKind
from .core.states import ConnState
from .core.subflow import SubflowState

__all__ = ["Metrics", "metrics_address", "HANDOVER_BUCKETS", "SETUP_BUCKETS"]

PREFIX = "mptcp_proxy_"
HANDOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
                    30.0)
SETUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0)
SNAPSHOT_TIMEOUT = 5.0  # seconds a scrape waits for the loop


def metrics_address(text: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[V6ADDR]:PORT`` → ``(addr, port)``; a bare port
    listens on loopback (127.0.0.1). Raises ``ValueError`` (argparse shows it)."""
    host, port_text = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"not [ADDR]:PORT: {text!r}")
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(f"not a port number: {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range 1-65535: {port}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"not an IP address: {host!r}") from None
    return host, port


class Metrics:
    """The daemon's registry: live state read from ``proxy`` (and ``driver``, ``pm``),
    histograms fed by :meth:`observe`."""

    def __init__(self, proxy, driver=None, pm=None, loop=None, backend: str = "") -> None:
        from prometheus_client import (
            CollectorRegistry,
            Histogram,
            Info,
            ProcessCollector,
            disable_created_metrics,
        )
        disable_created_metrics()  # no *_created series: they double the output for nothing
        self.proxy, self.driver, self.pm, self.loop = proxy, driver, pm, loop
        self.loop_thread = threading.get_ident()
        self.registry = CollectorRegistry()
        self.handover_gap = Histogram(
            PREFIX + "handover_gap_seconds",
            "Time from a handover or a path break to the next data segment delivered to "
            "the local stack", buckets=HANDOVER_BUCKETS, registry=self.registry)
        self.setup_time = Histogram(
            PREFIX + "connection_setup_seconds",
            "Time from the local SYN to the server's MP_CAPABLE SYN/ACK",
            buckets=SETUP_BUCKETS, registry=self.registry)
        self.events: Counter = Counter()  # kind name -> count (exported at scrape time)
        self.extra = None  # --workers: () -> the other workers' snapshots
        Info(PREFIX + "build", "Version of mptcp-proxy, of Python, and the queue backend",
             registry=self.registry).info({"version": __version__,
                                           "python": platform.python_version(),
                                           "backend": backend})
        ProcessCollector(registry=self.registry)
        self.registry.register(_StateCollector(self))
        self._server = None

    # ------------------------------------------------------------ inputs
    def observe(self, ev: Event) -> None:
        """Count one event; RESUMED and ESTABLISHED feed the histograms."""
        self.events[ev.kind.value] += 1  # a dict bump: this runs for every event
        if ev.elapsed is None:
            return
        if ev.kind is EventKind.RESUMED:
            self.handover_gap.observe(ev.elapsed)
        elif ev.kind is EventKind.ESTABLISHED:
            self.setup_time.observe(ev.elapsed)

    # ------------------------------------------------------------ outputs
    def observe_fields(self, fields: dict) -> None:
        """:meth:`observe` for an event another worker reported (its ``fields()``)."""
        kind = fields.get("type")
        if kind is None:
            return
        self.events[kind] = self.events.get(kind, 0) + 1
        elapsed = fields.get("elapsed")
        if elapsed is None:
            return
        if kind == EventKind.RESUMED.value:
            self.handover_gap.observe(elapsed)
        elif kind == EventKind.ESTABLISHED.value:
            self.setup_time.observe(elapsed)

    def snapshot(self) -> dict:
        """What the gauges and counters show, read in the loop's thread (with
        ``--workers``, the other workers' last snapshots added: ``extra``)."""
        p = self.proxy
        conns = Counter(c.state.name.lower() for c in p.connections.values())
        sfs = Counter(sf.state.name.lower() for c in p.connections.values()
                      for sf in c.subflows)
        counters = Counter(dict(p.counters))
        packets = getattr(self.driver, "packets", 0) if self.driver is not None else 0
        for other in (self.extra() if self.extra is not None else ()):
            counters.update(other.get("counters", {}))
            conns.update(other.get("connections", {}))
            sfs.update(other.get("subflows", {}))
            packets += other.get("packets", 0)
        return {
            "counters": dict(counters),
            "events": dict(self.events),
            "connections": conns,
            "subflows": sfs,
            "packets": packets,
            "ifaces": {n: bool(i.up) for n, i in self.pm.ifaces.items()}
            if self.pm is not None else {},
        }

    def snapshot_threadsafe(self) -> dict:
        if self.loop is None or threading.get_ident() == self.loop_thread:
            return self.snapshot()
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            try:
                fut.set_result(self.snapshot())
            except Exception as e:  # reported to the scraper as a failed scrape
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(take)
        return fut.result(SNAPSHOT_TIMEOUT)

    def text(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        from prometheus_client import generate_latest
        return generate_latest(self.registry).decode()

    def serve(self, addr: str, port: int) -> None:
        """Listen on ``addr:port`` (prometheus-client's HTTP server, in a thread).
        Raises ``OSError`` if the address cannot be bound."""
        from prometheus_client import start_http_server
        self._server, _thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StateCollector:
    """Counters and gauges computed at scrape time from one snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []  # names depend on the snapshot: let the registry not pre-check them

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        snap = self.m.snapshot_threadsafe()
        counts = snap["counters"]
        for name in sorted(set(COUNTERS) | set(counts)):
            yield CounterMetricFamily(PREFIX + name, COUNTERS.get(name, name),
                                      value=counts.get(name, 0))
        yield CounterMetricFamily(PREFIX + "packets", "Packets handled from the queues",
                                  value=snap["packets"])
        ev = CounterMetricFamily(PREFIX + "events", "Connection events by ip mptcp monitor "
                                 "name", labels=["type"])
        for kind in EventKind:
            ev.add_metric([kind.value], snap["events"].get(kind.value, 0))
        yield ev
        g = GaugeMetricFamily(PREFIX + "connections", "Connections the proxy holds, by state",
                              labels=["state"])
        for st in ConnState:
            g.add_metric([st.name.lower()], snap["connections"].get(st.name.lower(), 0))
        yield g
        g = GaugeMetricFamily(PREFIX + "subflows", "Subflows of the proxy's connections, "
                              "by state", labels=["state"])
        for st in SubflowState:
            g.add_metric([st.name.lower()], snap["subflows"].get(st.name.lower(), 0))
        yield g
        g = GaugeMetricFamily(PREFIX + "interface_up", "1 while a managed interface is up "
                              "with an address", labels=["iface"])
        for name, up in snap["ifaces"].items():
            g.add_metric([name], 1 if up else 0)
        yield g
