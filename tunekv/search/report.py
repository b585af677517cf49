"""The search report: Markdown with PNG plots (trials over time, the Pareto front of throughput vs
p99 latency, the memory plan of the best config, measured vs predicted)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from tunekv.export import Best, figures, header
from tunekv.fileio import write_atomic
from tunekv.predict.planner import Plan
from tunekv.search.baseline import VersusDefaults, versus_defaults
from tunekv.search.fleetplan import FleetPlan, capacity_markdown
from tunekv.search.ladder import records
from tunekv.search.records import RANK, RowMetric, TrialRecord
from tunekv.units import GIB, LOAD_TITLES, load_cell

if TYPE_CHECKING:
    import optuna

COLORS = {"sim": "tab:blue", "real": "tab:orange", "certified": "tab:green"}


def _p99(t: TrialRecord, metric: RowMetric) -> float | None:
    value = t.p99_ms(metric)
    return None if value is None or value != value else value


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plots(best: Best, trials: list[TrialRecord], plan: Plan | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [(t, t.completed) for t in trials if t.state == "complete" and t.completed is not None]
    done = [t for t, _ in finished]
    out: dict[str, bytes] = {}
    if finished:
        t0 = min(t.started or completed for t, completed in finished)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for level, color in COLORS.items():
            for feasible, style in ((True, {"label": level}), (False, {"marker": "x", "alpha": 0.5})):
                at = [((completed - t0).total_seconds() / 60, t.value or 0.0) for t, completed in finished
                      if t.fidelity == level and t.feasible == feasible]
                ax.scatter([x for x, _ in at], [y for _, y in at], s=14, color=color, **style)
        ax.set_xlabel("minutes into the search")
        ax.set_ylabel("output tok/s at capacity")
        ax.set_title("trials over time (x: infeasible)")
        ax.legend(fontsize=8)
        out["trials.png"] = _png(fig)
        plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        metrics: tuple[RowMetric, ...] = ("ttft", "itl")
        for ax, metric in zip(axes, metrics, strict=True):
            points = sorted((_p99(t, metric), t.value, t.fidelity) for t in done
                            if t.value and _p99(t, metric) is not None)
            front, best_y = [], -1.0
            for x, y, _ in points:
                if y > best_y:
                    front.append((x, y))
                    best_y = y
            for level, color in COLORS.items():
                xs = [p[0] for p in points if p[2] == level]
                ys = [p[1] for p in points if p[2] == level]
                ax.scatter(xs, ys, s=12, color=color, alpha=0.6, label=level)
            if front:
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1)
            target = best.spec.get("slo_ms", {}).get(f"{metric}_p99")
            if target:
                ax.axvline(target, color="red", ls="--", lw=1)
            ax.set_xlabel(f"p99 {metric.upper()} (ms)")
        axes[0].set_ylabel("output tok/s")
        axes[0].legend(fontsize=8)
        fig.suptitle("Pareto front: throughput vs p99 latency (red: the SLO target)")
        out["pareto.png"] = _png(fig)
        plt.close(fig)

    paired = [(t.predicted.value, t.value) for t in done if t.fidelity != "sim" and t.predicted is not None
              and t.predicted.value is not None and t.value is not None]
    if paired:
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        ax.scatter([p for p, _ in paired], [m for _, m in paired], color="tab:orange")
        top = max(max(p, m) for p, m in paired) * 1.1 or 1.0
        ax.plot([0, top], [0, top], color="gray", lw=1)
        ax.set_xlabel("predicted output tok/s")
        ax.set_ylabel("measured output tok/s")
        ax.set_title("measured vs predicted")
        out["predicted.png"] = _png(fig)
        plt.close(fig)

    if plan is not None and plan.gpu_memory_bytes:
        parts = {"weights": plan.weights_bytes, "activations": plan.activation_bytes,
                 "CUDA graphs": plan.cuda_graph_bytes, "other": plan.other_bytes, "KV cache": plan.free_for_kv_bytes}
        fig, ax = plt.subplots(figsize=(7, 1.8))
        left = 0.0
        for name, nbytes in parts.items():
            ax.barh([0], [nbytes / GIB], left=left, label=f"{name} {nbytes / GIB:.1f} GiB")
            left += nbytes / GIB
        ax.axvline(plan.gpu_memory_bytes / GIB, color="black", lw=1)
        ax.set_yticks([])
        ax.set_xlabel("GiB")
        ax.set_title(f"memory plan of the best config on {plan.gpu}")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.45))
        out["plan.png"] = _png(fig)
        plt.close(fig)
    return out


def markdown(best: Best, trials: list[TrialRecord], images: list[str], fleet: FleetPlan | None = None,
             versus: VersusDefaults | None = None) -> str:
    done = [t for t in trials if t.state == "complete"]
    counts = {level: sum(1 for t in done if t.fidelity == level) for level in COLORS}
    lines = [f"# tunekv search report: {best.study}", ""]
    lines += [f"- {line}" for line in header(best)]
    unfinished = len(trials) - len(done)
    ended = f"; {unfinished} unfinished (stopped or failed)" if unfinished else ""
    lines += ["", f"Trials: {len(trials)} ({counts['sim']} simulated, {counts['real']} real, "
                  f"{counts['certified']} certified; {sum(1 for t in done if not t.feasible)} infeasible{ended}).", "",
              "## Best config", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in best.point.items()]
    lines += ["", f"Result: {figures(best)}.", ""]
    if versus is not None:
        per = "" if best.spec.get("gpu", "").startswith("cpu") else " per GPU"
        lines += [f"Against vLLM's defaults: {versus.describe(per)}.", ""]
    if fleet is not None:
        prices = ", ".join(f"${g.price_per_hour_usd:,.2f}/GPU-hour ({g.price_source})" for g in fleet.gpus)
        lines += [f"## The fleet for {fleet.target.describe()} at peak", "", capacity_markdown(fleet), "",
                  f"Price: {prices}; {fleet.assumptions()}.", ""]
    if best.outcome.get("certify"):
        lines += ["Certification (fresh seeds and request orders; p99 with its bootstrap 95% interval):", "",
                  "| seed | output tok/s | p99 TTFT ms | p99 ITL ms |", "|---|---|---|---|"]
        for run in best.outcome["certify"]:
            ttft_ci, itl_ci = run["ttft_p99_ci95"], run["itl_p99_ci95"]
            lines.append(f"| {run['seed']} | {run['output_throughput_tok_s']:.1f} | {run['ttft_p99_ms']:.0f} "
                         f"[{ttft_ci[0]:.0f}, {ttft_ci[1]:.0f}] | {run['itl_p99_ms']:.1f} "
                         f"[{itl_ci[0]:.1f}, {itl_ci[1]:.1f}] |")
        lines.append("")
    top, seen = [], set()
    for t in sorted((t for t in done if t.feasible), key=lambda t: (-RANK[t.fidelity], -(t.value or 0))):
        if t.key not in seen:   # a config once, at its highest fidelity
            seen.add(t.key)
            top.append(t)
    top = top[:10]
    if top:
        unit = LOAD_TITLES[best.outcome.get("unit", "users")]
        lines += ["## Top configs (each at its highest fidelity)", "",
                  f"| trial | fidelity | tok/s | capacity ({unit}) | p99 TTFT ms | p99 ITL ms | config |",
                  "|---|---|---|---|---|---|---|"]
        for t in top:
            out = t.outcome
            capacity = "-" if out is None or out.capacity is None else load_cell(out.unit, out.capacity,
                                                                                  out.capacity_capped)
            ttft, itl = _p99(t, "ttft"), _p99(t, "itl")
            knobs = ", ".join(f"{k}={v}" for k, v in (t.point or {}).items())
            lines.append(f"| {t.number} | {t.fidelity} | {t.value:.1f} | {capacity} | "
                         f"{'-' if ttft is None else f'{ttft:.0f}'} | {'-' if itl is None else f'{itl:.1f}'} | "
                         f"{knobs} |")
        lines.append("")
    titles = {"trials.png": "Trials over time", "pareto.png": "Throughput vs p99 latency",
              "predicted.png": "Measured vs predicted", "plan.png": "Memory plan"}
    for name in images:
        lines += [f"## {titles[name]}", "", f"![{titles[name]}]({name})", ""]
    return "\n".join(lines)


def write_report(best: Best, study: optuna.Study, out_dir: str | Path, plan: Plan | None,
                 fleet: FleetPlan | None = None) -> Path:
    """report.md and its PNGs in ``out_dir``, each written to a temporary name and renamed."""
    out = Path(out_dir)
    trials = records(study)
    versus = versus_defaults(study, next((t for t in trials if t.number == best.number), None))
    images = _plots(best, trials, plan)
    for name, data in images.items():
        write_atomic(out / name, data)
    path = out / "report.md"
    write_atomic(path, markdown(best, trials, list(images), fleet, versus))
    return path
