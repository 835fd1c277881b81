"""Packet captures in a namespace (tcpdump) and their MPTCP checks (tshark).

- :func:`capture` records ``iface`` in ``ns`` to a pcap while the ``with`` block runs.
- :func:`tshark_failures` lists the frames that tshark's TCP/MPTCP analysis flags with one
  of the gating expert infos (:data:`GATING_FIELDS`: none of them appears in a capture of
  Linux native MPTCP talking to itself; empty list = clean).
- :func:`mptcp_summary` counts packets per MPTCP suboption subtype.
- :func:`remapped_segments`, :func:`rm_addr_ids`, :func:`subflow_close`: what a capture
  says about mappings re-sent under another mapping, REMOVE_ADDR and how a subflow ended.
- :func:`tshark` runs tshark with the analysis preferences (:data:`TSHARK_PREFS`).

Checksum note: on veth, a packet sent by a local socket carries a partial checksum (offload),
so ``tcp.checksum_bad.expert`` is only meaningful where checksums are final: packets that
went through NFQUEUE (the kernel completes them), or links with ``tx`` checksum offload off
(``ethtool -K IF tx off``, ``Topology(checksum_offload=False)``). :func:`tshark_failures`
therefore by default ignores bad checksums that are exactly such partial (pseudo-header)
sums and reports any other bad checksum.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from typing import Any, Iterator

__all__ = [
    "Capture",
    "capture",
    "TSHARK_PREFS",
    "GATING_FILTER",
    "tshark_failures",
    "parse_failures",
    "is_partial_checksum",
    "mptcp_summary",
    "parse_summary",
    "SUBTYPES",
    "tshark",
    "remapped_segments",
    "rm_addr_ids",
    "subflow_close",
]

# tshark's TCP and MPTCP analysis: sequence analysis (needed by the MPTCP one), MPTCP
# mapping and cross-subflow retransmission analysis, TCP checksum verification.
TSHARK_PREFS = {
    "tcp.analyze_sequence_numbers": "TRUE",
    "mptcp.analyze_mptcp": "TRUE",
    "mptcp.relative_sequence_numbers": "TRUE",
    "mptcp.analyze_mappings": "TRUE",
    "mptcp.intersubflows_retransmission": "TRUE",
    "tcp.check_checksum": "TRUE",
}

# Expert infos that fail a run (all exist in tshark 4.0.17: `tshark -G fields`).
GATING_FIELDS = (
    "mptcp.connection.echoed_key_mismatch",
    "mptcp.connection.missing_algorithm",
    "mptcp.connection.unsupported_algorithm",
    "mptcp.dss.infinite_mapping",
    "tcp.suboption_malformed",
    "tcp.bogus_header_length",
    "_ws.malformed",
)
CHECKSUM_FIELD = "tcp.checksum_bad.expert"
GATING_FILTER = " || ".join(GATING_FIELDS + (CHECKSUM_FIELD,))

# RFC 8684 §8 subtypes (tshark prints the raw value of tcp.options.mptcp.subtype).
SUBTYPES = {
    0: "MP_CAPABLE", 1: "MP_JOIN", 2: "DSS", 3: "ADD_ADDR", 4: "RM_ADDR", 5: "MP_PRIO",
    6: "MP_FAIL", 7: "MP_FASTCLOSE", 8: "MP_TCPRST",
}

_FIELD_SEP = "\t"


class Capture:
    """A running or finished tcpdump. ``path``: the pcap; after the ``with`` block,
    ``stats`` = {"captured", "received", "dropped"} as tcpdump reported them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.stats: dict[str, int] = {}
        self._listening = threading.Event()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())
            if "listening on" in line:
                self._listening.set()
        self._listening.set()

    def _parse_stats(self) -> None:
        for line in self.stderr_lines:
            m = re.match(r"(\d+) packets? (captured|received by filter|dropped by kernel)",
                         line)
            if m:
                key = {"captured": "captured", "received by filter": "received",
                       "dropped by kernel": "dropped"}[m.group(2)]
                self.stats[key] = int(m.group(1))


@contextlib.contextmanager
def capture(topo: Any, ns: str, iface: str, path: str, filter: str = "tcp",
            snaplen: int = 256, settle: float = 0.2) -> Iterator[Capture]:
    """Capture ``iface`` in namespace ``ns`` into ``path`` while the block runs.

    ``topo``: a :class:`~netns.topology.Topology` (the tcpdump is started through its
    ``popen`` so it is cleaned up with the bed) or None (plain ``ip netns exec``). ``ns`` may
    be a role ("client", "router", "server") when ``topo`` is given. ``snaplen`` (bytes,
    >= 200) keeps IP + full TCP headers with options. Yields once tcpdump is listening;
    on exit waits ``settle`` s, stops it by PID (SIGINT, then SIGKILL) and fills ``stats``.
    """
    if snaplen < 200:
        raise ValueError("snaplen must keep full TCP headers (>= 200 bytes)")
    # --immediate-mode: without it packets reach tcpdump in ring-buffer blocks (up to 1 s
    # late) and the ones still in the ring when it is stopped are lost.
    argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", str(snaplen),
            "-Z", "root", "-w", path, *filter.split()]
    kw: dict[str, Any] = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if topo is not None:
        proc = topo.popen(ns, argv, **kw)
    else:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                **kw)
    cap = Capture(path)
    cap.proc = proc
    reader = threading.Thread(target=cap._read_stderr, daemon=True)
    reader.start()
    try:
        if not cap._listening.wait(10) or proc.poll() is not None:
            raise RuntimeError(f"tcpdump did not start: {' / '.join(cap.stderr_lines)}")
        yield cap
        time.sleep(settle)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(2)
        cap._parse_stats()


def tshark(pcap: str, args: list[str], prefs: dict[str, str] | None = None) -> str:
    """``tshark -n -r pcap ARGS`` with ``prefs`` (default :data:`TSHARK_PREFS`); its
    stdout. Raises RuntimeError when tshark fails."""
    cmd = ["tshark", "-n", "-r", pcap]
    for key, value in (prefs or TSHARK_PREFS).items():
        cmd += ["-o", f"{key}:{value}"]
    res = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"tshark failed ({res.returncode}): {res.stderr.strip()[-1000:]}")
    return res.stdout


_FAIL_FIELDS = ("frame.number", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
                "tcp.dstport", "_ws.expert.message")
_CSUM_FIELDS = ("frame.number", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.hdr_len",
                "tcp.len", "tcp.checksum")


def _fields_args(display_filter: str, fields: tuple[str, ...]) -> list[str]:
    args = ["-Y", display_filter, "-T", "fields", "-E", f"separator={_FIELD_SEP}",
            "-E", "occurrence=a", "-E", "aggregator=;"]
    for field in fields:
        args += ["-e", field]
    return args


def _rows(text: str, width: int) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.strip():
            yield (line.split(_FIELD_SEP) + [""] * width)[:width]


def tshark_failures(pcap: str, check_checksum: bool | None = None,
                    extra_filter: str | None = None) -> list[str]:
    """Frames of ``pcap`` that raise a gating expert info (:data:`GATING_FIELDS`), one line each:
    ``"<frame> <src>:<port> > <dst>:<port>: <expert messages>"``; empty list = clean.

    ``check_checksum``: True counts every ``tcp.checksum_bad.expert`` frame; False ignores
    checksums; None (default) counts them except frames whose checksum field holds exactly
    the pseudo-header sum, i.e. a partial checksum left for offload by a local sender on a
    veth (see the module doc). ``extra_filter`` ORs more display-filter terms.
    """
    terms = list(GATING_FIELDS)
    if check_checksum:
        terms.append(CHECKSUM_FIELD)
    if extra_filter:
        terms.append(f"({extra_filter})")
    lines = parse_failures(tshark(pcap, _fields_args(" || ".join(terms), _FAIL_FIELDS)))
    if check_checksum is None:
        seen = {line.split(" ", 1)[0] for line in lines}
        bad_csum = tshark(pcap, _fields_args(CHECKSUM_FIELD, _CSUM_FIELDS))
        real = {row[0] for row in _rows(bad_csum, len(_CSUM_FIELDS))
                if not is_partial_checksum(*row[1:])}
        real -= seen
        if real:
            filt = "frame.number in {%s}" % " ".join(sorted(real, key=int))
            lines += parse_failures(tshark(pcap, _fields_args(filt, _FAIL_FIELDS)))
            lines.sort(key=lambda ln: int(ln.split(" ", 1)[0]))
    return lines


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def is_partial_checksum(src4: str, src6: str, dst4: str, dst6: str, hdr_len: str,
                        payload_len: str, checksum: str) -> bool:
    """True if ``checksum`` (tshark's ``0x....`` text) equals the folded TCP pseudo-header sum
    of the packet: what Linux leaves in ``th->check`` for CHECKSUM_PARTIAL (offload)."""
    try:
        seg_len = int(hdr_len) + int(payload_len or 0)
        value = int(checksum, 16)
        if src4:
            pseudo = (ipaddress.IPv4Address(src4).packed + ipaddress.IPv4Address(dst4).packed
                      + bytes([0, 6]) + seg_len.to_bytes(2, "big"))
        else:
            pseudo = (ipaddress.IPv6Address(src6).packed + ipaddress.IPv6Address(dst6).packed
                      + seg_len.to_bytes(4, "big") + (6).to_bytes(4, "big"))
    except ValueError:
        return False
    return _ones_sum(pseudo) == value


def parse_failures(text: str) -> list[str]:
    """Format tshark ``-T fields`` output of :data:`_FAIL_FIELDS` as one line per frame."""
    out = []
    for frame, src4, src6, sport, dst4, dst6, dport, msgs in _rows(text, len(_FAIL_FIELDS)):
        src, dst = src4 or f"[{src6}]", dst4 or f"[{dst6}]"
        out.append(f"{frame} {src}:{sport} > {dst}:{dport}: {msgs}")
    return out


def mptcp_summary(pcap: str) -> dict[str, int]:
    """Packets of ``pcap`` per MPTCP subtype name (:data:`SUBTYPES`, a packet with two
    suboptions counts once for each), plus ``"packets"`` (all TCP packets) and
    ``"mptcp_packets"`` (packets with at least one MPTCP option)."""
    args = ["-Y", "tcp", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
            "-e", "tcp.options.mptcp.subtype"]
    return parse_summary(tshark(pcap, args, prefs={}))


def parse_summary(text: str) -> dict[str, int]:
    """Count the subtypes in tshark ``-e tcp.options.mptcp.subtype`` output lines."""
    counts: Counter[str] = Counter({name: 0 for name in SUBTYPES.values()})
    packets = mptcp_packets = 0
    for line in text.splitlines():
        packets += 1
        values = [v for v in line.strip().split(",") if v]
        if values:
            mptcp_packets += 1
        for v in set(values):
            try:
                code = int(v, 0)
            except ValueError:
                continue
            counts[SUBTYPES.get(code, f"subtype_{code}")] += 1
    return {**counts, "packets": packets, "mptcp_packets": mptcp_packets}


# ---------------------------------------------------------------------- what happened

def remapped_segments(pcap: str) -> tuple[set[int], set[int]]:
    """Frames whose DSS mapping overlaps an earlier mapping of the same subflow and
    direction without being identical: ``(same_offset, conflicting)``. Linux re-sends a
    segment under its original mapping; a same-offset sub-mapping breaks that rule, a
    conflicting one would be corruption."""
    out = tshark(pcap, ["-Y", "tcp.options.mptcp.datalvllen", "-T", "fields",
                        "-e", "frame.number", "-e", "tcp.stream", "-e", "tcp.srcport",
                        "-e", "tcp.options.mptcp.rawdataseqno",
                        "-e", "tcp.options.mptcp.subflowseqno",
                        "-e", "tcp.options.mptcp.datalvllen",
                        "-e", "tcp.options.mptcp.datafin.flag"], prefs={})
    seen: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    same_offset: set[int] = set()
    conflicting: set[int] = set()
    for line in out.splitlines():
        f = line.split("\t")
        try:
            frame = int(f[0])
            dsn, ssn, dll = (int(f[i].split(",")[0]) for i in (3, 4, 5))
        except (ValueError, IndexError):
            continue
        if ssn == 0 or dll == 0:  # DATA_FIN alone
            continue
        data_fin = len(f) > 6 and f[6].split(",")[0] in ("1", "True")
        maps = seen.setdefault((f[1], f[2]), [])
        # (a DATA_FIN counts in the data-level length, not in the subflow's sequence)
        end, off = ssn + dll - (1 if data_fin else 0), dsn - ssn
        lo = bisect.bisect_left(maps, (ssn - (1 << 18),))
        hi = bisect.bisect_left(maps, (end,))
        identical = False
        for s2, e2, o2 in maps[lo:hi]:
            if s2 < end and e2 > ssn:
                if (s2, e2, o2) == (ssn, end, off):
                    identical = True
                elif o2 == off:
                    same_offset.add(frame)
                else:
                    conflicting.add(frame)
        if not identical:
            bisect.insort(maps, (ssn, end, off))
    return same_offset, conflicting


def rm_addr_ids(pcap: str, src: str) -> list[str]:
    """Address IDs of the REMOVE_ADDR options sent by ``src`` in ``pcap``."""
    flt = (f"tcp.options.mptcp.subtype == 4 && "
           f"{'ipv6' if ':' in src else 'ip'}.src == {src}")
    out = tshark(pcap, ["-Y", flt, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
                        "-e", "tcp.options.mptcp.subtype", "-e", "tcp.options.mptcp.addrid"],
                 prefs={})
    ids = []
    for line in out.splitlines():
        subtypes, _, addr_ids = line.partition("\t")
        ids += [a for a in addr_ids.split(",") if a]
    return ids


def subflow_close(pcap: str, client: str, sport: int) -> dict[str, Any]:
    """How the subflow ``client:sport`` ended on the wire: each side's FIN and whether the
    other side acknowledged it, and the RSTs from each side before and after both FINs
    were acknowledged."""
    out = tshark(pcap, ["-Y", f"ip.addr == {client} && tcp.port == {sport}", "-T", "fields",
                        "-e", "ip.src", "-e", "tcp.flags.fin", "-e", "tcp.flags.reset",
                        "-e", "tcp.seq", "-e", "tcp.len", "-e", "tcp.ack"],
                 prefs={"tcp.relative_sequence_numbers": "TRUE"})
    fin_end: dict[str, int | None] = {"client": None, "server": None}
    acked = {"client": False, "server": False}  # that side's FIN was acknowledged
    rst = {"client_before": 0, "client_after": 0, "server_before": 0, "server_after": 0}
    for line in out.splitlines():
        src, fin, reset, seq, plen, ack = (line.split("\t") + [""] * 6)[:6]
        who = "client" if src == client else "server"
        other = "server" if who == "client" else "client"
        if reset in ("1", "True"):
            rst[f"{who}_{'after' if all(acked.values()) else 'before'}"] += 1
            continue
        if fin in ("1", "True") and fin_end[who] is None:
            fin_end[who] = int(seq) + int(plen or 0) + 1
        if ack and fin_end[other] is not None and int(ack) >= fin_end[other]:
            acked[other] = True
    return {"fin_from_client": fin_end["client"] is not None,
            "fin_from_server": fin_end["server"] is not None,
            "client_fin_acked": acked["client"], "server_fin_acked": acked["server"], **rst}
