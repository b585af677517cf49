"""Printing bench results: a rich table, vLLM's "Serving Benchmark Result" block, comparison
tables and a terminal chart of throughput against load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from tunekv.render.tables import Column, FittedTable, columns
from tunekv.workload.metrics import DEFINITIONS

if TYPE_CHECKING:  # torch: `tunekv plan` imports this module for its console
    from tunekv.measure.run import RunResult

VARIANT_LEFT = ("variant", "SLO")   # a results table's text columns; the figures align right


def cli_console() -> Console:
    """The console for command output: the terminal's width, or 130 columns when piped so tables
    never wrap names."""
    console = Console()
    return console if console.is_terminal else Console(width=130)


def vllm_block(result: RunResult) -> str:
    """The block vLLM's benchmark_serving prints (people grep it), plus P90 and the p99 interval."""
    m = result.metrics
    title = " Simulated Benchmark Result " if result.simulated else " Serving Benchmark Result "
    lines = ["{s:{c}^50}".format(s=title, c="=")]

    def row(label: str, value: float | int, fmt: str = ".2f") -> None:
        lines.append(f"{label:<40} {value:<10{fmt}}")

    row("Successful requests:", m.completed, "d")
    row("Failed requests:", m.failed, "d")
    load = result.workload.load
    cap = load.concurrency if load.concurrency is not None else load.max_concurrency   # vLLM's --max-concurrency
    if cap is not None:
        row("Maximum request concurrency:", cap, "d")
    if load.rate is not None:
        row("Request rate configured (RPS):", load.rate)
    row("Benchmark duration (s):", m.duration_s)
    row("Total input tokens:", m.input_tokens, "d")
    row("Total generated tokens:", m.output_tokens, "d")
    row("Request throughput (req/s):", m.request_throughput)
    row("Output token throughput (tok/s):", m.output_throughput_tok_s)
    row("Total Token throughput (tok/s):", m.total_throughput_tok_s)
    if result.slo is not None:
        row("Request goodput (req/s):", m.goodput_req_s)
        row("SLO attainment (%):", 100 * m.attainment)
    for s, title, short in ((m.ttft_ms, "Time to First Token", "TTFT"),
                            (m.tpot_ms, "Time per Output Token (excl. 1st token)", "TPOT"),
                            (m.itl_ms, "Inter-token Latency", "ITL"), (m.e2e_ms, "End-to-end Latency", "E2EL")):
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        row(f"Mean {short} (ms):", s.mean)
        row(f"Median {short} (ms):", s.p50)
        row(f"P90 {short} (ms):", s.p90)
        row(f"P99 {short} (ms):", s.p99)
        lo, hi = s.p99_ci95
        lines.append(f"{'P99 ' + short + ' 95% CI (ms):':<40} " + ("n/a" if _nan(lo) else f"[{lo:.2f}, {hi:.2f}]"))
    lines.append("=" * 50)
    return "\n".join(lines)


def print_result(result: RunResult, console: Console) -> None:
    m, kv = result.metrics, result.kv
    sim = f" · SIMULATED on {result.device['name']}" if result.simulated else ""
    rows = []
    for s, label in ((m.ttft_ms, "TTFT ms"), (m.tpot_ms, "TPOT ms"), (m.itl_ms, "ITL ms"), (m.e2e_ms, "E2E ms")):
        lo, hi = s.p99_ci95
        rows.append([label, f"{s.mean:.1f}", f"{s.p50:.1f}", f"{s.p90:.1f}", f"{s.p99:.1f}",
                     "-" if _nan(lo) else f"{lo:.1f}–{hi:.1f}"])
    columns = [Column("metric", "left"), *(Column(title) for title in ("mean", "p50", "p90", "p99", "p99 95% CI"))]
    console.print(FittedTable(f"{result.title} · {result.workload.name} · {result.workload.load.describe()}{sim}",
                              columns, [rows]))
    if kv is not None:
        console.print(f"KV: {kv.num_blocks} blocks of {kv.block_size}, peak used {kv.peak_used_blocks}, "
                      f"peak running {kv.peak_running_seqs}, efficiency {kv.efficiency:.0%}, "
                      f"preemptions {kv.preemptions}")
    if result.client is not None:
        console.print(client_note(result.client))
    console.print(f"[dim]{DEFINITIONS}[/dim]")
    console.print(vllm_block(result), markup=False, highlight=False)


def client_note(client: dict) -> str:
    """One line on what an endpoint run's client saw beside the metrics: short answers, prompts
    the server counted differently, how late sends left, the first errors."""
    lag = client["lag_p99_ms"]
    parts = ["client: closed loop (each user sends when its last answer ends)" if lag is None else
             f"client: sends left at most {lag:.1f} ms late (p99)"]
    if client["behind"]:
        parts.append("the client fell behind its schedule: latencies include its delay, not only the server's")
    if client["shorter"]:
        parts.append(f"{client['shorter']} answers shorter than asked (the server ignored ignore_eos/min_tokens)")
    if client["prompt_mismatch"]:
        parts.append(f"{client['prompt_mismatch']} prompts the server counted differently from the workload")
    if client["ended_early"]:
        parts.append(f"ended early: {client['ended_early']}")
    if client["errors"]:
        parts.append("errors: " + "; ".join(client["errors"]))
    return "; ".join(parts)


def _nan(x: float) -> bool:
    return x != x


def _slo_cells(r: RunResult) -> list[str]:
    """Goodput and the verdict of a run under its SLO."""
    assert r.slo is not None, "a run with an SLO"
    return [f"{r.metrics.goodput_req_s:.2f}", "held" if r.slo.held_by(r.metrics) else "missed"]


def print_comparison(rows: list[tuple[str, RunResult]], console: Console, title: str) -> None:
    """One row per variant (or server). The KV columns are the engine's: servers over HTTP do not
    report them, and their table leaves them out."""
    engine = any(r.kv is not None for _, r in rows)
    slo = any(r.slo is not None for _, r in rows)
    titles = ["variant", *(("peak seqs", "KV eff.") if engine else ()), "out tok/s", "TTFT p50", "TTFT p99",
              "ITL p50", "ITL p99", *(("preempt.",) if engine else ()), *(("goodput req/s", "SLO") if slo else ())]
    cells = []
    for name, r in rows:
        m, kv = r.metrics, r.kv
        row = [name]
        if engine:
            row += ["-" if kv is None else str(kv.peak_running_seqs), "-" if kv is None else f"{kv.efficiency:.0%}"]
        row += [f"{m.output_throughput_tok_s:.1f}", f"{m.ttft_ms.p50:.0f}", f"{m.ttft_ms.p99:.0f}",
                f"{m.itl_ms.p50:.1f}", f"{m.itl_ms.p99:.1f}"]
        if engine:
            row.append("-" if kv is None else str(kv.preemptions))
        if slo:
            row += _slo_cells(r) if r.slo is not None else ["-", "-"]
        cells.append(row)
    kv_note = "; KV eff. = tokens stored / tokens reserved, averaged over steps" if engine else ""
    shown = columns(titles, VARIANT_LEFT, ("ITL p50", "TTFT p50", "goodput req/s"))   # preemptions: what paging saves
    console.print(FittedTable(title, shown, [cells], caption=f"latencies in ms{kv_note}"))
    console.print(f"[dim]{DEFINITIONS}[/dim]")


def print_sweep(kind: str, levels: list[float], rows: dict[str, list[RunResult]], console: Console) -> None:
    """Throughput and p99s per level; with an SLO, goodput and whether the run held it."""
    results_all = [r for rs in rows.values() for r in rs]
    engine = any(r.kv is not None for r in results_all)
    slo = any(r.slo is not None for r in results_all)
    titles = ["variant", kind, "out tok/s", "TTFT p99 ms", "ITL p99 ms",
              *(("peak seqs", "preempt.") if engine else ()), *(("goodput req/s", "SLO") if slo else ())]
    sections = []
    for name, results in rows.items():
        section = []
        for level, r in zip(levels, results, strict=True):
            m, kv = r.metrics, r.kv
            row = [name, f"{level:g}", f"{m.output_throughput_tok_s:.1f}", f"{m.ttft_ms.p99:.0f}",
                   f"{m.itl_ms.p99:.1f}"]
            if engine:
                row += ["-" if kv is None else str(kv.peak_running_seqs), "-" if kv is None else str(kv.preemptions)]
            if slo:
                row += _slo_cells(r) if r.slo is not None else ["-", "-"]
            section.append(row)
        sections.append(section)
    simulated = {r.device["name"] for r in results_all if r.simulated}
    where = f" · SIMULATED on {', '.join(sorted(simulated))}" if simulated else ""
    console.print(FittedTable(f"throughput and p99 latency by {kind}{where}",
                              columns(titles, VARIANT_LEFT, ("preempt.", "peak seqs", "goodput req/s")), sections))
    console.print(chart(levels, {n: [r.metrics.output_throughput_tok_s for r in rs] for n, rs in rows.items()},
                        x_label=kind, y_label="output tok/s"), markup=False, highlight=False)
    console.print(f"[dim]{DEFINITIONS}[/dim]")


def chart(xs: list[float], series: dict[str, list[float]], x_label: str, y_label: str,
          width: int = 56, height: int = 12) -> str:
    """A plain-text line chart: one marker per series, x positions by rank, y scaled to the max."""
    marks = "*o+x#@"
    top = max((v for vs in series.values() for v in vs), default=0.0) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for s, values in enumerate(series.values()):
        for i, v in enumerate(values):
            x = round(i * (width - 1) / max(1, len(xs) - 1))
            y = height - 1 - round(v / top * (height - 1))
            grid[y][x] = marks[s % len(marks)]
    lines = [f"{y_label} (max {top:.1f})"]
    for r, line in enumerate(grid):
        label = f"{top * (height - 1 - r) / (height - 1):8.1f} |" if r % 3 == 0 else "         |"
        lines.append(label + "".join(line))
    lines.append("         +" + "-" * width)
    ticks = [" "] * width
    for i, level in enumerate(xs):
        label = f"{level:g}"
        pos = min(round(i * (width - 1) / max(1, len(xs) - 1)), width - len(label))
        ticks[pos:pos + len(label)] = label
    lines.append("          " + "".join(ticks) + f"  {x_label}")
    lines.append("          " + "   ".join(f"{marks[i % len(marks)]} {n}" for i, n in enumerate(series)))
    return "\n".join(lines)
