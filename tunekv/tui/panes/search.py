"""The Search screen: budget, the server real trials run on, start and stop; trials streaming into
a table; best-so-far and Pareto charts; live gauges during real trials (the engine's KV pool and
device memory, or a server's /metrics); pins on knobs mid-search.

The search itself is ``tunekv.search.Search`` (the code behind `tunekv search`), run in a thread
worker that posts every event as a message; the UI thread only draws."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static
from textual_plotext import PlotextPlot

from tunekv.errors import BadInput
from tunekv.render.trials import beyond_line, rank, table_columns, throughput, trial_cells
from tunekv.search.space import KNOBS
from tunekv.tui import charts, last_search
from tunekv.tui.imports import import_heavy
from tunekv.units import CapacityUnit, clock

if TYPE_CHECKING:
    from tunekv.export import Best
    from tunekv.measure.server_metrics import ServerLoad
    from tunekv.search.ladder import Event, Search
    from tunekv.search.options import SearchOptions
    from tunekv.search.records import Fidelity, TrialRow
    from tunekv.search.servers import ServerRunner
    from tunekv.search.session import PreparedSearch
    from tunekv.search.trials import RealRunner

GAUGE_INTERVAL_S = 0.5
# Below this many rows the pane hides its charts, so the trials table keeps room for its rows (80x24
# leaves the pane about 20; the charts need 6 to read).
CHARTS_MIN_HEIGHT = 28
PIN_HINT = "pins apply to the trials a running search starts after them, until it ends"
ENGINE = "engine"       # real trials on tunekv's engine in this process (no server)
ENDPOINT = "endpoint"   # a running deployment: its URL in the field beside the choice
# What real trials run on: the choice's words, and its value (a --server name, ENGINE or ENDPOINT).
SERVER_CHOICES = (("tunekv engine (in this process)", ENGINE), ("tunekv serve", "tunekv"), ("vLLM", "vllm"),
                  ("SGLang", "sglang"), ("TGI", "tgi"), ("a running endpoint", ENDPOINT))
SERVER_NAMES = {"tunekv": "tunekv serve", "vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI",
                "endpoint": "the deployment"}
PLAN_GPU = "plan"   # the Plan screen's GPU: a preset is simulated, this machine's GPU measured
CPU = "cpu"         # a machine with no GPU: real runs on its CPU, as `tunekv search` runs there
WHERE_CHOICES = (("the Plan screen's GPU preset (simulated)", PLAN_GPU),
                 ("this machine's CPU (a demonstration: real runs)", CPU))


@dataclass
class SearchOutcome:
    """How a search ended, for the Search screen's status and the Export screen."""

    reason: str
    interrupted: bool
    counts: dict[Fidelity, int]
    best: Best | None
    written: list[Path]
    closest: str | None
    beyond: str | None = None          # a better config predicted for more GPUs than this machine has
    write_error: str | None = None     # the exports could not be written (which file, why); the study has it all
    defaults: str | None = None        # vLLM's defaults against the best config, as simulated


class SearchPane(Vertical):
    @dataclass
    class Started(Message):
        """The search is prepared (its study opened or resumed, with these finished trials) and runs."""

        search: Search
        prepared: PreparedSearch
        previous: list[TrialRow]

    @dataclass
    class WhereChanged(Message):
        """The user chose where the search runs (a machine with no GPU): on its CPU or not."""

        on_cpu: bool

    @dataclass
    class Progress(Message):
        """One event of the running search: start, stage, trial, note or end."""

        event: Event

    @dataclass
    class Finished(Message):
        outcome: SearchOutcome

    @dataclass
    class Failed(Message):
        """The search could not start (bad settings) or failed while running: one sentence."""

        message: str
        bad_input: bool

    @dataclass
    class Gauges(Message):
        """Live KV pool and device memory use during a real trial (None: nothing to show)."""

        kv_used: int | None
        kv_total: int | None
        mem_used: int | None
        mem_total: int | None

    @dataclass
    class ServerGauges(Message):
        """A server's /metrics during a search: its load (None: no server running, or its /metrics
        unreadable) and the note that says which server and what it reports."""

        load: ServerLoad | None
        note: str

    DEFAULT_CSS = """
    SearchPane { height: 1fr; }
    SearchPane #search-controls { height: auto; margin-top: 1; }
    SearchPane #search-budget { width: 12; }
    SearchPane #search-where { height: 1; }
    SearchPane #search-where Label { width: auto; }
    SearchPane #search-where-kind { width: 52; }
    SearchPane #search-controls Button { margin-left: 1; min-width: 9; }
    SearchPane #search-target { padding-left: 2; width: 1fr; height: auto; }
    SearchPane #search-status { height: auto; min-height: 1; max-height: 3; }
    SearchPane #search-server { height: 1; }
    SearchPane #search-server Label { width: auto; }
    SearchPane #search-server-kind { width: 36; }
    SearchPane #search-endpoint { width: 1fr; margin-left: 1; }
    SearchPane #search-budget-error { color: $error; height: auto; }
    SearchPane #trials { height: 1fr; min-height: 4; }
    SearchPane #charts { height: 1fr; min-height: 6; max-height: 16; }
    SearchPane #gauges, SearchPane #pins { height: 1; }
    SearchPane #gauges Label { width: auto; padding-right: 1; }
    SearchPane #gauges ProgressBar { width: 1fr; }
    SearchPane #gauge-note { color: $text-muted; }
    SearchPane #pin-knob { width: 28; }
    SearchPane #pin-value { width: 14; margin-left: 1; }
    SearchPane #pins Button { margin-left: 1; min-width: 9; }
    SearchPane #pin-note { height: auto; }
    """

    def __init__(self, make_options: Callable[[str, bool], Any], describe_target: Callable[[bool], str],
                 budget: str = "5m", cpu_choice: bool = False, **kwargs: Any) -> None:
        """``make_options(budget, on_cpu)``: a SearchOptions from the Plan screen's fields, or an
        error string; ``describe_target(on_cpu)``: where the search runs, in words. ``cpu_choice``:
        this machine has no GPU, so the search may run on its CPU instead of simulating a preset."""
        super().__init__(**kwargs)
        self.make_options, self.describe_target, self.initial_budget = make_options, describe_target, budget
        self.cpu_choice = cpu_choice
        self.rows: list[TrialRow] = []
        self.search: Search | None = None
        self.prepared: PreparedSearch | None = None
        self.running = False
        self._stop_requested = False
        self.pins: dict[str, str] = {}
        self.stage = ""
        self.best: TrialRow | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-controls"):
            yield Label("budget ")
            yield Input(self.initial_budget, placeholder="90s, 5m, 1h", id="search-budget", compact=True)
            yield Button("Start", id="search-start", variant="success", compact=True)
            yield Button("Stop", id="search-stop", variant="error", disabled=True, compact=True)
            yield Static("", id="search-target")
        if self.cpu_choice:
            with Horizontal(id="search-where"):
                yield Label("search on ")
                yield Select(WHERE_CHOICES, value=PLAN_GPU, allow_blank=False, id="search-where-kind", compact=True)
        with Horizontal(id="search-server"):
            yield Label("real trials on ")
            yield Select(SERVER_CHOICES, value=ENGINE, allow_blank=False, id="search-server-kind", compact=True)
            yield Input(placeholder="its URL, such as http://127.0.0.1:8000", id="search-endpoint", compact=True)
        yield Static("", id="search-budget-error")
        yield Static("press Start (or s) to search the settings for the most throughput under the SLO",
                     id="search-status")
        table: DataTable = DataTable(id="trials", zebra_stripes=True, cursor_type="row")
        yield table
        with Horizontal(id="charts"):
            yield PlotextPlot(id="best-chart")
            yield PlotextPlot(id="pareto-chart")
        with Horizontal(id="gauges"):
            yield Label("KV blocks", id="kv-label")
            yield ProgressBar(total=1, show_eta=False, id="kv-gauge")
            yield Label("  device memory")
            yield ProgressBar(total=1, show_eta=False, id="mem-gauge")
        yield Static("live gauges show during real trials on this machine", id="gauge-note")
        with Horizontal(id="pins"):
            yield Select([(k, k) for k in KNOBS], prompt="pin a knob", id="pin-knob", compact=True)
            yield Input(placeholder="value", id="pin-value", compact=True)
            yield Button("Pin", id="pin", compact=True)
            yield Button("Release", id="release", compact=True)
        yield Static(PIN_HINT, id="pin-note")

    def on_mount(self) -> None:
        self.set_columns()
        self.query_one("#search-budget-error").display = False
        self.query_one("#search-endpoint").display = False
        self.refresh_target()
        self.set_interval(1.0, self.tick)
        self.redraw_charts()

    def set_columns(self, unit: CapacityUnit = "users") -> None:
        """The trial table's columns (emptied), its capacity column counting ``unit``."""
        table = self.query_one("#trials", DataTable)
        table.clear(columns=True)
        for col in table_columns("tui", unit):
            table.add_column(col, key=col)

    @property
    def on_cpu(self) -> bool:
        """The search runs on this machine's CPU (chosen where there is no GPU)."""
        return self.cpu_choice and self.query_one("#search-where-kind", Select).value == CPU

    def on_resize(self) -> None:
        self.query_one("#charts").display = self.size.height >= CHARTS_MIN_HEIGHT

    def refresh_target(self) -> None:
        self.query_one("#search-target", Static).update(Text(self.describe_target(self.on_cpu), style="dim"))

    # --- start and stop -----------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {"search-start": self.start, "search-stop": self.stop, "pin": self.pin, "release": self.release}
        actions[event.button.id or ""]()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id in ("search-budget", "search-endpoint"):
            self.start()
        elif event.input.id == "pin-value":
            self.pin()

    def start(self) -> None:
        if self.running:
            self.notify("a search is already running", severity="warning")
            return
        budget = self.query_one("#search-budget", Input).value
        options = self.make_options(budget, self.on_cpu)
        error_box = self.query_one("#search-budget-error", Static)
        if isinstance(options, str):
            error_box.update(options)
            error_box.display = True
            return
        error_box.display = False
        self.begin(dataclasses.replace(options, **self.server_fields()))

    def server_fields(self) -> dict[str, str | None]:
        """The SearchOptions fields of the server choice: ``server`` (None: the engine in this
        process) or ``endpoint`` (the URL as typed; prepare_search says what is wrong with it)."""
        choice = self.query_one("#search-server-kind", Select).value
        if choice == ENDPOINT:
            return {"endpoint": self.query_one("#search-endpoint", Input).value.strip()}
        return {"server": None if choice == ENGINE else str(choice)}

    def show_server(self, options: SearchOptions) -> None:
        """Where the search runs and the server choice, as ``options`` have them (a resumed search's)."""
        if self.cpu_choice:
            with self.prevent(Select.Changed):   # a resumed search keeps its own model and SLO
                self.query_one("#search-where-kind", Select).value = CPU if options.gpu is None else PLAN_GPU
            self.refresh_target()
        choice = ENDPOINT if options.endpoint is not None else (options.server or ENGINE)
        if choice in (value for _, value in SERVER_CHOICES):
            self.query_one("#search-server-kind", Select).value = choice
        if options.endpoint is not None:
            self.query_one("#search-endpoint", Input).value = options.endpoint

    def begin(self, options: SearchOptions) -> None:
        """Run a search with ``options`` (also how a resumed study starts)."""
        self.running, self._stop_requested = True, False
        self.rows, self.best, self.pins = [], None, {}
        self.query_one("#trials", DataTable).clear()
        self.query_one("#search-budget", Input).value = options.budget
        self.show_server(options)
        self.query_one("#search-start", Button).disabled = True
        self.query_one("#search-stop", Button).disabled = False
        self.set_status("checking the settings and opening the study ...")
        self.redraw_charts()
        self.run_search(options)

    def stop(self) -> None:
        if not self.running:
            return
        self._stop_requested = True
        if self.search is not None:
            self.search.request_stop()
        self.set_status("stopping: the running trial ends at its next engine step; finished trials are kept",
                        "yellow")

    def set_status(self, text: str, style: str = "") -> None:
        self.query_one("#search-status", Static).update(Text(text, style=style))

    def tick(self) -> None:
        if self.running and self.search is not None and not self._stop_requested:
            left = max(0.0, self.search.time_left())
            best = "none yet" if self.best is None else (
                f"trial {self.best.number} ({self.best.fidelity}) "
                f"{throughput(self.best, self.prepared is None or self.prepared.task.gpu is not None)}")
            self.set_status(f"{self.stage}   best: {best}   time left {clock(left)}")

    def progress(self, event: Event) -> None:
        """From the search's thread: one event, to the UI."""
        self.post_message(self.Progress(event))

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, options: SearchOptions) -> None:
        import gc
        import traceback

        import_heavy()

        from tunekv.engine.errors import ConfigError
        from tunekv.search.ladder import Event, records
        from tunekv.search.session import best_of, prepare_search, write_exports

        def say(message: str) -> None:
            self.post_message(self.Progress(Event("note", {"message": Text.from_markup(message).plain})))

        try:
            prepared = prepare_search(options, say)
        except (BadInput, ConfigError) as exc:
            self.post_message(self.Failed(str(exc), True))
            return
        except Exception as exc:  # the storage or the model failed to open
            self.post_message(self.Failed(f"{type(exc).__name__}: {exc}", False))
            return
        search = prepared.make_search(self.progress)
        # Set here, not when Started arrives: a stop (or the app closing) in between must reach it.
        self.search = search
        if self._stop_requested:
            search.request_stop()
        previous = [t.row() for t in records(prepared.study) if t.finished]
        self.post_message(self.Started(search, prepared, previous))
        record = last_search.LastSearch(options.to_json(), prepared.name, prepared.url, "running")
        _save_quietly(record)
        # optuna and the model are loaded now: out of the collector with them (see TuneKVApp.freeze_heap).
        gc.freeze()
        written: list[Path] = []
        write_error = None
        try:
            summary = search.run(prepared.needs_calibration)
            best = best_of(prepared.study) if summary.best is not None else None
            if best is not None:
                try:
                    written = write_exports(best, prepared.study, prepared.out)
                except OSError as exc:  # a full disk: the search still ended, and its study keeps every trial
                    write_error = (f"could not write {exc.filename or prepared.out} ({exc.strerror or exc}); "
                                   "the study keeps every trial: write them from Export")
        except Exception as exc:
            import tempfile

            fd, log = tempfile.mkstemp(prefix="tunekv-error-", suffix=".log")
            with open(fd, "w") as f:
                traceback.print_exc(file=f)
            self.post_message(self.Failed(f"{type(exc).__name__}: {exc} (details: {log})", False))
            return
        record.state = "interrupted" if summary.interrupted else "finished"
        _save_quietly(record)
        beyond = None if summary.beyond is None else beyond_line(summary.beyond.row(), prepared.task.local_gpus)
        versus = None if summary.defaults is None else summary.defaults.describe(
            " per GPU" if prepared.task.gpu is not None else "")
        self.post_message(self.Finished(SearchOutcome(summary.reason, summary.interrupted, summary.counts, best,
                                                      written, summary.closest, beyond, write_error, versus)))

    def on_search_pane_started(self, message: Started) -> None:
        self.search = message.search
        self.prepared = message.prepared
        self.set_columns(self.prepared.task.unit)
        for row in message.previous:
            self.add_row(row)
        self.stage = "starting"
        self.set_status(self.prepared.headline())
        from tunekv.search.servers import ServerRunner
        from tunekv.search.trials import RealRunner

        runner = self.prepared.runner
        self.query_one("#kv-label", Label).update("KV cache" if isinstance(runner, ServerRunner) else "KV blocks")
        if isinstance(runner, RealRunner):
            self.gauge_worker(runner)
        elif isinstance(runner, ServerRunner):
            self.server_gauge_worker(runner, SERVER_NAMES.get(runner.spec.kind, runner.spec.name))

    def on_search_pane_progress(self, message: Progress) -> None:
        event = message.event
        if event.trial is not None:
            self.add_row(event.trial)
        elif event.kind == "stage":
            self.stage = f"{event.data['name']}: {event.data['detail']}"
            self.tick()
        elif event.kind == "note":
            self.notify(event.data["message"], timeout=6)

    def add_row(self, row: TrialRow) -> None:
        self.rows.append(row)
        if row.feasible and (self.best is None or rank(row) > rank(self.best)):
            self.best = row
        table = self.query_one("#trials", DataTable)
        memory_knob = self.prepared is None or self.prepared.task.gpu is not None
        table.add_row(*trial_cells(row, "tui", memory_knob), key=str(row.number))
        table.move_cursor(row=table.row_count - 1)
        self.redraw_charts()

    def redraw_charts(self) -> None:
        best_plot = self.query_one("#best-chart", PlotextPlot)
        charts.best_so_far(best_plot.plt, self.rows)
        best_plot.refresh()
        pareto_plot = self.query_one("#pareto-chart", PlotextPlot)
        target = self.prepared.slo.ttft_p99_ms if self.prepared is not None else None
        charts.pareto(pareto_plot.plt, self.rows, target)
        pareto_plot.refresh()

    def on_search_pane_finished(self, message: Finished) -> None:
        from tunekv.export import figures

        outcome = message.outcome
        self.finish()
        counts = ", ".join(f"{n} {k}" for k, n in outcome.counts.items())
        best = "" if outcome.best is None else (
            f"best: trial {outcome.best.number} ({outcome.best.fidelity}), {figures(outcome.best)}")
        if outcome.best is not None and outcome.write_error is not None:
            self.set_status(f"search ended ({outcome.reason}): {counts} trials; {best}; {outcome.write_error}", "red")
        elif outcome.best is not None:
            where = self.prepared.out if self.prepared is not None else "the output folder"
            text = (f"search ended ({outcome.reason}): {counts} trials; {best}; wrote {len(outcome.written)} files "
                    f"to {where} "
                    "(see Export)" + (f"; {outcome.beyond}" if outcome.beyond else "")
                    + (f"\n{outcome.defaults}" if outcome.defaults else ""))
            self.set_status(text, "green")
        else:
            why = outcome.closest or "no trial finished"
            self.set_status(f"search ended ({outcome.reason}): {counts} trials; no config met the SLO: {why}",
                            "yellow")

    def on_search_pane_failed(self, message: Failed) -> None:
        self.finish()
        self.set_status(("cannot start: " if message.bad_input else "search failed: ") + message.message, "red")

    def finish(self) -> None:
        self.running = False
        self.search = None
        if self.pins:
            released = ", ".join(f"{k}={v}" for k, v in self.pins.items())
            self.pin_note(f"released with the search: {released}; {PIN_HINT}")
            self.pins = {}
        self.query_one("#search-start", Button).disabled = False
        self.query_one("#search-stop", Button).disabled = True
        for gauge in ("#kv-gauge", "#mem-gauge"):
            self.query_one(gauge, ProgressBar).update(total=1, progress=0)

    def on_unmount(self) -> None:
        """The app is closing: a search still running stops at its next engine step."""
        self._stop_requested = True
        if self.search is not None:
            self.search.request_stop()

    # --- live gauges --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="gauges")
    def gauge_worker(self, runner: RealRunner) -> None:
        """While the search runs: the running real trial's KV pool and this device's memory."""
        import torch
        from textual.worker import get_current_worker

        worker = get_current_worker()
        while self.running and not worker.is_cancelled:
            engine = runner.engine
            kv_used = kv_total = mem_used = mem_total = None
            if engine is not None:
                try:
                    stats = engine.kv_stats()
                    kv_used, kv_total = stats.used_blocks, stats.num_blocks
                except RuntimeError:   # the engine thread changed the pool while it was read
                    pass
                if torch.cuda.is_available():
                    free, mem_total = torch.cuda.mem_get_info()
                    mem_used = mem_total - free
            self.post_message(self.Gauges(kv_used, kv_total, mem_used, mem_total))
            time.sleep(GAUGE_INTERVAL_S)

    def on_search_pane_gauges(self, message: Gauges) -> None:
        m = message
        self.query_one("#kv-gauge", ProgressBar).update(total=m.kv_total or 1, progress=m.kv_used or 0)
        self.query_one("#mem-gauge", ProgressBar).update(total=m.mem_total or 1, progress=m.mem_used or 0)
        parts = []
        if m.kv_total:
            parts.append(f"KV {m.kv_used:,} / {m.kv_total:,} blocks")
        if m.mem_total:
            parts.append(f"device {(m.mem_used or 0) / 2**30:.1f} / {m.mem_total / 2**30:.1f} GiB")
        self.query_one("#gauge-note", Static).update(
            "   ".join(parts) or "no real trial running (simulated trials have no live memory)")

    @work(thread=True, exclusive=True, group="gauges")
    def server_gauge_worker(self, runner: ServerRunner, name: str) -> None:
        """While the search runs: what the server's /metrics says (a launched server's during each
        real trial, a running deployment's throughout); ``name`` is how the note calls it."""
        from textual.worker import get_current_worker

        worker = get_current_worker()
        while self.running and not worker.is_cancelled:
            server = runner.current
            if runner.target is not None:
                url = runner.target.url.removesuffix("/v1")
                self.post_message(server_gauges(url, f"{name} at {url}"))
            elif server is not None:
                self.post_message(server_gauges(server.url, f"{name} (pid {server.pid})"))
            else:
                self.post_message(self.ServerGauges(None, f"no {name} running now: one starts for each real trial"))
            time.sleep(GAUGE_INTERVAL_S)

    def on_search_pane_server_gauges(self, message: ServerGauges) -> None:
        kv = None if message.load is None else message.load.kv_usage
        self.query_one("#kv-gauge", ProgressBar).update(total=100, progress=0 if kv is None else 100 * kv)
        self.query_one("#gauge-note", Static).update(message.note)

    # --- where it runs, the server choice and pins ----------------------------------------
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "search-where-kind":
            event.stop()
            self.post_message(self.WhereChanged(self.on_cpu))
            self.refresh_target()
            return
        if event.select.id == "search-server-kind":
            event.stop()
            self.query_one("#search-endpoint").display = event.value == ENDPOINT
            return
        if event.select.id != "pin-knob":
            return
        event.stop()
        knob = event.value
        if knob is Select.NULL:
            return
        if self.prepared is not None:
            values = ", ".join(str(v) for v in self.prepared.full_space.values(str(knob)))
            self.query_one("#pin-note", Static).update(f"{knob}: candidates {values}")
        if str(knob) in self.pins:
            self.query_one("#pin-value", Input).value = self.pins[str(knob)]

    def pin(self) -> None:
        knob = self.query_one("#pin-knob", Select).value
        raw = self.query_one("#pin-value", Input).value.strip()
        if knob is Select.NULL or not raw:
            self.pin_note("choose a knob and type a value to pin it to", error=True)
            return
        self.apply_pins({**self.pins, str(knob): raw})

    def release(self) -> None:
        knob = self.query_one("#pin-knob", Select).value
        if knob is Select.NULL or str(knob) not in self.pins:
            self.pin_note("choose a pinned knob to release it" + (
                f" (pinned: {', '.join(self.pins)})" if self.pins else " (nothing is pinned)"), error=True)
            return
        self.apply_pins({k: v for k, v in self.pins.items() if k != knob})

    def apply_pins(self, pins: dict[str, str]) -> None:
        if not self.running or self.search is None or self.prepared is None:
            self.pin_note("start a search first: pins change the running search's space", error=True)
            return
        try:
            space = self.prepared.pinned(pins)
        except BadInput as exc:
            self.pin_note(str(exc).replace("--fix ", ""), error=True)
            return
        self.pins = pins
        self.search.set_space(space)
        self.pin_note("pinned: " + (", ".join(f"{k}={v}" for k, v in pins.items()) or "nothing") +
                      " (the trials this search starts from now on; released when it ends)")

    def pin_note(self, text: str, error: bool = False) -> None:
        note = self.query_one("#pin-note", Static)
        note.update(Text(text, style="red" if error else "green"))


def server_gauges(url: str, where: str) -> SearchPane.ServerGauges:
    """One reading of the server at ``url`` (its root), for the gauges; ``where`` names it."""
    from tunekv.measure.server_metrics import NoMetrics, read_server_load

    try:
        load = read_server_load(url)
    except NoMetrics as exc:
        return SearchPane.ServerGauges(None, f"{where}: no reading from its /metrics ({exc})")
    return SearchPane.ServerGauges(load, f"{where}: {load_words(load)}")


def load_words(load: ServerLoad) -> str:
    """A server's load for the gauge note: KV cache usage (or that it has no such gauge), requests."""
    if load.empty:
        return "its /metrics has none of the gauges tunekv reads (KV cache usage, requests running and waiting)"
    kv = "no KV cache gauge in its /metrics" if load.kv_usage is None else f"KV cache {load.kv_usage:.0%} used"

    def count(n: int | None) -> str:
        return "?" if n is None else f"{n:,}"

    return f"{kv}   requests: {count(load.running)} running, {count(load.waiting)} waiting"


def _save_quietly(record: last_search.LastSearch) -> None:
    try:
        last_search.save(record)
    except OSError:   # an unwritable home only loses the resume offer, never the search
        pass
