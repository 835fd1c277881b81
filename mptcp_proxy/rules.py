"""Install and remove the proxy's netfilter rules (python-iptables, legacy backend).

The rule sets live declaratively in ``tables/*.toml`` (see ``tables/endhost.toml``).
Every chain is the proxy's own; the only change to a built-in chain is one jump
rule at its top, removed again on exit. Nothing is ever flushed.
"""

from __future__ import annotations

import copy
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mptcp_proxy.rules")

TABLES_DIR = Path(__file__).resolve().parent.parent / "tables"


class RulesError(Exception):
    """The rules could not be installed (message says why)."""


@dataclass
class RuleParams:
    """Values filled into a rule set: interfaces, queues, mark, ports (empty = all), and
    the local listening ports converted in the server role (``--serve``)."""

    ifaces: list[str]
    queue_out: int
    queue_in: int
    mark: int
    ports: list[int]
    serve: list[int] = field(default_factory=list)


def _fill(obj, values: dict):
    if isinstance(obj, str):
        return obj.format(**values)
    if isinstance(obj, dict):
        return {k: _fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, values) for v in obj]
    return obj


def load_ruleset(mode: str, params: RuleParams, tables_dir: Path | None = None) -> list[dict]:
    """The chains of rule set ``mode`` with their rules expanded for ``params``:
    a list of ``{"table", "name", "hook", "rules": [easy-dict, ...]}``."""
    path = (tables_dir or TABLES_DIR) / f"{mode}.toml"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise RulesError(f"cannot read rule set {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"bad rule set {path}: {e}") from None
    chains = []
    for ch in data.get("chain", []):
        rules = []
        for rule in ch.get("rule", []):
            if rule.get("ports") and not params.ports:
                continue
            if rule.get("all_ports") and params.ports:
                continue
            if rule.get("serve") and not (params.serve and params.ports):
                continue  # (without --port every TCP segment is queued already)
            values = {
                "queue_out": params.queue_out,
                "queue_in": params.queue_in,
                "mark": f"{params.mark:#x}",
                "ports": ",".join(str(p) for p in params.ports),
                "serve": ",".join(str(p) for p in params.serve),
            }
            for iface in (params.ifaces if rule.get("per_iface") else [None]):
                values["iface"] = iface or ""
                rules.append(_fill(copy.deepcopy(rule["spec"]), values))
        chains.append({"table": ch["table"], "name": f"{ch['name']}_{params.queue_out}",
                       "hook": ch["hook"], "rules": rules})
    return chains


def encode_rule(spec: dict, ipv6: bool):
    """python-iptables' rule object for ``spec`` (an "easy" dict), for IPv6 with its
    interface masks fixed: python-iptables 1.0.1 writes 0x01 per byte of an IPv6 rule's
    interface name where iptables writes 0xff, so the kernel compared only the lowest bit
    of each character (``-i rc0`` also matched ``rs0``)."""
    from iptc import easy
    rule = easy.encode_iptc_rule(copy.deepcopy(spec), ipv6)
    if ipv6:
        ip = rule.entry.ipv6
        for name in ("iniface_mask", "outiface_mask"):
            n = len(getattr(ip, name))  # (bytes up to the first zero: the name's mask)
            setattr(ip, name, b"\xff" * n + b"\x00" * (IFNAMSIZ - n))
    return rule


def _chain(table: str, name: str, ipv6: bool):
    import iptc
    t = iptc.Table6(table) if ipv6 else iptc.Table(table)
    t.refresh()
    return iptc.Chain(t, name)


IFNAMSIZ = 16


class RuleSet:
    """An installed rule set, for IPv4 and IPv6; :meth:`remove` undoes :meth:`install`."""

    def __init__(self, chains: list[dict], ipv6: bool = True) -> None:
        self.chains = chains
        self.families = [False, True] if ipv6 else [False]
        self.installed: list[tuple[bool, dict]] = []

    def install(self) -> None:
        try:
            from iptc import easy
        except Exception as e:  # the library needs libiptc; say so clearly
            raise RulesError(f"python-iptables unavailable: {e}") from None
        self.remove_stale()
        try:
            for v6 in self.families:
                for ch in self.chains:
                    easy.add_chain(ch["table"], ch["name"], ipv6=v6)
                    self.installed.append((v6, ch))
                    chain = _chain(ch["table"], ch["name"], v6)
                    for rule in ch["rules"]:
                        chain.append_rule(encode_rule(rule, v6))
                    easy.insert_rule(ch["table"], ch["hook"], {"target": ch["name"]}, ipv6=v6)
        except Exception as e:
            self.remove()
            raise RulesError(f"installing rules failed: {e}") from None

    def remove_stale(self) -> None:
        """Remove chains of the same names left by a daemon that did not exit cleanly."""
        from iptc import easy
        for v6 in self.families:
            for ch in self.chains:
                try:
                    exists = easy.has_chain(ch["table"], ch["name"], ipv6=v6)
                except Exception:
                    exists = False
                if exists:
                    log.warning("removing stale chain %s/%s%s", ch["table"], ch["name"],
                                " (IPv6)" if v6 else "")
                    self._remove_chain(v6, ch)

    def _remove_chain(self, v6: bool, ch: dict) -> None:
        from iptc import easy
        table, name, hook = ch["table"], ch["name"], ch["hook"]
        try:
            for r in easy.dump_chain(table, hook, ipv6=v6):
                if r.get("target") == name:
                    easy.delete_rule(table, hook, {"target": name}, ipv6=v6)
        except Exception as e:
            log.debug("jump rule %s: %s", name, e)
        try:
            for rule in easy.dump_chain(table, name, ipv6=v6):
                rule.pop("counters", None)
                try:  # as installed (IPv6 masks fixed), else as python-iptables encodes it
                    _chain(table, name, v6).delete_rule(encode_rule(rule, v6))
                except Exception:
                    easy.delete_rule(table, name, rule, ipv6=v6)
            easy.delete_chain(table, name, ipv6=v6, flush=False)
        except Exception as e:
            log.error("could not remove chain %s/%s: %s", table, name, e)

    def remove(self) -> None:
        """Remove everything installed (safe to call twice)."""
        while self.installed:
            v6, ch = self.installed.pop()
            self._remove_chain(v6, ch)


def count_rules(names_prefix: str = "MPTCP_PROXY") -> int:
    """Number of chains/jumps whose name starts with the prefix (tests, leftovers)."""
    from iptc import easy
    n = 0
    for v6 in (False, True):
        for table in ("mangle", "raw"):
            for chain in easy.get_chains(table, ipv6=v6):
                if chain.startswith(names_prefix):
                    n += 1
                for r in easy.dump_chain(table, chain, ipv6=v6):
                    t = r.get("target")
                    if isinstance(t, str) and t.startswith(names_prefix):
                        n += 1
    return n
