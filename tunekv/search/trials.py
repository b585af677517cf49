"""One search trial: a config measured at one fidelity (simulated, real, or certified).

The objective is the output throughput at the capacity under the SLO: the most closed-loop users
whose p99s stay within the targets, or on a trace's own arrival times the fastest pace (x times
its recorded one) at which they do (or the throughput at a fixed offered load). Constraints are
relative margins, ``measured p99 / target - 1`` (<= 0 holds), plus ``fits`` (1 when the config
cannot run: the planner's numbers, the engine's memory check, or an out-of-memory error).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tunekv.defaults import REQUESTS_PER_USER_SEARCH
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.config import DEFAULT_CPU_KV_CACHE_BYTES
from tunekv.engine.errors import ConfigError
from tunekv.engine.llm_engine import MAX_KV_BLOCKS
from tunekv.engine.memory import kv_cache_itemsize, num_blocks_for_bytes, resolve_device, resolve_dtype
from tunekv.engine.model_runner import build_model
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.engine.resolve import resolve_config
from tunekv.errors import BadInput, NoCalibration
from tunekv.hardware.gpus import GpuSpec
from tunekv.measure.capacity import find_capacity
from tunekv.measure.run import BenchPlan, RunResult, run_bench, within_slo
from tunekv.predict.calibrate import calibrate, save_samples, step_recorder
from tunekv.predict.planner import plan_for_gpu
from tunekv.predict.simulate import simulated_engine
from tunekv.search.space import engine_settings
from tunekv.units import CapacityUnit, load_words
from tunekv.workload.loadgen import KvSummary, Load, trace_rate
from tunekv.workload.metrics import SLO, ServingMetrics
from tunekv.workload.traces import MAX_ARRIVAL_S
from tunekv.workload.workloads import Workload, WorkloadRequest

CERTIFY_SEEDS = 2
MAX_USERS = 2048
MAX_PACE = 1024.0   # times a trace's recorded pace: the capacity search's ceiling, as `tunekv bench`'s
MIN_PACE = 1 / 64   # ... and its floor (or the pace at which the trace spans 24 hours, if faster)


@dataclass
class SearchTask:
    """What every trial of one search shares."""

    workload: Workload
    requests: list[WorkloadRequest]
    slo: SLO
    load: Load | None              # a fixed offered load; None: capacity under the SLO (users, or a trace's pace)
    seed: int
    warmup: int
    base: dict[str, Any]           # EngineConfig fields that are not knobs (model, device, dtype, seed)
    gpu: GpuSpec | None            # the GPU the trials are planned for (a preset, or this one's match)
    simulate_gpu: str | None       # a GPU preset to simulate; None: this device
    local_gpus: int = 0            # GPUs on this machine: real runs reach tensor_parallel_size <= max(1, this)
    _generated: dict[tuple[int, int], list[WorkloadRequest]] = field(default_factory=dict, repr=False)

    @property
    def max_real_tp(self) -> int:
        return max(1, self.local_gpus)

    @property
    def pace_rate(self) -> float | None:
        """A trace searched at its own arrival times: its mean req/s at its recorded pace (the
        capacity is a multiple of that pace); None when the capacity is users or the load is fixed."""
        if self.load is not None or self.workload.trace is None:
            return None
        return trace_rate(self.requests)

    @property
    def unit(self) -> CapacityUnit:
        """What a capacity (or the fixed load) of this search counts: users, req/s, or x a trace's pace."""
        if self.load is not None:
            return "req/s" if self.load.rate is not None else "x" if self.load.trace else "users"
        return "x" if self.pace_rate is not None else "users"

    def load_at(self, level: float) -> Load:
        """The load of a capacity probe at ``level`` in this search's unit."""
        assert self.load is None, "a fixed load is not searched"
        return Load(trace=True, speedup=level) if self.unit == "x" else Load(concurrency=int(level))

    def pace_floor(self) -> float:
        """The slowest pace a capacity search tries: MIN_PACE, or the pace at which the trace's
        arrivals span 24 hours, if that is faster."""
        span = max((r.arrival_s or 0.0) for r in self.requests)
        return max(MIN_PACE, span / MAX_ARRIVAL_S)

    def probe_requests(self, users: float | None) -> int:
        """Requests a capacity probe at ``users`` sends, warm-up included, before any cap: the
        workload's own count, or REQUESTS_PER_USER_SEARCH a user when that is more (a trace: its rows)."""
        if self.workload.trace is not None:
            return len(self.requests)
        return max(len(self.requests), REQUESTS_PER_USER_SEARCH * int(users or 0))

    def more_requests(self, seed: int, vocab: int, n: int) -> list[WorkloadRequest]:
        """``n`` requests of the workload for ``seed`` (the first ones are ``requests``), generated
        once. A trace has only its rows: a fresh seed shuffles them (a new order, the same rows);
        replayed at its own times, the rows move over the recorded arrival times, which stay."""
        if (seed, n) not in self._generated:
            if self.workload.trace is not None:
                rows = list(self.requests)
                random.Random(seed).shuffle(rows)
                if self.unit == "x":
                    rows = [dataclasses.replace(row, arrival_s=at.arrival_s) for row, at in zip(rows, self.requests,
                                                                                              strict=True)]
                self._generated[(seed, n)] = rows
            else:
                self._generated[(seed, n)] = self.workload.requests(seed, vocab, num_requests=n)
        return self._generated[(seed, n)]


@dataclass
class Outcome:
    """What a trial measured (or predicted), as stored in the study."""

    value: float                                   # the engine's output tok/s at capacity (0 when infeasible)
    constraints: dict[str, float]                  # fits, ttft_p99, itl_p99, ... (<= 0 holds)
    capacity: float | None = None                  # the load (in ``unit``) where ``value`` was measured
    capacity_capped: bool = False                  # every probe held: the capacity is at least this
    metrics: ServingMetrics | None = None
    kv: KvSummary | None = None
    reason: str = ""                               # why it is infeasible (or failed)
    seconds: float = 0.0                           # wall-clock time the trial took
    run_seconds: float = 0.0                       # engine-clock seconds of its runs (virtual in a simulation)
    probes: list[tuple[float, bool]] = field(default_factory=list)
    cut: bool = False                              # stopped by the deadline or Ctrl-C: not a result
    certify: list[dict] | None = None              # per fresh seed: throughput, p99s and their intervals
    max_requests: int | None = None                # requests a run was limited to (sized to the time left)
    server: str | None = None                      # the server measured and its version; None: tunekv's engine
    unit: CapacityUnit = "users"                   # what ``capacity`` and ``probes`` count (the search's unit)

    @property
    def feasible(self) -> bool:
        return not self.cut and all(v <= 0 for v in self.constraints.values())

    def settled(self) -> Outcome | None:
        """A capacity search the deadline cut, as the result its finished probes give (the most
        users that held, at least; or the SLO missed at the fewest users tried); None when no
        probe finished."""
        assert self.cut, "only a cut outcome is settled"
        if not self.probes:
            return None
        held = [load for load, ok in self.probes if ok]
        why = f"the deadline cut the capacity search after {len(self.probes)} probe(s)"
        if held:
            return dataclasses.replace(self, cut=False, capacity_capped=True,
                                       reason=f"{why}: at least {load_words(self.unit, max(held))}")
        return dataclasses.replace(self, cut=False, reason=f"{why}: {self.reason}")

    def to_attrs(self) -> dict[str, Any]:
        """The outcome as a trial's ``outcome`` user attribute: plain dicts and lists, ``metrics``
        and ``kv`` in the bench result JSON's shape."""
        attrs = dataclasses.asdict(self)
        attrs["metrics"] = None if self.metrics is None else self.metrics.to_json()
        attrs["kv"] = None if self.kv is None else self.kv.to_json()
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Outcome:
        """The outcome ``to_attrs`` stored (a JSON storage returns tuples as lists, NaN as it was)."""
        metrics, kv = attrs.get("metrics"), attrs.get("kv")
        return cls(**{**attrs, "metrics": None if metrics is None else ServingMetrics.from_json(metrics),
                      "kv": None if kv is None else KvSummary.from_json(kv),
                      "probes": [tuple(p) for p in attrs.get("probes", [])]})


def infeasible(reason: str, seconds: float = 0.0) -> Outcome:
    return Outcome(0.0, {"fits": 1.0}, reason=reason, seconds=seconds)


def margins(metrics: ServingMetrics, slo: SLO) -> dict[str, float]:
    """Relative p99 margin per SLO target: measured / target - 1. A percentile with no samples
    (no gaps when every answer is one token) holds if requests completed, as in ``within_slo``."""
    out = {}
    for name, target in slo.targets():
        p99 = metrics.latency(name).p99
        out[f"{name}_p99"] = (0.0 if metrics.completed else 1.0) if math.isnan(p99) else p99 / target - 1.0
    return out


def config_of(task: SearchTask, point: dict[str, Any]) -> EngineConfig:
    return EngineConfig(**engine_settings(point, task.base))


def pool_check(task: SearchTask, config: EngineConfig) -> tuple[int | None, str]:
    """The planner's verdict before anything runs: (KV blocks, '') or (None, why it cannot run).

    For a GPU the numbers are the preset's estimate (the real engine re-measures them); on a CPU
    the pool is the engine's fixed budget. A pool must hold one max_model_len request (which holds
    the workload's longest: the search's max_model_len candidates start there)."""
    cfg, mc = resolve_config(config)
    assert cfg.max_model_len is not None
    if task.gpu is not None:
        plan = plan_for_gpu(cfg, task.gpu)
        if not plan.fits:
            return None, plan.why
        blocks = plan.num_kv_blocks
    else:
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device, getattr(mc.hf_config, "dtype", None))
        budget = cfg.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
        per_token = mc.kv_bytes_per_token(kv_cache_itemsize(cfg.kv_cache_dtype, dtype))
        blocks = num_blocks_for_bytes(budget, per_token, cfg.block_size)
    if cfg.num_kv_blocks:
        blocks = cfg.num_kv_blocks
    else:   # sized from memory: capped as the engine caps its own pool (a small model on a big card)
        blocks = min(blocks, MAX_KV_BLOCKS)
    if blocks * cfg.block_size < cfg.max_model_len:   # the engine's own start-up rule (vLLM's)
        return None, (f"the KV pool ({blocks} blocks of {cfg.block_size}) cannot hold one max_model_len "
                      f"({cfg.max_model_len}) request")
    return blocks, ""


def plan_for(task: SearchTask, load: Load, vocab: int, seed: int, max_requests: int | None = None) -> BenchPlan:
    """A probe's requests: closed loop, at least REQUESTS_PER_USER_SEARCH a user so the p99s see a
    steady state; ``max_requests`` (never below the users) cuts a run sized to the time left."""
    n = task.probe_requests(load.concurrency)
    fresh = seed != task.seed or n > len(task.requests)
    requests = task.more_requests(seed, vocab, n) if fresh else task.requests
    if max_requests is not None and len(requests) > max_requests:
        requests = requests[:max(max_requests, load.concurrency or 1)]
    warmup = task.warmup if max_requests is None else min(task.warmup, len(requests) // 10)
    return BenchPlan(task.workload, requests, seed, warmup, task.slo)


RunProbe = Callable[[BenchPlan, Load], RunResult]   # one run of a plan at a load: an engine's, or a server's


def engine_probe(engine: LLMEngine, stop: Callable[[], bool]) -> RunProbe:
    return lambda plan, load: run_bench(engine, plan, load, stop=stop)


def level_of(load: Load) -> float:
    """A load's figure in its unit: req/s, users, or x a trace's pace."""
    if load.rate is not None:
        return load.rate
    return load.speedup if load.trace else float(load.concurrency or 0)


def measure(task: SearchTask, probe: RunProbe, vocab: int, max_num_seqs: int, start_load: float | None = None,
            bisections: int = 3, max_requests: int | None = None) -> Outcome:
    """Capacity under the SLO through ``probe``, searched from ``start_load`` (or the fixed load's
    figures): users go up to twice ``max_num_seqs`` (past that, they only queue); a trace's pace
    from 1x (or ``start_load``) between ``task.pace_floor()`` and MAX_PACE. A probe that comes
    back cut (the deadline, Ctrl-C) makes the outcome ``cut``, with the finished probes."""
    run_seconds = 0.0
    results: dict[float, RunResult] = {}
    probes: list[tuple[float, bool]] = []
    unit = task.unit

    def run(load: Load) -> RunResult:
        nonlocal run_seconds
        result = probe(plan_for(task, load, vocab, task.seed, max_requests), load)
        run_seconds += result.metrics.duration_s
        if result.cut:
            raise _Cut
        results[level_of(load)] = result
        probes.append((level_of(load), within_slo(result, task.slo)))
        return result

    try:
        if task.load is not None:
            result = run(task.load)
            return Outcome(result.metrics.output_throughput_tok_s, _constraints(result, task.slo),
                           level_of(task.load), False, result.metrics, result.kv, run_seconds=run_seconds,
                           probes=list(probes), unit=unit)
        if unit == "x":
            floor = task.pace_floor()
            cap = find_capacity(lambda pace: run(task.load_at(pace)), task.slo,
                                min(MAX_PACE, max(floor, start_load or 1.0)), "x", MAX_PACE,
                                bisections=bisections, min_load=floor, rate_at_1x=task.pace_rate)
        else:
            limit = len(task.requests) // REQUESTS_PER_USER_SEARCH if task.workload.trace is not None else MAX_USERS
            # A run sized to the time left has a user for each of its requests at most.
            max_users = max(1, min(2 * max_num_seqs, limit, max_requests or limit))
            start = start_load or max(1, min(max_users, max_num_seqs // 4, 16))
            cap = find_capacity(lambda users: run(task.load_at(users)), task.slo, min(start, max_users),
                                "users", max_users, bisections=bisections)
    except _Cut:
        held = [load for load, ok in probes if ok]
        if held:
            partial = _capacity_outcome(task, results[max(held)], max(held), False, run_seconds, probes)
        elif probes:
            partial = _missed(task, results, run_seconds, probes)
        else:
            partial = Outcome(0.0, {}, reason="cut short", run_seconds=run_seconds, unit=unit)
        return dataclasses.replace(partial, cut=True, max_requests=max_requests)
    if cap.result is None:  # not even the lowest load met the SLO: the margins there say by how much
        return dataclasses.replace(_missed(task, results, run_seconds, cap.probes), max_requests=max_requests)
    assert cap.load is not None
    return dataclasses.replace(_capacity_outcome(task, cap.result, cap.load, cap.capped, run_seconds, cap.probes),
                               max_requests=max_requests)


def certify_outcome(task: SearchTask, probe: RunProbe, vocab: int, load: float | None,
                    max_requests: int | None = None) -> Outcome:
    """A config at its capacity again with fresh seeds (new requests, new order): the median
    throughput, and the worst p99 margins with their bootstrap intervals."""
    fixed = task.load or (task.load_at(load) if load else None)
    assert fixed is not None, "certification runs at a known load"
    runs = []
    for i in range(CERTIFY_SEEDS):
        result = probe(plan_for(task, fixed, vocab, task.seed + 1000 * (i + 1), max_requests), fixed)
        if result.cut:
            return Outcome(0.0, {}, cut=True, reason="cut short")
        runs.append(result)
    throughput = statistics.median(r.metrics.output_throughput_tok_s for r in runs)
    worst = {k: max(_constraints(r, task.slo)[k] for r in runs) for k in _constraints(runs[0], task.slo)}
    detail = [{"seed": r.workload.seed, "output_throughput_tok_s": r.metrics.output_throughput_tok_s,
               "ttft_p99_ms": r.metrics.ttft_ms.p99, "itl_p99_ms": r.metrics.itl_ms.p99,
               "ttft_p99_ci95": list(r.metrics.ttft_ms.p99_ci95), "itl_p99_ci95": list(r.metrics.itl_ms.p99_ci95)}
              for r in runs]
    return Outcome(throughput, worst, level_of(fixed), False, runs[-1].metrics, runs[-1].kv,
                   run_seconds=sum(r.metrics.duration_s for r in runs), certify=detail, max_requests=max_requests,
                   unit=task.unit)


def _capacity_outcome(task: SearchTask, result: RunResult, load: float, capped: bool, run_seconds: float,
                      probes: list[tuple[float, bool]]) -> Outcome:
    metrics = result.metrics
    return Outcome(metrics.output_throughput_tok_s, _constraints(result, task.slo), load, capped, metrics, result.kv,
                   run_seconds=run_seconds, probes=list(probes), unit=task.unit)


def _missed(task: SearchTask, results: dict[float, RunResult], run_seconds: float,
            probes: list[tuple[float, bool]]) -> Outcome:
    """No probe held: the margins at the lowest load tried say by how much."""
    lowest = min(p[0] for p in probes)
    result = results[lowest]
    at = load_words(task.unit, lowest)
    reason = f"the SLO is not met even at {at}"
    if result.metrics.completed == 0 and result.metrics.failed:   # not slow: broken (a server's errors, a refusal)
        errors = [*(result.client or {}).get("errors", ()), *([result.first_rejection] if result.first_rejection
                                                               else [])]
        reason = f"every request failed at {at}" + (f"; first error: {errors[0]}" if errors else "")
    return Outcome(0.0, _constraints(result, task.slo), None, False, result.metrics, result.kv,
                   reason=reason, run_seconds=run_seconds, probes=list(probes), unit=task.unit)


def _constraints(result: RunResult, slo: SLO) -> dict[str, float]:
    """The p99 margins, plus ``failed`` (the share of requests that were rejected or aborted)."""
    m = result.metrics
    attempted = m.completed + m.failed
    return {**margins(m, slo), "failed": m.failed / attempted if attempted else 1.0}


class _Cut(Exception):
    """A probe stopped by the deadline or Ctrl-C: it has no result (the probes before it keep theirs)."""


def simulate(task: SearchTask, point: dict[str, Any], stop: Callable[[], bool],
             max_requests: int | None = None) -> Outcome:
    """Plan, then predict on the simulated engine (same scheduler, calibrated step costs);
    ``max_requests`` as a real run sized to the time left sends."""
    began = time.perf_counter()
    config = config_of(task, point)
    blocks, why = pool_check(task, config)
    if blocks is None:
        return infeasible(why, time.perf_counter() - began)
    try:
        engine = simulated_engine(dataclasses.replace(config, num_kv_blocks=blocks), task.simulate_gpu)
    except NoCalibration:
        raise
    except (BadInput, ConfigError) as exc:  # a config the simulator cannot model (its message says why)
        return infeasible(str(exc), time.perf_counter() - began)
    outcome = measure(task, engine_probe(engine, stop), engine.model_config.hf_config.vocab_size,
                      engine.config.max_num_seqs, bisections=2, max_requests=max_requests)
    outcome.constraints = {"fits": 0.0, **outcome.constraints}
    outcome.seconds = time.perf_counter() - began
    return outcome


class TrialRunner(Protocol):
    """What the ladder runs real and certified trials with: this process's engine (RealRunner),
    a server launched per config or a running deployment (search.servers.ServerRunner)."""

    max_requests: int | None        # requests a probe may send (set once when a short budget sizes the runs)
    calibration_note: str           # one line on the step-cost model after the last trial, or ""
    overhead_s: float               # a trial's time besides its runs (start-up, stop), until one is measured
    fixed_deployment: bool          # only the load varies: no knobs, nothing to simulate
    on_note: Callable[[str], None]  # remarks while a trial runs (a server's start-up)

    def calibrate(self, point: dict[str, Any], seconds: float, stop: Callable[[], bool]) -> tuple[bool, str]: ...

    def run(self, point: dict[str, Any], stop: Callable[[], bool], start_load: float | None = None,
            certify: bool = False, label: str = "") -> Outcome: ...


class RealRunner:
    """Runs trials on this device with one loaded model: each trial builds only a new KV cache,
    scheduler and CUDA graphs around it. Every real trial's steps refit the step-cost model.
    A tensor-parallel trial starts its own group of ranks (each loads its slice) after dropping
    the single-device model, whose memory on GPU 0 would otherwise shrink rank 0's KV pool."""

    def __init__(self, task: SearchTask, max_model_len: int) -> None:
        self.task = task
        self.max_model_len = max_model_len
        self._model: LlamaForCausalLM | None = None
        self.load_seconds = 0.0
        self.calibration_note = ""
        self.overhead_s = 5.0                  # engine build, warm-up, graph capture
        self.fixed_deployment = False
        self.on_note: Callable[[str], None] = lambda message: None
        self.engine: LLMEngine | None = None   # the running trial's engine (live KV gauges read it)
        # Requests a probe may send: None for the workload's full run; set once when a short budget
        # sizes the first real run, and kept, so this search's real trials compare like for like.
        self.max_requests: int | None = None

    def calibrate(self, point: dict[str, Any], seconds: float, stop: Callable[[], bool]) -> tuple[bool, str]:
        """A brief step-cost calibration around this runner's model (for a device that has none),
        so the simulator can rank configs: whether it fitted, and one line on what it fitted or on
        why it could not. The model is loaded first, outside the ``seconds``."""
        # the engine's own unquantized weights: a fit is of them (a quantized search simulates with it)
        config = dataclasses.replace(config_of(self.task, point), tensor_parallel_size=1, quantization=None)
        try:
            model = self.model(config)
            run = calibrate(config, [self.task.workload], seconds, model=model, stop=stop)
        except (BadInput, ConfigError) as exc:
            return False, f"step-cost calibration failed: {exc}"
        finally:
            _release()
        return True, calibration_line(run)

    def release(self) -> None:
        """Drop the loaded model (a server is about to need the device's memory)."""
        self._model = None
        _release()

    def model(self, config: EngineConfig) -> LlamaForCausalLM:
        if self._model is None:
            began = time.perf_counter()
            cfg, mc = resolve_config(dataclasses.replace(config, max_model_len=self.max_model_len))
            device = resolve_device(cfg.device)
            dtype = resolve_dtype(cfg.dtype, device, getattr(mc.hf_config, "dtype", None))
            self._model = build_model(cfg, mc, device, dtype)
            self.load_seconds = time.perf_counter() - began
        return self._model

    def run(self, point: dict[str, Any], stop: Callable[[], bool], start_load: float | None = None,
            certify: bool = False, label: str = "") -> Outcome:
        began = time.perf_counter()
        config = config_of(self.task, point)
        if self.task.gpu is None:  # CPU: the planner's own rule; a GPU's pool is measured by the engine
            blocks, why = pool_check(self.task, config)
            if blocks is None:
                return infeasible(why, time.perf_counter() - began)
        engine = None
        try:
            if config.tensor_parallel_size > 1:
                self._model = None
                _release()
                engine = self.engine = LLMEngine(config)
            else:
                engine = self.engine = LLMEngine(config, model=self.model(config))
            samples = step_recorder(engine)
            probe, vocab = engine_probe(engine, stop), engine.model_config.hf_config.vocab_size
            if certify:
                outcome = certify_outcome(self.task, probe, vocab, start_load, self.max_requests)
            else:
                outcome = measure(self.task, probe, vocab, engine.config.max_num_seqs, start_load, bisections=2,
                                  max_requests=self.max_requests)
            self.calibration_note = _refit(engine, samples)
        except ConfigError as exc:  # the engine's own checks (no room for the KV cache, a config it refuses)
            return infeasible(str(exc), time.perf_counter() - began)
        except torch.OutOfMemoryError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
            return infeasible(f"out of memory: {first_line}", time.perf_counter() - began)
        finally:
            self.engine = None
            if engine is not None:
                engine.shutdown()
            del engine
            _release()
        outcome.constraints = {"fits": 0.0, **outcome.constraints}
        outcome.seconds = time.perf_counter() - began
        return outcome


def calibration_line(run: Any) -> str:
    """One line on a calibration run (``predict.calibrate.calibrate``'s result)."""
    quality = run.calibration.quality
    assert quality is not None, "a calibration that measured steps has a fit"
    warning = f"; {quality.warning}" if quality.warning else ""
    return (f"step-cost model fitted on {run.samples} steps in {run.seconds:.0f} s (median step error "
            f"{quality.median_rel_err:.0%}{warning})")


def _refit(engine: LLMEngine, samples: list) -> str:
    try:
        calibration = save_samples(engine, samples)
    except (OSError, BadInput) as exc:
        return f"step-cost calibration not updated: {exc}"
    if calibration is None or calibration.quality is None:
        return ""
    return f"step-cost model refitted on {calibration.quality.samples} steps"


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
