"""Plots for the Search and Compare screens (plotext through textual-plotext): each takes the
widget's ``plt`` and the rows to draw, so a test can draw the same data twice and compare."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekv.search.records import RANK

if TYPE_CHECKING:
    from tunekv.search.records import TrialRow

MARKERS = {"sim": "dot", "real": "hd", "certified": "sd"}


COLORS = {"sim": "green", "real": "cyan", "certified": "magenta"}


def best_so_far(plt: Any, rows: list[TrialRow]) -> None:
    """Best feasible throughput after each trial, a step line per fidelity: the headline's best is
    the highest fidelity's, which a simulated trial may outrun."""
    plt.clear_data()
    plt.clear_figure()
    plt.title("best feasible tok/s so far, by fidelity")
    plt.xlabel("trial")
    for fid in sorted({row.fidelity for row in rows}, key=lambda fid: RANK[fid]):
        xs: list[int] = []
        ys: list[float] = []
        best: float | None = None
        for row in rows:
            if row.fidelity == fid and row.feasible and row.value is not None and (best is None or row.value > best):
                if best is not None:   # a step, not a slope
                    xs.append(row.number)
                    ys.append(best)
                best = row.value
            if best is not None:
                xs.append(row.number)
                ys.append(best)
        if xs:
            plt.plot(xs, ys, marker="braille", color=COLORS.get(fid, "white"), label=fid)


def pareto(plt: Any, rows: list[TrialRow], ttft_target_ms: float | None) -> None:
    """Throughput vs p99 TTFT of every trial that ran, one series per fidelity, the SLO as a
    vertical line, the Pareto front (most throughput for its latency) as a line."""
    plt.clear_data()
    plt.clear_figure()
    plt.title("tok/s vs p99 TTFT (ms)")
    ran = [r for r in rows if r.value and r.ttft_p99_ms is not None]
    if not ran:
        return
    front = pareto_front(ran)
    if len(front) > 1:   # drawn first and thin, so the trials on it stay visible
        plt.plot([r.ttft_p99_ms for r in front], [r.value for r in front], marker="braille", color="gray",
                 label="front")
    for fid in sorted({r.fidelity for r in ran}, key=lambda fid: RANK[fid]):
        group = [r for r in ran if r.fidelity == fid]
        plt.scatter([r.ttft_p99_ms for r in group], [r.value for r in group], marker=MARKERS.get(fid, "dot"),
                    color=COLORS.get(fid, "white"), label=fid)
    if ttft_target_ms is not None:
        plt.vline(ttft_target_ms, color="red")


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Rows no other row beats on both throughput (higher) and p99 TTFT (lower), by latency (every
    row has both figures)."""
    front, best = [], float("-inf")
    figures = [(row.ttft_p99_ms, row.value, row) for row in rows
               if row.ttft_p99_ms is not None and row.value is not None]
    for _, value, row in sorted(figures, key=lambda f: (f[0], -f[1])):
        if value > best:
            front.append(row)
            best = value
    return front


def compare_lines(plt: Any, points: list[Any], title: str | None = None) -> None:
    """Output throughput vs users, one line per scheduling variant (or server)."""
    plt.clear_data()
    plt.clear_figure()
    plt.title(title or "output tok/s vs users (same KV pool)")
    plt.xlabel("users")
    for variant in dict.fromkeys(p.variant for p in points):
        mine = [p for p in points if p.variant == variant]
        plt.plot([p.users for p in mine], [p.output_throughput_tok_s for p in mine], marker="hd", label=variant)
