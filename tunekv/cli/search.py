"""`tunekv search` and `tunekv export`: argument handling, live progress and the output files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import optuna
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from tunekv.cli.signals import EXIT_INTERRUPTED, stop_on_signals
from tunekv.errors import BadInput, RunFailure
from tunekv.export import EXPORTERS, figures
from tunekv.fileio import check_output_path, write_atomic
from tunekv.hardware.gpus import GpuSpec, gpu_preset, parse_price_flags, priced_local_device, with_price
from tunekv.predict.fleet import TargetLoad
from tunekv.render.fleet import fleet_notes, fleet_table
from tunekv.render.results import cli_console
from tunekv.render.trials import beyond_line, rank, throughput, trial_cells, users
from tunekv.search.fleet import search_fleet
from tunekv.search.ladder import Event, Search, SearchSummary, records
from tunekv.search.options import DEFAULT_OUT, SearchOptions
from tunekv.search.records import TrialRow
from tunekv.search.session import (
    MAX_STORAGE_URL,
    MAX_STUDY_NAME,
    PreparedSearch,
    best_of,
    plan_of,
    prepare_search,
    write_exports,
)
from tunekv.search.storage import DEFAULT_DB, default_url, mask, open_storage
from tunekv.units import clock


# --- search --------------------------------------------------------------------------------
def search_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    json_lines = args.json_lines
    console = Console(stderr=True) if json_lines else cli_console()
    options = SearchOptions.from_args(args)
    if options.startup_timeout is not None and options.server is None and options.server_cmd is None:
        raise BadInput("--startup-timeout goes with --server or --server-cmd (it bounds a launched server's start-up)")
    device = _priced_device(args, options)
    prepared = prepare_search(options, console.print, started)
    progress = Progress(console, prepared.budget_s, json_lines, memory_knob=prepared.task.gpu is not None)
    search = prepared.make_search(progress.on_event)
    progress.search = search
    console.print(f"[bold]tunekv search[/bold]: {prepared.headline()}")
    # Ctrl-C, or SIGTERM: stop the running trial, keep the finished ones, write the exports of the
    # best so far; the same signal again quits at once.
    stopping = "stopping the running trial; completed trials are kept"
    with stop_on_signals(search.request_stop, console, stopping) as signals, progress:
        summary = search.run(prepared.needs_calibration)
    return signals.exit_code(_finish(summary, prepared, args, console, device))


def _priced_device(args: argparse.Namespace, options: SearchOptions) -> GpuSpec | None:
    """With --target-load, the device the fleet is made of, with its price (a preset's, --price or
    the prices file); BadInput for a bad load or price, or a device with none. None without it."""
    if args.target_load is None:
        if args.price:
            raise BadInput("--price goes with --target-load (it prices the fleet that carries a target)")
        return None
    TargetLoad.parse(args.target_load)
    if options.rate is not None or options.concurrency is not None:
        raise BadInput("--target-load sizes the fleet from the capacity under the SLO; leave out --rate and "
                       "--concurrency")
    prices = parse_price_flags(args.price)
    if options.gpu not in (None, "local"):
        return with_price(gpu_preset(options.gpu), prices)
    return priced_local_device(prices)


def _finish(summary: SearchSummary, prepared: PreparedSearch, args: argparse.Namespace, console: Console,
            device: GpuSpec | None) -> int:
    """The summary first (best config, counts, how to resume and export), then the exports: a
    file that cannot be written (a full disk) is said in one line, exit 1; the study keeps every
    trial, so `tunekv export` writes them later."""
    study, name, url = prepared.study, prepared.name, prepared.url
    storage_flag = "" if url == default_url(DEFAULT_OUT) else f" --storage '{mask(url)}'"
    export_hint = f"tunekv export --study {name}{storage_flag} --format vllm"
    best = best_of(study) if summary.best is not None else None
    if best is not None and not best.has_config:
        console.print(f"[bold]capacity[/bold] (trial {best.number}): {best.fidelity_words()}")
        console.print(f"  {figures(best)}")
    elif best is not None:
        assert summary.best is not None
        console.print(f"[bold]best config[/bold] (trial {best.number}, {summary.best.fidelity}): "
                      + ", ".join(f"{k}={v}" for k, v in best.point.items()))
        console.print(f"  {figures(best)}; {best.fidelity_words()}")
    if summary.beyond is not None:
        console.print(beyond_line(summary.beyond.row(), prepared.task.local_gpus), soft_wrap=True)
    counts = ", ".join(f"{n} {k}" for k, n in summary.counts.items())
    console.print(f"search ended ({summary.reason}) after {summary.elapsed_s:.0f} s: {counts} trials. "
                  f"Resume: the same command. Export: {export_hint}")
    fleet = None
    if best is not None and device is not None and best.has_config:
        fleet = search_fleet(TargetLoad.parse(args.target_load), device, study)
        console.print(fleet_table(fleet))
        for line in fleet_notes(fleet):
            console.print(f"  {line}", soft_wrap=True, markup=False)
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
def _study_device(study: optuna.Study, flags: list[str]) -> GpuSpec:
    """The device a study searched (its GPU preset, else the device it recorded), priced for a fleet."""
    spec = study.user_attrs["spec"]
    prices = parse_price_flags(flags)
    if spec.get("gpu_preset"):
        return with_price(gpu_preset(spec["gpu_preset"]), prices)
    return priced_local_device(prices, str(spec["gpu"]))


def export_command(args: argparse.Namespace) -> int:
    if not 1 <= len(args.study) <= MAX_STUDY_NAME:
        raise BadInput(f"--study takes a name of 1 to {MAX_STUDY_NAME} characters, got {len(args.study)}")
    if args.storage is not None and len(args.storage) > MAX_STORAGE_URL:
        raise BadInput(f"--storage takes a URL of at most {MAX_STORAGE_URL} characters, got {len(args.storage)}")
    report = args.format == "report"
    if args.target_load is not None:
        if not report:
            raise BadInput("--target-load goes with --format report (the report adds the fleet for the load)")
        TargetLoad.parse(args.target_load)
        parse_price_flags(args.price)
    elif args.price:
        raise BadInput("--price goes with --target-load (it prices the fleet that carries a target)")
    out = Path(args.out or f"{args.study}-report") if args.out or report else None
    if out is not None:  # before the study is read: an export that cannot be written is refused at once
        check_output_path(out, "--out", directory=report)
    if args.storage is None:
        db = Path(DEFAULT_OUT) / DEFAULT_DB
        if not db.is_file():
            raise BadInput(f"no search storage at ./{db}; pass --storage (the URL tunekv search used)")
        url = default_url(DEFAULT_OUT)
    else:
        url = args.storage
    storage = open_storage(url, read_only=True)  # an export changes no file of the user's
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        raise BadInput(f"no study '{args.study}' in {mask(url)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=storage)
    if "spec" not in study.user_attrs:
        raise BadInput(f"study '{args.study}' was not made by tunekv search")
    best = best_of(study)
    if best is None:
        raise BadInput(f"study '{args.study}' has no trial that met its SLO yet")
    if not best.has_config and args.format != "report":
        raise BadInput(f"study '{args.study}' measured a running deployment's capacity, not a config: it has only "
                       "--format report")
    console = cli_console()
    if args.format == "report":
        from tunekv.search.report import write_report

        assert out is not None
        fleet = None
        if args.target_load is not None and best.has_config:
            fleet = search_fleet(TargetLoad.parse(args.target_load), _study_device(study, args.price), study)
        try:
            path = write_report(best, records(study), out, plan_of(best), fleet)
        except OSError as exc:  # checked before: the disk filled, or the folder went away since
            raise RunFailure(f"could not write {exc.filename or out} ({exc.strerror or exc})") from None
        console.print(f"wrote {path}")
        return 0
    text = EXPORTERS[args.format](best)
    if out is not None:
        try:
            write_atomic(out, text)
        except OSError as exc:
            raise RunFailure(f"could not write {out} ({exc.strerror or exc})") from None
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0
