"""``mptcpctl``: the control client of the ``mptcp-proxy`` daemon.

A thin client: it builds one request per invocation, sends it as one JSON line on the
daemon's Unix socket (open to root and the daemon's ``--control-group``), and prints the
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
    mptcpctl stats [--nonzero | --prometheus]
    mptcpctl monitor
    mptcpctl debug-dump [--out FILE.tar.gz]

``--socket`` defaults to ``$MPTCP_PROXY_SOCKET``, else ``/run/mptcp-proxy/control.sock``
(the daemon's ``--control`` default). Global options may also follow the verb.
Human output is aligned tables with human-readable byte counts; ``--json``
prints the reply's ``result`` as JSON, exact, for scripts.

Start-up time matters (a scripted handover waits for it): this module imports only
the standard library modules it needs (no asyncio, no pyroute2, no core beyond the
counter help texts for ``stats``); the verbs that need more import it lazily.

Exit codes (stable, LSB-like):

== ==========================================================================
0  success
1  the daemon reported an error (bad request/argument, internal error), or
   its reply was unreadable
2  bad command line
3  unknown connection, subflow or interface
4  interface down
5  not possible (connection not established, subflow limit, last subflow...)
6  permission denied (the socket is open to root and the daemon's group)
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
from collections.abc import Callable, Iterator

from . import __version__
from .ctlproto import DEFAULT_CONTROL, Fault
from .ctltable import (
    CONNECTION_COLUMNS,
    CONNECTION_LEGEND,
    SUBFLOW_COLUMNS,
    SUBFLOW_LEGEND,
    UNCONVERTED_HELP,
    format_records,
    human_duration,
    table,
    text,
)

TYPE_CHECKING = False  # no typing import at run time: start-up time is what counts here
if TYPE_CHECKING:
    from typing import Any, TextIO

DEFAULT_SOCKET = DEFAULT_CONTROL  # the daemon's --control default
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
  6  permission denied (the control socket is open to root and one group)
  7  daemon not running (no socket, or connection refused)
  8  timeout, or no reply

environment:
  MPTCP_PROXY_SOCKET  default for --socket (else /run/mptcp-proxy/control.sock)
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
                           "open to root and the daemon's --control-group; run mptcpctl "
                           "as root or as a member of that group)") from None
        except TimeoutError:
            raise self._no_reply(f"connect timed out after {self.timeout:g}s") from None
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ENOENT):
                raise self._not_running("no control socket at") from None
            raise CtlError(EXIT_ERROR, f"cannot connect to {self.path}: "
                                       f"{e.strerror or e}") from None

    def _first_reply(self, sock: socket.socket, cmd: str, args: dict | None
                     ) -> tuple[dict, bytes]:
        """Send the request on ``sock``; the decoded first reply line and what followed."""
        line = json.dumps({"cmd": cmd, "args": args or {}}, separators=(",", ":")) + "\n"
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
        first, _, rest = bytes(buf).partition(b"\n")
        try:
            reply = json.loads(first)
        except (ValueError, UnicodeDecodeError):
            raise CtlError(EXIT_ERROR, "the daemon's reply is not valid JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise CtlError(EXIT_ERROR, "the daemon's reply has no \"ok\" field")
        return reply, rest

    def request(self, cmd: str, args: dict | None = None) -> dict:
        """Send ``{"cmd": cmd, "args": args}``; return the decoded reply object."""
        sock = self._connect()
        try:
            return self._first_reply(sock, cmd, args)[0]
        finally:
            sock.close()

    @staticmethod
    def result(reply: dict) -> object:
        """The ``result`` of a successful reply; a daemon error raises :class:`CtlError`."""
        if reply["ok"]:
            return reply.get("result")
        err = reply.get("error")
        if not isinstance(err, dict):
            raise CtlError(EXIT_ERROR, "the daemon reported an error without details")
        return_code = fault_exit(err.get("code"))
        raise CtlError(return_code, str(err.get("message") or err.get("name") or "error"))

    def call(self, cmd: str, args: dict | None = None) -> object:
        """The ``result`` of a successful reply; a daemon error raises :class:`CtlError`."""
        return self.result(self.request(cmd, args))

    def stream(self, cmd: str, args: dict | None = None) -> Iterator[dict]:
        """A streaming request (``monitor``): after a successful reply, yield the object
        of every following line until the daemon hangs up. No timeout once streaming."""
        sock = self._connect()
        try:
            reply, buf = self._first_reply(sock, cmd, args)
            self.result(reply)
            sock.settimeout(None)
            while True:
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    try:
                        obj = json.loads(line)
                    except (ValueError, UnicodeDecodeError):
                        raise CtlError(EXIT_ERROR, "the daemon sent a line that is not "
                                                   "valid JSON") from None
                    if isinstance(obj, dict):
                        yield obj
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    return
                if not chunk:
                    return
                buf += chunk
        finally:
            sock.close()


# --------------------------------------------------------------------- formatting
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
        nested = {k: v for k, v in result.items()
                  if k == "unconverted" or (k == "interfaces" and v and isinstance(v[0], dict))}
        width = max((len(k) for k in result), default=0) + 1
        for key, value in result.items():
            if key in nested:
                continue
            if key == "uptime":
                value = human_duration(value)
            elif key == "ports" and value == []:
                value = "all"
            self.say(f"{key + ':':<{width}} {text(value)}")
        if "interfaces" in nested:
            self.say("interfaces:")
            rows = [["  " + text(i.get("name")), text(i.get("state")), text(i.get("addr_id")),
                     text(i.get("addresses"))] for i in nested["interfaces"]]
            self.say(table(rows, ["  NAME", "STATE", "LOCID", "ADDRESSES"],
                           [False, False, True, False]))
        if "unconverted" in nested:
            self.say("left unconverted:")
            rows = [["  " + k.replace("_", " "), "-" if v is None else str(v),
                     UNCONVERTED_HELP.get(k, "")] for k, v in nested["unconverted"].items()]
            self.say(table(rows, ["  REASON", "COUNT", "MEANING"], [False, True, False]))
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
        if ns.prometheus:
            self.out.write(str(self.client.call("metrics")))
            return EXIT_OK
        result = self.client.call("stats")
        if ns.nonzero:
            result = {k: v for k, v in result.items() if v}
        if self.as_json:
            self.dump_json(result)
        elif not result:
            self.say("no counters" + (" above zero" if ns.nonzero else ""))
        else:
            from .core.counters import COUNTERS  # plain data: a dict of help texts
            rows = [[k, str(result[k]), COUNTERS.get(k, "")] for k in sorted(result)]
            self.say(table(rows, ["NAME", "VALUE", "MEANING"], [False, True, False]))
        return EXIT_OK

    def do_monitor(self, ns: argparse.Namespace) -> int:
        """Print every event until interrupted (exit 0) or until the daemon stops (7)."""
        from .eventfmt import format_event
        try:
            for obj in self.client.stream("monitor"):
                if "lost" in obj:
                    print(f"mptcpctl: {obj['lost']} event(s) lost (output too slow)",
                          file=sys.stderr, flush=True)
                    continue
                ev = obj.get("event")
                if not isinstance(ev, dict):
                    continue
                if self.as_json:
                    print(json.dumps(ev, separators=(",", ":")), file=self.out, flush=True)
                else:
                    wall = ev.get("wall")
                    stamp = (time.strftime("%H:%M:%S", time.localtime(wall))
                             + f".{int(wall * 1000) % 1000:03d} "
                             if isinstance(wall, (int, float)) else "")
                    print(stamp + format_event(ev), file=self.out, flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
        raise CtlError(EXIT_NOT_RUNNING, "the daemon closed the event stream (stopped?)")

    def do_debug_dump(self, ns: argparse.Namespace) -> int:
        from .debugdump import write_bundle
        try:
            path, names = write_bundle(self.client, ns.out, log_lines=ns.log_lines)
        except OSError as e:
            raise CtlError(EXIT_ERROR, f"cannot write {e.filename or ns.out}: "
                                       f"{e.strerror or e}") from None
        if self.as_json:
            self.dump_json({"path": path, "files": names})
        else:
            self.say(f"wrote {path} ({len(names)} files); attach it to the bug report "
                     "(it holds addresses and routes of this host, no keys)")
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


def _count(text_: str) -> int:
    try:
        v = int(text_, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text_!r}") from None
    if not 1 <= v <= 100_000:
        raise argparse.ArgumentTypeError("must be in 1-100000")
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

    def verb(name: str, help_: str, legend: str = "") -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_,
                            epilog=(legend + "\n" if legend else "") + EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(sp, defaults=False)
        return sp

    verb("status", "daemon status: pid, uptime, interfaces and their addresses, "
                   "connections, and what was left unconverted and why")
    verb("connections", "list the proxied connections", CONNECTION_LEGEND)
    sp = verb("subflows", "list the subflows of a connection", SUBFLOW_LEGEND)
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
    sp = verb("stats", "the proxy's counters with what each one counts, sorted by name")
    sp.add_argument("--nonzero", "-n", action="store_true", help="only counters above zero")
    sp.add_argument("--prometheus", action="store_true",
                    help="print the daemon's metrics in the Prometheus text format (what "
                         "its --metrics endpoint serves), without a listener")
    verb("monitor", "print connection events as they happen (like ip mptcp monitor) "
                    "until interrupted; --json: one object per line")
    sp = verb("debug-dump", "write a bug-report bundle (.tar.gz): versions, kernel, "
                            "sysctls, interfaces, rules, routes, the proxy's chains, status, "
                            "connections, subflows, counters, metrics and recent log lines; "
                            "no keys")
    sp.add_argument("--out", "-o", metavar="FILE",
                    help="archive to write (default mptcp-proxy-debug-DATE-TIME.tar.gz in "
                         "the current directory)")
    sp.add_argument("--log-lines", type=_count, default=1000, metavar="N",
                    help="recent daemon log lines to include (default 1000)")
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
