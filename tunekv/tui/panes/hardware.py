"""The Hardware screen: every GPU NVML sees, refreshed about once a second by a thread worker,
with a memory bar of what other processes use, what is free, and what the current plan needs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Select, Static

from tunekv.engine.presets import preset_names
from tunekv.hardware.probe import GpuInfo, ProbeResult
from tunekv.units import GIB


def memory_bar(total: int, used: int, planned: int | None, width: int = 48) -> Text:
    """``used`` by others (red), ``planned`` for tunekv (green, out of what is free), free (dim);
    a plan larger than the free memory shows its overflow in bold red."""
    assert total > 0, "a GPU has memory"
    free = max(0, total - used)
    planned = 0 if planned is None else planned
    cells = lambda nbytes: round(width * nbytes / total)  # noqa: E731
    used_cells = min(width, cells(used))
    plan_cells = min(width - used_cells, cells(min(planned, free)))
    bar = Text()
    bar.append("█" * used_cells, style="red")
    bar.append("█" * plan_cells, style="green")
    bar.append("░" * (width - used_cells - plan_cells), style="dim")
    legend = f" others {used / GIB:.1f} · free {free / GIB:.1f}"
    if planned:
        legend += f" · plan {planned / GIB:.1f} GiB"
    bar.append(legend + ("" if planned else " GiB"))
    if planned > free:
        bar.append(f"  plan needs {(planned - free) / GIB:.1f} GiB more than is free", style="bold red")
    return bar


def gpu_panel(gpu: GpuInfo, planned: int | None) -> Group:
    """One GPU: name, memory bar, utilisation, temperature, power and its processes."""
    na = lambda v, fmt="{}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    head = Text.assemble((f"GPU {gpu.index}  ", "bold"), (gpu.name or "unknown", "bold cyan"),
                         f"   util {na(gpu.utilization_gpu_pct, '{}%')}   temp {na(gpu.temperature_c, '{} C')}   "
                         f"power {na(gpu.power_draw_w, '{:.0f}')} / {na(gpu.power_limit_w, '{:.0f} W')}   "
                         f"CC {na(gpu.compute_capability)}")
    parts: list[RenderableType] = [head]
    if gpu.memory_total_bytes:
        parts.append(memory_bar(gpu.memory_total_bytes, gpu.memory_used_bytes or 0, planned))
    if gpu.processes:
        procs = Table(box=None, padding=(0, 2), show_edge=False)
        for col in ("pid", "process", "memory"):
            procs.add_column(col)
        for p in gpu.processes:
            used = "n/a" if p.used_bytes is None else f"{p.used_bytes / GIB:.2f} GiB"
            procs.add_row(str(p.pid), p.name or "n/a", used)
        parts.append(procs)
    else:
        parts.append(Text("no processes on this GPU", style="dim"))
    return Group(*parts, Text(""))


class HardwarePane(VerticalScroll):
    """NVML readings; with no GPU, why, and a preset to plan against."""

    @dataclass
    class Reading(Message):
        """A fresh NVML reading (the poller posts it to its pane)."""

        probe: ProbeResult

    @dataclass
    class PresetChosen(Message):
        """The preset picker (no local GPU): plan against this GPU preset."""

        key: str

    DEFAULT_CSS = """
    HardwarePane #no-gpu { color: $warning; margin-bottom: 1; }
    HardwarePane #preset-pick { width: 40; }
    HardwarePane #gpus { margin-top: 1; }
    """

    def __init__(self, probe: Callable[[], ProbeResult], interval: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._probe, self.interval = probe, interval
        self.reading: ProbeResult | None = None
        self.planned_bytes: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("reading the GPUs through NVML ...", id="hw-summary")
        yield Static("", id="no-gpu")
        yield Select([(name, name) for name in preset_names("gpus")], prompt="GPU preset to plan against",
                     id="preset-pick")
        yield Static("", id="gpus")

    def on_mount(self) -> None:
        self.query_one("#no-gpu").display = False
        self.query_one("#preset-pick").display = False
        self.poll()

    @work(thread=True, exclusive=True, group="nvml")
    def poll(self) -> None:
        """Read NVML now and then every ``interval`` seconds until the screen goes away."""
        from textual.worker import get_current_worker

        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                reading = self._probe()
            except Exception as exc:  # a driver that fails mid-session: say so, keep polling
                reading = ProbeResult(False, f"NVML failed: {type(exc).__name__}: {exc}")
            self.post_message(self.Reading(reading))
            if self.interval <= 0:
                return
            deadline = time.monotonic() + self.interval
            while time.monotonic() < deadline and not worker.is_cancelled:
                time.sleep(0.05)

    def on_hardware_pane_reading(self, message: Reading) -> None:
        self.reading = message.probe
        self.render_reading()

    def set_plan(self, planned_bytes: int | None) -> None:
        self.planned_bytes = planned_bytes
        self.render_reading()

    def render_reading(self) -> None:
        result = self.reading
        if result is None:
            return
        summary = self.query_one("#hw-summary", Static)
        no_gpu = self.query_one("#no-gpu", Static)
        pick = self.query_one("#preset-pick", Select)
        if not result.available:
            summary.update(Text("Hardware", style="bold"))
            no_gpu.update(f"No NVIDIA GPU: {result.reason}. tunekv plans and simulates against a GPU preset instead; "
                          "pick one here or on the Plan screen. The Search screen can also run a demonstration "
                          "on this CPU.")
            no_gpu.display = pick.display = True
            self.query_one("#gpus", Static).update("")
            return
        no_gpu.display = pick.display = False
        summary.update(Text.assemble(("Hardware", "bold"), f"   driver {result.driver_version or 'n/a'}, "
                                     f"CUDA {result.cuda_driver_version or 'n/a'}, {len(result.gpus)} GPU(s)"))
        panels: list[RenderableType] = [gpu_panel(g, self.planned_bytes if i == 0 else None)
                                        for i, g in enumerate(result.gpus)]
        if result.links:
            panels.append(Text("links: " + ", ".join(f"{link.a}-{link.b} {link.kind}" for link in result.links)))
        self.query_one("#gpus", Static).update(Group(*panels))

    def show_preset(self, key: str) -> None:
        """The preset the Plan screen plans against, in the picker (no local GPU): both screens name
        the same GPU. ``local`` leaves the picker as it is."""
        pick = self.query_one("#preset-pick", Select)
        if key != "local" and pick.value != key:
            with self.prevent(Select.Changed):
                pick.value = key

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset-pick" and event.value is not Select.NULL:
            self.post_message(self.PresetChosen(str(event.value)))
