"""`tunekv search` once its arguments are checked: the search, its live table (or JSON lines),
the summary and the exports."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console, Group, RenderableType
from rich.live import Live

from tunekv.cli.signals import EXIT_INTERRUPTED, stop_on_signals
from tunekv.export import figures
from tunekv.hardware.gpus import GpuSpec
from tunekv.predict.fleet import TargetLoad
from tunekv.render.fleet import fleet_notes, fleet_table
from tunekv.render.tables import FittedTable, columns
from tunekv.render.trials import (
    CLI_HIDDEN_FIRST,
    beyond_line,
    capacity_words,
    rank,
    table_columns,
    throughput,
    trial_cells,
)
from tunekv.search.checks import CheckedOptions
from tunekv.search.fleet import search_fleet
from tunekv.search.ladder import Event, Search, SearchSummary
from tunekv.search.options import DEFAULT_OUT, SearchOptions
from tunekv.search.records import TrialRow
from tunekv.search.session import PreparedSearch, best_of, prepare_search, write_exports
from tunekv.search.storage import default_url, mask
from tunekv.units import CapacityUnit, clock
from tunekv.workload.metrics import looser_profiles


def run_search(args: argparse.Namespace, options: SearchOptions, checked: CheckedOptions, device: GpuSpec | None,
               console: Console, started: float) -> int:
    """Prepare the search (the model, the space, the study), run it under Ctrl-C and SIGTERM, and
    finish: summary, fleet, exports."""
    json_lines = args.json_lines
    prepared = prepare_search(options, console.print, started, checked)
    progress = Progress(console, prepared.budget_s, json_lines, memory_knob=prepared.task.gpu is not None,
                        unit=prepared.task.unit)
    search = prepared.make_search(progress.on_event)
    progress.search = search
    console.print(f"[bold]tunekv search[/bold]: {prepared.headline()}")
    # Ctrl-C, or SIGTERM: stop the running trial, keep the finished ones, write the exports of the
    # best so far; the same signal again quits at once.
    stopping = "stopping the running trial; completed trials are kept"
    with stop_on_signals(search.request_stop, console, stopping) as signals, progress:
        summary = search.run(prepared.needs_calibration)
    return signals.exit_code(_finish(summary, prepared, args, console, device))


def _finish(summary: SearchSummary, prepared: PreparedSearch, args: argparse.Namespace, console: Console,
            device: GpuSpec | None) -> int:
    """The summary first (best config, counts, how to resume and export), then the exports: a
    file that cannot be written (a full disk) is said in one line, exit 1; the study keeps every
    trial, so `tunekv export` writes them later."""
    study, name, url = prepared.study, prepared.name, prepared.url
    storage_flag = "" if url == default_url(DEFAULT_OUT) else f" --storage '{mask(url)}'"
    best = best_of(study) if summary.best is not None else None
    export_format = "report" if best is not None and not best.has_config else "vllm"   # a deployment's capacity
    export_hint = f"tunekv export --study {name}{storage_flag} --format {export_format}"
    if best is not None and not best.has_config:
        console.print(f"[bold]capacity[/bold] (trial {best.number}): {best.fidelity_words()}")
        console.print(f"  {figures(best)}")
    elif best is not None:
        assert summary.best is not None
        on_cpu = prepared.task.gpu is None   # gpu_memory_utilization is held, and means nothing, on a CPU
        console.print(f"[bold]best config[/bold] (trial {best.number}, {summary.best.fidelity}): "
                      + ", ".join(f"{k}={v}" for k, v in best.point.items()
                                  if not (on_cpu and k == "gpu_memory_utilization")))
        console.print(f"  {figures(best)}; {best.fidelity_words()}")
    if summary.defaults is not None:
        console.print(f"  {summary.defaults.describe(' per GPU' if prepared.task.gpu is not None else '')}",
                      soft_wrap=not console.is_terminal, markup=False)
    if summary.beyond is not None:
        console.print(beyond_line(summary.beyond.row(), prepared.task.local_gpus), soft_wrap=not console.is_terminal)
    counts = ", ".join(f"{n} {k}" for k, n in summary.counts.items())
    short = (f"; the {summary.time_left_s:.0f} s left were too few for another trial"
             if summary.reason == "budget spent" and summary.time_left_s >= 2 else "")
    console.print(f"search ended ({summary.reason}) after {summary.elapsed_s:.0f} s{short}: {counts} trials. "
                  f"Resume: the same command. Export: {export_hint}")
    fleet = None
    if best is not None and device is not None and best.has_config:
        fleet = search_fleet(TargetLoad.parse(args.target_load), device, study)
        console.print(fleet_table(fleet))
        for line in fleet_notes(fleet):
            console.print(f"  {line}", soft_wrap=not console.is_terminal, markup=False)
    if best is not None:
        try:
            written = write_exports(best, study, prepared.out, fleet)
        except OSError as exc:
            print(f"error: could not write {exc.filename or prepared.out} ({exc.strerror or exc}); the study keeps "
                  f"every trial: {export_hint} (or another --format) writes them later", file=sys.stderr)
            return 1
        console.print(f"  wrote {', '.join(str(p) for p in written)}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.best is None:
        if sum(summary.counts.values()) == 0:
            console.print("[red]no trial finished inside the budget; give the search a longer --budget[/red]")
            return 1
        if summary.broken:
            print(f"error: every request of the measured trials failed; {summary.closest}", file=sys.stderr)
            return 1
        looser = looser_profiles(prepared.slo)
        which = f" ({', '.join(looser)})" if looser else ""
        print(f"error: no config met the SLO ({study.user_attrs['spec']['slo']}); "
              f"{summary.closest or 'none could run'}; a looser --slo{which} or a faster device is needed",
              file=sys.stderr)
        return 2
    return 0


class Progress:
    """The live table (rich) or one JSON object per line."""

    ROWS = 14

    def __init__(self, console: Console, budget_s: float, json_lines: bool, memory_knob: bool = True,
                 unit: CapacityUnit = "users") -> None:
        self.console, self.budget_s, self.json_lines = console, budget_s, json_lines
        self.memory_knob, self.unit = memory_knob, unit
        self.rows: list[TrialRow] = []
        self.best: TrialRow | None = None
        self.stage = "starting"
        self.notes: list[str] = []
        self.search: Search | None = None
        self.live = None if json_lines else Live(console=console, get_renderable=self.render, refresh_per_second=2,
                                                 transient=False)

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.console.print()

    def on_event(self, event: Event) -> None:
        if self.json_lines:
            print(event.to_json(), flush=True)
            return
        if event.trial is not None:
            row = event.trial
            self.rows.append(row)
            if row.feasible and (self.best is None or rank(row) > rank(self.best)):
                self.best = row
        elif event.kind == "stage":
            self.stage = f"{event.data['name']}: {event.data['detail']}"
        elif event.kind == "note":
            self.notes = (self.notes + [event.data["message"]])[-3:]

    def render(self) -> Group:
        table = FittedTable(f"tunekv search: {self.stage}",
                            columns(table_columns("cli", self.unit), ("fidelity", "kv", "ok"), CLI_HIDDEN_FIRST),
                            [[trial_cells(row, "cli", self.memory_knob) for row in self.rows[-self.ROWS:]]])
        left = max(0.0, self.search.time_left()) if self.search else self.budget_s
        best = "none yet" if self.best is None else (
            f"trial {self.best.number} ({self.best.fidelity}): {throughput(self.best, self.memory_knob)} "
            f"{capacity_words(self.best)}")
        lines: list[RenderableType] = [table, f"best so far: {best}   time left: {clock(left)}"]
        return Group(*lines, *self.notes[-3:])
