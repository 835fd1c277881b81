"""Command line of the traffic peer (run inside a namespace with the venv's python)::

    python -m netns.peer server --port P [--mptcp] [--listen PORT[:mptcp]]... [--bind ADDR]
                                [--count K | --once] [--ready-file F] [--timeout S]
                                [--trace PATH] [--progress S]
    python -m netns.peer client --addr A --port P [--mptcp] [--bind SRC] [--conns C]
                                [--upload N] [--upload-seconds S] [--upload-rate B]
                                [--until-eof] [--download N] [--download-seconds S]
                                [--download-rate B] [--mode MODE] [--hold] [--report]
                                [--no-hash] [--seed S] [--timeout S] [--stagger S]
                                [--events] [--trace PATH] [--progress S]
    python -m netns.peer probe --addr A --port P [--bind SRC] [--count N]   # connect RTTs
    python -m netns.peer agent        # JSON commands on stdin, JSON replies on stdout

Sizes in bytes, rates in bytes/s, times in seconds. A size left out is 0, or unlimited
when its direction is timed (``--*-seconds``) or ends with the download (``--until-eof``).
See :mod:`netns.peer` for the protocol and the records.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Sequence

from .flow import SendPlan, Terminated, unlimited_if
from .protocol import HOLD, MODES, NO_HASH, REPORT


def _listen(text: str) -> tuple[int, bool]:
    port, _, kind = text.partition(":")
    if kind not in ("", "mptcp", "tcp"):
        raise argparse.ArgumentTypeError(f"expected PORT or PORT:mptcp, got {text!r}")
    return int(port), kind == "mptcp"


def _server_parser(sub: Any) -> None:
    sp = sub.add_parser("server", help="accept connections and serve them")
    sp.add_argument("--port", type=int, help="main listener's port")
    sp.add_argument("--mptcp", action="store_true", help="the main listener is IPPROTO_MPTCP")
    sp.add_argument("--listen", type=_listen, action="append", default=[],
                    metavar="PORT[:mptcp]", help="one more listener (repeat)")
    sp.add_argument("--bind", help="listen address (default :: dual stack)")
    sp.add_argument("--count", type=int, help="exit after K bulk connections")
    sp.add_argument("--once", action="store_const", const=1, dest="count")
    sp.add_argument("--ready-file", help="write the port here once listening")
    sp.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s")
    sp.add_argument("--trace", help="write each connection's read trace here "
                                    "({conn} and {seed} are filled in)")
    sp.add_argument("--progress", type=float, default=0.0,
                    help="print a progress event every S s")


def _client_parser(sub: Any) -> None:
    cp = sub.add_parser("client", help="connect, upload and download")
    cp.add_argument("--addr", required=True)
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--bind", help="source address")
    cp.add_argument("--mptcp", action="store_true", help="IPPROTO_MPTCP socket")
    cp.add_argument("--conns", type=int, default=1, help="parallel connections")
    cp.add_argument("--upload", type=int, help="bytes to upload")
    cp.add_argument("--upload-seconds", type=float, default=0.0, help="upload for S s")
    cp.add_argument("--upload-rate", type=float, default=0.0, help="pace the upload, B/s")
    cp.add_argument("--until-eof", action="store_true",
                    help="upload until the download ended (then half-close)")
    cp.add_argument("--download", type=int, help="bytes to download")
    cp.add_argument("--download-seconds", type=float, default=0.0,
                    help="the server sends for S s")
    cp.add_argument("--download-rate", type=float, default=0.0,
                    help="the server paces the download, B/s")
    cp.add_argument("--mode", choices=sorted(MODES), default="normal")
    cp.add_argument("--hold", action="store_true",
                    help="a side that sends nothing half-closes after the other's end")
    cp.add_argument("--report", action="store_true",
                    help="the server answers with its record once the upload ended")
    cp.add_argument("--no-hash", action="store_true", help="no SHA-256 (pattern check only)")
    cp.add_argument("--seed", type=int, default=1)
    cp.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s")
    cp.add_argument("--stagger", type=float, default=0.0,
                    help="seconds between connection starts")
    cp.add_argument("--events", action="store_true", help="print a connected event each")
    cp.add_argument("--trace", help="write each connection's read trace here "
                                    "({conn} and {seed} are filled in)")
    cp.add_argument("--progress", type=float, default=0.0,
                    help="print a progress event every S s")


def _probe_parser(sub: Any) -> None:
    pp = sub.add_parser("probe", help="time TCP connects (RTT)")
    pp.add_argument("--addr", required=True)
    pp.add_argument("--port", type=int, required=True)
    pp.add_argument("--bind", help="source address")
    pp.add_argument("--count", type=int, default=20)
    pp.add_argument("--interval", type=float, default=0.01, help="pause between connects, s")
    pp.add_argument("--timeout", type=float, default=5.0, help="connect timeout, s")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m netns.peer",
                                 description="traffic peer of the test bed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _server_parser(sub)
    _client_parser(sub)
    _probe_parser(sub)
    sub.add_parser("agent", help="serve JSON commands from stdin (tools/bench)")
    return ap


def _server(a: argparse.Namespace) -> int:
    from .server import ServerOptions, serve
    listen = ([(a.port, a.mptcp)] if a.port is not None else []) + a.listen
    if not listen:
        raise SystemExit("netns.peer server: give --port or --listen")
    return serve(ServerOptions(listen, a.bind, a.count, a.ready_file, a.timeout, a.trace,
                               a.progress))


def _client(a: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from .client import ClientOptions, run_clients
    flags = MODES[a.mode] | (HOLD if a.hold else 0) | (REPORT if a.report else 0) \
        | (NO_HASH if a.no_hash else 0)
    upload = SendPlan(unlimited_if(a.upload, bool(a.upload_seconds) or a.until_eof),
                      a.upload_seconds, a.upload_rate, a.until_eof)
    download = unlimited_if(a.download, bool(a.download_seconds))
    if a.report and download:
        ap.error("--report: the server's answer is the download (no --download)")
    if a.hold and upload.empty and not download and not a.download_seconds:
        ap.error("--hold with nothing to send either way would wait forever")
    return run_clients(ClientOptions(
        a.addr, a.port, a.conns, a.mptcp, a.bind, upload, download, a.download_seconds,
        a.download_rate, flags, a.seed, a.timeout, a.events, a.trace, a.progress,
        a.stagger))


def _terminate(*_: Any) -> None:
    raise Terminated("SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.cmd == "probe":
        from .client import probe
        return probe(a.addr, a.port, a.count, a.bind, a.interval, a.timeout)
    if a.cmd == "agent":
        from .agent import agent
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return agent()
    signal.signal(signal.SIGTERM, _terminate)
    return _server(a) if a.cmd == "server" else _client(a, ap)


if __name__ == "__main__":
    sys.exit(main())
