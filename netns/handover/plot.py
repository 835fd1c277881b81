"""The handover plot (like the paper's Fig. 8-9): DSN and DATA_ACK per link and the
application's delivered bytes against time, zoomed on the handover and over the run."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .captures import Capture

__all__ = ["plot"]


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
    fig, axes = plt.subplots(2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [3, 2]})
    app = _delivered(times, sizes, t0, t_recv_end)
    _panel(axes[0], cap, app, t0, at, (at - 1.0, at + span), recovery_s,
           "handover ±: " + title)
    _panel(axes[1], cap, app, t0, at, None, None, "full run: " + title)
    axes[0].legend(fontsize=7, loc="upper left", ncol=2)
    if data_iface_note:
        fig.text(0.01, 0.005, data_iface_note, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _delivered(times: Sequence[float], sizes: Sequence[int], t0: float,
               t_recv_end: float | None) -> list[tuple[float, float]]:
    """(time since t0, MB delivered so far) per read, and the silence until the end."""
    out, acc = [], 0
    for t, n in zip(times, sizes):
        acc += n
        out.append((t - t0, acc / 1e6))
    if t_recv_end is not None and times and t_recv_end > times[-1]:
        out.append((t_recv_end - t0, out[-1][1]))  # show the silence until EOF or the stop
    return out


def _panel(ax: Any, cap: Capture | None, app: list[tuple[float, float]], t0: float,
           at: float, window: tuple[float, float] | None, recovery_s: float | None,
           title: str) -> None:
    """One panel: paths, delivered bytes, the handover (and in the zoom: recovery and
    signalling)."""
    def inwin(pts: list) -> list:
        return [(t - t0, v / 1e6) for t, v in pts
                if window is None or window[0] <= t - t0 <= window[1]]

    ys = _draw_paths(ax, cap, inwin, full=window is None)
    app = [(t, c) for t, c in app if window is None or window[0] <= t <= window[1]]
    if app:
        ax.plot(*zip(*app), "-", color="0.3", lw=1, drawstyle="steps-post",
                label="delivered to the app")
        ys += [app[0][1], app[-1][1]]
    ax.axvline(at, color="red", ls="--", lw=1, label="handover")
    if window is not None:
        if recovery_s is not None:
            ax.axvspan(at, at + recovery_s, color="red", alpha=0.08, label="recovery")
        if cap is not None:
            _annotate(ax, cap, t0, window)
        ax.set_xlim(*window)
        if ys and min(ys) < max(ys):
            pad = (max(ys) - min(ys)) * 0.05 + 0.01
            ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xlabel("time since transfer start [s]")
    ax.set_ylabel("data level [MB, relative]")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)


def _draw_paths(ax: Any, cap: Capture | None, inwin: Callable[[list], list],
                full: bool) -> list[float]:
    """DSN points, DAN lines and retransmissions per interface; the DSN values drawn."""
    ys: list[float] = []
    if cap is None:
        return ys
    for iface in sorted(set(cap.dsn_points) | set(cap.dan_points)):
        c_dsn, c_dan = _COLORS.get(iface, ("tab:green", "tab:olive"))
        pts = inwin(cap.dsn_points.get(iface, []))
        if pts:
            ax.plot(*zip(*pts), ".", ms=2 if full else 3, color=c_dsn, label=f"DSN {iface}")
            ys += [p[1] for p in pts]
        pts = _break_lines(inwin(cap.dan_points.get(iface, [])), 0.3)
        if pts:
            ax.plot(*zip(*pts), "-", lw=0.8 if full else 1.2, color=c_dan,
                    drawstyle="steps-post", label=f"DAN {iface}")
        pts = inwin(cap.retrans_points.get(iface, []))
        if pts:
            ax.plot(*zip(*pts), "x", ms=4, color="k", mew=0.8,
                    label=f"retransmitted ({iface})")
    return ys


def _annotate(ax: Any, cap: Capture, t0: float, window: tuple[float, float]) -> None:
    for ev in cap.signals:
        x = ev["t"] - t0
        if window[0] <= x <= window[1] and ev["what"] != "SYN/ACK":
            ax.annotate(f"{ev['what']} {ev['dir']} {ev['iface']}", (x, 1.0),
                        xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=6, va="top", ha="right", color="purple")
