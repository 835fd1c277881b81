"""The kinds of handover the tool measures. A kind names itself, describes itself for
``--help``, adds its own options, picks the proxy's default ``--subflows``, prepares
once the connection runs, and performs the handover at ``--at``. Adding a kind (a path
that dies upstream with the link up, an address replaced, an outage of every path, an
interface appearing mid-transfer...) is a class and a :func:`register` call."""

from __future__ import annotations

import argparse
import threading
import time
from typing import TYPE_CHECKING, Any

from .stacks import wait_path

if TYPE_CHECKING:
    from .scenario import Run

__all__ = ["Kind", "Make", "Break", "KINDS", "register"]


class Kind:
    """Base of the handover kinds; ``name`` is its ``--kind`` value."""

    name = ""
    help = ""           # one line for --kind's help
    describe = ""       # the "what happens" paragraph of --help

    def add_options(self, p: argparse.ArgumentParser) -> None:
        """Options of this kind (shared names must agree between kinds)."""

    def title(self, a: argparse.Namespace) -> str:
        return self.name

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        """Fields of the report's ``scenario`` that depend on the kind."""
        return {"trigger": "command"}

    def proxy_subflows(self, a: argparse.Namespace) -> str:
        """The daemon's ``--subflows`` unless ``--proxy-subflows`` says otherwise."""
        return "backup"

    def setup_bed(self, run: Run) -> None:
        """Once the bed is built, before anything runs in it (e.g. a link that appears
        only later starts down)."""

    def prepare(self, run: Run) -> None:
        """Once the connection runs, before the wait until ``--at``."""

    def act(self, run: Run) -> dict[str, Any]:
        """Perform the handover; its facts, with ``t`` = the instant (monotonic), taken
        just before the action."""
        raise NotImplementedError


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


class Make(Kind):
    name = "make"
    help = "make-before-break (priority switch)"
    describe = """\
  make   mptcp-proxy --subflows backup (a backup subflow on c1 exists); at --at:
         mptcpctl handover CONN --to c1 (MP_PRIO: B=0 on c1, B=1 on c0).
         --native: endpoints c0 (id 1) and c1 (id 2, subflow backup); at --at:
         ip mptcp endpoint change id 2 nobackup; ... id 1 backup."""

    def title(self, a: argparse.Namespace) -> str:
        return "make-before-break"

    def prepare(self, run: Run) -> None:
        ready = wait_path(run, "c1", run.s_before)
        if ready > run.t0 + run.a.at - 0.5:
            run.warnings.append(f"backup subflow ready only {ready - run.t0:.2f} s after "
                                "the start")

    def act(self, run: Run) -> dict[str, Any]:
        t = time.monotonic()
        return {**run.client_stack.switch(run, "c1", brk=False), "t": t}


class Break(Kind):
    name = "break"
    help = "break-before-make (link c0 cut)"
    describe = """\
  break  mptcp-proxy --subflows manual (only the initial subflow, paper §5.4);
         --trigger link: link c0 is cut (both veth ends down) and the daemon must fail
         over by itself; --trigger command: mptcpctl handover CONN --to c1 --break and
         the cut at the same instant. --native: same endpoints as make (the kernel
         cannot open a subflow after the cut), link cut (command: cut + priority switch)."""

    def add_options(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--trigger", choices=("link", "command"), default="link",
                       help="break only: cut link c0 (default), or command plus cut")

    def title(self, a: argparse.Namespace) -> str:
        return f"break-before-make ({a.trigger})"

    def scenario(self, a: argparse.Namespace) -> dict[str, Any]:
        return {"trigger": a.trigger}

    def proxy_subflows(self, a: argparse.Namespace) -> str:
        return "manual"  # the paper's break setup has only the initial subflow

    def act(self, run: Run) -> dict[str, Any]:
        if run.a.trigger == "link":
            t = time.monotonic()
            run.emu.down(0)
            return {"link": "c0 down", "t": t}
        cut = threading.Thread(target=run.emu.down, args=(0,))
        t = time.monotonic()
        cut.start()
        info = run.client_stack.switch(run, "c1", brk=True)
        cut.join()
        return {**info, "link": "c0 down", "t": t}


register(Make())
register(Break())
