"""The daemon's control socket: a root-only Unix stream socket carrying one JSON
object per line in each direction (STYLE.md §6, habit 10).

Request: ``{"cmd": "status", "args": {...}}``. Reply: ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": {"code": N, "name": "...", "message": "..."}}``
with the stable fault codes of :class:`Fault`. The daemon never parses free text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from enum import IntEnum
from typing import Any, Callable

log = logging.getLogger("mptcp_proxy.control")

MAX_LINE = 64 * 1024


class Fault(IntEnum):
    """Stable error codes of the control protocol."""

    BAD_REQUEST = 1
    UNKNOWN_COMMAND = 2
    BAD_ARGUMENT = 3
    UNKNOWN_CONNECTION = 4
    UNKNOWN_SUBFLOW = 5
    UNKNOWN_INTERFACE = 6
    INTERFACE_DOWN = 7
    NOT_POSSIBLE = 8
    PERMISSION_DENIED = 9
    INTERNAL = 10


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


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), or -1."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


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
        "backup": sf.backup,
        "peer_backup": sf.peer_backup,
        "active": sf is conn.active,
        "bytes_sent": sf.snd_nxt,
        "bytes_acked": sf.snd_una,
        "bytes_received": sf.rcv_high,
        "send_table": len(sf.send_map),
        "recv_table": len(sf.rcv_map),
    }


@command("status")
def _status(srv: "ControlServer", args: dict) -> dict:
    p = srv.proxy
    return {
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - srv.started, 3),
        "interfaces": list(srv.ifaces),
        "connections": len(p.connections),
        "packets": srv.driver.packets if srv.driver is not None else 0,
        "mode": "anchor" if p.config.anchor else "endhost",
        "ports": sorted(p.config.ports),
        "serve": sorted(p.config.serve),
        "checksum": p.config.checksum,
    }


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


class ControlServer:
    """Serves :data:`COMMANDS` on a root-only Unix socket."""

    def __init__(self, path: str, proxy, driver, ifaces: dict, pm=None) -> None:
        self.path = path
        self.pm = pm
        self.proxy = proxy
        self.driver = driver
        self.ifaces = ifaces
        self.started = time.monotonic()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            if os.path.exists(self.path):
                # refuse to steal a live daemon's socket
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(self.path)
                except OSError:
                    os.unlink(self.path)
                else:
                    probe.close()
                    raise OSError(98, "another daemon is listening on it")
            old = os.umask(0o077)
            try:
                self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                              limit=MAX_LINE)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
        except OSError:
            raise

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except Exception:
                pass
            self.server = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._reply(writer, self._error(Fault.BAD_REQUEST, "request too long"))
                    break
                if not line:
                    break
                if uid != 0:
                    reply = self._error(Fault.PERMISSION_DENIED, "the control socket is root-only")
                else:
                    reply = self.handle_line(line)
                await self._reply(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

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
