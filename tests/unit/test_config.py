"""The daemon's configuration file (mptcp_proxy/config.py): every long option is a key,
values go through the command line's own checks, errors name the file and the line,
the command line wins, SIGHUP's plan sorts changes into "now" and "after a restart"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mptcp_proxy import config, daemon
from mptcp_proxy.config import ConfigError, parse_command_line, read_config, reload_plan

EXAMPLE = Path(config.__file__).parent / "data" / "mptcp-proxy.conf"


@pytest.fixture
def parser():
    return daemon.build_parser()


@pytest.fixture
def conf(tmp_path):
    def write(text: str) -> str:
        p = tmp_path / "mptcp-proxy.conf"
        p.write_text(text)
        return str(p)
    return write


def keys_of(parser) -> set[str]:
    return set(config._option_actions(parser))


# ---------------------------------------------------------------- keys and values
def test_every_long_option_is_a_key(parser):
    longs = {o[2:] for a in parser.option_actions for o in a.option_strings
             if o.startswith("--")} - config.NOT_KEYS
    assert keys_of(parser) == longs
    assert {"iface", "port", "no-rejoin", "log-level", "metrics", "control-group"} <= longs


def test_values_are_converted_like_the_command_line(parser, conf):
    path = conf('iface = ["c0", "c1"]\nport = [443, 80]\nqueue = 4800\nmark = 0x10\n'
                'subflows = "active"\nchecksum = true\nno-rejoin = false\n'
                'metrics = "9464"\nlog = "syslog"\n"log-level" = "debug"\n')
    got = read_config(path, parser)
    assert got == {"iface": ["c0", "c1"], "port": [443, 80], "queue": 4800, "mark": 16,
                   "subflows": "active", "checksum": True, "no_rejoin": False,
                   "metrics": ("127.0.0.1", 9464), "log": "syslog", "log_level": "debug"}


def test_one_value_for_a_list_option(parser, conf):
    assert read_config(conf('iface = "wlan0"\nport = 443\n'), parser) == {
        "iface": ["wlan0"], "port": [443]}


@pytest.mark.parametrize("text, line, pattern", [
    ('iface = ["c0"]\n\nporte = [80]\n', 3, r"unknown key 'porte' \(did you mean port\?\)"),
    ('iface = ["c0"]\nzzz = 1\n', 2, r"unknown key 'zzz' \(keys: accept-all, anchor"),
    ('# comment\nport = [80, 70000]\n', 2, r"port: port out of range 1-65535: 70000"),
    ('port = ["http"]\n', 1, r"not a port number: 'http'"),
    ('subflows = "sometimes"\n', 1, r"invalid choice 'sometimes' \(choose from 'backup'"),
    ('checksum = "yes"\n', 1, r"checksum takes true or false"),
    ('queue = true\n', 1, r"queue takes a value, not true"),
    ('queue = [1, 2]\n', 1, r"queue takes one value, not a list"),
    ('metrics = "[::1]"\n', 1, r"metrics: not \[ADDR\]:PORT"),
    ('\n\n[daemon]\niface = ["c0"]\n', 3, r"\[daemon\]: sections are not used"),
    ('iface = ["c0"]\nsubflows = backup\n', 2, r'Invalid value.*text needs quotes'),
    ('port = [80]\niface = ["c0"\n', 2, r"Unclosed array \(at the end of the file\)"),
    ('version = true\n', 1, r"unknown key 'version'"),
    ('config = "/x"\n', 1, r"unknown key 'config'"),
], ids=["typo", "unknown", "port-range", "port-name", "choice", "flag-type", "bool-value",
        "list-for-scalar", "metrics", "section", "unquoted", "unclosed", "version",
        "config-in-config"])
def test_errors_name_file_and_line(parser, conf, text, line, pattern):
    path = conf(text)
    with pytest.raises(ConfigError) as ei:
        read_config(path, parser)
    e = ei.value
    assert (e.path, e.line) == (path, line)
    assert str(e).startswith(f"{path}:{line}: ")
    assert re.search(pattern, e.message), e.message


def test_not_utf8(parser, tmp_path):
    p = tmp_path / "bad.conf"
    p.write_bytes(b'iface = ["\xff"]\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(str(p), parser)


# ---------------------------------------------------------------- precedence
def test_command_line_wins(parser, conf):
    path = conf('iface = ["c0", "c1"]\nport = [80]\nqueue = 4800\nsubflows = "active"\n'
                'checksum = true\n')
    ns = parse_command_line(parser, ["--config", path, "--queue", "4700", "--port", "443",
                                     "--port", "8443"])
    assert ns.queue == 4700  # explicitly given, even though it equals the default
    assert ns.port == [443, 8443]  # the command line's list replaces the file's
    assert ns.iface == ["c0", "c1"] and ns.subflows == "active" and ns.checksum is True
    assert ns.config == path


def test_defaults_under_the_file(parser, conf):
    ns = parse_command_line(parser, ["--config", conf('iface = ["c0"]\n')])
    assert (ns.queue, ns.port, ns.subflows, ns.log, ns.metrics) == (
        daemon.DEFAULT_QUEUE, [], "backup", "stderr", None)


def test_no_file(parser, monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    ns = parse_command_line(parser, ["--iface", "c0"])
    assert ns.config is None and ns.iface == ["c0"] and ns.port == []
    ns = parse_command_line(parser, ["--config", "none", "--iface", "c0"])
    assert ns.config is None


def test_default_file_is_read_when_present(parser, monkeypatch, conf):
    path = conf('iface = ["c9"]\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG", path)
    assert parse_command_line(parser, []).iface == ["c9"]
    assert parse_command_line(parser, ["--config", "none"]).iface == []


def test_explicit_missing_file_is_an_error(parser, tmp_path):
    with pytest.raises(FileNotFoundError):
        parse_command_line(parser, ["--config", str(tmp_path / "nope.conf")])


def test_main_reports_file_and_line_with_exit_2(conf, capsys):
    path = conf('iface = ["c0"]\nqueue = 70000\n')
    assert daemon.main(["--config", path]) == daemon.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"mptcp-proxy: error: {path}:2: queue: queue number out of range")


def test_main_without_iface_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    with pytest.raises(SystemExit) as ei:
        daemon.main([])
    assert ei.value.code == 2
    assert "--iface is required" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped example
def test_example_is_valid_and_complete(parser, conf):
    text = EXAMPLE.read_text()
    # every commented "# key = value" line is a valid setting once uncommented
    settings = [ln[2:] for ln in text.splitlines() if re.match(r"# [a-z-]+ = ", ln)]
    uncommented = "\n".join(settings) + "\n"
    got = read_config(conf(uncommented), parser)
    documented = {ln.split(" = ")[0] for ln in settings}
    assert documented == keys_of(parser), "every key appears in the example"
    assert got["iface"] == ["wlan0", "wwan0"] and got["mark"] == daemon.DEFAULT_MARK
    # as shipped (all commented out) it is valid too
    assert read_config(str(EXAMPLE), parser) == {}


# ---------------------------------------------------------------- reload (SIGHUP)
def test_reload_plan(parser, conf, tmp_path):
    path = conf('iface = ["c0", "c1"]\nport = [80, 443]\nsubflows = "backup"\n')
    argv = ["--config", path, "--queue", "4800"]
    current = parse_command_line(parser, argv)
    Path(path).write_text('iface = ["c1", "c0"]\nport = [443, 80, 8080]\n'
                          'subflows = "manual"\nlog-level = "debug"\nqueue = 4900\n'
                          'checksum = true\n')
    plan = reload_plan(parser, argv, current)
    assert plan.apply == {"port": [443, 80, 8080], "subflows": "manual",
                          "log_level": "debug"}
    # the interface order changed (the primary path); the queue is pinned by argv
    assert plan.restart == ["checksum", "iface"]


def test_reload_same_ports_in_another_order_is_no_change(parser, conf):
    path = conf('iface = ["c0"]\nport = [80, 443]\n')
    current = parse_command_line(parser, ["--config", path])
    Path(path).write_text('iface = ["c0"]\nport = [443, 80]\n')
    plan = reload_plan(parser, ["--config", path], current)
    assert (plan.apply, plan.restart) == ({}, [])


def test_reload_bad_file_raises(parser, conf):
    path = conf('iface = ["c0"]\n')
    current = parse_command_line(parser, ["--config", path])
    Path(path).write_text('iface = ["c0"]\nport = [0]\n')
    with pytest.raises(ConfigError, match=r":2: port"):
        reload_plan(parser, ["--config", path], current)
