"""The Plan screen: model, GPU, dtype, weights (quantization), KV cache dtype, workload, SLO, TP,
block size, max model length and memory fraction; the memory and capacity table follows every
change (computed in a thread worker). Below the fields, a fleet for a target load: a short
search per GPU (simulated on a preset, real trials on local), as `tunekv plan --target-load` runs
it, and the table of replicas, GPUs, headroom and cost it gives."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select, Static

from tunekv.defaults import FLEET_BUDGET, FLEET_GPUS, FLEET_OUT
from tunekv.engine.config import BLOCK_SIZES, DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, TP_SIZES
from tunekv.engine.presets import preset_names
from tunekv.errors import BadInput, RunFailure
from tunekv.hardware.probe import GpuInfo
from tunekv.predict.fleet import TargetLoad
from tunekv.search.options import SearchOptions
from tunekv.tui.forms import NO_QUANTIZATION, Checked, PlanInputs, check_fleet_inputs, check_plan_inputs, without_flag
from tunekv.tui.imports import import_heavy
from tunekv.units import parse_duration

if TYPE_CHECKING:
    from tunekv.predict.planner import Plan
    from tunekv.search.fleet import FleetStop
    from tunekv.search.fleetplan import FleetPlan

FIELDS = ("model", "gpu", "dtype", "quantization", "kv_cache_dtype", "workload", "slo", "tp", "block_size",
          "max_model_len", "gpu_memory_utilization")
TITLES = {"model": "Model (preset or local HF directory)", "gpu": "GPU", "dtype": "dtype",
          "quantization": "Weights (quantization)", "kv_cache_dtype": "KV cache dtype",
          "workload": "Workload (preset, .yaml or a trace)", "slo": "SLO: profile or ttft_p99=500ms,…",
          "tp": "Tensor parallel", "block_size": "Block size", "max_model_len": "Max model length (blank: model max)",
          "gpu_memory_utilization": "GPU memory fraction"}
FLEET_FIELDS = ("target", "gpus", "prices", "budget")
FLEET_TITLES = {"target": "Target load at peak (2000users, 40rps)", "gpus": "GPUs to compare (presets, local)",
                "prices": "Prices, $/GPU-hour",
                "budget": "Budget for all the searches (shared)"}


class FleetStopped(Exception):
    """The pane closed while its fleet plan ran: raised from the plan's progress callback, so that
    nothing more is searched, written or posted."""


class FieldError(ValueError):
    """A value that passed the quick checks but not the planner (e.g. longer than the model allows)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def compute_plan(inputs: PlanInputs, local_gpu: GpuInfo | None = None) -> Plan:
    """The planner's estimate for ``inputs`` (``tunekv.planner.Plan``); FieldError names the field.
    ``local_gpu``: this machine's first GPU as NVML reads it, for ``gpu == "local"``."""
    import_heavy()
    from tunekv.engine import EngineConfig
    from tunekv.engine.errors import ConfigError
    from tunekv.engine.model_config import load_model_config
    from tunekv.errors import BadInput
    from tunekv.hardware.gpus import gpu_preset, spec_for_device
    from tunekv.predict.planner import plan_for_gpu
    from tunekv.workload.workloads import load_workload, mean_tokens

    try:
        mc = load_model_config(inputs.model)
    except ConfigError as exc:
        raise FieldError("model", str(exc)) from None
    if inputs.max_model_len is not None and inputs.max_model_len > mc.max_position_embeddings:
        raise FieldError("max_model_len", f"{mc.name} allows at most {mc.max_position_embeddings:,} tokens")
    problem = mc.tp_problem(inputs.tp)
    if problem:
        raise FieldError("tp", problem.replace(f"tensor_parallel_size ({inputs.tp}) ", ""))
    try:
        mean = mean_tokens(load_workload(inputs.workload), mc.hf_config.vocab_size,
                           inputs.max_model_len or mc.max_position_embeddings, mc.path)
    except BadInput as exc:
        raise FieldError("workload", str(exc)) from None
    config = EngineConfig(model=inputs.model, dtype=inputs.dtype, block_size=inputs.block_size,
                          max_model_len=inputs.max_model_len, gpu_memory_utilization=inputs.gpu_memory_utilization,
                          tensor_parallel_size=inputs.tp, kv_cache_dtype=inputs.kv_cache_dtype,
                          quantization=inputs.quantization)
    if inputs.gpu == "local":
        if local_gpu is None or not local_gpu.memory_total_bytes:
            raise FieldError("gpu", "NVML did not report this GPU's memory; pick a preset")
        spec = spec_for_device(local_gpu.name or "local GPU", local_gpu.memory_total_bytes)
    else:
        spec = gpu_preset(inputs.gpu)
    return plan_for_gpu(config, spec, inputs.workload, mean)


def plan_table(plan: Plan) -> Group:
    """The plan as `tunekv plan` prints it, with what paging buys at the workload's mean length."""
    from tunekv.render.plan import plan_tables, tp_comm_line, weights_line

    where = "estimate from the GPU's memory and the model's shapes"
    title = Text.assemble((f"{plan.model}", "bold"), f" on {plan.gpu}, tp {plan.tp}, {plan.dtype} ({where})")
    memory, capacity = plan_tables(plan)
    kv = Text(f"KV pool: {plan.num_kv_blocks:,} blocks of {plan.block_size} = "
              f"{plan.num_kv_blocks * plan.block_size:,} tokens ({plan.kv_bytes_per_token:,} bytes a token, "
              f"{plan.kv_cache_dtype})")
    weights = [Text(weights_line(plan))] if plan.quantization is not None else []
    verdict = Text.assemble(("fits" if plan.fits else "does not fit", "bold green" if plan.fits else "bold red"),
                            f": {plan.why}")
    gain = ""
    paged = plan.max_concurrent_seqs.at_workload_mean
    contiguous = plan.max_concurrent_seqs_contiguous.at_workload_mean
    if plan.fits and paged and contiguous:
        gain = f"paging holds {paged / contiguous:.1f}x the sequences of a max_model_len reservation at the mean length"
    comm = [Text(tp_comm_line(plan.tp_comm))] if plan.tp_comm else []
    return Group(title, Text(""), memory, *weights, kv, Text(""), capacity, Text(gain, style="cyan"), *comm, Text(""),
                 verdict)


class PlanPane(Horizontal):
    """Inputs on the left, the plan (or the last fleet plan) on the right; errors inline under each field."""

    @dataclass
    class Ready(Message):
        """A plan for the inputs of ``generation`` (stale ones are dropped), or why there is none
        and, when one field is to blame, which."""

        generation: int
        plan: Plan | None
        error: str | None = None
        field: str | None = None

    @dataclass
    class FleetProgress(Message):
        """A line from the running fleet plan (each GPU's search as it starts)."""

        line: str

    @dataclass
    class FleetDone(Message):
        """The fleet plan, and the report files written (or why they could not be)."""

        plan: FleetPlan
        written: list[Path]
        write_error: str | None = None

    @dataclass
    class FleetFailed(Message):
        """No fleet plan: one sentence, and the fleet field to blame when there is one."""

        message: str
        field: str | None = None

    DEFAULT_CSS = """
    PlanPane #plan-form { width: 42; padding-right: 1; }
    PlanPane .field-title { margin-top: 1; color: $text-muted; }
    PlanPane .section-title { margin-top: 2; text-style: bold; }
    PlanPane .section-note { color: $text-muted; }
    PlanPane #plan-form Input, PlanPane #plan-form Select { width: 100%; }
    PlanPane .field-error { color: $error; height: auto; }
    PlanPane #fleet-start { margin-top: 1; }
    PlanPane #plan-result-box { overflow-x: auto; }
    PlanPane #plan-result, PlanPane #fleet-status, PlanPane #fleet-table, PlanPane #fleet-notes { padding-left: 1; }
    PlanPane #fleet-status { margin-bottom: 1; }
    """

    def __init__(self, inputs: PlanInputs, gpu_options: list[tuple[str, str]], local_gpu: GpuInfo | None = None,
                 fleet_out: str = FLEET_OUT, **kwargs: Any) -> None:
        """``local_gpu``: NVML's reading of this machine's first GPU (None without one);
        ``fleet_out``: where a fleet plan keeps its searches' study and writes its report."""
        super().__init__(**kwargs)
        self.initial, self.gpu_options, self.local_gpu, self.fleet_out = inputs, gpu_options, local_gpu, fleet_out
        self.checked: Checked = Checked(inputs)
        self.plan: Plan | None = None
        self.fleet: FleetPlan | None = None
        self.fleet_running = False
        self._fleet_stop: FleetStop | None = None   # the running fleet plan's stop
        self._generation = 0
        self._timer: Any = None
        self._closed = False   # the app is closing: late changes and plans have nowhere to go

    def compose(self) -> ComposeResult:
        i = self.initial
        form = VerticalScroll(id="plan-form")
        form.can_focus = False   # Tab goes straight to the first field; the form scrolls to the focused one
        with form:
            widgets: dict[str, Any] = {
                "model": Input(i.model, suggester=SuggestFromList(preset_names("models")), compact=True),
                "gpu": Select(self.gpu_options, value=i.gpu, allow_blank=False, compact=True),
                "dtype": Select([(d, d) for d in DTYPES], value=i.dtype, allow_blank=False, compact=True),
                "quantization": Select([(q, q) for q in (NO_QUANTIZATION, *QUANTIZATIONS)],
                                       value=i.quantization or NO_QUANTIZATION, allow_blank=False, compact=True),
                "kv_cache_dtype": Select([(d, d) for d in KV_CACHE_DTYPES], value=i.kv_cache_dtype,
                                         allow_blank=False, compact=True),
                "workload": Input(i.workload, suggester=SuggestFromList(preset_names("workloads")), compact=True),
                "slo": Input(i.slo, suggester=SuggestFromList(preset_names("slo")), compact=True),
                "tp": Select([(str(t), str(t)) for t in TP_SIZES], value=str(i.tp), allow_blank=False, compact=True),
                "block_size": Select([(str(b), str(b)) for b in BLOCK_SIZES], value=str(i.block_size),
                                     allow_blank=False, compact=True),
                "max_model_len": Input("" if i.max_model_len is None else str(i.max_model_len),
                                       placeholder="model max", compact=True),
                "gpu_memory_utilization": Input(f"{i.gpu_memory_utilization:.2f}", compact=True),
            }
            for name in FIELDS:
                yield Label(TITLES[name], classes="field-title")
                widget = widgets[name]
                widget.id = f"plan-{name}"
                yield widget
                yield Static("", id=f"plan-{name}-error", classes="field-error")
            yield Label("Fleet for a target load", classes="section-title")
            yield Static("Each GPU's search picks its own TP, block size, max length, batch limits and KV "
                         "dtype; of the fields above it keeps model, dtype, weights, workload and SLO.",
                         classes="section-note")
            fleet = {"target": Input(placeholder="2000users or 40rps", compact=True),
                     "gpus": Input(",".join(FLEET_GPUS), compact=True),
                     "prices": Input(placeholder="presets' (or h100-80gb=2.2,…)", compact=True),
                     "budget": Input(FLEET_BUDGET, compact=True)}
            for name in FLEET_FIELDS:
                yield Label(FLEET_TITLES[name], classes="field-title")
                fleet[name].id = f"fleet-{name}"
                yield fleet[name]
                yield Static("", id=f"fleet-{name}-error", classes="field-error")
            yield Button("Plan fleet (f)", id="fleet-start", variant="primary", compact=True)
        with VerticalScroll(id="plan-result-box"):
            yield Static("", id="fleet-status")
            yield Static("", id="fleet-table")    # two lines a GPU: they wrap, nothing hides off to the side
            yield Static("", id="fleet-notes")
            yield Static("planning ...", id="plan-result")

    def on_unmount(self) -> None:
        self._closed = True
        if self._fleet_stop is not None:
            self._fleet_stop.request()
        if self._timer is not None:
            self._timer.stop()

    def on_mount(self) -> None:
        for box in ("#fleet-status", "#fleet-table", "#fleet-notes", *(f"#fleet-{n}-error" for n in FLEET_FIELDS)):
            self.query_one(box).display = False
        # After the first frame: the planner's first run imports torch, which would hold up the paint.
        self.call_after_refresh(self.schedule)

    def raw(self) -> dict[str, str]:
        out = {}
        for name in FIELDS:
            value = self.field(name).value
            out[name] = "" if value is Select.NULL else str(value)
        return out

    def field(self, name: str) -> Input | Select:
        widget = self.query_one(f"#plan-{name}")
        assert isinstance(widget, (Input, Select)), f"#plan-{name} is an Input or a Select"
        return widget

    def get_field(self, name: str) -> str:
        """A field's text as typed or chosen (its initial value before the pane has composed)."""
        if self.query(f"#plan-{name}"):
            return self.raw()[name]
        value = getattr(self.initial, name)
        return "" if value is None else str(value)

    def set_field(self, name: str, value: str) -> None:
        """Set a field; before the pane has composed its fields (Lazy mounts it after the first
        paint) the value becomes the field's initial one."""
        if self.query(f"#plan-{name}"):
            self.field(name).value = value
        else:
            setattr(self.initial, name, value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if (event.input.id or "").startswith("fleet-"):
            self.query_one(f"#{event.input.id}-error").display = False   # the error was about the old text
            event.input.remove_class("-invalid")
            return
        self.schedule()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.schedule()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if (event.input.id or "").startswith("fleet-"):
            event.stop()
            self.start_fleet()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "fleet-start":
            event.stop()
            self.start_fleet()

    def schedule(self) -> None:
        """Re-plan shortly after the last change (typing does not start a plan per key)."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.15, self.recompute)

    def recompute(self) -> None:
        if self._closed:
            return
        self.checked = check_plan_inputs(self.raw(), self.local_gpu is not None)
        self.show_errors(self.checked.errors)
        self._generation += 1
        # A plan field changed: the memory plan takes the result area back from a fleet plan.
        self.show_fleet(False)
        result = self.query_one("#plan-result", Static)
        result.display = True
        if self.checked.ok:
            result.update(Text("planning ...", style="dim"))
            self.plan_worker(self._generation, self.checked.inputs)
        else:
            self.plan = None
            result.update(Text("fix the fields marked in red to see the plan", style="yellow"))

    def show_errors(self, errors: dict[str, str]) -> None:
        for name in FIELDS:
            box = self.query_one(f"#plan-{name}-error", Static)
            box.update(errors.get(name, ""))
            box.display = name in errors
            self.query_one(f"#plan-{name}").set_class(name in errors, "-invalid")

    @work(thread=True, group="plan")
    def plan_worker(self, generation: int, inputs: PlanInputs) -> None:
        try:
            self.post_message(self.Ready(generation, compute_plan(inputs, self.local_gpu)))
        except FieldError as exc:
            self.post_message(self.Ready(generation, None, str(exc), exc.field))
        except Exception as exc:  # whatever the planner trips on is shown, never a crash
            self.post_message(self.Ready(generation, None, f"cannot plan this: {exc}"))

    def on_plan_pane_ready(self, message: Ready) -> None:
        if self._closed or message.generation != self._generation:
            message.stop()   # inputs changed since: a newer plan is on its way
            return
        result = self.query_one("#plan-result", Static)
        if message.plan is None:
            self.plan = None
            if message.field:
                self.checked.errors[message.field] = message.error or ""
                self.show_errors(self.checked.errors)
            result.update(Text(message.error or "", style="red"))
            return
        self.plan = message.plan
        result.update(plan_table(message.plan))

    # --- a fleet for a target load --------------------------------------------------------
    def start_fleet(self) -> None:
        """Check the fleet fields and, when they and the plan fields hold, plan the fleet. A press
        while one runs is ignored (``stop_fleet`` stops it)."""
        if self.fleet_running:
            self.notify("a fleet plan is already running; x stops it", severity="warning")
            return
        checked = check_fleet_inputs({name: self.query_one(f"#fleet-{name}", Input).value for name in FLEET_FIELDS})
        for name in FLEET_FIELDS:
            self.show_fleet_error(name, checked.errors.get(name))
        if not self.checked.ok:
            self.fleet_status(f"fix the plan fields marked in red first ({', '.join(self.checked.errors)})", "red")
            return
        i, fleet, target = self.checked.inputs, checked.inputs, checked.inputs.target
        if not checked.ok or target is None:
            self.fleet_status("fix the fleet fields marked in red", "red")
            return
        base = SearchOptions(budget=fleet.budget, model=i.model, workload=i.workload, slo=i.slo, out=self.fleet_out,
                             dtype=i.dtype, quantization=i.quantization)
        from tunekv.search.fleet import FleetStop

        self.fleet_running = True
        self._fleet_stop = FleetStop()
        self.query_one("#fleet-start", Button).disabled = True
        self.fleet_status(f"planning a fleet for {target.describe()}: checking the GPUs ...", "dim")
        self.fleet_worker(target, fleet.gpus, base, fleet.prices, self._fleet_stop)

    def stop_fleet(self) -> None:
        """Stop the running fleet plan as Ctrl-C stops `tunekv plan --target-load`: the GPU being
        searched ends at its next engine step with its finished trials, the GPUs after it are not
        searched, and the table of those done comes as usual."""
        if not self.fleet_running or self._fleet_stop is None or self._fleet_stop.requested:
            return
        self._fleet_stop.request()
        self.fleet_status("stopping the fleet plan: the GPU being searched stops at its next step ...", "yellow")

    def show_fleet_error(self, name: str, error: str | None) -> None:
        box = self.query_one(f"#fleet-{name}-error", Static)
        box.update(error or "")
        box.display = error is not None
        self.query_one(f"#fleet-{name}").set_class(error is not None, "-invalid")

    def fleet_status(self, text: str, style: str = "") -> None:
        status = self.query_one("#fleet-status", Static)
        status.update(Text(text, style=style))
        status.display = True

    @work(thread=True, exclusive=True, group="fleet")
    def fleet_worker(self, target: TargetLoad, gpus: str, base: SearchOptions, prices: dict[str, float],
                     stop: FleetStop) -> None:
        """Waits on the fleet's own daemon thread: a Textual thread worker is joined when the app
        exits, and a stopped plan still ends the engine step or simulation it is in, so running it
        here would hold the exit. Cancelled (the app closing), this returns at once; the daemon
        thread ends with the process."""
        from textual.worker import get_current_worker

        worker = get_current_worker()
        thread = threading.Thread(target=self.run_fleet, args=(target, gpus, base, prices, stop),
                                  name="tunekv-fleet", daemon=True)
        thread.start()
        while thread.is_alive() and not worker.is_cancelled:
            thread.join(0.2)

    def run_fleet(self, target: TargetLoad, gpus: str, base: SearchOptions, prices: dict[str, float],
                  stop: FleetStop) -> None:
        """From the fleet's thread: check the GPUs, run ``plan_fleet`` and write its report, posting
        progress and the outcome."""
        import gc
        import tempfile
        import traceback

        import_heavy()

        from tunekv.engine.errors import ConfigError
        from tunekv.search.fleet import plan_fleet, write_fleet_report
        from tunekv.search.fleetplan import budget_shares, check_gpus

        # optuna is loaded now: out of the collector with it (see TuneKVApp.freeze_heap).
        gc.freeze()
        try:
            keys = check_gpus(gpus)
        except BadInput as exc:
            self.post_message(self.FleetFailed(without_flag(exc, "--gpus"), "gpus"))
            return
        try:
            budget_shares(parse_duration(base.budget), keys)   # plan_fleet's own check, said beside its field
        except BadInput as exc:
            self.post_message(self.FleetFailed(str(exc), "budget"))
            return

        def say(line: str) -> None:
            if self._closed:
                raise FleetStopped
            self.post_message(self.FleetProgress(Text.from_markup(line).plain))

        try:
            plan = plan_fleet(target, keys, base, prices, say, stop)
        except FleetStopped:
            return
        except (BadInput, ConfigError, RunFailure) as exc:
            self.post_message(self.FleetFailed(str(exc)))
            return
        except Exception as exc:
            fd, log = tempfile.mkstemp(prefix="tunekv-error-", suffix=".log")
            with open(fd, "w") as f:
                traceback.print_exc(file=f)
            self.post_message(self.FleetFailed(f"{type(exc).__name__}: {exc} (details: {log})"))
            return
        if self._closed:   # quit while it ran: nothing more to show, and no report the user did not wait for
            return
        try:
            written = write_fleet_report(plan, Path(base.out))
        except OSError as exc:   # the plan is still shown; only its files are missing
            self.post_message(self.FleetDone(plan, [], f"could not write {exc.filename or base.out} "
                                                       f"({exc.strerror or exc})"))
            return
        self.post_message(self.FleetDone(plan, written))

    def on_plan_pane_fleet_progress(self, message: FleetProgress) -> None:
        if self.fleet_running:
            self.fleet_status(f"planning the fleet: {message.line}", "dim")

    def on_plan_pane_fleet_failed(self, message: FleetFailed) -> None:
        self.fleet_done()
        if message.field is not None:
            self.show_fleet_error(message.field, message.message)
            self.fleet_status("fix the fleet fields marked in red", "red")
        else:
            self.fleet_status(f"cannot plan the fleet: {message.message}", "red")

    def on_plan_pane_fleet_done(self, message: FleetDone) -> None:
        from tunekv.render.fleet import fleet_cards, fleet_notes

        self.fleet_done()
        plan = self.fleet = message.plan
        self.query_one("#fleet-table", Static).update(fleet_cards(plan))
        notes = [Text(line, style="dim") for line in fleet_notes(plan)]
        self.query_one("#fleet-notes", Static).update(
            Group(Text(""), *notes, Text(""), Text("change a plan field to see the memory plan again", style="dim")))
        self.show_fleet(True)
        wrote = message.write_error or f"wrote {', '.join(p.name for p in message.written)} to {self.fleet_out}"
        if plan.stopped:
            self.fleet_status(f"{plan.stop_note()}; {wrote}", "yellow")
        elif all(g.fleet is None for g in plan.gpus):
            self.fleet_status(f"no config on any GPU met the SLO in the budget; give a longer budget or a looser "
                              f"SLO; {wrote}", "yellow")
        else:
            self.fleet_status(f"fleet for {plan.target.describe()} planned, cheapest per hour first; {wrote}",
                              "red" if message.write_error else "green")

    def show_fleet(self, shown: bool) -> None:
        """The fleet plan, or the memory plan, in the result area."""
        self.query_one("#fleet-table").display = self.query_one("#fleet-notes").display = shown
        self.query_one("#plan-result").display = not shown

    def fleet_done(self) -> None:
        self.fleet_running = False
        self.query_one("#fleet-start", Button).disabled = False
