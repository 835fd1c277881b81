"""The daemon's configuration file: one key per long option, the command line on top.

``mptcp-proxy --config FILE`` (default :data:`DEFAULT_CONFIG` when it exists; ``--config
none`` reads no file) reads a TOML file whose keys are the daemon's long options
without the dashes in front, spelled the same (``no-rejoin``, ``log-level``)::

    iface = ["wlan0", "wwan0"]     # repeatable options take a list (or one value)
    port = [80, 443]
    subflows = "backup"
    checksum = true                # flags take true/false

Precedence: built-in defaults < the file < the command line. A repeatable option
given on the command line replaces the file's list (it does not add to it).

Every value goes through the same checks as on the command line (the option's type
and choices); an unknown key, a wrong type or a bad value raises :class:`ConfigError`
naming the file and the line (the daemon exits 2). The example the project ships is
``mptcp_proxy/data/mptcp-proxy.conf``.

``SIGHUP`` re-reads the file (:func:`reload_plan`): the settings in :data:`RELOADABLE`
change at once, the others are reported as needing a restart and keep their value.
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_CONFIG", "RELOADABLE", "ConfigError", "parse_command_line",
           "read_config", "reload_plan", "Reload"]

DEFAULT_CONFIG = "/etc/mptcp-proxy/mptcp-proxy.conf"
NO_CONFIG = "none"

# option dests a running daemon takes over from a re-read file (SIGHUP)
RELOADABLE = frozenset({"port", "subflows", "log_level"})
# options that are not settings but actions: never keys of the file
NOT_KEYS = frozenset({"help", "version", "config", "cleanup"})


class ConfigError(Exception):
    """A bad configuration file: ``str()`` is ``FILE:LINE: message`` (``FILE: message``
    when no line applies)."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key name → action, for every long option the parser recorded in
    ``parser.option_actions`` (see ``daemon.build_parser``)."""
    out = {}
    for act in getattr(parser, "option_actions", []):
        longs = [o for o in act.option_strings if o.startswith("--")]
        if longs and act.dest not in NOT_KEYS:
            out[longs[0][2:]] = act
    return out


def _key_line(lines: list[str], key: str) -> int | None:
    pat = re.compile(r"""^\s*(?:%s|"%s"|'%s')\s*=""" % ((re.escape(key),) * 3))
    for i, ln in enumerate(lines, 1):
        if pat.match(ln):
            return i
    return None


def _is_flag(act: argparse.Action) -> bool:
    return act.nargs == 0 and isinstance(act.const, bool)


def _is_list(act: argparse.Action) -> bool:
    """A repeatable option (``action="append"``): argparse names no public class for it."""
    return type(act).__name__ == "_AppendAction"


def _convert(act: argparse.Action, key: str, value) -> object:
    """One file value checked and converted as argparse would; raises ValueError."""
    if _is_flag(act):
        if not isinstance(value, bool):
            raise ValueError(f"{key} takes true or false, not {value!r}")
        return value if act.const is True else not value
    if isinstance(value, bool):
        raise ValueError(f"{key} takes a value, not {str(value).lower()}")
    if isinstance(value, (dict, list)) and not _is_list(act):
        raise ValueError(f"{key} takes one value, not a {type(value).__name__}")
    if _is_list(act):
        items = value if isinstance(value, list) else [value]
        return [_one(act, key, v) for v in items]
    return _one(act, key, value)


def _one(act: argparse.Action, key: str, value) -> object:
    if isinstance(value, (dict, list, bool)):
        raise ValueError(f"{key}: not a single value: {value!r}")
    text = str(value)
    if act.type is not None:
        try:
            v = act.type(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise ValueError(f"{key}: {e}") from None
    else:
        v = text
    if act.choices is not None and v not in act.choices:
        raise ValueError(f"{key}: invalid choice {v!r} (choose from "
                         f"{', '.join(map(repr, act.choices))})")
    return v


def read_config(path: str, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The file's settings as ``{dest: value}``, each checked like the command line.

    Raises :class:`ConfigError` (file:line) for a syntax error, an unknown key, a section,
    or a bad value; ``OSError`` if the file cannot be read."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text ({e.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)$", str(e))
        end = re.search(r"\(at end of document\)$", str(e))
        msg = str(e)[:(m or end).start()].strip() if (m or end) else str(e)
        line = int(m.group(1)) if m else (max(1, len(text.splitlines())) if end else None)
        if end:
            msg += " (at the end of the file)"
        if msg.lower().startswith("invalid value"):
            msg += ' (text needs quotes: subflows = "backup"; lists: port = [80, 443])'
        raise ConfigError(path, line, msg) from None
    lines = text.splitlines()
    actions = _option_actions(parser)
    out: dict[str, object] = {}
    for key, value in data.items():
        line = _key_line(lines, key)
        if isinstance(value, dict):
            raise ConfigError(path, line or _section_line(lines, key),
                              f"[{key}]: sections are not used; write the keys at the top "
                              "level (key = value)")
        act = actions.get(key)
        if act is None:
            near = difflib.get_close_matches(key, list(actions), n=1)
            hint = f" (did you mean {near[0]}?)" if near else \
                f" (keys: {', '.join(sorted(actions))})"
            raise ConfigError(path, line, f"unknown key {key!r}{hint}")
        try:
            out[act.dest] = _convert(act, key, value)
        except ValueError as e:
            raise ConfigError(path, line, str(e)) from None
    return out


def _section_line(lines: list[str], key: str) -> int | None:
    pat = re.compile(r"^\s*\[+\s*%s\b" % re.escape(key))
    for i, ln in enumerate(lines, 1):
        if pat.match(ln):
            return i
    return None


def config_path(argv: list[str] | None) -> tuple[str | None, bool]:
    """The file to read and whether it was asked for explicitly: ``--config FILE``,
    else :data:`DEFAULT_CONFIG` if it exists; ``(None, ...)`` for none."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        return (None, True) if known.config == NO_CONFIG else (known.config, True)
    return (DEFAULT_CONFIG, False) if Path(DEFAULT_CONFIG).exists() else (None, False)


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None
                       ) -> argparse.Namespace:
    """Parse ``argv`` over the configuration file's settings.

    Usage errors exit 2 through ``parser.error`` (with the usage line); a bad file raises
    :class:`ConfigError`; an unreadable explicit file raises ``OSError``. The result has
    ``config``: the file read (or ``None``)."""
    path, explicit = config_path(argv)
    settings: dict[str, object] = {}
    if path is not None:
        try:
            settings = read_config(path, parser)
        except FileNotFoundError:
            if explicit:
                raise
    lists = {a.dest for a in _option_actions(parser).values() if _is_list(a)}
    ns = argparse.Namespace(**{k: v for k, v in settings.items() if k not in lists})
    ns = parser.parse_args(argv, namespace=ns)
    for dest in lists:  # the command line's list replaces the file's
        if getattr(ns, dest, None) is None:
            setattr(ns, dest, list(settings.get(dest) or []))
    ns.config = path
    return ns


@dataclass
class Reload:
    """What a re-read configuration changes: ``apply`` (dest → new value, for
    :data:`RELOADABLE` settings that differ) and ``restart`` (dests that differ but
    only take effect after a restart)."""

    apply: dict[str, object] = field(default_factory=dict)
    restart: list[str] = field(default_factory=list)


def reload_plan(parser: argparse.ArgumentParser, argv: list[str] | None,
                current: argparse.Namespace) -> Reload:
    """Re-read the file under the same command line and compare with ``current``.
    Raises :class:`ConfigError`/``OSError`` like :func:`parse_command_line` (a usage
    error cannot happen: the command line was good at start)."""
    new = parse_command_line(parser, argv)
    plan = Reload()
    for dest, value in sorted(vars(new).items()):
        old = getattr(current, dest, None)
        if _norm(old) == _norm(value):
            continue
        if dest in RELOADABLE:
            plan.apply[dest] = value
        else:
            plan.restart.append(dest)
    return plan


def _norm(v: object) -> object:
    """Ports in another order are the same setting; interfaces are not (the first is
    the primary path)."""
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return sorted(v)
    return v
