"""The checks of a search's settings that need no model, engine or study: the budget, the names,
the SLO, the workload and its load, the GPU preset. `tunekv search` runs them before torch and
optuna load, so a typo is answered at once; ``prepare_search`` runs them first."""

from __future__ import annotations

from dataclasses import dataclass

from tunekv.errors import BadInput, shorten
from tunekv.hardware.gpus import GpuSpec, gpu_preset
from tunekv.search.options import MIN_BUDGET_S, SearchOptions
from tunekv.units import parse_duration
from tunekv.workload.loadgen import Load, check_arrival_span
from tunekv.workload.metrics import SLO, parse_slo
from tunekv.workload.traces import MAX_REQUESTS
from tunekv.workload.workloads import Workload, load_workload

__all__ = ["MAX_STORAGE_URL", "MAX_STUDY_NAME", "CheckedOptions", "check_options"]

MAX_STUDY_NAME = 128      # characters: a study name is a key in the storage and appears in every hint
MAX_STORAGE_URL = 2048    # characters of a --storage URL


@dataclass(frozen=True)
class CheckedOptions:
    """What the settings say, read and checked: the budget in seconds, whether the search only
    simulates, the SLO (None: the device's default), the workload, a fixed load (None: the
    capacity search picks it) and the simulated GPU preset (None: this machine)."""

    budget_s: float
    simulate_only: bool
    slo: SLO | None
    workload: Workload
    load: Load | None
    preset: GpuSpec | None


def check_options(opts: SearchOptions) -> CheckedOptions:
    """BadInput, one sentence, for the first setting that is wrong."""
    budget = parse_duration(opts.budget)
    simulate_only = opts.simulate or opts.gpu is not None
    least = MIN_BUDGET_S["simulate" if simulate_only else "real"]
    if budget < least:
        kind = "simulated" if simulate_only else "real"
        raise BadInput(f"--budget {shorten(opts.budget.strip())} is too short to "
                       f"{'rank' if simulate_only else 'measure'} anything; a {kind} search needs at least {least:g}s")
    if opts.study is not None and not 1 <= len(opts.study) <= MAX_STUDY_NAME:
        raise BadInput(f"--study takes a name of 1 to {MAX_STUDY_NAME} characters, got {len(opts.study)}")
    if opts.storage is not None and len(opts.storage) > MAX_STORAGE_URL:
        raise BadInput(f"--storage takes a URL of at most {MAX_STORAGE_URL} characters, got {len(opts.storage)}")
    slo = None if opts.slo is None else parse_slo(opts.slo)
    workload = load_workload(opts.workload)
    given = opts.fixed_load_flags()
    if len(given) > 1:
        raise BadInput(f"{given[0]} and {given[1]} exclude each other; give one")
    load = Load(rate=opts.rate) if opts.rate is not None else (
        Load(concurrency=opts.concurrency) if opts.concurrency is not None else None)
    if opts.num_requests is not None and not 1 <= opts.num_requests <= MAX_REQUESTS:
        raise BadInput(f"--num-requests must be an integer from 1 to {MAX_REQUESTS}, got {opts.num_requests}")
    count = workload.count(opts.num_requests)
    span = 0.0
    if opts.trace_speedup is not None:
        times = [row["arrival_s"] for row in (workload.trace or [])[:count] if row.get("arrival_s") is not None]
        if not times:
            raise BadInput(f"--trace-speedup scales a trace's arrival times: workload {workload.name} has none")
        load, span = Load(trace=True, speedup=opts.trace_speedup), max(times)
    if load is not None:
        check_arrival_span(load, count, span)
    preset = gpu_preset(opts.gpu) if opts.gpu not in (None, "local") else None
    return CheckedOptions(budget, simulate_only, slo, workload, load, preset)
