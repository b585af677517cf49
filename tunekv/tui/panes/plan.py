"""The Plan screen: model, GPU, dtype, weights (quantization), KV cache dtype, workload, SLO, TP,
block size, max model length and memory fraction; the memory and capacity table follows every
change (computed in a thread worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label, Select, Static

from tunekv.engine.config import BLOCK_SIZES, DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, TP_SIZES
from tunekv.engine.presets import preset_names
from tunekv.hardware.probe import GpuInfo
from tunekv.tui.forms import NO_QUANTIZATION, Checked, PlanInputs, check_plan_inputs

if TYPE_CHECKING:
    from tunekv.predict.planner import Plan

FIELDS = ("model", "gpu", "dtype", "quantization", "kv_cache_dtype", "workload", "slo", "tp", "block_size",
          "max_model_len", "gpu_memory_utilization")
TITLES = {"model": "Model (preset or local HF directory)", "gpu": "GPU", "dtype": "dtype",
          "quantization": "Weights (quantization)", "kv_cache_dtype": "KV cache dtype",
          "workload": "Workload (preset, .yaml or .jsonl)", "slo": "SLO: profile or ttft_p99=500ms,…",
          "tp": "Tensor parallel", "block_size": "Block size", "max_model_len": "Max model length (blank: model max)",
          "gpu_memory_utilization": "GPU memory fraction"}


class FieldError(ValueError):
    """A value that passed the quick checks but not the planner (e.g. longer than the model allows)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def compute_plan(inputs: PlanInputs, local_gpu: GpuInfo | None = None) -> Plan:
    """The planner's estimate for ``inputs`` (``tunekv.planner.Plan``); FieldError names the field.
    ``local_gpu``: this machine's first GPU as NVML reads it, for ``gpu == "local"``."""
    from tunekv.engine import EngineConfig
    from tunekv.engine.errors import ConfigError
    from tunekv.engine.model_config import load_model_config
    from tunekv.errors import BadInput
    from tunekv.hardware.gpus import gpu_preset, spec_for_device
    from tunekv.predict.planner import plan_for_gpu
    from tunekv.workload.workloads import mean_tokens

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
        mean = mean_tokens(inputs.workload, mc.hf_config.vocab_size, inputs.max_model_len or mc.max_position_embeddings)
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
    """Inputs on the left, the plan on the right; errors inline under each field."""

    @dataclass
    class Ready(Message):
        """A plan for the inputs of ``generation`` (stale ones are dropped), or why there is none
        and, when one field is to blame, which."""

        generation: int
        plan: Plan | None
        error: str | None = None
        field: str | None = None

    DEFAULT_CSS = """
    PlanPane #plan-form { width: 42; padding-right: 1; }
    PlanPane .field-title { margin-top: 1; color: $text-muted; }
    PlanPane #plan-form Input, PlanPane #plan-form Select { width: 100%; }
    PlanPane .field-error { color: $error; height: auto; }
    PlanPane #plan-result { padding-left: 1; }
    """

    def __init__(self, inputs: PlanInputs, gpu_options: list[tuple[str, str]], local_gpu: GpuInfo | None = None,
                 **kwargs: Any) -> None:
        """``local_gpu``: NVML's reading of this machine's first GPU (None without one)."""
        super().__init__(**kwargs)
        self.initial, self.gpu_options, self.local_gpu = inputs, gpu_options, local_gpu
        self.checked: Checked = Checked(inputs)
        self.plan: Plan | None = None
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
        with VerticalScroll(id="plan-result-box"):
            yield Static("planning ...", id="plan-result")

    def on_unmount(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.stop()

    def on_mount(self) -> None:
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

    def set_field(self, name: str, value: str) -> None:
        """Set a field; before the pane has composed its fields (Lazy mounts it after the first
        paint) the value becomes the field's initial one."""
        if self.query(f"#plan-{name}"):
            self.field(name).value = value
        else:
            setattr(self.initial, name, value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.schedule()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.schedule()

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
        if self.checked.ok:
            self.query_one("#plan-result", Static).update(Text("planning ...", style="dim"))
            self.plan_worker(self._generation, self.checked.inputs)
        else:
            self.plan = None
            self.query_one("#plan-result", Static).update(
                Text("fix the fields marked in red to see the plan", style="yellow"))

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
