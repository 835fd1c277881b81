"""DSN and DATA_ACK of a handover from captures on the client's links (tshark), and the
path-level facts around the handover instant (first data on the new path, stray data on
the old one, signalling)."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = ["Segment", "Capture", "idsn", "decode_captures", "capture_metrics",
           "SIGNAL_NAMES"]

M32 = (1 << 32) - 1


def idsn(key: int) -> int:
    """IDSN of an MPTCP key: the low 64 bits of SHA-256(key, big-endian) (RFC 8684 §3.1)."""
    return int.from_bytes(hashlib.sha256(key.to_bytes(8, "big")).digest()[24:32], "big")


_FIELDS = (
    "frame.time_epoch", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.seq",
    "tcp.len", "tcp.flags", "tcp.options.mptcp.subtype",
    "tcp.options.mptcp.dataackpresent.flag", "tcp.options.mptcp.dataack8.flag",
    "tcp.options.mptcp.rawdataack", "tcp.options.mptcp.dseqnpresent.flag",
    "tcp.options.mptcp.dseqn8.flag", "tcp.options.mptcp.rawdataseqno",
    "tcp.options.mptcp.subflowseqno", "tcp.options.mptcp.datalvllen",
    "tcp.options.mptcp.sendkey", "tcp.options.mptcp.recvkey",
    "tcp.options.mptcp.backup.flag", "tcp.options.mptcp.addrid",
    "tcp.analysis.retransmission", "tcp.options.sack_le", "tcp.options.sack_re",
)
_PREFS = {"tcp.analyze_sequence_numbers": "TRUE", "tcp.relative_sequence_numbers": "TRUE",
          "mptcp.analyze_mptcp": "FALSE"}
SIGNAL_NAMES = {1: "MP_JOIN", 4: "REMOVE_ADDR", 5: "MP_PRIO", 6: "MP_FAIL",
                7: "MP_FASTCLOSE", 8: "MP_TCPRST"}


@dataclass
class Segment:
    """One captured TCP segment, reduced to what the plots and metrics need."""

    t: float                 # monotonic time
    iface: str
    outbound: bool           # sent by the client namespace
    flow: tuple              # (src, sport, dst, dport)
    seq: int                 # relative subflow sequence (tshark)
    length: int
    flags: int
    subtypes: tuple[int, ...]
    dack: int | None = None          # raw DATA_ACK value
    dack64: bool = False
    dsn: int | None = None           # raw mapping DSN
    dsn64: bool = False
    ssn: int | None = None
    dll: int | None = None
    sendkey: int | None = None
    recvkey: int | None = None
    backup: int | None = None
    retrans: bool = False
    sack: tuple = ()


@dataclass
class Capture:
    """Decoded captures of one run: data-level points relative to the first data byte."""

    data_outbound: bool                      # True when the client sends the data (up)
    base: int | None = None                  # IDSN+1 of the data sender (64-bit)
    base_from: str = "none"
    dsn_points: dict[str, list] = field(default_factory=dict)   # iface -> [(t, rel_dsn_end)]
    dan_points: dict[str, list] = field(default_factory=dict)   # iface -> [(t, rel_dan)]
    retrans_points: dict[str, list] = field(default_factory=dict)
    signals: list[dict] = field(default_factory=list)
    unmapped: int = 0
    segments: int = 0


def _num(text: str) -> int | None:
    if not text:
        return None
    try:
        return int(text.split(",")[0], 0)
    except ValueError:
        return None


def _tshark_fields(pcap: str) -> str:
    cmd = ["tshark", "-n", "-r", pcap]
    for k, v in _PREFS.items():
        cmd += ["-o", f"{k}:{v}"]
    cmd += ["-Y", "tcp", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
            "-E", "aggregator=,"]
    for f in _FIELDS:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"tshark failed on {pcap}: {res.stderr.strip()[-500:]}")
    return res.stdout


def _segment(c: list[str], t: float, iface: str, local: set[str]) -> Segment:
    """One tshark row (:data:`_FIELDS`) as a :class:`Segment`."""
    seg = Segment(t=t, iface=iface, outbound=c[1] in local, flow=(c[1], c[2], c[3], c[4]),
                  seq=_num(c[5]) or 0, length=_num(c[6]) or 0, flags=_num(c[7]) or 0,
                  subtypes=tuple(int(x, 0) for x in c[8].split(",") if x),
                  retrans=bool(c[21]))
    if _num(c[9]):
        seg.dack, seg.dack64 = _num(c[11]), bool(_num(c[10]))
    if _num(c[12]):
        seg.dsn, seg.dsn64 = _num(c[14]), bool(_num(c[13]))
        seg.ssn, seg.dll = _num(c[15]), _num(c[16])
    seg.sendkey, seg.recvkey = _num(c[17]), _num(c[18])
    seg.backup = _num(c[19])
    if c[22]:
        les = [int(x) for x in c[22].split(",") if x]
        res = [int(x) for x in c[23].split(",") if x]
        seg.sack = tuple(zip(les, res))
    return seg


def _read_pcap(pcap: str, iface: str, client_addrs: Iterable[str],
               time_offset: float) -> list[Segment]:
    local = set(client_addrs)
    out = []
    for line in _tshark_fields(pcap).splitlines():
        c = (line.split("\t") + [""] * len(_FIELDS))[:len(_FIELDS)]
        try:
            t = float(c[0]) - time_offset
        except ValueError:
            continue
        out.append(_segment(c, t, iface, local))
    return out


def _rel(value: int, base: int) -> int:
    """``value - base`` modulo 2**32, as a signed offset (transfers well below 2 GB)."""
    d = (value - base) & M32
    return d - (1 << 32) if d >= 1 << 31 else d


def decode_captures(pcaps: dict[str, str], client_addrs: Sequence[str], direction: str,
                    time_offset: float) -> Capture:
    """Decode the per-interface captures (``{iface: pcap}``) into DSN/DAN points.

    ``direction``: "down" (server sends data) or "up". ``time_offset``: wall clock minus
    monotonic clock (pcap times are wall clock). DSN values are relative to the data
    sender's IDSN+1 (from the MP_CAPABLE keys; the first DSN seen if no key was captured),
    so they share the scale of the receiver's delivered-bytes trace. A segment's DSN is
    its mapping's DSN plus its offset into the mapping (mappings may span segments).
    """
    cap = Capture(data_outbound=direction == "up")
    segs: list[Segment] = []
    for iface, pcap in pcaps.items():
        segs += _read_pcap(pcap, iface, client_addrs, time_offset)
    segs.sort(key=lambda s: s.t)
    cap.segments = len(segs)
    key = _data_sender_key(segs, cap.data_outbound)
    if key is not None:
        cap.base = (idsn(key) + 1) & ((1 << 64) - 1)
        cap.base_from = "key"
    maps: dict[tuple, tuple[int, int, int]] = {}
    for s in segs:
        if s.outbound == cap.data_outbound and s.length > 0:
            if not _data_point(cap, maps, s):
                continue  # (an unmapped data segment counts, and is not shown)
        elif s.outbound != cap.data_outbound and s.dack is not None and cap.base is not None:
            cap.dan_points.setdefault(s.iface, []).append((s.t, _rel(s.dack, cap.base)))
        _signal(cap, s)
    return cap


def _data_sender_key(segs: list[Segment], data_outbound: bool) -> int | None:
    """The MPTCP key of the data sender: the server's is the sendkey of the inbound
    SYN/ACK or the recvkey of the outbound third ACK; the client's the sendkey of an
    outbound MP_CAPABLE ACK."""
    server_key = client_key = None
    for s in segs:
        if 0 not in s.subtypes:
            continue
        if not s.outbound and s.sendkey is not None and server_key is None:
            server_key = s.sendkey
        if s.outbound and s.sendkey is not None and s.recvkey is not None:
            client_key = client_key or s.sendkey
            server_key = server_key or s.recvkey
    return client_key if data_outbound else server_key


def _data_point(cap: Capture, maps: dict[tuple, tuple[int, int, int]], s: Segment) -> bool:
    """The DSN of a data segment (its mapping's DSN plus its offset into it); False if no
    mapping covers it."""
    if s.dsn is not None and s.dll:
        maps[s.flow] = (s.dsn, s.ssn or 0, s.dll)
    m = maps.get(s.flow)
    if m is None or not (0 <= s.seq - m[1] < m[2]):
        cap.unmapped += 1
        return False
    if cap.base is None:
        cap.base, cap.base_from = m[0], "first-dsn"
    rel = _rel(m[0] + (s.seq - m[1]), cap.base)
    cap.dsn_points.setdefault(s.iface, []).append((s.t, rel + s.length))
    if s.retrans:
        cap.retrans_points.setdefault(s.iface, []).append((s.t, rel + s.length))
    return True


def _signal(cap: Capture, s: Segment) -> None:
    """MPTCP signalling, SYN and RST segments as events."""
    sig = [SIGNAL_NAMES[x] for x in s.subtypes if x in SIGNAL_NAMES]
    if s.flags & 0x04:
        sig.append("RST")
    if s.flags & 0x02:
        sig.append("SYN" if not s.flags & 0x10 else "SYN/ACK")
    if sig:
        ev = {"t": s.t, "iface": s.iface, "dir": "out" if s.outbound else "in",
              "what": "+".join(sig)}
        if 5 in s.subtypes:
            ev["backup"] = s.backup
        cap.signals.append(ev)


def capture_metrics(cap: Capture, t0: float, t_h: float, old: str, new: str) -> dict:
    """Path-level facts from the captures, relative to the handover instant ``t_h``:

    ``new_path_first_data_s``: first data segment on the ``new`` interface after ``t_h``;
    ``old_path_last_data_s``: last data segment on ``old`` (stray sends after a switch);
    ``old_path_data_after``: data segments on ``old`` after ``t_h``; ``retrans_segments``
    per interface (tshark's analysis); ``signals``: MPTCP signalling and SYN/RST segments
    from 1 s before the handover on (time relative to ``t_h``).
    """
    new_pts = [t for t, _ in cap.dsn_points.get(new, []) if t >= t_h]
    old_pts = [t for t, _ in cap.dsn_points.get(old, []) if t >= t_h]
    sigs = [dict(ev, t=round(ev["t"] - t_h, 4)) for ev in cap.signals if ev["t"] >= t_h - 1]
    return {
        "dsn_base": cap.base_from,
        "segments": cap.segments,
        "unmapped_data_segments": cap.unmapped,
        "new_path_first_data_s": round(new_pts[0] - t_h, 4) if new_pts else None,
        "old_path_last_data_s": round(old_pts[-1] - t_h, 4) if old_pts else None,
        "old_path_data_after": len(old_pts),
        "retrans_segments": {k: len(v) for k, v in sorted(cap.retrans_points.items())},
        "signals": sigs[:60],
    }


