"""Path emulation on the client links of a test bed: rate, loss, one-way delay, down/up.

This kernel has no netem (nor fq, fq_codel, sfq, prio), so each property has its own tool:

- **rate**: ``tbf`` as the root qdisc of ``c<i>`` (upload, client egress) and/or ``rc<i>``
  (download, router egress).
- **loss**: ``-m statistic --mode random --probability p -j DROP`` in the router's
  ``filter FORWARD`` (chains ``mpx-loss``), ``-i rc<i>`` for upload, ``-o rc<i>`` for
  download, IPv4 and IPv6 (``iptables-legacy``/``ip6tables-legacy``). Loss turns
  TSO/GSO/GRO off on ``c<i>``, ``rc<i>`` and the server links, else a drop hits a whole
  64 KB super-packet.
- **delay**: a :mod:`netns.delay` NFQUEUE stage per direction in the router namespace
  (started through ``Topology.popen``), fed by ``mangle FORWARD`` rules (chain
  ``mpx-delay``) with ``--queue-bypass`` (a dead stage means no delay, not a black hole).
- **down/up**: both veth ends admin down/up (pyroute2); ``up`` re-installs the routes that
  going down flushed (``Topology.apply_routes``).

Directions: ``"up"`` is client to server, ``"down"`` server to client, ``"both"`` both.
Units: rate in Mbit/s, delay in ms (one way, per direction), loss as a probability 0..1.

Library::

    with Emulation(topo) as emu:
        emu.delay(0, 30)            # 30 ms each way on link 0: RTT ~60 ms
        emu.rate(0, 20)             # 20 Mbit/s each way
        emu.loss(1, 0.1, "down")    # 10 % loss server -> client on link 1
        emu.down(1); ...; emu.up(1)

Command line, on an existing bed (by tag or client namespace name)::

    python -m netns.emulation --tag TAG rate --link 0 --mbit 20
    python -m netns.emulation --client-ns mpx-c-TAG loss --link 1 --percent 10
    python -m netns.emulation --tag TAG delay --link 0 --ms 30   # runs until Ctrl-C
    python -m netns.emulation --tag TAG down --link 1 ; ... up --link 1 ; clear
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
from typing import Any, Sequence

from pyroute2 import IPRoute

from .topology import PREFIX, Topology, python_argv

__all__ = ["Emulation", "DIRECTIONS", "main"]

DIRECTIONS = ("up", "down", "both")
LOSS_CHAIN = "mpx-loss"
DELAY_CHAIN = "mpx-delay"
IPTABLES = ("iptables-legacy", "ip6tables-legacy")


def _count_drops(save_text: str, chain: str, match: Sequence[str]) -> int:
    """Sum the packet counters of the DROP rules of ``chain`` starting with ``match`` in
    ``iptables-save -c`` output (lines like ``[pkts:bytes] -A chain -i rc0 ... -j DROP``)."""
    total = 0
    for line in save_text.splitlines():
        if not line.startswith("["):
            continue
        counters, _, rule = line.partition(" ")
        parts = rule.split()
        if (parts[:2] == ["-A", chain] and parts[2:2 + len(match)] == list(match)
                and parts[-2:] == ["-j", "DROP"]):
            total += int(counters.strip("[]").split(":")[0])
    return total


def _dirs(direction: str) -> tuple[str, ...]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}")
    return ("up", "down") if direction == "both" else (direction,)


class Emulation:
    """Rate, loss, delay and link state of the client paths of ``topo``.

    ``queue_base``: NFQUEUE numbers used by the delay stages are ``queue_base + 2*link +
    (0 up | 1 down)``. :meth:`close` (or leaving the ``with`` block) removes every qdisc,
    rule and delay stage this object installed and brings downed links back up.
    """

    def __init__(self, topo: Topology, queue_base: int = 100) -> None:
        self.topo = topo
        self.queue_base = queue_base
        self._delays: dict[tuple[int, str], subprocess.Popen] = {}
        self._rated: set[tuple[int, str]] = set()
        self._lossy: set[tuple[int, str]] = set()
        self._down: set[int] = set()
        self._chains_ready = False

    def __enter__(self) -> "Emulation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers

    def _ifaces(self, link: int, direction: str) -> tuple[str, str]:
        """(namespace, ifname) whose egress carries ``direction`` of ``link``."""
        if not 0 <= link < len(self.topo.client_ifaces):
            raise IndexError(f"no client link {link}")
        if direction == "up":
            return self.topo.client, self.topo.client_ifaces[link]
        return self.topo.router, self.topo.router_client_ifaces[link]

    def _match(self, link: int, direction: str) -> list[str]:
        rif = self.topo.router_client_ifaces[link]
        return ["-i", rif] if direction == "up" else ["-o", rif]

    def _ipt(self, args: Sequence[str], check: bool = True) -> None:
        for cmd in IPTABLES:
            self.topo.run(self.topo.router, [cmd, "-w", *args], check=check)

    def _ensure_chains(self) -> None:
        if self._chains_ready:
            return
        for table, chain in (("filter", LOSS_CHAIN), ("mangle", DELAY_CHAIN)):
            self._ipt(["-t", table, "-N", chain], check=False)
            self._ipt(["-t", table, "-D", "FORWARD", "-j", chain], check=False)
            self._ipt(["-t", table, "-A", "FORWARD", "-j", chain])
        self._chains_ready = True

    def _remove_rules(self, table: str, chain: str, match: list[str]) -> None:
        """Delete every rule of ``chain`` that starts with ``match`` (both families)."""
        for cmd in IPTABLES:
            res = self.topo.run(self.topo.router, [cmd, "-w", "-t", table, "-S", chain],
                                check=False)
            for line in res.stdout.splitlines():
                parts = line.split()
                if parts[:2] == ["-A", chain] and parts[2:2 + len(match)] == match:
                    self.topo.run(self.topo.router, [cmd, "-w", "-t", table, "-D", *parts[1:]])

    # ---------------------------------------------------------------- rate

    def rate(self, link: int, mbit: float, direction: str = "both", queue_ms: float = 100.0,
             burst_bytes: int | None = None) -> None:
        """Limit ``link`` to ``mbit`` Mbit/s in ``direction`` with ``tbf``.

        ``queue_ms``: tbf ``latency`` (how long a packet may wait: the queue holds
        rate x queue_ms bytes); ``burst_bytes``: bucket size (default max(4 x 1514, 1 ms of
        rate)).
        """
        burst = burst_bytes or max(4 * 1514, int(mbit * 1e6 / 8 / 1000))
        for d in _dirs(direction):
            ns, ifname = self._ifaces(link, d)
            self.topo.run(ns, ["tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
                               "rate", f"{mbit}mbit", "burst", str(burst),
                               "latency", f"{queue_ms}ms"])
            self._rated.add((link, d))

    def clear_rate(self, link: int, direction: str = "both") -> None:
        """Remove the root qdisc (rate limit) of ``link`` in ``direction``."""
        for d in _dirs(direction):
            ns, ifname = self._ifaces(link, d)
            self.topo.run(ns, ["tc", "qdisc", "del", "dev", ifname, "root"], check=False)
            self._rated.discard((link, d))

    # ---------------------------------------------------------------- loss

    def loss(self, link: int, probability: float, direction: str = "both") -> None:
        """Drop packets of ``link`` at random with ``probability`` (0 removes the loss)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        self._ensure_chains()
        if probability > 0:
            self.topo.set_offloads(False, self._offload_ifaces(link))
        for d in _dirs(direction):
            match = self._match(link, d)
            self._remove_rules("filter", LOSS_CHAIN, match)
            self._lossy.discard((link, d))
            if probability > 0:
                self._ipt(["-t", "filter", "-A", LOSS_CHAIN, *match, "-m", "statistic",
                           "--mode", "random", "--probability", f"{probability:.6f}",
                           "-j", "DROP"])
                self._lossy.add((link, d))

    def _offload_ifaces(self, link: int) -> list[tuple[str, str]]:
        t = self.topo
        return ([(t.client, t.client_ifaces[link]), (t.router, t.router_client_ifaces[link])]
                + [(t.server, i) for i in t.server_ifaces]
                + [(t.router, i) for i in t.router_server_ifaces])

    def dropped(self, link: int, direction: str = "both") -> int:
        """Packets dropped so far by the loss rules of ``link`` (both families), from the
        rule counters of ``iptables-save -c``."""
        total = 0
        for cmd in IPTABLES:
            save = cmd.replace("tables-legacy", "tables-legacy-save")
            res = self.topo.run(self.topo.router, [save, "-c", "-t", "filter"], check=False)
            for d in _dirs(direction):
                total += _count_drops(res.stdout, LOSS_CHAIN, self._match(link, d))
        return total

    # ---------------------------------------------------------------- delay

    def delay(self, link: int, ms: float, direction: str = "both") -> None:
        """Delay ``link`` by ``ms`` one way in ``direction`` (0 removes the delay)."""
        self._ensure_chains()
        for d in _dirs(direction):
            self._stop_delay(link, d)
            if ms <= 0:
                continue
            queue = self.queue_base + 2 * link + (d == "down")
            proc = self.topo.popen(self.topo.router, python_argv(
                "netns.delay", "--queue", queue, "--delay-ms", ms),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = proc.stdout.readline()
            if '"ready"' not in line:
                proc.kill()
                raise RuntimeError(f"delay stage failed: {line} {proc.stderr.read()}")
            self._delays[(link, d)] = proc
            self._ipt(["-t", "mangle", "-A", DELAY_CHAIN, *self._match(link, d), "-j",
                       "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])

    def _stop_delay(self, link: int, direction: str) -> dict[str, Any] | None:
        """Remove the rules, then stop the stage (it releases what it holds); its stats."""
        proc = self._delays.pop((link, direction), None)
        self._remove_rules("mangle", DELAY_CHAIN, self._match(link, direction))
        if proc is None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            if '"stats"' in line:
                return json.loads(line)
        return None

    def delay_stats(self, link: int, direction: str = "both") -> list[dict[str, Any]]:
        """Stop the delay of ``link`` and return each stage's final stats (see netns.delay)."""
        return [s for d in _dirs(direction) if (s := self._stop_delay(link, d))]

    # ---------------------------------------------------------------- link state

    def _set_state(self, link: int, state: str) -> None:
        for ns, ifname in ((self.topo.client, self.topo.client_ifaces[link]),
                           (self.topo.router, self.topo.router_client_ifaces[link])):
            with IPRoute(netns=ns, flags=0) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state=state)

    def down(self, link: int) -> None:
        """Take both ends of ``link`` down (routes through it are flushed)."""
        self._set_state(link, "down")
        self._down.add(link)

    def up(self, link: int) -> None:
        """Bring both ends of ``link`` up and re-install the bed's routes."""
        self._set_state(link, "up")
        self.topo.apply_routes()
        self._down.discard(link)

    # ---------------------------------------------------------------- teardown

    def clear(self, link: int) -> None:
        """Remove rate, loss and delay rules from ``link`` (also ones another Emulation
        object installed; their delay stages stop with their owner) and bring the link up
        if this object took it down. Offloads turned off for loss stay off."""
        for d in ("up", "down"):
            self._stop_delay(link, d)
            self._remove_rules("filter", LOSS_CHAIN, self._match(link, d))
            self._lossy.discard((link, d))
        self.clear_rate(link)
        if link in self._down:
            self.up(link)

    def close(self) -> None:
        """Undo everything this object set up (safe to call twice, or on a closed bed)."""
        links = {k[0] for k in (*self._delays, *self._rated, *self._lossy)} | self._down
        for link in sorted(links):
            try:
                self.clear(link)
            except (subprocess.SubprocessError, OSError):
                pass  # the bed may already be gone


def attach(tag: str | None = None, client_ns: str | None = None) -> Topology:
    """A :class:`Topology` object for an existing bed (nothing is created or deleted)."""
    if tag is None:
        if not client_ns or not client_ns.startswith(f"{PREFIX}-c-"):
            raise ValueError("give --tag or a --client-ns named mpx-c-<tag>")
        tag = client_ns[len(f"{PREFIX}-c-"):]
    bed = Topology(tag=tag)

    def count(ns: str, prefix: str) -> int:
        with IPRoute(netns=ns, flags=0) as ipr:
            return sum(1 for lk in ipr.get_links()
                       if lk.get_attr("IFLA_IFNAME", "").startswith(prefix))

    with IPRoute(netns=bed.client, flags=0) as ipr:
        v6 = bool(ipr.get_addr(family=socket.AF_INET6, scope=0))
    return Topology(client_links=count(bed.client, "c"), server_links=count(bed.server, "s"),
                    ipv6=v6, tag=tag)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.emulation",
                                 description="Emulate path properties on a netns test bed.")
    ap.add_argument("--tag", help="bed tag (namespaces mpx-{c,r,s}-TAG)")
    ap.add_argument("--client-ns", help="client namespace name (mpx-c-TAG)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rate", help="tbf rate limit")
    p.add_argument("--link", type=int, required=True)
    p.add_argument("--mbit", type=float, required=True)
    p.add_argument("--direction", choices=DIRECTIONS, default="both")
    p.add_argument("--queue-ms", type=float, default=100.0)
    p = sub.add_parser("loss", help="random loss (0 removes)")
    p.add_argument("--link", type=int, required=True)
    p.add_argument("--percent", type=float, required=True)
    p.add_argument("--direction", choices=DIRECTIONS, default="both")
    p = sub.add_parser("delay", help="one-way delay; runs until Ctrl-C/SIGTERM")
    p.add_argument("--link", type=int, required=True)
    p.add_argument("--ms", type=float, required=True)
    p.add_argument("--direction", choices=DIRECTIONS, default="both")
    for name in ("down", "up"):
        sub.add_parser(name, help=f"link {name}").add_argument("--link", type=int,
                                                                 required=True)
    p = sub.add_parser("clear", help="remove rate limits, loss and delay rules of a link")
    p.add_argument("--link", type=int, required=True)
    a = ap.parse_args(argv)
    emu = Emulation(attach(a.tag, a.client_ns))
    if a.cmd == "rate":
        emu.rate(a.link, a.mbit, a.direction, a.queue_ms)
    elif a.cmd == "loss":
        emu.loss(a.link, a.percent / 100.0, a.direction)
    elif a.cmd == "down":
        emu.down(a.link)
    elif a.cmd == "up":
        emu.up(a.link)
    elif a.cmd == "clear":
        emu.clear(a.link)
    elif a.cmd == "delay":
        emu.delay(a.link, a.ms, a.direction)
        # blocked only now: the delay stages must not inherit the mask
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            print(f"delaying link {a.link} by {a.ms} ms ({a.direction}); Ctrl-C to stop",
                  flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            for stats in emu.delay_stats(a.link, a.direction):
                print(json.dumps(stats), flush=True)
            emu.topo.kill_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
