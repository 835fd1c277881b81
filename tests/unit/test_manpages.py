"""The manual pages (man/*.8) are generated from the argument parsers: the committed
pages must be what the generator makes now, and every option, help text, description
and epilog that ``--help`` shows must be in the page (mptcp_proxy/manpages.py)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess

import pytest

from mptcp_proxy import ctl, daemon, manpages, service

pytest.importorskip("argparse_manpage")  # in the test extra (tools/bootstrap installs it)


def plain(roff: str) -> str:
    """Roff to comparable text: font escapes dropped, dashes plain, one space."""
    t = re.sub(r"\\f[BIRP]|\\[/,&]|\\e", "", roff)
    t = t.replace("\\-", "-").replace("\\(aq", "'").replace("\\\\", "\\")
    t = re.sub(r"^\.(TP|B|I|SH|SS|PP|nf|fi|br|UR|UE|RS|RE|IP)\b ?", "", t, flags=re.M)
    return " ".join(t.split())


def flat(text: str) -> str:
    return " ".join(text.split())


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = [("mptcp-proxy", daemon.build_parser()),
           ("mptcp-proxy", service.build_install_parser())]
    top = ctl.build_parser()
    out.append(("mptcpctl", top))
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out += [("mptcpctl", sp) for sp in sub.choices.values()]
    return out


@pytest.mark.parametrize("name", manpages.PAGES)
def test_committed_page_is_up_to_date(name):
    committed = (manpages.MAN_DIR / f"{name}.8").read_text()
    assert committed == manpages.render(name), (
        f"man/{name}.8 is stale: run python -m mptcp_proxy.manpages")


@pytest.mark.parametrize("page, parser", parsers(),
                         ids=[p.prog for _n, p in parsers()])
def test_help_and_page_agree(page, parser, monkeypatch):
    monkeypatch.delenv("MPTCP_PROXY_SOCKET", raising=False)
    text = plain(manpages.render(page))
    for act in parser._actions:
        if isinstance(act, (argparse._SubParsersAction, argparse._HelpAction)):
            continue  # argparse-manpage leaves -h/--help out of every page
        for opt in act.option_strings:
            assert opt in text, f"{parser.prog}: option {opt} missing from {page}(8)"
        if act.help and act.help != argparse.SUPPRESS:
            assert flat(act.help % {"prog": parser.prog, "default": act.default}) in text, (
                f"{parser.prog}: help of {act.dest} missing from {page}(8)")
    if parser.description:
        assert flat(parser.description) in text
    if parser.epilog:
        for line in parser.epilog.splitlines():  # pre-formatted: compare line by line
            if line.strip():
                assert flat(line) in text, f"{parser.prog}: epilog line {line!r}"


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
@pytest.mark.parametrize("name", manpages.PAGES)
def test_page_renders(name):
    cp = subprocess.run(["man", "-l", str(manpages.MAN_DIR / f"{name}.8")],
                        capture_output=True, text=True, timeout=30,
                        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith(name.upper()) and "SEE ALSO" in cp.stdout
    assert "warning" not in cp.stderr.lower(), cp.stderr
