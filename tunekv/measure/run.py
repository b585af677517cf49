"""One measured (or simulated) run of a workload on an engine, and whether it met an SLO."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekv import __version__
from tunekv.engine import EngineConfig
from tunekv.workload.loadgen import KvSummary, Load, Progress, run_load
from tunekv.workload.metrics import DEFINITIONS, SLO, ServingMetrics
from tunekv.workload.workloads import Workload, WorkloadRequest

if TYPE_CHECKING:   # the engine loads torch; what a run is and measures does not need it
    from tunekv.engine import LLMEngine


def device_info(engine: LLMEngine) -> dict[str, Any]:
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


@dataclass(frozen=True)
class RunWorkload:
    """The result JSON's workload block: what was sent, and how it arrived."""

    name: str
    num_requests: int
    seed: int
    warmup_requests: int
    load: Load
    clipped_to: int | None = None    # no request was longer (prompt + output tokens): the model's limit

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_requests": self.num_requests, "seed": self.seed,
                "warmup_requests": self.warmup_requests, "load": self.load.as_dict(),
                "load_description": self.load.describe(), "clipped_to": self.clipped_to}


@dataclass(frozen=True)
class RunResult:
    """One measured (or simulated) run. ``to_json`` is the bench result JSON (ARCHITECTURE.md, "Contracts"), a stable
    file format (`tunekv bench --json`). A run against a server over HTTP has no engine config or
    KV figures (None); it has its ``target`` and what the ``client`` measured of itself."""

    config: EngineConfig | None
    workload: RunWorkload
    device: dict[str, Any]           # device_info: this machine's device, or the one simulated
    metrics: ServingMetrics
    kv: KvSummary | None
    slo: SLO | None
    simulated: bool
    cut: bool                        # a deadline or stop ended it early: the figures are partial
    first_rejection: str | None      # why the engine refused its first request, if it refused any
    target: dict[str, Any] | None = None   # an endpoint run: URL (no credentials), model, API, server
    client: dict[str, Any] | None = None   # an endpoint run: ClientReport.to_json()

    @property
    def title(self) -> str:
        """What ran: the engine's model, or the server's model at its URL."""
        if self.target is not None:
            return f"{self.target['model']} at {self.target['url']}"
        assert self.config is not None, "an engine run has its config"
        return self.config.model

    def to_json(self) -> dict[str, Any]:
        out = {
            "config": None if self.config is None else dataclasses.asdict(self.config),
            "workload": self.workload.to_json(),
            "device": self.device,
            "metrics": self.metrics.to_json(),
            "kv": None if self.kv is None else self.kv.to_json(),
            "slo": None if self.slo is None else dataclasses.asdict(self.slo),
            "definitions": DEFINITIONS,
            "simulated": self.simulated,
            "cut": self.cut,
            "first_rejection": self.first_rejection,
        }
        if self.target is not None:
            out["target"] = self.target
            out["client"] = self.client
        return out


def run_bench(engine: LLMEngine, plan: BenchPlan, load: Load, deadline: float | None = None,
              stop: Callable[[], bool] | None = None, progress: Progress | None = None) -> RunResult:
    """One measured (or, on a simulated engine, predicted) run. ``cut`` is true when ``deadline``
    or ``stop`` ended it early (its figures are partial); ``progress`` as ``run_load`` tells it."""
    run = run_load(engine, plan.requests, load, plan.slo, seed=plan.seed, warmup=plan.warmup, deadline=deadline,
                   stop=stop, progress=progress)
    workload = RunWorkload(plan.workload.name, len(plan.requests), plan.seed, plan.warmup, load,
                           plan.workload.max_total)
    # A copy: the result keeps the settings it ran with.
    return RunResult(copy.copy(engine.config), workload, device_info(engine), run.metrics, run.kv,
                     plan.slo, engine.simulated, run.cut, run.first_rejection)


def within_slo(result: RunResult, slo: SLO) -> bool:
    return slo.held_by(result.metrics)
