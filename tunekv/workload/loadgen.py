"""Drives a running engine with a workload on the engine's clock and measures it.

The clock is the wall clock for a real engine and a virtual one for a simulated engine, so the
same loop measures both.

Open loop: requests arrive at their scheduled times (Poisson at a rate, bursts, or a trace's
times) whether or not the engine keeps up; a request's arrival time is its scheduled time, so
queueing delay counts in TTFT. Closed loop: N users, each sending its next request when the last
one finishes. Offline: everything at t=0. An open loop with ``max_concurrency`` keeps at most that
many requests in flight: an arrival waits for a free slot and counts from when it is sent, as
`vllm bench serve --max-concurrency` does (the wait is the client's, not the server's). The first
``warmup`` requests are run but not measured.
"""

from __future__ import annotations

import gc
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tunekv.engine import RequestRejected, SamplingParams
from tunekv.errors import BadInput
from tunekv.workload.metrics import SLO, RequestTiming, ServingMetrics, compute_metrics
from tunekv.workload.traces import MAX_ARRIVAL_S
from tunekv.workload.workloads import WorkloadRequest

if TYPE_CHECKING:   # the engine itself loads torch: a bad --rate is refused before that
    from tunekv.engine import LLMEngine

# Told (measured requests ended, measured requests) as a run's requests end: a progress display.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Load:
    """How requests arrive: exactly one of offline, rate (req/s), concurrency (users), trace (its
    times divided by ``speedup``); an open loop (rate or trace) may cap the requests in flight at
    ``max_concurrency``. A rate's gaps (between bursts of ``burst``) are exponential (Poisson), or
    gamma with shape ``burstiness`` and the same mean, as `vllm bench serve --burstiness`: below 1
    burstier, above 1 more even, infinite all equal."""

    offline: bool = False
    rate: float | None = None
    concurrency: int | None = None
    trace: bool = False
    burst: int = 1
    max_concurrency: int | None = None
    speedup: float = 1.0
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        modes = sum([self.offline, self.rate is not None, self.concurrency is not None, self.trace])
        assert modes == 1, "a load is exactly one of offline, rate, concurrency, trace"
        if self.rate is not None and math.isinf(self.rate) and self.rate > 0:
            raise BadInput("--rate inf sends every request at once: that is --offline (and vLLM's --request-rate inf "
                           "--max-concurrency N is --concurrency N)")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise BadInput(f"--rate must be > 0 requests/s, got {self.rate:g}")
        if self.concurrency is not None and self.concurrency < 1:
            raise BadInput(f"--concurrency must be an integer >= 1, got {self.concurrency}")
        if self.burst < 1:
            raise BadInput(f"--burst must be an integer >= 1, got {self.burst}")
        if not self.burstiness > 0:   # NaN too; inf is even spacing
            raise BadInput(f"--burstiness must be a number > 0 (1: Poisson, inf: evenly spaced), "
                           f"got {self.burstiness:g}")
        if self.burstiness != 1.0 and self.rate is None:
            raise BadInput("--burstiness shapes the gaps between arrivals at a rate: it goes with --rate or "
                           "--sweep rate=...")
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise BadInput(f"--trace-speedup must be a number > 0, got {self.speedup:g}")
        if self.speedup != 1.0 and not self.trace:
            raise BadInput("--trace-speedup scales a trace's arrival times; with --rate, --concurrency or --offline "
                           "the trace's times are not used")
        if self.max_concurrency is not None:
            if self.max_concurrency < 1:
                raise BadInput(f"--max-concurrency must be an integer >= 1, got {self.max_concurrency}")
            if not (self.rate is not None or self.trace):
                raise BadInput("--max-concurrency caps an open loop (--rate, or a trace's arrival times); "
                               "N users sending back to back are --concurrency N")

    def describe(self) -> str:
        if self.offline:
            return "offline (all requests at t=0)"
        cap = f", at most {self.max_concurrency} in flight" if self.max_concurrency is not None else ""
        if self.rate is not None:
            bursts = f" in bursts of {self.burst}" if self.burst > 1 else ""
            process = ("Poisson" if self.burstiness == 1.0 else "evenly spaced" if math.isinf(self.burstiness)
                       else f"gamma (burstiness {self.burstiness:g})")
            return f"{process} {self.rate:g} req/s{bursts}{cap}"
        if self.concurrency is not None:
            return f"closed loop, {self.concurrency} users"
        speed = f" at {self.speedup:g}x speed" if self.speedup != 1.0 else ""
        return f"trace arrival times{speed}{cap}"

    def as_dict(self) -> dict:
        return {"offline": self.offline, "rate": self.rate, "concurrency": self.concurrency,
                "trace": self.trace, "burst": self.burst, "max_concurrency": self.max_concurrency,
                "speedup": self.speedup, "burstiness": self.burstiness}


def check_arrival_span(load: Load, count: int, trace_span_s: float = 0.0) -> None:
    """BadInput when ``count`` requests at ``load``'s rate would arrive over more than
    MAX_ARRIVAL_S (count / rate seconds, on average), or a trace whose times span ``trace_span_s``
    would at its speedup: a run that would not end for days is a typo."""
    if load.trace and trace_span_s / load.speedup > MAX_ARRIVAL_S:
        raise BadInput(f"at --trace-speedup {load.speedup:g} the trace's requests arrive over "
                       f"{trace_span_s / load.speedup / 3600:,.1f} hours, more than 24")
    if load.rate is None:
        return
    span = count / load.rate
    if span > MAX_ARRIVAL_S:
        raise BadInput(f"{count} requests at {load.rate:g} requests/s arrive over about {span:.3g} s, more than "
                       f"{MAX_ARRIVAL_S} s (24 hours); raise the rate or send fewer requests")


def trace_rate(requests: list[WorkloadRequest]) -> float | None:
    """A trace's mean arrival rate at its recorded pace (requests over the span of their arrival
    times, as a Poisson rate of n requests spans about n / rate); None when all arrive at once."""
    times = [r.arrival_s or 0.0 for r in requests]
    span = max(times) - min(times)
    return len(times) / span if span > 0 else None


def arrival_times(load: Load, requests: list[WorkloadRequest], seed: int) -> list[float]:
    """Seconds after the start at which each request arrives (open loop)."""
    if load.offline or load.concurrency is not None:
        return [0.0] * len(requests)
    if load.trace:
        return [(r.arrival_s or 0.0) / load.speedup for r in requests]
    assert load.rate is not None
    rng = random.Random(seed + 7919)
    out, t = [], 0.0
    for i in range(len(requests)):
        if i % load.burst == 0:
            mean_gap = load.burst / load.rate
            if load.burstiness == 1.0:
                t += rng.expovariate(load.rate / load.burst)   # as before --burstiness: same seed, same times
            elif math.isinf(load.burstiness):
                t += mean_gap
            else:
                t += rng.gammavariate(load.burstiness, mean_gap / load.burstiness)
        out.append(t)
    return out


@dataclass
class RunStats:
    """KV efficiency sampled every engine step of a run."""

    efficiency_sum: float = 0.0
    efficiency_steps: int = 0
    steps: int = 0

    @property
    def efficiency(self) -> float:
        return self.efficiency_sum / self.efficiency_steps if self.efficiency_steps else 0.0


@dataclass(frozen=True)
class KvSummary:
    """The ``kv`` block of the bench result JSON: the pool, its peaks during the run, the share of
    reserved KV tokens that held tokens (averaged over steps) and the preemptions."""

    num_blocks: int
    block_size: int
    peak_used_blocks: int
    peak_running_seqs: int
    efficiency: float
    preemptions: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KvSummary:
        return cls(**data)


@dataclass(frozen=True)
class LoadResult:
    """What one run of a load measured. ``cut``: a deadline or stop ended it early (partial figures);
    ``first_rejection``: why the engine refused its first request, if it refused any."""

    metrics: ServingMetrics
    kv: KvSummary
    steps: int
    cut: bool
    first_rejection: str | None


def warm_up(engine: LLMEngine) -> None:
    """Short unmeasured requests: one-time costs (kernel compilation for each prefill tile size,
    allocator growth) land here, not in the first measured run."""
    # The prefill kernel's row tiles (16 to 128 rows of tokens x query group) for groups of 1 to
    # 32 heads; distinct tokens, so no prefix-cache hits between them.
    for i, prompt_len in enumerate((2, 3, 6, 12, 24, 48, 96)):
        try:
            engine.generate([[i + 2] * prompt_len, [1]], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        except RequestRejected:  # a pool or max_model_len too small even for this; the run will say why
            pass


def run_load(engine: LLMEngine, requests: list[WorkloadRequest], load: Load, slo: SLO | None,
             seed: int = 0, warmup: int = 0, deadline: float | None = None,
             stop: Callable[[], bool] | None = None, progress: Progress | None = None) -> LoadResult:
    """Run ``requests`` against ``engine`` under ``load``: the metrics and kv blocks of the result
    JSON, and how the run ended. ``deadline`` (in the engine clock's seconds), or ``stop()`` turning true (checked
    before every step), aborts what is still running then and marks the run ``cut``. ``progress``
    gets (measured requests ended, measured requests) as they end.

    Every run starts from a cold prefix cache, so repeated runs of the same requests (sweep
    levels, capacity probes) do not hit the blocks their predecessors left behind."""
    assert not engine.has_unfinished_requests(), "the engine must be idle before a measured run"
    if engine.simulated:  # virtual time: the collector cannot distort it
        return _run_load(engine, requests, load, slo, seed, warmup, deadline, stop, progress)
    # Garbage left by earlier runs (engines, requests) slowed this loop's steps up to 2x on CPU
    # until collected; collect it and keep the survivors out of the collector during the run.
    gc.collect()
    gc.freeze()
    try:
        return _run_load(engine, requests, load, slo, seed, warmup, deadline, stop, progress)
    finally:
        gc.unfreeze()


def _run_load(engine: LLMEngine, requests: list[WorkloadRequest], load: Load, slo: SLO | None, seed: int,
              warmup: int, deadline: float | None, stop: Callable[[], bool] | None,
              progress: Progress | None) -> LoadResult:
    """Two phases: the first ``warmup`` requests (in arrival order) run to completion, then the
    measured ones are sent, their arrival times counted from the end of the warm-up. The measured
    window is the measured requests' own span (first arrival to last finish), so no warm-up
    request, however long, moves it."""
    warm_up(engine)
    engine.reset_prefix_cache()
    arrivals = arrival_times(load, requests, seed)
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    warm, measured_ids = order[:warmup], order[warmup:]
    phase = _Phase(engine, requests, arrivals, load, seed, deadline, stop)
    cut = phase.drive(warm, RunStats())
    engine.reset_peak_stats()
    before = engine.counters()
    stats = RunStats()
    start = engine.clock.now()
    if not cut:
        cut = phase.drive(measured_ids, stats, progress)
    measured = [phase.timings[i] for i in measured_ids if i in phase.timings]
    failed = len(measured_ids) - len(measured)  # rejected, aborted at the deadline, or never sent
    if measured:
        window = (min(t.arrival for t in measured), max(t.finished for t in measured))
    else:
        window = (start, engine.clock.now())
    after = engine.counters()
    kv_summary = KvSummary(engine.num_kv_blocks, engine.config.block_size, after.peak_used_blocks,
                           after.peak_running_seqs, stats.efficiency, after.num_preemptions - before.num_preemptions)
    return LoadResult(compute_metrics(measured, failed, window, slo), kv_summary, phase.steps, cut,
                      phase.rejections[0] if phase.rejections else None)


class _Phase:
    """Sends requests to the engine under a load and steps it until they finish; keeps every
    request's timing, the rejections and the step count across phases."""

    def __init__(self, engine: LLMEngine, requests: list[WorkloadRequest], arrivals: list[float], load: Load,
                 seed: int, deadline: float | None, stop: Callable[[], bool] | None) -> None:
        self.engine, self.requests, self.arrivals, self.load, self.seed = engine, requests, arrivals, load, seed
        self.deadline, self.stop = deadline, stop
        self.timings: dict[int, RequestTiming] = {}
        self.rejections: list[str] = []
        self.steps = 0

    def drive(self, indices: list[int], stats: RunStats, progress: Progress | None = None) -> bool:
        """Send ``indices`` (in arrival order; open loop: at their offsets from the first of them,
        or once a slot is free under ``max_concurrency``) and step until all have finished, telling
        ``progress`` how many have ended. True when the deadline or ``stop`` cut it short."""
        engine, clock = self.engine, self.engine.clock
        closed = self.load.concurrency is not None
        users = self.load.concurrency or 0
        cap = self.load.max_concurrency
        full = False
        offset = self.arrivals[indices[0]] if indices else 0.0
        pending = deque(indices)
        ids: dict[str, int] = {}
        start = clock.now()
        ended = 0
        if progress is not None:
            progress(0, len(indices))
        while pending or engine.has_unfinished_requests():
            now = clock.now()
            if (self.deadline is not None and now >= self.deadline) or (self.stop is not None and self.stop()):
                for rid in list(ids):
                    engine.abort_request(rid)
                engine.step()
                return True
            while pending and (len(ids) < users if closed else
                               (cap is None or len(ids) < cap) and start + self.arrivals[pending[0]] - offset <= now):
                i = pending.popleft()
                req = self.requests[i]
                # Under a full cap since the last admissions, a due request waited for the slot
                # that just freed: it is sent, and counts, from now.
                arrival = now if closed or full else start + self.arrivals[i] - offset
                rid = f"bench-{self.seed}-{i}"
                try:
                    engine.add_request(rid, req.prompt_token_ids,
                                       SamplingParams(max_tokens=req.output_len, temperature=0.0, ignore_eos=True),
                                       arrival_time=arrival)
                except RequestRejected as exc:
                    self.rejections.append(str(exc))
                    ended += 1
                    if progress is not None:
                        progress(ended, len(indices))
                    continue
                ids[rid] = i
            full = cap is not None and len(ids) >= cap
            if not engine.has_unfinished_requests():
                if pending:
                    clock.wait_until(start + self.arrivals[pending[0]] - offset)
                continue
            outputs = engine.step(stream=False)
            self.steps += 1
            stats.steps += 1
            stored, reserved = engine.kv_usage()
            if reserved:
                stats.efficiency_sum += stored / reserved
                stats.efficiency_steps += 1
            for out in outputs:
                if not out.finished:
                    continue
                i = ids.pop(out.request_id)
                ended += 1
                if progress is not None:
                    progress(ended, len(indices))
                m = out.metrics
                if out.finish_reason == "abort" or m.first_token_time is None:
                    continue
                self.timings[i] = RequestTiming(m.arrival_time, m.first_token_time, tuple(m.token_times),
                                                m.finished_time, len(out.prompt_token_ids), len(out.output_token_ids))
        return False
