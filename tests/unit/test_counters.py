"""The counter registry (core/counters.py) is complete: every counter name the code bumps
is registered with a help text, and every registered name is used somewhere."""

import re
from pathlib import Path

from mptcp_proxy.core.counters import COUNTERS, Counters, help_of

ROOT = Path(__file__).resolve().parents[2] / "mptcp_proxy"
# inc("Name"), counters["Name"], and a counter name handed on as a string argument
# (queue_signal(..., "RmAddrTx")): any CamelCase string literal that is a counter's shape
USE = re.compile(r"""(?:\.inc\(|counters\[|c\[)\s*"([A-Za-z0-9]+)"""
                 r"""|,\s*"([A-Z][A-Za-z0-9]+(?:Tx|Rx))"\s*[,)]""")


def _used() -> set[str]:
    names = set()
    for path in ROOT.rglob("*.py"):
        for m in USE.finditer(path.read_text()):
            names.add(m.group(1) or m.group(2))
    return names


def test_every_used_counter_is_registered():
    used = _used()
    assert len(used) > 50  # the scan itself works
    missing = sorted(used - set(COUNTERS))
    assert not missing, f"counters used but not registered in core/counters.py: {missing}"


def test_every_registered_counter_is_used():
    unused = sorted(set(COUNTERS) - _used())
    assert not unused, f"registered but never bumped: {unused}"


def test_help_texts():
    for name, text in COUNTERS.items():
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert text and text == text.strip() and not text.endswith("."), name
        assert len(text) < 100, name
    assert help_of("DSSTx") == COUNTERS["DSSTx"]


def test_counters_inc_and_snapshot():
    c = Counters()
    c.inc("DSSTx")
    c.inc("DSSTx", 2)
    c.inc("AcksConsumed")
    assert c.snapshot() == {"AcksConsumed": 1, "DSSTx": 3}
