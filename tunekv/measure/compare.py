"""What paging and continuous batching buy: the same model, workload and KV pool under vLLM-style
scheduling (paged blocks, requests join every step) and the baselines (a ``max_model_len``
reservation per sequence; a batch that admits nothing until it drains), swept over users.

The sweep behind `tunekv bench --compare kv_policy=... --sweep concurrency=...` and the TUI's
Compare screen: real runs on this device, or the simulator for a GPU preset."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from tunekv.defaults import REQUESTS_PER_USER_COMPARE, warmup_requests
from tunekv.engine import EngineConfig, LLMEngine
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
    preemptions: int
    peak_running_seqs: int
    cut: bool


def run_compare(config: EngineConfig, workload: Workload, users: list[int], *, seed: int = 0,
                simulate_gpu: str | None = None, slo: SLO | None = None,
                on_point: Callable[[ComparePoint], None] = lambda p: None,
                stop: Callable[[], bool] = lambda: False) -> list[ComparePoint]:
    """Each variant at each user count on one KV pool (the first variant's, in tokens).
    ``simulate_gpu``: a GPU preset to simulate instead of running on this device."""
    assert users and all(u >= 1 for u in users), "user counts must be >= 1"
    from tunekv.engine.model_config import load_model_config
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.tokenizer import load_tokenizer

    mc = load_model_config(config.model)
    workload = workload.fit_to(config.max_model_len or mc.max_position_embeddings)
    tokenizer = load_tokenizer(mc.path) if workload.trace is not None else None
    plans = {u: _plan(workload, seed, mc.hf_config.vocab_size, tokenizer, u, slo) for u in users}
    if config.max_model_len is None:
        longest = max(workload.longest_request(p.requests) for p in plans.values())
        config = dataclasses.replace(config, max_model_len=longest)
    points: list[ComparePoint] = []
    pool_tokens: int | None = None
    for name, change in VARIANTS:
        cfg = dataclasses.replace(config, **change)
        if pool_tokens is not None:
            cfg = dataclasses.replace(cfg, num_kv_blocks=max(1, pool_tokens // cfg.block_size))
        engine = simulated_engine(cfg, simulate_gpu) if simulate_gpu else LLMEngine(cfg)
        if pool_tokens is None:
            pool_tokens = engine.num_kv_blocks * engine.config.block_size
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


def _plan(workload: Workload, seed: int, vocab: int, tokenizer, users: int, slo: SLO | None) -> BenchPlan:
    n = max(workload.num_requests, REQUESTS_PER_USER_COMPARE * users)
    requests = workload.requests(seed, vocab, tokenizer, n)
    return BenchPlan(workload, requests, seed, warmup_requests(len(requests)), slo)


def _point(name: str, users: int, result: RunResult) -> ComparePoint:
    m, kv = result.metrics, result.kv
    assert kv is not None, "an engine run has its KV figures"
    return ComparePoint(name, users, m.output_throughput_tok_s, m.ttft_ms.p99, m.itl_ms.p99, m.completed, m.failed,
                        kv.preemptions, kv.peak_running_seqs, result.cut)
