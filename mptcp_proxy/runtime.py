"""The daemon's operational side, around the packet path: every connection event goes
to the log, the metrics and the ``mptcpctl monitor`` clients; SIGHUP re-reads the
configuration file; the control socket gets the status extras (version, rule counters,
log lines, metrics text).

Kept out of ``daemon.py`` so that the start-up and shutdown sequence there stays short.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import time

from . import __version__
from .config import ConfigError, reload_plan
from .core.events import INFO_EVENTS, Event
from .logsetup import RingHandler, events_log, log_event, set_level
from .service import notify

log = logging.getLogger("mptcp_proxy")

__all__ = ["Runtime"]


class Runtime:
    """Holds what the operational features need; the daemon fills in ``rules``,
    ``params`` and ``control`` as it creates them."""

    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser,
                 argv: list[str] | None, proxy, driver, pm, ring: RingHandler,
                 loop=None) -> None:
        from .metrics import Metrics
        self.args, self.parser, self.argv = args, parser, argv
        self.proxy, self.driver, self.pm, self.ring = proxy, driver, pm, ring
        self.metrics = Metrics(proxy, driver, pm, loop, backend=args.backend)
        self.rules = None  # rules.RuleSet once installed
        self.params = None  # rules.RuleParams
        self.control = None  # control.ControlServer once listening
        self.rule_ports: list[int] = sorted(args.port)  # what the kernel rules queue

    # ------------------------------------------------------------ events
    def on_event(self, ev: Event) -> None:
        """The driver's event hook: metrics, and (only when someone reads it: the log at
        the event's level, a monitor client) the event's fields."""
        self.metrics.observe(ev)
        watched = self.control is not None and bool(self.control.watchers)
        if not watched and not events_log.isEnabledFor(
                logging.INFO if ev.kind in INFO_EVENTS else logging.DEBUG):
            return  # the common case on a busy host: no text made at all
        fields = ev.fields()
        fields["wall"] = round(time.time() - (time.monotonic() - ev.time), 6)
        log_event(ev, fields)
        if watched:
            self.control.publish(fields)

    # ------------------------------------------------------------ control socket
    def control_extras(self) -> dict:
        """Keyword arguments of :class:`~mptcp_proxy.control.ControlServer`."""
        a = self.args
        info = {"version": __version__, "python": platform.python_version(),
                "backend": a.backend, "log": a.log, "config": a.config,
                "metrics": f"{a.metrics[0]}:{a.metrics[1]}" if a.metrics else None}
        return {"metrics": self.metrics.text, "log_lines": self.ring.lines,
                "rule_counts": self.rule_counts, "info": info}

    def rule_counts(self) -> dict:
        out = {"already_mptcp": None, "port_filter": None}
        if self.rules is not None:
            out = {"already_mptcp": 0, "port_filter": 0}
            out.update(self.rules.counts())
        return out

    # ------------------------------------------------------------ SIGHUP
    def reload(self) -> None:
        """Re-read the configuration file (the command line still wins); apply what can
        change at run time, log what needs a restart. A bad file changes nothing."""
        notify("RELOADING=1")
        try:
            self._reload()
        finally:
            notify("READY=1")

    def _reload(self) -> None:
        a = self.args
        if a.config is None:
            log.warning("SIGHUP: no configuration file in use: nothing to re-read")
            return
        try:
            plan = reload_plan(self.parser, self.argv, a)
        except ConfigError as e:
            log.error("SIGHUP: %s; keeping the running configuration", e)
            return
        except OSError as e:
            log.error("SIGHUP: cannot read %s: %s; keeping the running configuration",
                      a.config, e.strerror or e)
            return
        for dest in plan.restart:
            log.warning("SIGHUP: %s changed in %s: takes effect after a restart "
                        "(still %r)", dest.replace("_", "-"), a.config, getattr(a, dest))
        if "log_level" in plan.apply:
            set_level(plan.apply["log_level"])
        if "subflows" in plan.apply and self.pm is not None:
            self.pm.config = dataclasses.replace(self.pm.config,
                                                 subflows=plan.apply["subflows"])
        if "port" in plan.apply:
            self._set_ports(sorted(plan.apply["port"]))
        for dest, value in plan.apply.items():
            setattr(a, dest, value)
            log.info("SIGHUP: %s = %r", dest.replace("_", "-"), value)
        if not plan.apply and not plan.restart:
            log.info("SIGHUP: %s unchanged", a.config)

    def _set_ports(self, ports: list[int]) -> None:
        """New connections follow ``ports`` at once (the core's filter). The kernel rules
        only ever widen while the daemon runs (union of old and new, or all ports), so a
        connection on a port just removed keeps being converted until it ends."""
        self.proxy.config = dataclasses.replace(self.proxy.config, ports=frozenset(ports))
        old = self.rule_ports
        wider = [] if not old or not ports else sorted(set(old) | set(ports))
        if wider == old or self.rules is None or self.params is None:
            return
        from .rules import RulesError, load_ruleset
        params = dataclasses.replace(self.params, ports=wider)
        try:
            self.rules.replace_rules(load_ruleset("endhost", params))
        except RulesError as e:
            log.error("SIGHUP: %s (the queue rules still cover ports %s)",
                      e, ",".join(map(str, old)) or "all")
            return
        self.params, self.rule_ports = params, wider
