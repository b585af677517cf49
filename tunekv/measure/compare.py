"""What paging and continuous batching buy: the same model, workload and KV pool under vLLM-style
scheduling (paged blocks, requests join every step) and the baselines (a ``max_model_len``
reservation per sequence; a batch that admits nothing until it drains), swept over users.

The sweep behind `tunekv bench --compare kv_policy=... --sweep concurrency=...` and the TUI's
Compare screen: real runs on this device, or the simulator for a GPU preset. The Compare screen
also sweeps running servers over HTTP (``compare_endpoints``): the same requests at the same user
counts against each, one after the other."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunekv.defaults import ENDPOINT_REQUEST_TIMEOUT_S, REQUESTS_PER_USER_COMPARE, warmup_requests
from tunekv.engine import ConfigError, EngineConfig, LLMEngine
from tunekv.errors import RunFailure
from tunekv.measure.endpoint import Target, open_target, run_endpoint
from tunekv.measure.run import BenchPlan, RunResult, run_bench
from tunekv.workload.loadgen import Load
from tunekv.workload.metrics import SLO
from tunekv.workload.workloads import Workload

VARIANTS: tuple[tuple[str, dict], ...] = (
    ("paged + continuous", {"kv_policy": "paged", "batching": "continuous"}),
    ("contiguous + continuous", {"kv_policy": "contiguous", "batching": "continuous"}),
    ("paged + static", {"kv_policy": "paged", "batching": "static"}),
    ("contiguous + static", {"kv_policy": "contiguous", "batching": "static"}),
)


@dataclass
class ComparePoint:
    variant: str
    users: int
    output_throughput_tok_s: float
    ttft_p99_ms: float
    itl_p99_ms: float
    completed: int
    failed: int
    # None: not known. A server over HTTP does not report its scheduler (an endpoint run has no
    # KV figures); 0 would claim a count nobody measured.
    preemptions: int | None
    peak_running_seqs: int | None
    cut: bool


@dataclass(frozen=True)
class ComparePool:
    """The one KV pool every variant runs on, and the length a contiguous sequence reserves:
    ``config.max_model_len``, or the workload's longest request where it is unset
    (``from_workload``), not the model's whole context."""

    tokens: int
    max_model_len: int
    from_workload: bool

    def describe(self) -> str:
        why = "the workload's longest request" if self.from_workload else "as set"
        return f"one KV pool of {self.tokens:,} tokens; max_model_len {self.max_model_len:,} ({why})"


def run_compare(config: EngineConfig, workload: Workload, users: list[int], *, seed: int = 0,
                simulate_gpu: str | None = None, slo: SLO | None = None,
                on_point: Callable[[ComparePoint], None] = lambda p: None,
                on_pool: Callable[[ComparePool], None] = lambda p: None,
                stop: Callable[[], bool] = lambda: False) -> list[ComparePoint]:
    """Each variant at each user count on one KV pool (the first variant's, in tokens), which
    ``on_pool`` gets once it is built. ``simulate_gpu``: a GPU preset to simulate instead of
    running on this device."""
    assert users and all(u >= 1 for u in users), "user counts must be >= 1"
    from tunekv.engine.model_config import load_model_config
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.tokenizer import load_tokenizer

    mc = load_model_config(config.model)
    workload = workload.fit_to(config.max_model_len or mc.max_position_embeddings)
    tokenizer = load_tokenizer(mc.path) if workload.trace is not None else None
    plans = {u: _plan(workload, seed, mc.hf_config.vocab_size, tokenizer, u, slo) for u in users}
    from_workload = config.max_model_len is None
    if from_workload:
        longest = max(workload.longest_request(p.requests) for p in plans.values())
        config = dataclasses.replace(config, max_model_len=longest)
    assert config.max_model_len is not None, "a comparison's reservation length is known"
    points: list[ComparePoint] = []
    pool_tokens: int | None = None
    for name, change in VARIANTS:
        cfg = dataclasses.replace(config, **change)
        if pool_tokens is not None:
            cfg = dataclasses.replace(cfg, num_kv_blocks=max(1, pool_tokens // cfg.block_size))
        engine = simulated_engine(cfg, simulate_gpu) if simulate_gpu else LLMEngine(cfg)
        if pool_tokens is None:
            pool_tokens = engine.num_kv_blocks * engine.config.block_size
            on_pool(ComparePool(pool_tokens, config.max_model_len, from_workload))
        try:
            for u in users:
                if stop():
                    return points
                result = run_bench(engine, plans[u], Load(concurrency=u), stop=stop)
                point = _point(name, u, result)
                points.append(point)
                on_point(point)
        finally:
            engine.shutdown()
            del engine
    return points


@dataclass(frozen=True)
class Endpoints:
    """Servers reached before any load, and how the prompts for them are made."""

    targets: list[Target]
    vocab: int                 # token ids the prompts draw from
    tokenizer: Any             # for text prompts (a server that takes no token ids, a trace of text); or None


def open_endpoints(urls: list[str], model: str, api_key: str | None = None) -> Endpoints:
    """Reach each server in turn (its /v1/models) before any load; RunFailure or BadInput, one
    sentence naming the URL, for the first that cannot be used. ``model`` (the Plan screen's: a
    preset or a local directory) gives the tokenizer, and the vocabulary unless tunekv knows the
    first server's model itself (a preset or a local directory, as `tunekv serve` serves)."""
    from tunekv.engine.model_config import load_model_config
    from tunekv.workload.tokenizer import load_tokenizer

    assert urls, "at least one URL"
    mc = load_model_config(model)
    tokenizer = load_tokenizer(mc.path)
    targets = [open_target(url, None, "completions", api_key, tokenizer) for url in urls]
    try:
        vocab = load_model_config(targets[0].model).hf_config.vocab_size
    except ConfigError:   # a name tunekv does not know (vLLM's "org/model"): the Plan screen's model
        vocab = len(tokenizer) if tokenizer is not None else mc.hf_config.vocab_size
    return Endpoints(targets, vocab, tokenizer)


def compare_endpoints(endpoints: Endpoints, workload: Workload, users: list[int], *, seed: int = 0,
                      slo: SLO | None = None, request_timeout: float = ENDPOINT_REQUEST_TIMEOUT_S,
                      on_point: Callable[[ComparePoint], None] = lambda p: None,
                      stop: Callable[[], bool] = lambda: False) -> list[ComparePoint]:
    """Each server at each user count (closed loop), the same requests for all, one run at a
    time; a series per server, named by its URL. RunFailure when a server stops taking
    connections or fails every request of a run (the points before it are kept)."""
    assert users and all(u >= 1 for u in users), "user counts must be >= 1"
    targets = endpoints.targets
    limits = [t.max_model_len for t in targets if t.max_model_len is not None]
    if limits:
        workload = workload.fit_to(min(limits))
    plans = {u: _plan(workload, seed, endpoints.vocab, endpoints.tokenizer, u, slo) for u in users}
    if limits:
        for plan in plans.values():
            workload.check_fits(min(limits), "the server's max_model_len", requests=plan.requests)
    points: list[ComparePoint] = []
    for target in targets:
        for u in users:
            if stop():
                return points
            result, report = run_endpoint(target, plans[u], Load(concurrency=u), request_timeout, stop=stop)
            if report.ended_early is not None and not stop():
                raise RunFailure(f"{target.url} at {u} users: the run ended early, {report.ended_early}")
            if not result.cut and result.metrics.completed == 0:
                why = report.errors[0] if report.errors else "no answer"
                raise RunFailure(f"{target.url} at {u} users: every request failed ({why})")
            point = _point(target.url, u, result)
            points.append(point)
            on_point(point)
    return points


def _plan(workload: Workload, seed: int, vocab: int, tokenizer, users: int, slo: SLO | None) -> BenchPlan:
    n = max(workload.num_requests, REQUESTS_PER_USER_COMPARE * users)
    requests = workload.requests(seed, vocab, tokenizer, n)
    return BenchPlan(workload, requests, seed, warmup_requests(len(requests)), slo)


def _point(name: str, users: int, result: RunResult) -> ComparePoint:
    """``result.kv`` is None for a run against a server: preemptions and peak running unknown (None)."""
    m, kv = result.metrics, result.kv
    return ComparePoint(name, users, m.output_throughput_tok_s, m.ttft_ms.p99, m.itl_ms.p99, m.completed, m.failed,
                        None if kv is None else kv.preemptions, None if kv is None else kv.peak_running_seqs,
                        result.cut)
