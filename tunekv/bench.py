"""`tunekv bench`: one measured run, capacity under an SLO, and side-by-side comparisons."""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunekv import __version__
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.loadgen import Load, run_load
from tunekv.metrics import DEFINITIONS, SLO
from tunekv.workloads import Workload, WorkloadRequest


def device_info(engine: LLMEngine) -> dict:
    """The result JSON's device block: this machine's device, or what a simulated engine simulates."""
    if engine.simulated:
        block = engine.runner.device_block
        return dict(block) if block is not None else {"type": "simulated", "tunekv": __version__}
    device = engine.runner.device
    info = {"type": device.type, "dtype": str(engine.runner.dtype).removeprefix("torch."),
            "torch": torch.__version__, "tunekv": __version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_bytes=props.total_memory)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


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


@dataclass
class Capacity:
    """The highest load (users or req/s) at which every p99 held, and the run measured there."""

    unit: str                 # "users" or "req/s"
    load: float | None        # None: not even the lowest load met the SLO
    result: dict | None
    probes: list[tuple[float, bool]]

    @property
    def capped(self) -> bool:
        """True when every probe passed: the capacity is at least the highest load probed."""
        return all(ok for _, ok in self.probes)

    def describe(self) -> str:
        if self.load is None:
            return f"the SLO is not met even at the lowest load ({min(p[0] for p in self.probes):g} {self.unit})"
        tput = self.result["metrics"]["output_throughput_tok_s"]
        at_least = "at least " if self.capped else ""
        note = " (the highest load probed; the SLO still held)" if self.capped else ""
        if self.unit == "users":
            return f"{at_least}{int(self.load)} users at once, {tput:.1f} output tok/s there{note}"
        return f"{at_least}{self.load:g} req/s, {tput:.1f} output tok/s there{note}"


def find_capacity(measure: Callable[[float], dict], slo: SLO, start: float, unit: str,
                  max_load: float, bisections: int = 4, min_load: float = 1.0) -> Capacity:
    """Doubling from ``start`` until the SLO breaks (or ``max_load``), or halving from it until the
    SLO holds (or ``min_load``), then bisection between the last passing and first failing load.
    Users are whole numbers. A search that starts near the answer (a simulator's prediction)
    needs few probes."""
    probes: list[tuple[float, bool]] = []

    def probe(load: float) -> tuple[bool, dict]:
        result = measure(load)
        ok = within_slo(result, slo)
        probes.append((load, ok))
        return ok, result

    best: tuple[float, dict] | None = None
    fail: float | None = None
    load = start
    ok, result = probe(load)
    if ok:
        best = (load, result)
        while load < max_load:
            load = min(load * 2, max_load)
            ok, result = probe(load)
            if not ok:
                fail = load
                break
            best = (load, result)
    else:
        fail = load
        while load > min_load:
            load = max(min_load, math.floor(load / 2) if unit == "users" else load / 2)
            ok, result = probe(load)
            if ok:
                best = (load, result)
                break
            fail = load
    if best is None:
        return Capacity(unit, None, None, probes)
    lo, hi = best[0], fail
    for _ in range(bisections if hi is not None else 0):
        mid = (lo + hi) / 2
        if unit == "users":
            mid = math.floor(mid)
            if mid <= lo:
                break
        ok, result = probe(mid)
        if ok:
            lo, best = mid, (mid, result)
        else:
            hi = mid
    return Capacity(unit, best[0], best[1], probes)


def variants(base: EngineConfig, spec: str) -> list[tuple[str, EngineConfig]]:
    """``kv_policy=paged,contiguous`` -> one config per value (ValueError on a bad field or value)."""
    field, _, values = spec.partition("=")
    names = {f.name: f for f in dataclasses.fields(EngineConfig)}
    if field not in names or not values:
        raise ValueError(f"--compare takes FIELD=V1,V2 with an EngineConfig field, e.g. kv_policy=paged,contiguous; "
                         f"got '{spec}'")
    raw_values = [v.strip() for v in values.split(",")]
    if len(set(raw_values)) != len(raw_values):
        raise ValueError(f"--compare values must differ; got '{values}'")
    out = []
    for raw in raw_values:
        value = _coerce(field, raw.strip(), getattr(base, field))
        out.append((f"{field}={raw.strip()}", dataclasses.replace(base, **{field: value})))
    return out


def _coerce(field: str, raw: str, current: object) -> object:
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise ValueError(f"{field} takes true or false, got '{raw}'")
        return raw.lower() in ("true", "on", "1")
    if isinstance(current, int) or field in ("max_model_len", "max_num_batched_tokens", "num_kv_blocks"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{field} takes an integer, got '{raw}'") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{field} takes a number, got '{raw}'") from None
    return raw


def parse_levels(spec: str) -> tuple[str, list[float]]:
    """``concurrency=1,8,32`` or ``rate=0.5,1,2`` -> (kind, levels)."""
    kind, _, values = spec.partition("=")
    if kind not in ("concurrency", "rate") or not values:
        raise ValueError(f"--sweep takes concurrency=N1,N2,... or rate=R1,R2,...; got '{spec}'")
    try:
        levels = [float(v) for v in values.split(",")]
    except ValueError:
        raise ValueError(f"--sweep levels must be numbers; got '{values}'") from None
    if any(not math.isfinite(v) or v <= 0 for v in levels) or (kind == "concurrency" and any(v != int(v) for v in levels)):
        raise ValueError("--sweep levels must be > 0 (whole numbers for concurrency)")
    return kind, levels


def load_at(kind: str, level: float) -> Load:
    return Load(concurrency=int(level)) if kind == "concurrency" else Load(rate=level)
