"""The multipath bed of the interop tests and the checks every multipath test shares.

:func:`build_bed` makes a bed whose client paths have :data:`DELAY_MS` one-way delay and
:data:`RATE_MBIT` in both directions (``Emulation``: NFQUEUE delay stage + tbf), a native
MPTCP listener (``netns.peer``) on the server at :data:`PORT`, and captures on every
server link with final checksums. :func:`finish` waits for a :class:`~netns.transfer.
Transfer` and checks what every test wants to hold:

- the data, both directions (SHA-256 against ``netns.peer.expected_sha``, and the
  pattern check of every byte);
- the native server's ``MPTcpExt`` deltas: the handshake once, and none of the counters
  that must stay 0 (``assert_no_errors``);
- the server socket's MPTCP_INFO (no fallback), the application's socket plain TCP;
- the capture: no gating tshark expert info, and no subflow bytes re-sent under a
  mapping other than the one first sent for them (:func:`netns.capture.remapped_segments`:
  a same-offset sub-mapping makes tshark's MPTCP analysis assert and Linux count
  DSSNotMatching);
- the proxy's counters: no internal error, no fallback.

The proxy's log is kept next to the captures (``proxy.log``), with the facts checked
(``facts.json``). Failures raise AssertionError with the facts in the message.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .capture import capture, mptcp_summary, remapped_segments, tshark_failures
from .emulation import Emulation
from .linkmeter import LinkMeter
from .nstat import assert_no_errors, diff, mptcp_counters, nonzero
from .peer import ServerHandle, expected_sha, start_server
from .proxyd import ProxyHandle
from .topology import Topology, wait_until
from .transfer import Transfer

__all__ = [
    "PORT", "DELAY_MS", "RATE_MBIT", "MB", "MultipathBed", "build_bed", "Outcome", "finish",
    "wait_moved", "server_subflows", "report",
]

MB = 1_000_000
PORT = 5001
DELAY_MS = 30
RATE_MBIT = 20


@dataclass
class MultipathBed:
    """A built bed: topology, emulation, the native server, the test's directory, the
    running captures (``caps``; ``pcaps`` their files) and the server's counters at the
    start (``s0``)."""

    topo: Topology
    emu: Emulation
    srv: ServerHandle
    tmp: Path
    caps: contextlib.ExitStack
    pcaps: list[str] = field(default_factory=list)
    s0: dict[str, int] = field(default_factory=dict)

    def server_delta(self) -> dict[str, int]:
        """The server's MPTcpExt counters since the start."""
        return diff(self.s0, mptcp_counters(self.topo.server))

    def wait_server_counter(self, name: str, at_least: int, timeout: float) -> int:
        """Poll until the server's ``name`` delta reaches ``at_least``; returns it. Raises
        AssertionError after ``timeout`` s."""
        got = wait_until(lambda: self.server_delta().get(name, 0) >= at_least, timeout)
        value = self.server_delta().get(name, 0)
        if not got:
            raise AssertionError(f"server {name} delta {value} < {at_least} after {timeout} "
                                 f"s: {nonzero(self.server_delta())}")
        return value

    def stop_captures(self) -> str | None:
        """Stop tcpdump; returns one pcap (merged when there are several)."""
        self.caps.close()
        if not self.pcaps:
            return None
        if len(self.pcaps) == 1:
            return self.pcaps[0]
        merged = str(self.tmp / "merged.pcap")
        subprocess.run(["mergecap", "-w", merged, *self.pcaps], check=True,
                       capture_output=True, timeout=60)
        return merged


def build_bed(make_topology: Callable[..., Topology], tmp: Path, stack: contextlib.ExitStack,
              client_links: int = 2, server_links: int = 1, sack: bool = True,
              server_setup: Callable[[Topology], None] | None = None,
              **topo_kw: Any) -> MultipathBed:
    """A bed with emulated client paths, a native MPTCP server listening on :data:`PORT`
    and captures running on every server link. ``make_topology`` builds (and later
    removes) the topology; ``stack`` gets the emulation and captures to undo.
    ``sack=False`` turns SACK off on the client, ``server_setup(topo)`` runs before the
    server starts; ``topo_kw``: more :class:`~netns.topology.Topology` arguments."""
    topo = make_topology(client_links=client_links, server_links=server_links,
                         checksum_offload=False, **topo_kw)
    emu = stack.enter_context(Emulation(topo))
    for link in range(client_links):
        emu.delay(link, DELAY_MS)
        emu.rate(link, RATE_MBIT)
    if not sack:
        topo.sysctl(topo.client, "net.ipv4.tcp_sack", 0)
    if server_setup is not None:
        server_setup(topo)
    srv = start_server(topo, PORT, mptcp=True, timeout=30)
    caps = contextlib.ExitStack()
    stack.callback(caps.close)
    bed = MultipathBed(topo, emu, srv, tmp, caps)
    for ifname in topo.server_ifaces:
        path = str(tmp / f"{ifname}.pcap")
        caps.enter_context(capture(topo, "server", ifname, path, filter=f"tcp port {PORT}"))
        bed.pcaps.append(path)
    bed.s0 = mptcp_counters(topo.server)
    return bed


def server_subflows(topo: Topology) -> int:
    """Established TCP subflows of the server on :data:`PORT`."""
    out = topo.run(topo.server, ["ss", "-Htn", "state", "established", "sport", f"= :{PORT}"])
    return len([x for x in out.stdout.splitlines() if x.strip()])


def wait_moved(meter: LinkMeter, t_from: float, iface: str, timeout: float,
               direction: str = "tx") -> float | None:
    """Poll :meth:`LinkMeter.moved` until the traffic moved to ``iface`` (or timeout)."""
    box: list[float] = []

    def look() -> bool:
        got = meter.moved(t_from, iface, direction)
        if got is not None:
            box.append(got)
        return bool(box)
    wait_until(look, timeout, 0.1)
    return box[0] if box else None


def report(record_property: Callable[[str, Any], None], **facts: Any) -> None:
    """Timings and counts worth seeing in the run (``-rA`` / junit properties)."""
    for k, v in facts.items():
        record_property(k, v)
    print("REPORT", json.dumps(facts, default=str))


# ---------------------------------------------------------------------- final checks

@dataclass
class Outcome:
    cli: dict
    rec: dict
    sd: dict[str, int]  # server MPTcpExt deltas
    pd: dict[str, int]  # proxy counter deltas
    pcap: str | None
    remapped: int = 0  # segments re-sent under a different mapping (must stay 0)


def finish(bed: MultipathBed, px: ProxyHandle, tr: Transfer, p0: dict[str, int]) -> Outcome:
    """Wait for the transfer, then the checks every test shares (module docstring)."""
    try:
        return _checks(bed, px, tr, p0)
    finally:
        (bed.tmp / "proxy.log").write_text("\n".join(px.log) + "\n")


def _checks(bed: MultipathBed, px: ProxyHandle, tr: Transfer, p0: dict[str, int]) -> Outcome:
    cli, rec = tr.result()
    time.sleep(0.3)  # the last ACKs/FINs reach the server before its counters are read
    sd = bed.server_delta()
    pd = diff(p0, px.stats())
    pcap = bed.stop_captures()
    facts = {"client": {k: cli.get(k) for k in ("error", "sent", "received", "max_gap_s")},
             "server": {k: rec.get(k) for k in ("error", "sent", "received", "max_gap_s")},
             "server_counters": nonzero(sd), "proxy_counters": nonzero(pd)}
    (bed.tmp / "facts.json").write_text(json.dumps(facts, indent=1))
    _check_data(cli, rec, tr, facts)
    _check_mptcp(cli, rec, sd, pd, facts)
    remapped = _check_capture(pcap) if pcap is not None else 0
    # (MP_FASTCLOSE/MP_TCPRST at the very end are test_close_after_handover_is_graceful's)
    return Outcome(cli, rec, sd, pd, pcap, remapped)


def _check(ok: bool, message: Any) -> None:
    if not ok:
        raise AssertionError(message)


def _check_data(cli: dict, rec: dict, tr: Transfer, facts: dict) -> None:
    """Both directions complete and intact."""
    _check(cli["error"] is None and rec["error"] is None, facts)
    _check(cli["received"] == tr.down and rec["sent"] == tr.down, facts)
    _check(cli["recv_sha256"] == rec["sent_sha256"] == expected_sha(tr.seed, tr.down, "down"),
           f"download corrupted: {facts}")
    up = tr.up if tr.paced is None else cli["sent"]
    _check(cli["sent"] == up and rec["received"] == up and up > 0, facts)
    _check(rec["recv_sha256"] == cli["sent_sha256"] == expected_sha(tr.seed, up, "up"),
           f"upload corrupted: {facts}")
    _check(cli["pattern_ok"] and rec["pattern_ok"], f"bytes off the pattern: {facts}")


def _check_mptcp(cli: dict, rec: dict, sd: dict, pd: dict, facts: dict) -> None:
    """The server's socket is native MPTCP and never fell back; handshake seen once, no
    server error counter; the proxy had no internal error or fallback."""
    _check(rec["mptcp_socket"] and rec["is_mptcp"] and rec["fallback"] is False, facts)
    info = rec["mptcp_info"]
    _check(info is not None and not info["fallback"] and info["remote_key_received"], info)
    _check(not cli["is_mptcp"], "the app's own socket must be plain TCP")
    _check(sd["MPCapableSYNRX"] == 1 and sd["MPCapableACKRX"] == 1, facts)
    assert_no_errors(sd)
    _check(pd.get("InternalErrors", 0) == 0 and pd.get("FallbackConnections", 0) == 0, facts)


def _check_capture(pcap: str) -> int:
    """tshark on the server link(s): no gating expert info (final checksums), no mapping
    contradicting or re-cutting an earlier one, no MP_FAIL; returns the re-cut count."""
    failures = tshark_failures(pcap, check_checksum=True)
    remapped, conflicting = remapped_segments(pcap)
    _check(not conflicting, f"mappings contradicting earlier ones: {sorted(conflicting)}")
    _check(not remapped, f"{len(remapped)} segments re-sent under another mapping, "
                         f"frames {sorted(remapped)[:10]}")
    _check(failures == [], f"tshark: {failures[:20]}")
    summary = mptcp_summary(pcap)
    _check(summary["MP_FAIL"] == 0, summary)
    return len(remapped)
