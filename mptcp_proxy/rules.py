"""Install and remove the proxy's netfilter rules (python-iptables, legacy backend).

The rule sets live declaratively in ``mptcp_proxy/tables/*.toml`` (see
``mptcp_proxy/tables/endhost.toml``), shipped inside the package.
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

TABLES_DIR = Path(__file__).resolve().parent / "tables"


class RulesError(Exception):
    """The rules could not be installed (message says why)."""


XTABLES_DIRS = ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/aarch64-linux-gnu/xtables",
                "/usr/lib/arm-linux-gnueabihf/xtables", "/usr/lib64/xtables",
                "/usr/lib/xtables", "/usr/local/lib/xtables")


def iptc_easy():
    """python-iptables' ``iptc.easy``, imported quickly: its import costs most of the
    daemon's restart time otherwise (measured 1.6–2.2 s on a loaded 2-core machine, 0.5 s
    this way). Two causes, both avoided with the library's and setuptools' own knobs:
    without ``XTABLES_LIBDIR`` it runs ``ldconfig -N -v`` to find the xtables extension
    directory (set here when one of :data:`XTABLES_DIRS` exists), and its
    ``from distutils.sysconfig import ...`` goes through setuptools' distutils shim,
    which imports setuptools and pkg_resources (the shim is taken out for this import
    and put back). Raises whatever the import raises."""
    import sys
    mod = sys.modules.get("iptc.easy")
    if mod is not None:
        return mod
    import os
    if "XTABLES_LIBDIR" not in os.environ:
        found = next((d for d in XTABLES_DIRS if os.path.isdir(d)), None)
        if found:
            os.environ["XTABLES_LIBDIR"] = found
    hack = sys.modules.get("_distutils_hack")
    removed = False
    if hack is not None and "distutils" not in sys.modules and hasattr(hack, "remove_shim"):
        hack.remove_shim()
        removed = True
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # stdlib distutils (3.11)
            from iptc import easy
    finally:
        if removed and hasattr(hack, "insert_shim"):
            hack.insert_shim()
    return easy


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
    workers: int = 1


# --workers: the local port's bits 1-4 pick one of 16 buckets, bucket b belongs to worker
# b % N (docs/workers.md: bit 0 is skipped because Linux's connect() prefers even ports).
PORT_BUCKETS = 16
_U32_V4 = "0>>22&0x3C@0"  # the first 32 bits of the TCP header (IHL skipped): ports
_U32_V6 = "40"  # (no extension headers: such packets are not converted)


def port_owner(port: int, workers: int) -> int:
    """The worker (0..workers-1) that owns a connection whose local port is ``port``."""
    return ((port >> 1) & (PORT_BUCKETS - 1)) % workers


def spread_match(field: str, worker: int, workers: int) -> dict:
    """The u32 match (IPv4 form, :func:`for_family` makes the IPv6 one) selecting the
    packets whose local port (TCP ``sport`` or ``dport``) belongs to ``worker``."""
    shift = 17 if field == "sport" else 1
    buckets = ",".join(str(b) for b in range(PORT_BUCKETS) if b % workers == worker)
    return {"u32": f"{_U32_V4}>>{shift}&0x{PORT_BUCKETS - 1:X}={buckets}"}


def for_family(rule: dict, v6: bool) -> dict:
    """``rule`` as installed for IPv6 (its u32 match offset from the fixed header)."""
    if not v6 or "u32" not in rule:
        return rule
    out = dict(rule)
    out["u32"] = {"u32": rule["u32"]["u32"].replace(_U32_V4, _U32_V6)}
    return out


def _spread(base: dict, field: str | None, params: "RuleParams") -> list[dict]:
    """One rule per worker for a queueing rule (``spread``), else ``[base]``."""
    if not field or params.workers <= 1:
        return [base]
    out = []
    target = base["target"]["NFQUEUE"]
    for i in range(params.workers):
        r = copy.deepcopy(base)
        r["target"]["NFQUEUE"]["queue-num"] = str(int(target["queue-num"]) + 2 * i)
        r["u32"] = spread_match(field, i, params.workers)
        out.append(r)
    return out


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
        counts = []  # per rule: what its kernel counter counts (``counts`` key), or None
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
                for spec in _spread(_fill(copy.deepcopy(rule["spec"]), values),
                                    rule.get("spread"), params):
                    rules.append(spec)
                    counts.append(rule.get("counts"))
        chains.append({"table": ch["table"], "name": f"{ch['name']}_{params.queue_out}",
                       "hook": ch["hook"], "rules": rules, "counts": counts})
    return chains


IFNAMSIZ = 16


def encode_rule(spec: dict, ipv6: bool):
    """python-iptables' rule object for ``spec`` (an "easy" dict), for IPv6 with its
    interface masks fixed: python-iptables 1.0.1 writes 0x01 per byte of an IPv6 rule's
    interface name where iptables writes 0xff, so the kernel compared only the lowest bit
    of each character (``-i rc0`` also matched ``rs0``)."""
    rule = iptc_easy().encode_iptc_rule(copy.deepcopy(spec), ipv6)
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


def remove_chain(v6: bool, table: str, name: str, hook: str) -> None:
    """Remove our chain ``name`` of ``table``: its jump rules from the built-in ``hook``,
    its rules, the chain. Nothing else is touched; a missing chain is no error. Raises
    what python-iptables raises when the chain cannot be removed."""
    easy = iptc_easy()
    try:
        for r in easy.dump_chain(table, hook, ipv6=v6):
            if r.get("target") == name:
                easy.delete_rule(table, hook, {"target": name}, ipv6=v6)
    except Exception as e:
        log.debug("jump rule %s: %s", name, e)
    try:
        if not easy.has_chain(table, name, ipv6=v6):
            return
        for rule in easy.dump_chain(table, name, ipv6=v6):
            rule.pop("counters", None)
            try:  # as installed (IPv6 masks fixed), else as python-iptables encodes it
                _chain(table, name, v6).delete_rule(encode_rule(rule, v6))
            except Exception:
                easy.delete_rule(table, name, rule, ipv6=v6)
        easy.delete_chain(table, name, ipv6=v6, flush=False)
    except Exception as e:
        log.error("could not remove chain %s/%s: %s", table, name, e)
        raise


class RuleSet:
    """An installed rule set, for IPv4 and IPv6; :meth:`remove` undoes :meth:`install`.
    With a ``journal`` (:class:`~mptcp_proxy.recovery.Journal`), each chain is recorded
    before it is created and forgotten once removed."""

    def __init__(self, chains: list[dict], ipv6: bool = True, journal=None) -> None:
        self.chains = chains
        self.families = [False, True] if ipv6 else [False]
        self.installed: list[tuple[bool, dict]] = []
        self.journal = journal

    def install(self) -> None:
        try:
            easy = iptc_easy()
        except Exception as e:  # the library needs libiptc; say so clearly
            raise RulesError(f"python-iptables unavailable: {e}") from None
        self.remove_stale()
        try:
            for v6 in self.families:
                for ch in self.chains:
                    if self.journal is not None:
                        self.journal.record("chain", table=ch["table"], name=ch["name"],
                                            hook=ch["hook"], v6=v6)
                    easy.add_chain(ch["table"], ch["name"], ipv6=v6)
                    self.installed.append((v6, ch))
                    chain = _chain(ch["table"], ch["name"], v6)
                    for rule in ch["rules"]:
                        chain.append_rule(encode_rule(for_family(rule, v6), v6))
                    easy.insert_rule(ch["table"], ch["hook"], {"target": ch["name"]}, ipv6=v6)
        except Exception as e:
            self.remove()
            raise RulesError(f"installing rules failed: {e}") from None

    def remove_stale(self) -> None:
        """Remove chains of the same names left by a daemon that did not exit cleanly."""
        easy = iptc_easy()
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

    def _remove_chain(self, v6: bool, ch: dict) -> bool:
        try:
            remove_chain(v6, ch["table"], ch["name"], ch["hook"])
        except Exception:
            return False
        return True

    def remove(self) -> None:
        """Remove everything installed (safe to call twice); each chain removed is
        forgotten by the journal, one that could not be is kept there."""
        while self.installed:
            v6, ch = self.installed.pop()
            if self._remove_chain(v6, ch) and self.journal is not None:
                self.journal.done({"kind": "chain", "table": ch["table"], "name": ch["name"],
                                   "hook": ch["hook"], "v6": v6})

    def replace_rules(self, chains: list[dict]) -> None:
        """Swap the rules of the installed chains for those of ``chains`` (same chain
        names) without a moment where a chain is empty: the new rules are appended, then
        the old ones deleted. Raises :class:`RulesError`."""
        new = {ch["name"]: ch for ch in chains}
        try:
            for i, (v6, ch) in enumerate(self.installed):
                repl = new.get(ch["name"])
                if repl is None or repl["rules"] == ch["rules"]:
                    continue
                chain = _chain(ch["table"], ch["name"], v6)
                for rule in repl["rules"]:
                    chain.append_rule(encode_rule(for_family(rule, v6), v6))
                for rule in ch["rules"]:
                    chain.delete_rule(encode_rule(for_family(rule, v6), v6))
                self.installed[i] = (v6, repl)
        except Exception as e:
            raise RulesError(f"replacing rules failed: {e}") from None
        self.chains = [new.get(ch["name"], ch) for ch in self.chains]

    def counts(self) -> dict[str, int]:
        """Packets counted by the kernel for each ``counts`` label of the rule set
        (IPv4 and IPv6 added up), e.g. ``{"already_mptcp": 3, "port_filter": 12}``."""
        from iptc import easy
        out: dict[str, int] = {}
        for v6, ch in self.installed:
            labels = ch.get("counts") or []
            if not any(labels):
                continue
            dumped = easy.dump_chain(ch["table"], ch["name"], ipv6=v6)
            for label, rule in zip(labels, dumped):
                if label:
                    out[label] = out.get(label, 0) + int(rule.get("counters", (0, 0))[0])
        return out


def count_rules(names_prefix: str = "MPTCP_PROXY") -> int:
    """Number of chains/jumps whose name starts with the prefix (tests, leftovers)."""
    easy = iptc_easy()
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
