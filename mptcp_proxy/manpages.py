"""Manual pages ``mptcp-proxy(8)`` and ``mptcpctl(8)``, generated from the commands'
own argument parsers by argparse-manpage, so that a page and ``--help`` say the same.

``python -m mptcp_proxy.manpages`` rewrites ``man/*.8`` in the checkout (run it after
changing an option; ``tests/unit/test_manpages.py`` fails while a page is stale). The
pages are installed with the package (``share/man/man8``). argparse-manpage is only
needed to regenerate them (it is in the ``test`` extra).
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__

__all__ = ["PAGES", "render", "release_date"]

ROOT = Path(__file__).resolve().parent.parent
MAN_DIR = ROOT / "man"
PAGES = ("mptcp-proxy", "mptcpctl")

SEE_ALSO = {
    "mptcp-proxy": r"""\fBmptcpctl\fR(8), \fBip-mptcp\fR(8), \fBsystemd.exec\fR(5),
\fBjournalctl\fR(1), \fBmptcpize\fR(8); RFC 8684 (TCP Extensions for Multipath
Operation with Multiple Addresses, v1); README.md of the project.""",
    "mptcpctl": r"""\fBmptcp-proxy\fR(8), \fBip-mptcp\fR(8) (\fBip mptcp monitor\fR prints the
kernel's events in the same shape as \fBmptcpctl monitor\fR).""",
}

FILES = {
    "mptcp-proxy": r""".TP
.B /etc/mptcp-proxy/mptcp-proxy.conf
Configuration file (TOML), read when present; keys are the long options.
.TP
.B /run/mptcp-proxy/control.sock
Control socket used by \fBmptcpctl\fR(8).
.TP
.B /etc/systemd/system/mptcp-proxy.service
The unit written by \fBmptcp-proxy install-service\fR.""",
    "mptcpctl": r""".TP
.B /run/mptcp-proxy/control.sock
The daemon's control socket (override with \fB--socket\fR or
\fBMPTCP_PROXY_SOCKET\fR).""",
}

SUMMARY = {
    "mptcp-proxy": "convert the TCP connections of local applications into MPTCP v1",
    "mptcpctl": "control and watch a running mptcp-proxy daemon",
}


def release_date() -> str:
    """The date of the newest release in CHANGELOG.md (``## VERSION — YYYY-MM-DD``)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    m = re.search(r"^## .*?(\d{4}-\d{2}-\d{2})", text, re.M)
    return m.group(1) if m else ""


def _parser(name: str):
    if name == "mptcp-proxy":
        from .daemon import build_parser
    else:
        from .ctl import build_parser
    return build_parser()


@contextmanager
def _fixed_env():
    """The same page whatever the terminal: 80 columns, no $MPTCP_PROXY_SOCKET (it
    changes a default that --help shows)."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "MPTCP_PROXY_SOCKET")}
    os.environ["COLUMNS"] = "80"
    os.environ.pop("MPTCP_PROXY_SOCKET", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def render(name: str) -> str:
    """The roff text of page ``name`` (one of :data:`PAGES`)."""
    with _fixed_env():
        return _render(name)


def _render(name: str) -> str:
    from argparse_manpage.manpage import Manpage
    page = Manpage(_parser(name))
    page.section = 8
    page.manual = "System Manager's Manual"
    page.source = f"mptcp-proxy {__version__}"
    page.date = release_date()
    page.description = SUMMARY[name]
    if name == "mptcp-proxy":
        from .service import build_install_parser
        usage = build_install_parser().format_help().replace("\\", "\\\\")
        usage = usage.replace("-", "\\-")
        page.add_section("install-service", ">", ".nf\n" + usage.rstrip() + "\n.fi")
    if name == "mptcpctl":  # argparse-manpage drops the verbs' epilogs: the legends
        from .ctl import CONNECTION_LEGEND, SUBFLOW_LEGEND
        for verb, legend in (("connections", CONNECTION_LEGEND),
                             ("subflows", SUBFLOW_LEGEND)):
            body = legend.split("\n", 1)[1].rstrip().replace("-", "\\-")
            page.add_section(f"{verb} columns", ">", ".nf\ncolumns:\n" + body + "\n.fi")
    page.add_section("files", ">", FILES[name])
    page.add_section("see also", ">", SEE_ALSO[name])
    return str(page)


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else MAN_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in PAGES:
        path = out / f"{name}.8"
        path.write_text(render(name))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
