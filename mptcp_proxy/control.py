"""The daemon's control socket: a Unix stream socket carrying one JSON object per line
in each direction, open to root, to the daemon's own user and to one group the
administrator chooses (``--control-group``).

Request: ``{"cmd": "status", "args": {...}}``. Reply: ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": {"code": N, "name": "...", "message": "..."}}``
with the stable fault codes of :class:`~.ctlproto.Fault`. The daemon never parses free
text. ``monitor`` turns the connection into a stream: after its reply, one line
``{"event": {...}}`` per connection event (:meth:`~.core.events.Event.fields` plus
``wall``, the Unix time), or ``{"lost": N}`` when a slow reader missed N events.

The daemon only ever removes a socket file it created itself: a live one (another
daemon answers on it) is refused, a stale one (nobody answers) is replaced, and on exit
the file is removed only if it is still the one this daemon bound (same inode).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from typing import Any, Callable

from .ctlproto import DEFAULT_CONTROL, MAX_LINE, Fault

log = logging.getLogger("mptcp_proxy.control")

__all__ = ["ControlServer", "ControlError", "ControlSocketBusy", "Fault", "MAX_LINE",
           "COMMANDS", "command"]

WATCH_BUFFER = 256 * 1024  # bytes queued to one monitor client before events are dropped


class ControlSocketBusy(OSError):
    """Another daemon answers on the control socket path (or it is not a socket)."""


class ControlError(Exception):
    def __init__(self, code: Fault, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


COMMANDS: dict[str, Callable] = {}


def command(name: str):
    """Register a handler ``fn(server, args: dict) -> result`` for a verb."""
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def _addr(b: bytes) -> str:
    import ipaddress
    return str(ipaddress.ip_address(b))


def _endpoint(addr: bytes, port: int) -> str:
    return f"{_addr(addr)}:{port}" if len(addr) == 4 else f"[{_addr(addr)}]:{port}"


def _peercred(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, or -1s."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1, -1, -1
    return struct.unpack("3i", creds)


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), or -1."""
    return _peercred(sock)[1]


def peer_in_group(sock, gid: int) -> bool:
    """Whether the peer's primary group or one of its supplementary groups is ``gid``
    (SO_PEERCRED, then ``/proc/PID/status``)."""
    pid, _uid, pgid = _peercred(sock)
    if pgid == gid:
        return True
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return str(gid) in line.split()[1:]
    except OSError:
        pass
    return False


def int_arg(args: dict, name: str, what: str) -> int:
    """An integer argument: a JSON integer or a decimal string (never a bool or 1.5)."""
    v = args.get(name)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit():
        return int(v)
    raise ControlError(Fault.BAD_ARGUMENT, f"{what} id must be an integer: {v!r}")


def bool_arg(args: dict, name: str, default: bool = False) -> bool:
    """A boolean argument: absent (``default``) or a JSON true/false."""
    v = args.get(name, default)
    if not isinstance(v, bool):
        raise ControlError(Fault.BAD_ARGUMENT, f'"{name}" must be true or false')
    return v


def conn_role(conn) -> str:
    """client (the local stack's outgoing connection), server (an incoming one to a local
    listener, ``--serve``) or anchor (a forwarded one, converted on a router)."""
    return "anchor" if conn.anchor else conn.role


def conn_summary(conn) -> dict:
    la, lp, ra, rp = conn.key
    return {
        "id": conn.id,
        "role": conn_role(conn),
        "state": conn.state.name.lower(),
        "local": _endpoint(la, lp),
        "remote": _endpoint(ra, rp),
        "token": f"{conn.remote_token:08x}",
        "local_token": f"{conn.local_token:08x}",
        "checksum": conn.csum,
        "fully_established": conn.fully_established,
        "subflows": sum(1 for sf in conn.subflows if sf.state.name != "CLOSED"),
        "active": conn.active.index,
        "bytes_sent": conn.d_nxt,
        "bytes_acked": conn.d_una,
        "bytes_received": conn.r_high,
        "age": round(time.monotonic() - conn.created, 3),
    }


def subflow_summary(conn, sf) -> dict:
    return {
        "id": sf.index,
        "state": sf.state.name.lower(),
        "local": _endpoint(sf.laddr, sf.lport),
        "remote": _endpoint(sf.raddr, sf.rport),
        "iface": sf.iface,
        "addr_id": sf.addr_id,
        "remote_id": getattr(sf, "remote_id", None),
        "backup": sf.backup,
        "peer_backup": sf.peer_backup,
        "active": sf is conn.active,
        "bytes_sent": sf.snd_nxt,
        "bytes_acked": sf.snd_una,
        "bytes_received": sf.rcv_high,
        "send_table": len(sf.send_map),
        "recv_table": len(sf.rcv_map),
    }


def _addresses(iface) -> list[str]:
    return [_addr(a) for a in list(iface.v4) + list(iface.v6)]


def interfaces(srv: "ControlServer") -> list[dict]:
    """Each managed interface: name, state (``up``/``down``), address ID, addresses."""
    if srv.pm is not None:
        return [{"name": i.name, "state": "up" if i.up else "down", "addr_id": i.addr_id,
                 "addresses": _addresses(i)} for i in srv.pm.ifaces.values()]
    out = []
    for name, info in srv.ifaces.items():
        addrs = [_addr(a) for a in list(info.get("v4", [])) + list(info.get("v6", []))]
        out.append({"name": name, "state": "up" if info.get("up", True) else "down",
                    "addr_id": None, "addresses": addrs})
    return out


def unconverted(srv: "ControlServer") -> dict:
    """Connections (or packets) the proxy left as they were, by reason.

    ``port_filter``: SYNs to ports outside ``--port`` (counted by the kernel's rule
    counters); ``already_mptcp``: SYNs of local sockets that speak MPTCP themselves,
    passed untouched (rule counters); ``fallback``: connections whose peer did not
    answer in MPTCP; ``not_parseable``: packets that were not TCP the proxy could read.
    A value is ``None`` where this daemon cannot count it."""
    c = srv.proxy.counters
    out = {"port_filter": None, "already_mptcp": None,
           "fallback": c.get("FallbackConnections", 0),
           "not_parseable": c.get("PktNotTcp", 0) + c.get("PktMalformed", 0)}
    if srv.rule_counts is not None:
        try:
            out.update(srv.rule_counts())
        except Exception as e:  # the counters are a convenience: never fail status
            log.debug("reading rule counters: %s", e)
    return out


@command("status")
def _status(srv: "ControlServer", args: dict) -> dict:
    p = srv.proxy
    out = {
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - srv.started, 3),
        "interfaces": interfaces(srv),
        "connections": len(p.connections),
        "packets": srv.driver.packets if srv.driver is not None else 0,
        "mode": "anchor" if p.config.anchor else "endhost",
        "ports": sorted(p.config.ports),
        "serve": sorted(p.config.serve),
        "checksum": p.config.checksum,
    }
    tally = getattr(srv.driver, "tally", None)
    if tally is not None:  # verdicts by direction (fnfqueue backend)
        out["verdicts"] = {d: dict(zip(("accept", "drop", "mangle"), tally[i:i + 3]))
                           for d, i in (("in", 0), ("out", 3))}
    if srv.pm is not None:
        out["subflows"] = srv.pm.config.subflows
    out["unconverted"] = unconverted(srv)
    out.update(srv.info)
    return out


def passed_summary(key: tuple, since: float, now: float) -> dict:
    """A connection an anchor stepped aside for (a native MPTCP server): its 4-tuple as
    the server sends, nothing else is known."""
    la, lp, ra, rp = key
    return {"id": None, "role": "passed", "state": "passed", "local": _endpoint(la, lp),
            "remote": _endpoint(ra, rp), "age": round(now - since, 3)}


@command("connections")
def _connections(srv: "ControlServer", args: dict) -> list:
    now = time.monotonic()
    passed = srv.proxy.passed_through(srv.proxy.now)  # (judged on the core's clock)
    return [conn_summary(c) for c in srv.proxy.connections.values()] + \
        [passed_summary(k, t, max(now, t)) for k, t in passed]


@command("stats")
def _stats(srv: "ControlServer", args: dict) -> dict:
    """Every documented counter (0 when never bumped) plus any other bumped one."""
    from .core.counters import COUNTER_HELP
    counts = dict.fromkeys(COUNTER_HELP, 0)
    counts.update(srv.proxy.counters.snapshot())
    return dict(sorted(counts.items()))


def get_connection(srv: "ControlServer", args: dict):
    cid = int_arg(args, "conn", "connection")
    conn = srv.proxy.connections.get(cid)
    if conn is None:
        raise ControlError(Fault.UNKNOWN_CONNECTION, f"no connection {cid}")
    return conn


@command("subflows")
def _subflows(srv: "ControlServer", args: dict) -> list:
    conn = get_connection(srv, args)
    return [subflow_summary(conn, sf) for sf in conn.subflows]


def _pm(srv: "ControlServer"):
    if srv.pm is None:
        raise ControlError(Fault.NOT_POSSIBLE, "no path manager in this daemon")
    return srv.pm


def _iface(srv: "ControlServer", name) -> object:
    pm = _pm(srv)
    if not isinstance(name, str) or not name:
        raise ControlError(Fault.BAD_ARGUMENT, "an interface name is required")
    iface = pm.ifaces.get(name)
    if iface is None:
        raise ControlError(Fault.UNKNOWN_INTERFACE,
                           f"interface {name} is not one of the daemon's: "
                           f"{', '.join(pm.ifaces)}")
    if not iface.up:
        raise ControlError(Fault.INTERFACE_DOWN, f"interface {name} is down")
    return iface


def _established(conn) -> None:
    if conn.state.name != "ESTABLISHED":
        raise ControlError(Fault.NOT_POSSIBLE,
                           f"connection {conn.id} is {conn.state.name.lower()}, not an "
                           "established MPTCP connection")


def get_subflow(conn, args: dict):
    sid = int_arg(args, "subflow", "subflow")
    for sf in conn.subflows:
        if sf.index == sid:
            return sf
    raise ControlError(Fault.UNKNOWN_SUBFLOW, f"connection {conn.id} has no subflow {sid}")


@command("add-subflow")
def _add_subflow(srv: "ControlServer", args: dict) -> dict:
    conn = get_connection(srv, args)
    backup = bool_arg(args, "backup")
    _established(conn)
    iface = _iface(srv, args.get("iface"))
    sf = _pm(srv).add_subflow(conn, iface, backup=backup, now=time.monotonic())
    if sf is None:
        raise ControlError(Fault.NOT_POSSIBLE,
                           f"cannot open a subflow on {iface.name} (no address of the "
                           "connection's family, subflow limit, or the peer denies joins)")
    return subflow_summary(conn, sf)


@command("remove-subflow")
def _remove_subflow(srv: "ControlServer", args: dict) -> dict:
    conn = get_connection(srv, args)
    _established(conn)
    sf = get_subflow(conn, args)
    if sf.state.name == "CLOSED":
        raise ControlError(Fault.NOT_POSSIBLE, f"subflow {sf.index} is already closed")
    try:
        _pm(srv).remove_subflow(conn, sf, time.monotonic())
    except ValueError as e:
        raise ControlError(Fault.NOT_POSSIBLE, str(e))
    return subflow_summary(conn, sf)


def _move_sending(srv: "ControlServer", conn, sf, brk: bool, now: float) -> dict:
    """A server-role connection (the peer opens its subflows): new data moves to the
    existing subflow ``sf`` (MP_PRIO tells the peer); ``brk`` abandons the old one first."""
    pm = _pm(srv)
    if not sf.alive:
        raise ControlError(Fault.NOT_POSSIBLE, f"subflow {sf.index} is not established")
    old = conn.active
    if brk and old is not sf:
        pm.break_subflow(conn, old, now, reason="handover --break")
    if conn.active is not sf or not brk:
        pm.switch(conn, sf, now, signal=True)
    return {"conn": conn.id, "subflow": sf.index, "pending": False}


@command("handover")
def _handover(srv: "ControlServer", args: dict) -> list:
    pm = _pm(srv)
    brk = bool_arg(args, "break")
    every = bool_arg(args, "all")
    if args.get("subflow") is not None:  # to one existing subflow (any role)
        conn = get_connection(srv, args)
        _established(conn)
        return [_move_sending(srv, conn, get_subflow(conn, args), brk, time.monotonic())]
    iface = _iface(srv, args.get("to"))
    if every:
        conns = [c for c in srv.proxy.connections.values() if c.state.name == "ESTABLISHED"]
    else:
        conn = get_connection(srv, args)
        _established(conn)
        conns = [conn]
    out = []
    now = time.monotonic()
    for conn in conns:
        if conn.role != "client":
            target = next((x for x in conn.subflows if x.alive and x.iface == iface.name),
                          None)
            if target is not None:
                out.append(_move_sending(srv, conn, target, brk, now))
                continue
            msg = (f"connection {conn.id}: the peer opens the subflows of a {conn_role(conn)} "
                   f"connection, and none is on {iface.name} (use --subflow)")
            if not every:
                raise ControlError(Fault.NOT_POSSIBLE, msg)
            out.append({"conn": conn.id, "subflow": None, "pending": False, "error": msg})
            continue
        sf = pm.handover(conn, iface, now, break_=brk)
        if sf is None:
            if not every:
                raise ControlError(Fault.NOT_POSSIBLE,
                                   f"connection {conn.id}: cannot open a subflow on {iface.name}")
            # with --all, one connection failing must not hide what the others did
            out.append({"conn": conn.id, "subflow": None, "pending": False,
                        "error": f"cannot open a subflow on {iface.name}"})
            continue
        out.append({"conn": conn.id, "subflow": sf.index, "pending": not sf.alive})
    return out


@command("announce")
def _announce(srv: "ControlServer", args: dict) -> list:
    """ADD_ADDR for an address of ours (``iface``'s, or ``addr`` "ADDR[:PORT]") on one
    connection or ``all``; the peer may then join there."""
    from .anchor import endpoint_text, parse_endpoint
    pm = _pm(srv)
    if bool_arg(args, "all"):
        conns = [c for c in srv.proxy.connections.values() if c.state.name == "ESTABLISHED"]
    else:
        conn = get_connection(srv, args)
        _established(conn)
        conns = [conn]
    iface = _iface(srv, args["iface"]) if args.get("iface") is not None else None
    endpoint = None
    if iface is None:
        if not isinstance(args.get("addr"), str):
            raise ControlError(Fault.BAD_ARGUMENT, "an interface or an address is required")
        try:
            endpoint = parse_endpoint(args["addr"])
        except ValueError as e:
            raise ControlError(Fault.BAD_ARGUMENT, str(e)) from None
    out = []
    now = time.monotonic()
    for conn in conns:
        addr, port = endpoint if endpoint else (iface.addr_for(conn.v6), None)
        try:
            if addr is None:
                raise ValueError(f"{iface.name} has no address of the connection's family")
            addr_id = pm.announce_addr(conn, addr, port, now)
        except ValueError as e:
            if len(conns) == 1:
                raise ControlError(Fault.NOT_POSSIBLE, f"connection {conn.id}: {e}") from None
            out.append({"conn": conn.id, "addr": None, "addr_id": None, "error": str(e)})
            continue
        out.append({"conn": conn.id, "addr": endpoint_text(addr, port), "addr_id": addr_id})
    return out


@command("prio")
def _prio(srv: "ControlServer", args: dict) -> dict:
    conn = get_connection(srv, args)
    if not isinstance(args.get("backup"), bool):
        raise ControlError(Fault.BAD_ARGUMENT, '"backup" must be true or false')
    _established(conn)
    sf = get_subflow(conn, args)
    if not sf.alive:
        raise ControlError(Fault.NOT_POSSIBLE, f"subflow {sf.index} is not established")
    _pm(srv).set_prio(conn, sf, args["backup"], time.monotonic())
    return subflow_summary(conn, sf)


@command("metrics")
def _metrics(srv: "ControlServer", args: dict) -> str:
    """The Prometheus text exposition of the daemon's metrics."""
    if srv.metrics is None:
        raise ControlError(Fault.NOT_POSSIBLE, "this daemon keeps no metrics")
    return srv.metrics()


@command("log")
def _log(srv: "ControlServer", args: dict) -> list:
    """The last ``lines`` (default 200) log lines the daemon kept in memory."""
    n = args.get("lines", 200)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= 100_000:
        raise ControlError(Fault.BAD_ARGUMENT, '"lines" must be an integer in 1-100000')
    if srv.log_lines is None:
        return []
    return srv.log_lines(n)


@command("monitor")
def _monitor(srv: "ControlServer", args: dict) -> dict:
    """Start streaming events on this connection (see the module docstring)."""
    return {"stream": "events"}


class _Watcher:
    """One ``monitor`` client: its writer and how many events it missed."""

    __slots__ = ("writer", "lost")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.lost = 0

    def send(self, line: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > WATCH_BUFFER:
            self.lost += 1  # a slow reader must never hold the daemon up
            return
        if self.lost:
            transport.write(b'{"lost":%d}\n' % self.lost)
            self.lost = 0
        transport.write(line)


class ControlServer:
    """Serves :data:`COMMANDS` on a Unix socket.

    ``group``: a gid whose members may use the socket besides root and the daemon's
    own user (the file is then mode 0660 and owned by that group), else 0600.
    Optional providers: ``metrics()`` → exposition text, ``log_lines(n)`` → the last
    n log lines, ``rule_counts()`` → kernel-counted unconverted SYNs for ``status``;
    ``info``: static fields added to ``status`` (version, backend...)."""

    def __init__(self, path: str, proxy, driver, ifaces: dict, pm=None, *,
                 group: int | None = None, metrics: Callable[[], str] | None = None,
                 log_lines: Callable[[int], list] | None = None,
                 rule_counts: Callable[[], dict] | None = None,
                 info: dict | None = None, workers=None,
                 snapshot: Callable[[], dict] | None = None) -> None:
        self.path = path
        self.pm = pm
        self.proxy = proxy
        self.driver = driver
        self.ifaces = ifaces
        self.group = group
        self.metrics = metrics
        self.log_lines = log_lines
        self.rule_counts = rule_counts
        self.info = dict(info or {})
        self.workers = workers  # workers.WorkerPool: the other workers' replies merged in
        self.snapshot = snapshot  # metrics snapshot, for the daemon of a worker
        self.started = time.monotonic()
        self.server: asyncio.AbstractServer | None = None
        self.watchers: set[_Watcher] = set()
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file

    # ----------------------------------------------------------- the socket file
    def _bind(self) -> socket.socket:
        """Bind the socket file; a stale file is replaced, a live one refused."""
        parent = os.path.dirname(self.path)
        if parent == os.path.dirname(DEFAULT_CONTROL) and not os.path.isdir(parent):
            os.mkdir(parent, 0o755)  # what systemd's RuntimeDirectory= does for the unit
        for attempt in (1, 2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(self.path)
                return sock
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE or attempt == 2:
                    raise
            finally:
                os.umask(old)
            self._remove_stale()
        raise AssertionError("not reached")

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketBusy(errno.EEXIST, "exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:  # refused: nobody listens, a daemon died without cleaning up
            log.warning("removing stale control socket %s", self.path)
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise ControlSocketBusy(errno.EADDRINUSE, "another daemon is listening on it")

    def _owns_file(self) -> bool:
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return self._bound == (st.st_dev, st.st_ino)

    async def start(self) -> None:
        """Bind and listen; raises :class:`ControlSocketBusy` if another daemon answers
        on the path, ``OSError`` if it cannot be created."""
        sock = self._bind()
        try:
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            if self.group is not None:
                os.chown(self.path, -1, self.group)
                os.chmod(self.path, 0o660)
            else:
                os.chmod(self.path, 0o600)
            self.server = await asyncio.start_unix_server(self._client, sock=sock,
                                                          limit=MAX_LINE)
        except BaseException:
            sock.close()
            if self._owns_file():
                os.unlink(self.path)
            self._bound = None
            raise

    async def stop(self) -> None:
        for w in list(self.watchers):
            w.writer.close()
        self.watchers.clear()
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except Exception:
                pass
            self.server = None
        if self._owns_file():  # never another daemon's socket
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._bound = None

    # ----------------------------------------------------------- events
    def publish(self, fields: dict) -> None:
        """Send one event (``Event.fields()`` plus ``wall``) to every monitor client."""
        if not self.watchers:
            return
        line = json.dumps({"event": fields}, separators=(",", ":")).encode() + b"\n"
        for w in list(self.watchers):
            w.send(line)

    # ----------------------------------------------------------- clients
    def _allowed(self, sock) -> bool:
        uid = peer_uid(sock)
        if uid == 0 or (uid >= 0 and uid == os.geteuid()):
            return True
        return self.group is not None and peer_in_group(sock, self.group)

    def _denied(self) -> dict:
        who = "root and the daemon's user" if self.group is None else \
            f"root, the daemon's user and group {self.group}"
        return self._error(Fault.PERMISSION_DENIED,
                           f"the control socket is open to {who} only")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        allowed = self._allowed(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._reply(writer, self._error(Fault.BAD_REQUEST, "request too long"))
                    break
                if not line:
                    break
                reply = self.handle_line(line) if allowed else self._denied()
                if allowed and self.workers is not None:  # one proxy, not N
                    reply = await self.workers.merge(line, reply)
                await self._reply(writer, reply)
                if reply.get("ok") and reply.get("result") == {"stream": "events"}:
                    await self._watch(reader, writer)
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Stream events to this client until it hangs up (what it sends is ignored)."""
        w = _Watcher(writer)
        self.watchers.add(w)
        try:
            while await reader.read(4096):
                pass
        finally:
            self.watchers.discard(w)

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    @staticmethod
    def _error(code: Fault, message: str) -> dict:
        return {"ok": False, "error": {"code": int(code), "name": code.name.lower(),
                                       "message": message}}

    def handle_line(self, line: bytes) -> dict:
        """Parse one request line and run it; always returns a reply object."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return self._error(Fault.BAD_REQUEST, "request is not valid JSON")
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return self._error(Fault.BAD_REQUEST, 'request must be an object with a "cmd" string')
        args = req.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return self._error(Fault.BAD_REQUEST, '"args" must be an object')
        fn = COMMANDS.get(req["cmd"])
        if fn is None:
            return self._error(Fault.UNKNOWN_COMMAND, f"unknown command: {req['cmd']}")
        try:
            result: Any = fn(self, args)
        except ControlError as e:
            return self._error(e.code, e.message)
        except Exception as e:  # a bug must not kill the daemon
            log.exception("control command %s failed", req["cmd"])
            return self._error(Fault.INTERNAL, f"internal error: {e}")
        if self.driver is not None:
            try:
                self.driver.flush_outputs()  # send what the command forged, re-arm timers
            except Exception:
                log.exception("flushing after control command %s failed", req["cmd"])
        return {"ok": True, "result": result}
