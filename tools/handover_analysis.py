"""Analysis half of ``tools/handover``: receiver-trace metrics, DSN/DAN from captures, plots.

Pure functions over plain data (no namespaces, no root), so they can be unit tested and
reused on kept captures. Times are ``time.monotonic()`` seconds unless a name says
otherwise; ``rel`` values are relative to the transfer start ``t0``.

Definitions (also in ``tools/handover --help``):

- **gap**: the time between two consecutive ``recv()`` calls of the receiving application
  that returned data. ``max_gap_s`` is the longest gap that ends at or after ``t_h - 1``
  (``t_h`` = handover instant); ``max_gap_overall_s`` the longest of the whole transfer.
- **max_gap_near_s**: the longest gap overlapping ``[t_h - 1 s, t_h + 3 s]`` (what the
  handover itself caused, without later congestion events or bbr's PROBE_RTT).
- **reference rate** ``R``: bytes delivered in ``(t_h - 2 s, t_h]`` divided by 2 s.
- **recovery_s**: ``t - t_h`` for the earliest ``t`` in ``{t_h} ∪ {recv times ≥ t_h}`` such
  that the bytes delivered in ``[t, t + 0.25 s]`` reach 90 % of ``R × 0.25 s``; None if
  that never happens before the end of the trace.
- **recovery_nominal_s**: the same, but the window must carry 80 % of the emulated path
  rate instead of 90 % of ``R`` (robust when the rate before the handover was already
  low, e.g. without SACK).
- **first_byte_after_s**: end of the longest gap that ends after ``t_h``, minus ``t_h``:
  when delivery resumed after the stall (a make-before-break with no stall gives a small
  value: the end of the largest ordinary inter-recv pause).
- **rate_before_mbit** = ``R`` in Mbit/s; **rate_after_mbit**: bytes delivered in the 2 s
  before the sender stopped (clipped to start at ``t_h``) per second.
"""

from __future__ import annotations

import bisect
import hashlib
import subprocess
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = [
    "REF_WINDOW_S", "RATE_WINDOW_S", "RATE_FRACTION", "GAP_WINDOW_S",
    "write_trace", "read_trace", "trace_metrics",
    "Segment", "Capture", "idsn", "decode_captures", "capture_metrics", "plot",
]

REF_WINDOW_S = 2.0     # reference rate: the 2 s before the handover
RATE_WINDOW_S = 0.25   # recovery: a 250 ms window ...
RATE_FRACTION = 0.9    # ... must carry 90 % of the reference rate
GAP_WINDOW_S = 1.0     # max_gap_s looks at gaps ending at or after t_h - 1 s
NEAR_AFTER_S = 3.0     # max_gap_near_s: gaps ending within [t_h - 1 s, t_h + 3 s]
NOMINAL_FRACTION = 0.8  # recovery_nominal_s: 80 % of the emulated path rate

M32 = (1 << 32) - 1


# ------------------------------------------------------------------ receiver trace

def write_trace(path: str, times: array, sizes: array) -> None:
    """Binary trace: ``len`` pairs of doubles (monotonic time, bytes) interleaved."""
    out = array("d")
    for t, n in zip(times, sizes):
        out.append(t)
        out.append(float(n))
    with open(path, "wb") as f:
        out.tofile(f)


def read_trace(path: str) -> tuple[list[float], list[int]]:
    data = array("d")
    with open(path, "rb") as f:
        data.frombytes(f.read())
    return list(data[0::2]), [int(n) for n in data[1::2]]


def _bytes_between(times: Sequence[float], cum: Sequence[int], lo: float, hi: float,
                   lo_closed: bool = True) -> int:
    """Bytes of the recv events with ``lo <= t <= hi`` (``lo < t`` if not lo_closed)."""
    i = (bisect.bisect_left if lo_closed else bisect.bisect_right)(times, lo)
    j = bisect.bisect_right(times, hi)
    return cum[j] - cum[i] if j > i else 0


def _recovery(times: Sequence[float], cum: Sequence[int], t_h: float,
              rate: float) -> float | None:
    """``t - t_h`` for the first ``t`` in {t_h} ∪ {recv times >= t_h} from which the
    bytes delivered in ``[t, t + RATE_WINDOW_S]`` reach ``rate × RATE_WINDOW_S``."""
    if rate <= 0:
        return None
    need = rate * RATE_WINDOW_S
    for c in [t_h] + list(times[bisect.bisect_left(times, t_h):]):
        if _bytes_between(times, cum, c, c + RATE_WINDOW_S) >= need:
            return round(c - t_h, 6)
    return None


def trace_metrics(times: Sequence[float], sizes: Sequence[int], t0: float, t_h: float,
                  t_send_end: float | None = None, t_recv_end: float | None = None,
                  nominal_mbit: float | None = None) -> dict[str, Any]:
    """Delivery metrics of a receiver trace around the handover instant ``t_h``.

    ``t_recv_end``: when the receiver saw EOF or was stopped; the silence from the last
    data to it counts as a gap (a transfer that never resumed has its stall measured)."""
    n = len(times)
    out: dict[str, Any] = {
        "recv_calls": n, "bytes": sum(sizes), "max_gap_s": None, "max_gap_from_s": None,
        "max_gap_overall_s": None, "max_gap_overall_from_s": None, "recovery_s": None,
        "recovery_nominal_s": None, "max_gap_near_s": None, "max_gap_near_from_s": None,
        "first_byte_after_s": None, "rate_before_mbit": None, "rate_after_mbit": None,
        "goodput_mbit": None, "first_byte_s": None, "last_byte_s": None,
    }
    if n == 0:
        return out
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    out["first_byte_s"] = round(times[0] - t0, 6)
    out["last_byte_s"] = round(times[-1] - t0, 6)
    if n > 1 and times[-1] > times[0]:
        out["goodput_mbit"] = round((cum[-1] - sizes[0]) * 8 / (times[-1] - times[0]) / 1e6, 3)
    # gaps
    best = (0.0, None)
    best_win = (0.0, None)
    best_near = (0.0, None)
    best_after = (0.0, None, None)  # (gap, start, end) among gaps ending after t_h
    ends = list(times)
    if t_recv_end is not None and t_recv_end > times[-1]:
        ends.append(t_recv_end)  # trailing silence: no byte at its end
    for i in range(1, len(ends)):
        g = ends[i] - ends[i - 1]
        data_end = i < n
        if g > best[0]:
            best = (g, ends[i - 1])
        if ends[i] >= t_h - GAP_WINDOW_S and g > best_win[0]:
            best_win = (g, ends[i - 1])
        if t_h - GAP_WINDOW_S <= ends[i] and ends[i - 1] <= t_h + NEAR_AFTER_S \
                and g > best_near[0]:
            best_near = (g, ends[i - 1])
        if ends[i] > t_h and g > best_after[0]:
            best_after = (g, ends[i - 1], ends[i] if data_end else None)
    out["max_gap_overall_s"] = round(best[0], 6)
    out["max_gap_overall_from_s"] = None if best[1] is None else round(best[1] - t0, 6)
    out["max_gap_s"] = round(best_win[0], 6)
    out["max_gap_from_s"] = None if best_win[1] is None else round(best_win[1] - t0, 6)
    out["max_gap_near_s"] = round(best_near[0], 6)
    out["max_gap_near_from_s"] = None if best_near[1] is None else round(best_near[1] - t0, 6)
    if best_after[2] is not None:
        out["first_byte_after_s"] = round(max(0.0, best_after[2] - t_h), 6)
    # rates
    ref = _bytes_between(times, cum, t_h - REF_WINDOW_S, t_h, lo_closed=False) / REF_WINDOW_S
    out["rate_before_mbit"] = round(ref * 8 / 1e6, 3)
    out["recovery_s"] = _recovery(times, cum, t_h, RATE_FRACTION * ref)
    if nominal_mbit:
        out["recovery_nominal_s"] = _recovery(times, cum, t_h,
                                              NOMINAL_FRACTION * nominal_mbit * 1e6 / 8)
    end = t_send_end if t_send_end is not None else times[-1]
    lo = max(t_h, end - REF_WINDOW_S)
    if end > lo:
        after = _bytes_between(times, cum, lo, end, lo_closed=False) / (end - lo)
        out["rate_after_mbit"] = round(after * 8 / 1e6, 3)
    return out


# ------------------------------------------------------------------ captures

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


def _read_pcap(pcap: str, iface: str, client_addrs: Iterable[str],
               time_offset: float) -> list[Segment]:
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
    local = set(client_addrs)
    out = []
    for line in res.stdout.splitlines():
        c = (line.split("\t") + [""] * len(_FIELDS))[:len(_FIELDS)]
        try:
            t = float(c[0]) - time_offset
        except ValueError:
            continue
        subs = tuple(int(x, 0) for x in c[8].split(",") if x)
        seg = Segment(
            t=t, iface=iface, outbound=c[1] in local,
            flow=(c[1], c[2], c[3], c[4]), seq=_num(c[5]) or 0, length=_num(c[6]) or 0,
            flags=_num(c[7]) or 0, subtypes=subs,
            retrans=bool(c[21]),
        )
        if _num(c[9]):
            seg.dack, seg.dack64 = _num(c[11]), bool(_num(c[10]))
        if _num(c[12]):
            seg.dsn, seg.dsn64 = _num(c[14]), bool(_num(c[13]))
            seg.ssn, seg.dll = _num(c[15]), _num(c[16])
        seg.sendkey, seg.recvkey = _num(c[17]), _num(c[18])
        seg.backup = _num(c[19])
        if c[22]:
            les = [int(x) for x in c[22].split(",") if x]
            res_ = [int(x) for x in c[23].split(",") if x]
            seg.sack = tuple(zip(les, res_))
        out.append(seg)
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
    # keys: server key = sendkey of the inbound SYN/ACK or recvkey of the outbound 3rd ACK;
    # client key = sendkey of an outbound MP_CAPABLE ACK
    server_key = client_key = None
    for s in segs:
        if 0 not in s.subtypes:
            continue
        if not s.outbound and s.sendkey is not None and server_key is None:
            server_key = s.sendkey
        if s.outbound and s.sendkey is not None and s.recvkey is not None:
            client_key = client_key or s.sendkey
            server_key = server_key or s.recvkey
    key = client_key if cap.data_outbound else server_key
    if key is not None:
        cap.base = (idsn(key) + 1) & ((1 << 64) - 1)
        cap.base_from = "key"
    maps: dict[tuple, tuple[int, int, int]] = {}
    for s in segs:
        data_dir = s.outbound == cap.data_outbound
        if data_dir and s.length > 0:
            if s.dsn is not None and s.dll:
                maps[s.flow] = (s.dsn, s.ssn or 0, s.dll)
            m = maps.get(s.flow)
            if m is None or not (0 <= s.seq - m[1] < m[2]):
                cap.unmapped += 1
                continue
            if cap.base is None:
                cap.base, cap.base_from = m[0], "first-dsn"
            rel = _rel(m[0] + (s.seq - m[1]), cap.base)
            cap.dsn_points.setdefault(s.iface, []).append((s.t, rel + s.length))
            if s.retrans:
                cap.retrans_points.setdefault(s.iface, []).append((s.t, rel + s.length))
        elif not data_dir and s.dack is not None and cap.base is not None:
            cap.dan_points.setdefault(s.iface, []).append((s.t, _rel(s.dack, cap.base)))
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
    return cap


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


# ------------------------------------------------------------------ plot

def _break_lines(pts: list, max_dt: float) -> list:
    """Insert a NaN point where consecutive points are more than ``max_dt`` apart, so a
    line is not drawn across a silence (e.g. the last DATA_ACK on a path and the one
    sent there at the close)."""
    out: list = []
    for p in pts:
        if out and p[0] - out[-1][0] > max_dt:
            out.append((out[-1][0], float("nan")))
        out.append(p)
    return out


_COLORS = {"c0": ("tab:blue", "tab:cyan"), "c1": ("tab:orange", "tab:red")}


def plot(path: str, title: str, cap: Capture | None, times: Sequence[float],
         sizes: Sequence[int], t0: float, t_h: float, recovery_s: float | None,
         data_iface_note: str = "", t_recv_end: float | None = None) -> None:
    """DSN/DAN against time (paper Fig. 8-9): a zoom around the handover and the full run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = t_h - t0
    span = max(1.0, min((recovery_s or 0) + 0.5, 10.0))
    zoom = (at - 1.0, at + span)
    fig, axes = plt.subplots(2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 2]})
    cum, acc = [], 0
    for n in sizes:
        acc += n
        cum.append(acc / 1e6)
    rel_t = [t - t0 for t in times]
    if t_recv_end is not None and times and t_recv_end > times[-1]:
        rel_t.append(t_recv_end - t0)  # show the silence until EOF or the stop
        cum.append(cum[-1])
    for ax, (lo, hi), full in ((axes[0], zoom, False), (axes[1], (None, None), True)):
        ymin, ymax = float("inf"), float("-inf")

        def inwin(pts):
            return [(t - t0, v / 1e6) for t, v in pts
                    if lo is None or lo <= t - t0 <= hi]

        if cap is not None:
            for iface in sorted(set(cap.dsn_points) | set(cap.dan_points)):
                c_dsn, c_dan = _COLORS.get(iface, ("tab:green", "tab:olive"))
                pts = inwin(cap.dsn_points.get(iface, []))
                if pts:
                    ax.plot(*zip(*pts), ".", ms=2 if full else 3, color=c_dsn,
                            label=f"DSN {iface}")
                    ymin, ymax = min(ymin, *(p[1] for p in pts)), max(ymax, *(p[1] for p in pts))
                pts = _break_lines(inwin(cap.dan_points.get(iface, [])), 0.3)
                if pts:
                    ax.plot(*zip(*pts), "-", lw=0.8 if full else 1.2, color=c_dan,
                            drawstyle="steps-post", label=f"DAN {iface}")
                pts = inwin(cap.retrans_points.get(iface, []))
                if pts:
                    ax.plot(*zip(*pts), "x", ms=4, color="k", mew=0.8,
                            label=f"retransmitted ({iface})")
        app = [(t, c) for t, c in zip(rel_t, cum) if lo is None or lo <= t <= hi]
        if app:
            ax.plot(*zip(*app), "-", color="0.3", lw=1, drawstyle="steps-post",
                    label="delivered to the app")
            ymin, ymax = min(ymin, app[0][1]), max(ymax, app[-1][1])
        ax.axvline(at, color="red", ls="--", lw=1, label="handover")
        if recovery_s is not None and not full:
            ax.axvspan(at, at + recovery_s, color="red", alpha=0.08, label="recovery")
        if cap is not None and not full:
            for ev in cap.signals:
                x = ev["t"] - t0
                if lo <= x <= hi and ev["what"] != "SYN/ACK":
                    ax.annotate(f"{ev['what']} {ev['dir']} {ev['iface']}", (x, 1.0),
                                xycoords=("data", "axes fraction"), rotation=90,
                                fontsize=6, va="top", ha="right", color="purple")
        if lo is not None:
            ax.set_xlim(lo, hi)
            if ymin < ymax:
                pad = (ymax - ymin) * 0.05 + 0.01
                ax.set_ylim(ymin - pad, ymax + pad)
        ax.set_xlabel("time since transfer start [s]")
        ax.set_ylabel("data level [MB, relative]")
        ax.grid(alpha=0.3)
        ax.set_title(("handover ±: " if not full else "full run: ") + title, fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left", ncol=2)
    if data_iface_note:
        fig.text(0.01, 0.005, data_iface_note, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
