"""One measured (or simulated) run of a workload on an engine, and whether it met an SLO."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from tunekv import __version__
from tunekv.engine import LLMEngine
from tunekv.workload.loadgen import Load, run_load
from tunekv.workload.metrics import DEFINITIONS, SLO
from tunekv.workload.workloads import Workload, WorkloadRequest


def device_info(engine: LLMEngine) -> dict:
    """The result JSON's device block: this machine's device, or what a simulated engine simulates."""
    return {**engine.runner.device_description(), "tunekv": __version__}


@dataclass
class BenchPlan:
    """Everything a measured run needs apart from the engine."""

    workload: Workload
    requests: list[WorkloadRequest]
    seed: int
    warmup: int
    slo: SLO | None


def run_bench(engine: LLMEngine, plan: BenchPlan, load: Load, deadline: float | None = None,
              stop: Callable[[], bool] | None = None) -> dict:
    """One measured (or, on a simulated engine, predicted) run; the bench result JSON of DESIGN §3.
    ``cut`` is true when ``deadline`` or ``stop`` ended it early (its figures are partial)."""
    run = run_load(engine, plan.requests, load, plan.slo, seed=plan.seed, warmup=plan.warmup, deadline=deadline,
                   stop=stop)
    return {
        "config": dataclasses.asdict(engine.config),
        "workload": {"name": plan.workload.name, "num_requests": len(plan.requests), "seed": plan.seed,
                     "warmup_requests": plan.warmup, "load": load.as_dict(), "load_description": load.describe()},
        "device": device_info(engine),
        "metrics": run["metrics"],
        "kv": run["kv"],
        "slo": None if plan.slo is None else dataclasses.asdict(plan.slo),
        "definitions": DEFINITIONS,
        "simulated": engine.simulated,
        "cut": run["cut"],
        "first_rejection": run["first_rejection"],
    }


def within_slo(result: dict, slo: SLO) -> bool:
    metrics = result["metrics"]
    if metrics["completed"] == 0 or metrics["failed"]:
        return False
    return all(v <= 0 for v in slo.violations(metrics).values())
