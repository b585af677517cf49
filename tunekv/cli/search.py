"""`tunekv search` and `tunekv export`: argument handling, live progress and the output files."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import optuna
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from tunekv.errors import BadInput
from tunekv.export import EXPORTERS, figures
from tunekv.fileio import write_atomic
from tunekv.render.results import cli_console
from tunekv.render.trials import beyond_line, rank, throughput, trial_cells, users
from tunekv.search.ladder import Event, Search, SearchSummary, records
from tunekv.search.options import DEFAULT_OUT, SearchOptions
from tunekv.search.records import TrialRow
from tunekv.search.session import PreparedSearch, best_of, plan_of, prepare_search, write_exports
from tunekv.search.storage import DEFAULT_DB, default_url, mask, open_storage
from tunekv.units import clock

EXIT_INTERRUPTED = 130


# --- search --------------------------------------------------------------------------------
def search_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    json_lines = args.json_lines
    console = Console(stderr=True) if json_lines else cli_console()
    prepared = prepare_search(SearchOptions.from_args(args), console.print, started)
    progress = Progress(console, prepared.budget_s, json_lines, memory_knob=prepared.task.gpu is not None)
    search = prepared.make_search(progress.on_event)
    progress.search = search
    console.print(f"[bold]tunekv search[/bold]: {prepared.headline()}")
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:
        if search.interrupted:
            raise KeyboardInterrupt
        search.request_stop()
        console.print("[yellow]Ctrl-C: stopping the running trial; completed trials are kept "
                      "(Ctrl-C again to quit at once)[/yellow]")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        with progress:
            summary = search.run(prepared.needs_calibration)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _finish(summary, prepared, args, console)


def _finish(summary: SearchSummary, prepared: PreparedSearch, args: argparse.Namespace, console: Console) -> int:
    study, name, url = prepared.study, prepared.name, prepared.url
    storage_flag = "" if args.storage is None else f" --storage '{mask(url)}'"
    if summary.best is not None:
        best = best_of(study)
        assert best is not None
        written = write_exports(best, study, prepared.out)
        console.print(f"[bold]best config[/bold] (trial {best.number}, {summary.best.fidelity}): "
                      + ", ".join(f"{k}={v}" for k, v in best.point.items()))
        console.print(f"  {figures(best)}")
        console.print(f"  wrote {', '.join(str(p) for p in written)}")
    if summary.beyond is not None:
        console.print(beyond_line(summary.beyond.row(), prepared.task.local_gpus), soft_wrap=True)
    counts = ", ".join(f"{n} {k}" for k, n in summary.counts.items())
    console.print(f"search ended ({summary.reason}) after {summary.elapsed_s:.0f} s: {counts} trials. "
                  f"Resume: the same command. Export: tunekv export --study {name}{storage_flag} --format vllm")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.best is None:
        if sum(summary.counts.values()) == 0:
            console.print("[red]no trial finished inside the budget; give the search a longer --budget[/red]")
            return 1
        print(f"error: no config met the SLO ({study.user_attrs['spec']['slo']}); "
              f"{summary.closest or 'none could run'}; a looser --slo (relaxed, batch) or a faster device is needed",
              file=sys.stderr)
        return 2
    return 0


class Progress:
    """The live table (rich) or one JSON object per line."""

    ROWS = 14

    def __init__(self, console: Console, budget_s: float, json_lines: bool, memory_knob: bool = True) -> None:
        self.console, self.budget_s, self.json_lines = console, budget_s, json_lines
        self.memory_knob = memory_knob
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
        table = Table(title=f"tunekv search: {self.stage}", title_justify="left")
        for col in ("#", "fidelity", "tp", "block", "max_len", "seqs", "batched", "mem", "chunk", "prefix", "kv",
                    "tok/s/GPU", "users", "p99 TTFT ms", "p99 ITL ms", "ok"):
            table.add_column(col, justify="right" if col not in ("fidelity", "kv", "ok") else "left")
        for row in self.rows[-self.ROWS:]:
            table.add_row(*trial_cells(row, "cli", self.memory_knob))
        left = max(0.0, self.search.time_left()) if self.search else self.budget_s
        best = "none yet" if self.best is None else (
            f"trial {self.best.number} ({self.best.fidelity}): {throughput(self.best)} at "
            f"{users(self.best)} users")
        lines: list[RenderableType] = [table, f"best so far: {best}   time left: {clock(left)}"]
        return Group(*lines, *self.notes[-3:])


# --- export --------------------------------------------------------------------------------
def export_command(args: argparse.Namespace) -> int:
    if args.storage is None:
        db = Path(DEFAULT_OUT) / DEFAULT_DB
        if not db.is_file():
            raise BadInput(f"no search storage at ./{db}; pass --storage (the URL tunekv search used)")
        url = default_url(DEFAULT_OUT)
    else:
        url = args.storage
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).expanduser().is_file():
            raise BadInput(f"no search storage at {url[len('sqlite:///'):]}")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        raise BadInput(f"no study '{args.study}' in {mask(url)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=storage)
    if "spec" not in study.user_attrs:
        raise BadInput(f"study '{args.study}' was not made by tunekv search")
    best = best_of(study)
    if best is None:
        raise BadInput(f"study '{args.study}' has no trial that met its SLO yet")
    console = cli_console()
    if args.format == "report":
        from tunekv.search.report import write_report

        out = Path(args.out or f"{args.study}-report")
        path = write_report(best, records(study), out, plan_of(best))
        console.print(f"wrote {path}")
        return 0
    text = EXPORTERS[args.format](best)
    if args.out:
        target = Path(args.out)
        if target.is_dir():
            raise BadInput(f"--out {args.out} is a directory; give a file name")
        write_atomic(target, text)
        console.print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0
