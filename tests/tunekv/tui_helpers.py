"""Deterministic inputs for the TUI tests: NVML readings, trial rows, comparison points, a best config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tunekv.hardware.probe import GpuInfo, GpuProcess, ProbeResult
from tunekv.search.records import TrialRow

GIB = 2**30


def no_gpu() -> ProbeResult:
    return ProbeResult(False, "the NVIDIA driver library (libnvidia-ml.so) was not found: "
                              "no NVIDIA driver is installed")


def one_gpu(used_gib: float = 6.0) -> ProbeResult:
    gpu = GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", uuid="GPU-0", pci_bus_id="00000000:19:00.0",
                  memory_total_bytes=80 * GIB, memory_free_bytes=int((80 - used_gib) * GIB),
                  memory_used_bytes=int(used_gib * GIB), memory_reserved_bytes=None, utilization_gpu_pct=37,
                  utilization_memory_pct=12, temperature_c=41, power_draw_w=212.0, power_limit_w=700.0,
                  compute_capability="9.0", processes=[GpuProcess(4242, "python3", int(used_gib * GIB))])
    return ProbeResult(True, None, "560.35.03", "12.6", "12.560.35.03", [gpu], [])


def trial_rows() -> list[TrialRow]:
    """Six trials of each fidelity and outcome, as the search's events carry them."""
    point = {"block_size": 16, "max_model_len": 4096, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
             "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
             "enable_prefix_caching": True, "kv_policy": "paged"}
    rows = []
    specs = [("sim", 2100.0, 96, 310.0, 31.0, True, None), ("sim", 2600.0, 128, 420.0, 38.0, True, None),
             ("sim", 900.0, 40, 650.0, 22.0, False, "ttft_p99 +30%"), ("sim", 3100.0, 160, 480.0, 44.0, True, None),
             ("real", 2950.0, 152, 470.0, 43.0, True, None), ("certified", 2880.0, 152, 490.0, 45.0, True, None)]
    for n, (fid, value, users, ttft, itl, ok, worst) in enumerate(specs):
        rows.append(TrialRow(number=n, fidelity=fid, state="complete", value=value, engine_tok_s=value, gpus=1,
                             predicted_only=False, capacity=users, capacity_capped=False, ttft_p99_ms=ttft,
                             itl_p99_ms=itl, feasible=ok, reason="", worst=worst, seconds=1.0, same_as=None,
                             predicted=None,
                             point={**point, "block_size": 8 << (n % 4), "max_num_seqs": 64 << (n % 3)}))
    return rows


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 60.0,
                     what: str | Callable[[], str] = "condition") -> None:
    """Let the app run until ``condition()`` holds (workers post their messages meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        await pilot.pause(0.05)


def shown(app, selector: str) -> bool:
    """Whether the current screen has a widget matching ``selector`` that a layout pass has put on
    screen: mounted, displayed, on the open tab and with a non-empty region."""
    found = app.screen.query(selector)
    return bool(found) and found.first().region.area > 0


async def click_button(pilot, selector: str) -> None:
    """Click the Button ``selector`` once the press effect of an earlier click has ended: a Button
    ignores clicks while it shows that effect (``active_effect_duration``, 0.2 s), and on an idle
    machine a pilot's second click comes sooner than that."""
    from textual.widgets import Button

    button = pilot.app.query_one(selector, Button)
    await wait_until(pilot, lambda: not button.has_class("-active"), what=f"{selector} to take clicks again")
    await pilot.click(selector)


def run(coro) -> None:
    asyncio.run(coro)


def plain(widget) -> str:
    """What a Static shows, as plain text (its content rendered by rich, 200 columns wide)."""
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return console.export_text()
