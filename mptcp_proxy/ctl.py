"""``mptcpctl``: the control client of the ``mptcp-proxy`` daemon (DESIGN.md §1).

A thin client (STYLE.md §6, habit 10): it builds one request per invocation,
sends it as one JSON line on the daemon's root-only Unix socket, and prints the
reply. It holds no protocol logic of its own; one ``do_<verb>`` method per verb,
as in supervisorctl's ``Controller``::

    mptcpctl [--socket PATH] [--json] [--timeout S] status
    mptcpctl connections
    mptcpctl subflows CONN
    mptcpctl add-subflow CONN --iface IF [--backup]
    mptcpctl remove-subflow CONN SUBFLOW
    mptcpctl handover (CONN | --all) --to IF [--break]
    mptcpctl handover CONN --subflow SUBFLOW [--break]
    mptcpctl announce (CONN | --all) (--iface IF | --addr ADDR[:PORT])
    mptcpctl prio CONN SUBFLOW (--backup | --no-backup)
    mptcpctl stats [--nonzero]

``--socket`` defaults to ``$MPTCP_PROXY_SOCKET``, else ``/run/mptcp-proxy.sock``
(the daemon's ``--control`` default). Global options may also follow the verb.
Human output is aligned tables with human-readable byte counts; ``--json``
prints the reply's ``result`` as JSON, exact, for scripts.

Exit codes (stable, LSB-like):

== ==========================================================================
0  success
1  the daemon reported an error (bad request/argument, internal error), or
   its reply was unreadable
2  bad command line
3  unknown connection, subflow or interface
4  interface down
5  not possible (connection not established, subflow limit, last subflow...)
6  permission denied (the socket is root-only)
7  daemon not running (no socket at the path, or connection refused)
8  timeout, or the daemon closed the connection without replying
== ==========================================================================
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from typing import Any, Callable, TextIO

from . import __version__
from .control import Fault

DEFAULT_SOCKET = "/run/mptcp-proxy.sock"  # == daemon.DEFAULT_CONTROL (a test checks)
SOCKET_ENV = "MPTCP_PROXY_SOCKET"
DEFAULT_TIMEOUT = 5.0
MAX_REPLY = 16 * 1024 * 1024

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_IFACE_DOWN = 4
EXIT_NOT_POSSIBLE = 5
EXIT_PERMISSION = 6
EXIT_NOT_RUNNING = 7
EXIT_TIMEOUT = 8

FAULT_EXIT = {
    Fault.UNKNOWN_CONNECTION: EXIT_UNKNOWN,
    Fault.UNKNOWN_SUBFLOW: EXIT_UNKNOWN,
    Fault.UNKNOWN_INTERFACE: EXIT_UNKNOWN,
    Fault.INTERFACE_DOWN: EXIT_IFACE_DOWN,
    Fault.NOT_POSSIBLE: EXIT_NOT_POSSIBLE,
    Fault.PERMISSION_DENIED: EXIT_PERMISSION,
}

EPILOG = """\
exit codes:
  0  success
  1  the daemon reported an error (or sent an unreadable reply)
  2  bad command line
  3  unknown connection, subflow or interface
  4  interface down
  5  not possible in the current state
  6  permission denied (the control socket is root-only)
  7  daemon not running (no socket, or connection refused)
  8  timeout, or no reply

environment:
  MPTCP_PROXY_SOCKET  default for --socket (else /run/mptcp-proxy.sock)
"""


class CtlError(Exception):
    """A failure to report as ``mptcpctl: error: <message>`` with exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fault_exit(code: Any) -> int:
    """The exit code for a daemon fault code (unknown codes → 1)."""
    try:
        return FAULT_EXIT.get(Fault(code), EXIT_ERROR)
    except ValueError:
        return EXIT_ERROR


# --------------------------------------------------------------------- transport
def open_socket(path: str, timeout: float) -> socket.socket:
    """Connect to the daemon's socket; the only place the client touches the OS."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class Client:
    """One request, one reply line, over the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def _not_running(self, why: str) -> CtlError:
        return CtlError(EXIT_NOT_RUNNING,
                        f"daemon not running: {why} {self.path} (is mptcp-proxy running? "
                        f"use --socket PATH or ${SOCKET_ENV} for its --control path)")

    def _no_reply(self, why: str) -> CtlError:
        return CtlError(EXIT_TIMEOUT, f"no reply from the daemon on {self.path}: {why}")

    def _connect(self) -> socket.socket:
        try:
            return open_socket(self.path, self.timeout)
        except FileNotFoundError:
            raise self._not_running("no control socket at") from None
        except ConnectionRefusedError:
            raise self._not_running("connection refused on") from None
        except PermissionError:
            raise CtlError(EXIT_PERMISSION,
                           f"permission denied on {self.path} (the control socket is "
                           "root-only; run mptcpctl as root)") from None
        except TimeoutError:
            raise self._no_reply(f"connect timed out after {self.timeout:g}s") from None
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ENOENT):
                raise self._not_running("no control socket at") from None
            raise CtlError(EXIT_ERROR, f"cannot connect to {self.path}: "
                                       f"{e.strerror or e}") from None

    def request(self, cmd: str, args: dict | None = None) -> dict:
        """Send ``{"cmd": cmd, "args": args}``; return the decoded reply object."""
        line = json.dumps({"cmd": cmd, "args": args or {}}, separators=(",", ":")) + "\n"
        sock = self._connect()
        deadline = time.monotonic() + self.timeout
        buf = bytearray()
        try:
            sock.sendall(line.encode())
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise self._no_reply("the daemon closed the connection")
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise CtlError(EXIT_ERROR, "reply from the daemon is too long")
        except TimeoutError:
            raise self._no_reply(f"timed out after {self.timeout:g}s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise self._no_reply("the daemon closed the connection") from None
        finally:
            sock.close()
        try:
            reply = json.loads(buf[:buf.index(b"\n")])
        except (ValueError, UnicodeDecodeError):
            raise CtlError(EXIT_ERROR, "the daemon's reply is not valid JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise CtlError(EXIT_ERROR, "the daemon's reply has no \"ok\" field")
        return reply

    def call(self, cmd: str, args: dict | None = None) -> Any:
        """The ``result`` of a successful reply; a daemon error raises :class:`CtlError`."""
        reply = self.request(cmd, args)
        if reply["ok"]:
            return reply.get("result")
        err = reply.get("error")
        if not isinstance(err, dict):
            raise CtlError(EXIT_ERROR, "the daemon reported an error without details")
        return_code = fault_exit(err.get("code"))
        raise CtlError(return_code, str(err.get("message") or err.get("name") or "error"))


# --------------------------------------------------------------------- formatting
def human_bytes(n: Any) -> str:
    """``532 B``, ``12.3 kB``, ``12.3 MB`` (SI units); non-numbers as they are."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    if abs(n) < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if abs(n) < 999.95 or unit == "PB":
            return f"{n:.1f} {unit}"
    return str(n)  # not reached


def human_duration(s: Any) -> str:
    """``4.2s``, ``5m03s``, ``2h05m``, ``3d04h``."""
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        return str(s)
    if s < 60:
        return f"{s:.1f}s"
    s = int(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def yes_no(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


def text(v: Any) -> str:
    if isinstance(v, bool):
        return yes_no(v)
    if isinstance(v, list):
        return ", ".join(map(str, v)) if v else "-"
    if v is None or v == "":
        return "-"
    return str(v)


# (header, key, formatter, right-aligned)
Column = tuple[str, str, Callable[[Any], str], bool]

CONNECTION_COLUMNS: list[Column] = [
    ("ID", "id", text, True),
    ("ROLE", "role", text, False),
    ("STATE", "state", text, False),
    ("LOCAL", "local", text, False),
    ("REMOTE", "remote", text, False),
    ("SUBFLOWS", "subflows", str, True),
    ("ACTIVE", "active", str, True),
    ("TOKEN", "token", text, False),
    ("SENT", "bytes_sent", human_bytes, True),
    ("ACKED", "bytes_acked", human_bytes, True),
    ("RECEIVED", "bytes_received", human_bytes, True),
    ("AGE", "age", human_duration, True),
]

SUBFLOW_COLUMNS: list[Column] = [
    ("ID", "id", str, True),
    ("STATE", "state", text, False),
    ("IFACE", "iface", text, False),
    ("LOCAL", "local", text, False),
    ("REMOTE", "remote", text, False),
    ("ADDR_ID", "addr_id", str, True),
    ("BACKUP", "backup", yes_no, False),
    ("PEER_BACKUP", "peer_backup", yes_no, False),
    ("ACTIVE", "active", yes_no, False),
    ("SENT", "bytes_sent", human_bytes, True),
    ("ACKED", "bytes_acked", human_bytes, True),
    ("RECEIVED", "bytes_received", human_bytes, True),
]


def table(rows: list[list[str]], headers: list[str], right: list[bool]) -> str:
    """Columns aligned on the widest cell, two spaces apart; numbers right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def format_records(records: list[dict], columns: list[Column]) -> str:
    rows = [[fmt(rec.get(key, "-")) for _h, key, fmt, _r in columns] for rec in records]
    return table(rows, [c[0] for c in columns], [c[3] for c in columns])


# --------------------------------------------------------------------- the verbs
class Controller:
    """One ``do_<verb>(ns)`` per command; each returns the exit code."""

    def __init__(self, client: Client, as_json: bool = False, out: TextIO | None = None) -> None:
        self.client = client
        self.as_json = as_json
        self.out = out if out is not None else sys.stdout

    def say(self, msg: str) -> None:
        print(msg, file=self.out)

    def dump_json(self, result: Any) -> None:
        self.say(json.dumps(result, indent=2))

    def act(self, cmd: str, args: dict, confirm: Callable[[Any], str]) -> int:
        result = self.client.call(cmd, args)
        if self.as_json:
            self.dump_json(result)
        else:
            self.say(confirm(result))
        return EXIT_OK

    def do_status(self, ns: argparse.Namespace) -> int:
        result = self.client.call("status")
        if self.as_json:
            self.dump_json(result)
            return EXIT_OK
        width = max((len(k) for k in result), default=0) + 1
        for key, value in result.items():
            if key == "uptime":
                value = human_duration(value)
            elif key == "ports" and value == []:
                value = "all"
            self.say(f"{key + ':':<{width}} {text(value)}")
        return EXIT_OK

    def do_connections(self, ns: argparse.Namespace) -> int:
        result = self.client.call("connections")
        if self.as_json:
            self.dump_json(result)
        elif not result:
            self.say("no connections")
        else:
            self.say(format_records(result, CONNECTION_COLUMNS))
        return EXIT_OK

    def do_subflows(self, ns: argparse.Namespace) -> int:
        result = self.client.call("subflows", {"conn": ns.conn})
        if self.as_json:
            self.dump_json(result)
        elif not result:
            self.say(f"connection {ns.conn} has no subflows")
        else:
            self.say(format_records(result, SUBFLOW_COLUMNS))
        return EXIT_OK

    def do_stats(self, ns: argparse.Namespace) -> int:
        result = self.client.call("stats")
        if ns.nonzero:
            result = {k: v for k, v in result.items() if v}
        if self.as_json:
            self.dump_json(result)
        elif not result:
            self.say("no counters" + (" above zero" if ns.nonzero else ""))
        else:
            rows = [[k, str(result[k])] for k in sorted(result)]
            self.say(table(rows, ["NAME", "VALUE"], [False, True]))
        return EXIT_OK

    def do_add_subflow(self, ns: argparse.Namespace) -> int:
        def confirm(sf: dict) -> str:
            return (f"connection {ns.conn}: subflow {sf.get('id')} {sf.get('state')} on "
                    f"{sf.get('iface')} {sf.get('local')} -> {sf.get('remote')}"
                    + (" (backup)" if sf.get("backup") else ""))
        return self.act("add-subflow",
                        {"conn": ns.conn, "iface": ns.iface, "backup": ns.backup}, confirm)

    def do_remove_subflow(self, ns: argparse.Namespace) -> int:
        def confirm(sf: dict) -> str:
            return (f"connection {ns.conn}: subflow {sf.get('id')} on {sf.get('iface')} "
                    f"removed ({sf.get('state')})")
        return self.act("remove-subflow", {"conn": ns.conn, "subflow": ns.subflow}, confirm)

    def do_handover(self, ns: argparse.Namespace) -> int:
        args: dict = {"break": ns.brk}
        if ns.subflow is not None:
            args["subflow"] = ns.subflow
        else:
            args["to"] = ns.to
        if ns.all:
            args["all"] = True
        else:
            args["conn"] = ns.conn
        kind = "break-before-make" if ns.brk else "make-before-break"

        where = ns.to if ns.subflow is None else f"subflow {ns.subflow}"

        def confirm(moves: list) -> str:
            if not moves:
                return "no established connections to hand over"
            return "\n".join(
                f"connection {m.get('conn')}: handover to {where} failed: {m['error']}"
                if m.get("error") else
                f"connection {m.get('conn')}: handover to {where} on subflow "
                f"{m.get('subflow')} ({kind}; "
                + ("pending until the subflow is established)" if m.get("pending")
                   else "done)")
                for m in moves)
        return self.act("handover", args, confirm)

    def do_announce(self, ns: argparse.Namespace) -> int:
        args: dict = {"all": True} if ns.all else {"conn": ns.conn}
        if ns.iface is not None:
            args["iface"] = ns.iface
        else:
            args["addr"] = ns.addr

        def confirm(done: list) -> str:
            if not done:
                return "no established connections to announce on"
            return "\n".join(
                f"connection {a.get('conn')}: announce failed: {a['error']}"
                if a.get("error") else
                f"connection {a.get('conn')}: ADD_ADDR {a.get('addr')} (address id "
                f"{a.get('addr_id')}) sent until echoed" for a in done)
        return self.act("announce", args, confirm)

    def do_prio(self, ns: argparse.Namespace) -> int:
        def confirm(sf: dict) -> str:
            return (f"connection {ns.conn}: subflow {sf.get('id')} is now "
                    + ("a backup path" if sf.get("backup") else "a regular path")
                    + " (MP_PRIO sent)")
        return self.act("prio", {"conn": ns.conn, "subflow": ns.subflow,
                                 "backup": ns.backup}, confirm)


# --------------------------------------------------------------------- command line
def _id(text_: str) -> int:
    try:
        v = int(text_, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an id: {text_!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"ids are not negative: {v}")
    return v


def _timeout(text_: str) -> float:
    try:
        v = float(text_)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text_!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError("timeout must be in (0, 3600] seconds")
    return v


def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The options accepted before and after the verb; after it they only override."""
    sup = argparse.SUPPRESS
    sock = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    p.add_argument("--socket", "-s", metavar="PATH", default=sock if defaults else sup,
                   help=f"the daemon's control socket (default ${SOCKET_ENV} or "
                        f"{DEFAULT_SOCKET}; now {sock})")
    p.add_argument("--json", "-j", action="store_true", default=False if defaults else sup,
                   help="print the raw result as JSON (exact numbers, for scripts)")
    p.add_argument("--timeout", "-t", type=_timeout, metavar="S",
                   default=DEFAULT_TIMEOUT if defaults else sup,
                   help=f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptcpctl", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control a running mptcp-proxy daemon over its Unix socket.")
    _global_options(p, defaults=True)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(sp, defaults=False)
        return sp

    verb("status", "daemon status: pid, uptime, interfaces, counts")
    verb("connections", "list the proxied connections")
    sp = verb("subflows", "list the subflows of a connection")
    sp.add_argument("conn", type=_id, metavar="CONN", help="connection id")
    sp = verb("add-subflow", "open an MP_JOIN subflow on an interface")
    sp.add_argument("conn", type=_id, metavar="CONN", help="connection id")
    sp.add_argument("--iface", "-i", required=True, metavar="IF", help="local interface")
    sp.add_argument("--backup", action="store_true", help="open it as a backup path")
    sp = verb("remove-subflow", "close a subflow (data moves to another one first)")
    sp.add_argument("conn", type=_id, metavar="CONN", help="connection id")
    sp.add_argument("subflow", type=_id, metavar="SUBFLOW", help="subflow id")
    sp = verb("handover", "move connections to an interface (make-before-break by default)")
    sp.add_argument("conn", type=_id, nargs="?", metavar="CONN", help="connection id")
    sp.add_argument("--all", "-a", action="store_true", help="every established connection")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--to", metavar="IF", help="interface to move to")
    g.add_argument("--subflow", type=_id, metavar="SUBFLOW",
                   help="existing subflow to move to (e.g. a subflow the peer opened)")
    sp.add_argument("--break", dest="brk", action="store_true",
                    help="break-before-make: abandon the current subflow first")
    sp = verb("announce", "announce an address of ours to the peer (ADD_ADDR)")
    sp.add_argument("conn", type=_id, nargs="?", metavar="CONN", help="connection id")
    sp.add_argument("--all", "-a", action="store_true", help="every established connection")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--iface", "-i", metavar="IF", help="the address of this interface")
    g.add_argument("--addr", metavar="ADDR[:PORT]", help="this address (and port)")
    sp = verb("prio", "mark a subflow as backup or regular (MP_PRIO)")
    sp.add_argument("conn", type=_id, metavar="CONN", help="connection id")
    sp.add_argument("subflow", type=_id, metavar="SUBFLOW", help="subflow id")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--backup", dest="backup", action="store_const", const=True,
                   help="use only when no regular subflow works")
    g.add_argument("--no-backup", dest="backup", action="store_const", const=False,
                   help="a regular path")
    sp = verb("stats", "the proxy's counters, sorted by name (default: all)")
    sp.add_argument("--nonzero", "-n", action="store_true", help="only counters above zero")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.verb in ("handover", "announce") and (ns.conn is None) == (not ns.all):
        parser.error(f"{ns.verb} needs either CONN or --all (not both)")
    if ns.verb == "handover" and ns.subflow is not None and ns.all:
        parser.error("handover --subflow needs one CONN (subflows belong to a connection)")
    return ns


def main(argv: list[str] | None = None) -> int:
    try:
        ns = parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    ctl = Controller(Client(ns.socket, ns.timeout), as_json=ns.json)
    handler = getattr(ctl, "do_" + ns.verb.replace("-", "_"))
    try:
        return handler(ns)
    except CtlError as e:
        print(f"mptcpctl: error: {e.message}", file=sys.stderr)
        return e.code
    except BrokenPipeError:  # stdout closed (mptcpctl ... | head)
        return EXIT_OK
    except (AttributeError, TypeError, ValueError) as e:  # a result of the wrong shape
        print(f"mptcpctl: error: unexpected reply from the daemon: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
