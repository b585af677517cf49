"""`tunekv` with no arguments: hardware, plan, search, compare and export in one terminal app.

Every long job (NVML polling, planning, searches, comparisons, writing files) runs in a thread
worker that posts typed messages (dataclasses nested in the widget that sends them); the UI thread
only reacts and draws, so keys are handled while a search runs. torch and optuna load the first
time a job needs them."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.lazy import Lazy
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane, Tabs

from tunekv.defaults import CPU_MODEL, CPU_SLO, GPU_MODEL, GPU_SLO
from tunekv.engine.presets import preset_names
from tunekv.hardware.probe import ProbeResult
from tunekv.hardware.probe import probe as nvml_probe
from tunekv.search.options import DEFAULT_OUT, SearchOptions
from tunekv.tui import last_search
from tunekv.tui.forms import NO_QUANTIZATION, PlanInputs
from tunekv.tui.imports import import_heavy
from tunekv.tui.modals import HelpScreen, ResumeScreen
from tunekv.tui.panes.compare import CompareJob, ComparePane
from tunekv.tui.panes.export import ExportPane
from tunekv.tui.panes.hardware import HardwarePane
from tunekv.tui.panes.plan import PlanPane
from tunekv.tui.panes.search import SearchPane

if TYPE_CHECKING:
    import optuna

    from tunekv.export import Best
    from tunekv.search.session import PreparedSearch

TABS = ("hardware", "plan", "search", "compare", "export")
FLEET_DIR = "fleet"   # under the app's --out: the Plan screen's fleet searches (their study) and report
THEMES = ("textual-dark", "textual-light")


class TuneKVApp(App):
    @dataclass
    class BestLoaded(Message):
        """The study's best config so far, for the Export screen (None: nothing feasible yet)."""

        best: Best | None
        study: optuna.Study

    TITLE = "tunekv"
    SUB_TITLE = "the most throughput under your latency targets"
    CSS = """
    TabPane { padding: 0 1; }
    """
    BINDINGS = [
        # The tab strip shows 1-5 beside the screens' names: the footer keeps its room for the rest.
        Binding("1", "show_tab('hardware')", "Hardware", show=False),
        Binding("2", "show_tab('plan')", "Plan", show=False),
        Binding("3", "show_tab('search')", "Search", show=False),
        Binding("4", "show_tab('compare')", "Compare", show=False),
        Binding("5", "show_tab('export')", "Export", show=False),
        Binding("s", "start_search", "Search"),
        Binding("f", "plan_fleet", "Fleet"),
        Binding("r", "run_compare", "Compare"),
        Binding("x", "stop_search", "Stop"),
        Binding("w", "write_exports", "Write"),
        Binding("t", "toggle_theme", "Theme", show=False),   # in the help and the palette
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit_tunekv", "Quit"),
        Binding("ctrl+c", "quit_tunekv", "Quit", show=False, priority=True),
        Binding("escape", "leave_field", "Leave the field", show=False),
    ]

    def __init__(self, probe: Callable[[], ProbeResult] | None = None, poll_interval: float = 1.0,
                 out: str = DEFAULT_OUT, inputs: PlanInputs | None = None, offer_resume: bool = True,
                 budget: str = "5m") -> None:
        """``probe`` replaces NVML (tests); ``poll_interval`` 0 reads the GPUs once."""
        super().__init__()
        self.probe: Callable[[], ProbeResult] = probe if probe is not None else nvml_probe
        first = self.probe()
        self.have_local_gpu = bool(first.available)
        self.first_reading = first
        self.poll_interval, self.out, self.offer_resume, self.budget = poll_interval, out, offer_resume, budget
        self.initial = inputs or PlanInputs(gpu="local" if self.have_local_gpu else "h100-80gb")
        self._quitting = False
        self._heap_frozen = False

    def compose(self) -> ComposeResult:
        gpu_options = ([("this machine's GPU (local)", "local")] if self.have_local_gpu else []) + [
            (name, name) for name in preset_names("gpus")]
        yield Header()
        with TabbedContent(id="tabs", initial="hardware"):
            with TabPane("1 Hardware", id="hardware"):
                yield HardwarePane(lambda: self.probe(), self.poll_interval, id="hardware-pane")
            with TabPane("2 Plan", id="plan"):
                local = self.first_reading.gpus[0] if self.have_local_gpu and self.first_reading.gpus else None
                yield Lazy(PlanPane(self.initial, gpu_options, local, str(Path(self.out).resolve() / FLEET_DIR),
                                    id="plan-pane"))
            with TabPane("3 Search", id="search"):
                yield Lazy(SearchPane(self.search_options, self.describe_target, self.budget,
                                      cpu_choice=not self.have_local_gpu, id="search-pane"))
            with TabPane("4 Compare", id="compare"):
                yield Lazy(ComparePane(self.compare_job, self.describe_target, id="compare-pane"))
            with TabPane("5 Export", id="export"):
                yield Lazy(ExportPane(self.out, id="export-pane"))
        yield Footer()

    def on_mount(self) -> None:
        if self.offer_resume:
            last = last_search.load()
            if last is not None and last.resumable:
                options = last.options
                text = (f"The last search did not finish: study {last.study} ({options.get('model')}, workload "
                        f"{options.get('workload')}, SLO {options.get('slo')}). Resume it? Finished trials are "
                        "kept either way.")
                self.push_screen(ResumeScreen(text), lambda resume: self.resume(last) if resume else None)

    # --- what the screens share ---------------------------------------------------------
    @property
    def plan_pane(self) -> PlanPane:
        return self.query_one(PlanPane)

    @property
    def search_pane(self) -> SearchPane:
        return self.query_one(SearchPane)

    def describe_target(self, on_cpu: bool = False) -> str:
        """Where a search (``on_cpu``: on this machine's CPU) or a comparison runs, in words."""
        if on_cpu:
            return "real runs on this CPU (a GPU finds the configs to deploy)"
        gpu = self.plan_pane.checked.inputs.gpu if self.query(PlanPane) else self.initial.gpu
        if gpu == "local":
            return "on this machine's GPU: simulated trials, then real runs"
        why = "" if self.have_local_gpu else " (no local GPU)"
        return f"simulating the {gpu} preset{why}: predicted, not measured"

    def search_options(self, budget: str, on_cpu: bool = False) -> SearchOptions | str:
        """SearchOptions from the Plan screen and ``budget``, or the sentence that says what is wrong.
        ``on_cpu``: on this machine's CPU (it has no GPU), not the Plan screen's GPU."""
        from tunekv.errors import BadInput
        from tunekv.units import parse_duration

        try:
            parse_duration(budget, "budget")
        except BadInput as exc:
            return str(exc)
        checked = self.plan_pane.checked
        if not checked.ok:
            return f"fix the Plan screen first ({', '.join(checked.errors)})"
        i = checked.inputs
        return SearchOptions(budget=budget.strip(), model=i.model, workload=i.workload, slo=i.slo, dtype=i.dtype,
                             quantization=i.quantization, gpu=None if on_cpu or i.gpu == "local" else i.gpu,
                             out=str(Path(self.out).resolve()))

    def compare_job(self, endpoints: bool = False) -> CompareJob | str:
        """What the Compare screen runs, from the Plan screen, or why it cannot. Against servers
        (``endpoints``) the engine's settings do not apply: only the workload and model count."""
        from tunekv.engine.config import EngineConfig
        from tunekv.workload.workloads import load_workload

        checked = self.plan_pane.checked
        if not checked.ok:
            return f"fix the Plan screen first ({', '.join(checked.errors)})"
        i = checked.inputs
        if i.tp != 1 and not endpoints:
            return "the comparison runs at tensor parallel 1; set it on the Plan screen"
        config = EngineConfig(model=i.model, dtype=i.dtype, block_size=i.block_size, max_model_len=i.max_model_len,
                              gpu_memory_utilization=i.gpu_memory_utilization)
        return CompareJob(config, load_workload(i.workload), None if i.gpu == "local" else i.gpu)

    def freeze_heap(self) -> None:
        """Once torch and transformers are loaded (the first plan), keep their objects out of the
        garbage collector: a full collection over them takes 0.3-0.5 s on a small CPU, holding the
        GIL, and a key pressed meanwhile waits (bench/tui_latency.py). Unfrozen on exit."""
        if not self._heap_frozen:
            gc.freeze()
            self._heap_frozen = True

    def on_unmount(self) -> None:
        gc.unfreeze()   # frozen objects are never freed at exit, and some bindings complain about that

    # --- messages between screens -------------------------------------------------------
    def on_hardware_pane_preset_chosen(self, message: HardwarePane.PresetChosen) -> None:
        panes = self.query(PlanPane)
        if panes:
            panes.first().set_field("gpu", message.key)
        else:  # not mounted yet (Lazy): the pane composes from these inputs
            self.initial.gpu = message.key
        self.notify(f"planning against the {message.key} preset")

    def on_plan_pane_ready(self, message: PlanPane.Ready) -> None:
        self.freeze_heap()
        plan = message.plan
        planned = None
        if plan is not None and self.plan_pane.checked.inputs.gpu == "local" and plan.gpu_memory_bytes is not None:
            planned = int(plan.gpu_memory_bytes * plan.gpu_memory_utilization) - plan.other_bytes
        hardware = self.query_one(HardwarePane)
        hardware.set_plan(planned)
        hardware.show_preset(self.plan_pane.checked.inputs.gpu)
        for pane in (*self.query(SearchPane), *self.query(ComparePane)):   # Lazy: mounted after the first paint
            pane.refresh_target()

    def on_search_pane_where_changed(self, message: SearchPane.WhereChanged) -> None:
        """A search on the CPU takes the CPU's default model and SLO, as `tunekv search` does there,
        in place of the GPU's defaults still in the Plan screen's fields (and back): a field the
        user changed is kept."""
        plan = self.plan_pane
        before, after = (GPU_MODEL, GPU_SLO), (CPU_MODEL, CPU_SLO)
        if not message.on_cpu:
            before, after = after, before
        changed = []
        for name, old, new in zip(("model", "slo"), before, after):
            if plan.get_field(name).strip() == old:
                plan.set_field(name, new)
                changed.append(f"{name} {new}")
        if changed:
            where = "the CPU's" if message.on_cpu else "a GPU's"
            self.notify(f"{' and '.join(changed)}: {where} defaults, set on the Plan screen")

    def on_search_pane_finished(self, message: SearchPane.Finished) -> None:
        outcome = message.outcome
        prepared = self.search_pane.prepared
        note = f"already written to {prepared.out}" if outcome.written and prepared is not None else ""
        self.query_one(ExportPane).show_best(outcome.best, prepared.study if prepared else None, note)
        if outcome.best is not None:
            self.notify(f"best config: trial {outcome.best.number}; see Export (5)")
        if self._quitting:
            self.exit()

    def on_search_pane_progress(self, message: SearchPane.Progress) -> None:
        trial = message.event.trial
        if trial is not None and trial.feasible:
            self.load_best(self.search_pane.prepared)

    @work(thread=True, exclusive=True, group="best")
    def load_best(self, prepared: PreparedSearch | None) -> None:
        """The study's best so far (a database read), for the Export screen while the search runs."""
        import_heavy()
        from tunekv.search.session import best_of

        if prepared is None:
            return
        try:
            best = best_of(prepared.study)
        except Exception:  # a busy or vanished storage: the next feasible trial tries again
            return
        self.post_message(self.BestLoaded(best, prepared.study))

    def on_tune_kvapp_best_loaded(self, message: BestLoaded) -> None:
        if self.search_pane.running:
            self.query_one(ExportPane).show_best(message.best, message.study,
                                                 "best so far: the search is still running")

    def on_search_pane_failed(self, message: SearchPane.Failed) -> None:
        if self._quitting:
            self.exit()

    def resume(self, last: last_search.LastSearch) -> None:
        from tunekv.search.options import SearchOptions

        options = SearchOptions(**{**last.options, "study": last.study, "storage": last.storage_url})
        pane = self.plan_pane
        for name in ("model", "workload", "slo", "dtype"):
            value = getattr(options, name)
            if value is not None:
                pane.set_field(name, value)
        if options.gpu is not None:
            pane.set_field("gpu", options.gpu)
        pane.set_field("quantization", options.quantization or NO_QUANTIZATION)
        self.action_show_tab("search")
        self.search_pane.begin(options)

    # --- actions ------------------------------------------------------------------------
    def action_show_tab(self, tab: str) -> None:
        """The tab strip takes the focus first: a field left focused on a hidden screen hands its
        focus to a sibling there, whose focus brings that screen back."""
        tabbed = self.query_one(TabbedContent)
        tabbed.query_one(Tabs).focus()
        tabbed.active = tab

    def action_leave_field(self) -> None:
        """Escape: out of a text field (which types digits and letters) to the tab strip, where
        1-5 and the other keys act again."""
        self.query_one(TabbedContent).query_one(Tabs).focus()

    def action_start_search(self) -> None:
        self.action_show_tab("search")
        self.search_pane.start()

    def action_stop_search(self) -> None:
        """``x``: on the Plan screen while a fleet plan runs, stop that; on the Compare screen
        while a comparison runs, that; else the search."""
        active = self.query_one(TabbedContent).active
        compare = self.query(ComparePane)
        if active == "plan" and self.plan_pane.fleet_running:
            self.plan_pane.stop_fleet()
        elif active == "compare" and compare and compare.first().running:
            compare.first().stop()
        else:
            self.search_pane.stop()

    def action_run_compare(self) -> None:
        self.action_show_tab("compare")
        self.query_one(ComparePane).run()

    def action_plan_fleet(self) -> None:
        self.action_show_tab("plan")
        self.plan_pane.start_fleet()

    def action_write_exports(self) -> None:
        self.action_show_tab("export")
        self.query_one(ExportPane).write()

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_quit_tunekv(self) -> None:
        """A running search stops the way Ctrl-C stops `tunekv search`; a second press quits at once."""
        if not self.query(ExportPane):   # the screens mount after the first frame; quit once they have
            self.call_after_refresh(self.action_quit_tunekv)
            return
        if self.search_pane.running and not self._quitting:
            self._quitting = True
            self.search_pane.stop()
            self.notify("stopping the search (finished trials are kept), then quitting; press q again to quit now",
                        timeout=10)
            return
        self.exit()

    def get_system_commands(self, screen: Screen) -> Any:
        yield from super().get_system_commands(screen)
        for tab in TABS:
            yield SystemCommand(f"Show {tab}", f"Switch to the {tab} screen", lambda tab=tab: self.action_show_tab(tab))
        yield SystemCommand("Start search", "Search with the Plan screen's settings", self.action_start_search)
        yield SystemCommand("Stop search", "Stop the running search, keeping finished trials", self.action_stop_search)
        yield SystemCommand("Run comparison", "Paged vs contiguous, continuous vs static (or the servers given)",
                            self.action_run_compare)
        yield SystemCommand("Plan fleet", "A fleet for the Plan screen's target load: a short simulated search per GPU",
                            self.action_plan_fleet)
        yield SystemCommand("Write exports", "Write the best config in every format", self.action_write_exports)
        yield SystemCommand("Toggle dark/light", "Switch between the dark and light theme", self.action_toggle_theme)
