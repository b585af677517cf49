"""What `tunekv bench` does the same for its engine and for servers (`--endpoint`): the run's plan
and header, the failures line, and the result file."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tunekv.defaults import warmup_requests
from tunekv.errors import BadInput, RunFailure
from tunekv.fileio import json_safe, write_json
from tunekv.home import tunekv_home
from tunekv.measure.capacity import Capacity, find_capacity
from tunekv.measure.run import BenchPlan, RunResult
from tunekv.measure.variants import load_at
from tunekv.units import CapacityUnit, load_label
from tunekv.workload.loadgen import Load, trace_rate
from tunekv.workload.loadgen import Progress as RunCallback
from tunekv.workload.metrics import SLO
from tunekv.workload.traces import MAX_ARRIVAL_S
from tunekv.workload.workloads import Workload, WorkloadRequest


def bench_plan(args: argparse.Namespace, workload: Workload, requests: list[WorkloadRequest], seed: int, load: Load,
               levels: tuple[str, list[float]] | None, slo: SLO | None, console: Console) -> BenchPlan:
    """The requests with their warm-up (--warmup, else a tenth of an online run's), and the header
    line; a note when some users would have no request of their own to send."""
    sweep = levels is not None
    online = args.find_capacity or sweep or not load.offline
    warmup = args.warmup if args.warmup is not None else (warmup_requests(len(requests)) if online else 0)
    if not 0 <= warmup < len(requests):
        raise BadInput(f"--warmup must be in [0, {len(requests)}) for {len(requests)} requests")
    # how arrivals at a rate come (checked: --burst and --burstiness go with a rate only)
    gaps = "" if args.burstiness == 1.0 else (", evenly spaced" if math.isinf(args.burstiness)
                                              else f", gamma gaps of burstiness {args.burstiness:g}")
    shape = (f" in bursts of {args.burst}" if args.burst > 1 else "") + gaps
    if args.find_capacity:
        unit, start = capacity_start(args, load)
        pace = " the trace's pace" if unit == "x" else ""
        what = f"capacity search under the SLO from {load_label(unit, start)}{pace}{shape}"
    else:
        cap = f", at most {args.max_concurrency} in flight" if args.max_concurrency is not None else ""
        what = f"sweep over {args.sweep}{shape}{cap}" if sweep else load.describe()
    console.print(f"[bold]tunekv bench[/bold]: workload {workload.name}, {len(requests)} requests (seed {seed}, "
                  f"{warmup} warm-up); {what}")
    if workload.trace is not None:
        console.print(f"  {workload.description}")
    measured = len(requests) - warmup
    users = levels[1] if levels is not None and levels[0] == "concurrency" else (
        [load.concurrency] if load.concurrency is not None and not args.find_capacity else [])
    idle = [f"{u:g}" for u in users if u > measured]
    if idle:
        console.print(f"[yellow]  {' and '.join(idle)} users exceed the {measured} measured requests: such a run "
                      f"has at most {measured} at once; give --num-requests (a few per user) to load them[/yellow]")
    return BenchPlan(workload, requests, seed, warmup, slo)


class RunProgress:
    """``with RunProgress(console) as bars:`` a transient bar of each run's measured requests
    (``bars.of(label)`` is a run's ``progress``), on a terminal only: a pipe gets the results
    alone. It redraws twice a second, from its own thread."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> RunProgress:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("requests"), TimeElapsedColumn(), console=self.console, transient=True,
                                refresh_per_second=2)
            self.bar.start()
            self.task = self.bar.add_task("warm-up", total=None)   # until the measured requests go out
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def of(self, label: str) -> RunCallback | None:
        bar, task = self.bar, self.task
        if bar is None or task is None:
            return None

        def progress(ended: int, total: int) -> None:
            bar.update(task, description=label or "measured", completed=ended, total=total)

        return progress


def capacity_start(args: argparse.Namespace, load: Load) -> tuple[CapacityUnit, float]:
    """--find-capacity's unit and first level: Poisson req/s from --rate, users from
    --concurrency, a trace's pace from --trace-speedup (1x when not given) where the run replays
    the trace's arrival times, else users from 1."""
    if args.rate is not None:
        return "req/s", float(args.rate)
    if load.trace:
        return "x", load.speedup
    return "users", float(args.concurrency or 1)


def search_capacity(args: argparse.Namespace, load: Load, plan: BenchPlan,
                    run: Callable[[Load, str], RunResult]) -> Capacity:
    """--find-capacity through ``run`` (a probe's load, and its label for a progress bar), in the
    unit ``capacity_start`` gives: from 1 req/s up to 1000; from 1 user up to one a request; a
    trace from 1/64 of its pace (never so slow that it arrives over more than 24 hours, nor above
    the start) up to 1024x."""
    assert plan.slo is not None, "--find-capacity needs --slo (checked first)"
    unit, start = capacity_start(args, load)
    kind = {"req/s": "rate", "users": "concurrency", "x": "trace-speedup"}[unit]
    if unit == "req/s":
        min_load, max_load = 1.0, 1000.0
    elif unit == "users":
        min_load, max_load = 1.0, float(len(plan.requests))
    else:
        span = max(r.arrival_s or 0.0 for r in plan.requests)
        min_load, max_load = min(start, max(1 / 64, span / MAX_ARRIVAL_S)), 1024.0

    def probe(level: float) -> RunResult:
        return run(load_at(kind, level, args.burst, burstiness=args.burstiness), load_label(unit, level))

    return find_capacity(probe, plan.slo, start, unit, max_load, min_load=min_load,
                         rate_at_1x=trace_rate(plan.requests) if unit == "x" else None)


def probe_verdict(result: RunResult, slo: SLO) -> str:
    """One capacity probe's verdict, with the figures behind it: what broke, or each p99 beside its
    target."""
    m = result.metrics
    if m.completed == 0:
        return "over SLO: no request completed"
    if m.failed:
        return f"over SLO: {m.failed} request{'s' if m.failed != 1 else ''} failed"
    parts = []
    over = []
    for metric, target in slo.targets():
        p99 = m.latency(metric).p99
        text = f"{metric.upper()} p99 {p99:.0f} ms"
        if p99 > target:
            over.append(f"{text} > {target:g}")
        parts.append(text)
    return f"over SLO: {', '.join(over)}" if over else f"within SLO ({', '.join(parts)})"


def print_capacity(cap: Capacity, slo: SLO, console: Console) -> None:
    """The probes a capacity search ran, each with its verdict, and the capacity."""
    for (level, _), run in zip(cap.probes, cap.runs, strict=True):
        console.print(f"  {load_label(cap.unit, level)}: {probe_verdict(run, slo)}")
    console.print(f"[bold]capacity under SLO[/bold] ({slo.describe()}): {cap.describe()}")


def capacity_json(cap: Capacity, slo: SLO) -> dict:
    """The ``capacity`` block of the result file: the answer, and each probe's load, verdict and p99s."""
    probe_runs = [{"load": level, "within_slo": ok, "completed": run.metrics.completed, "failed": run.metrics.failed,
                   **{f"{metric}_p99_ms": run.metrics.latency(metric).p99 for metric in ("ttft", "itl", "tpot", "e2e")},
                   "output_throughput_tok_s": run.metrics.output_throughput_tok_s}
                  for (level, ok), run in zip(cap.probes, cap.runs, strict=True)]
    pace = {} if cap.rate_at_1x is None else {"trace_req_s_at_1x": cap.rate_at_1x}
    return {"unit": cap.unit, "load": cap.load, "at_least": cap.capped, **pace, "probes": cap.probes,
            "probe_runs": probe_runs, "slo": slo.describe()}


def warn_failures(result: RunResult, console: Console, where: str = "") -> None:
    failed = result.metrics.failed
    if failed:
        errors = (result.client or {}).get("errors") or []
        reason = result.first_rejection or (errors[0] if errors else "aborted or not sent before the deadline")
        console.print(f"[yellow]{where + ': ' if where else ''}{failed} requests failed; first reason: "
                      f"{reason}[/yellow]")


def write_result(args: argparse.Namespace, payload: dict, console: Console) -> None:
    """The result JSON to --json. The path was checked before the run; when it fails now (its
    folder went away, the disk filled) the finished run is saved elsewhere and the command says
    where (exit 1)."""
    if not args.json_path:
        return
    try:
        write_json(args.json_path, payload)
    except OSError as exc:
        failed = f"could not write {args.json_path} ({exc.strerror or exc})"
        saved = _save_elsewhere(Path(args.json_path).expanduser(), payload)
        if saved is None:
            sys.stdout.write(json.dumps(json_safe(payload), indent=2) + "\n")
            raise RunFailure(f"{failed}, nor a copy next to it, in the current folder or under "
                             f"{tunekv_home() / 'results'}; the result JSON is above, on standard output") from None
        raise RunFailure(f"{failed}; the result is saved in {saved}") from None
    console.print(f"wrote {args.json_path}")


def _save_elsewhere(path: Path, payload: dict) -> Path | None:
    """``payload`` next to ``path``, else in the current folder, else under TUNEKV_HOME/results,
    as tunekv-bench-<UTC time>.json: where it was written (None: nowhere)."""
    name = f"tunekv-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    folders: list[Path] = []
    for folder in (path.parent, Path("."), tunekv_home() / "results"):
        with contextlib.suppress(OSError):  # the current folder may be gone too
            folder = folder.resolve()
            if folder not in folders:
                folders.append(folder)
    for folder in folders:
        target = folder / f"{name}.json"
        n = 1
        while target.exists():
            target, n = folder / f"{name}-{n}.json", n + 1
        try:
            write_json(target, payload)
        except OSError:
            continue
        return target
    return None
