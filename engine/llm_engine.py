from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError, NoKVCacheMemory, RequestRejected
from tunekv.engine.executor import Executor
from tunekv.engine.kv_cache_manager import KVCacheManager, KVStats
from tunekv.engine.model_runner import ModelRunner
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.engine.request import Request, RequestOutput, RequestStatus
from tunekv.engine.resolve import resolve_config
from tunekv.engine.sampling_params import SamplingParams
from tunekv.engine.scheduler import Scheduler
from tunekv.engine.simulated_executor import SimulatedExecutor
from tunekv.engine.step_cost import StepCostModel, StepFeatures, step_features
from tunekv.engine.tp_executor import TensorParallelExecutor

# The scheduler keeps an object per KV block: beyond this many, memory and start-up time grow for
# nothing a run can use. A pool sized from memory is capped here; one asked for is refused.
MAX_KV_BLOCKS = 1 << 22


def check_pool(num_blocks: int, block_size: int, max_model_len: int) -> None:
    """vLLM's rule at start-up: the pool must hold one request of ``max_model_len`` tokens, or
    requests that long could never run. NoKVCacheMemory, with the numbers, when it cannot."""
    if num_blocks < 1:
        raise NoKVCacheMemory("no memory is left for the KV cache: lower max_num_batched_tokens "
                              "or raise gpu_memory_utilization / kv_cache_memory_bytes")
    if num_blocks > MAX_KV_BLOCKS:
        raise NoKVCacheMemory(f"num_kv_blocks ({num_blocks:,}) is more than the engine manages ({MAX_KV_BLOCKS:,}); "
                              "give fewer, or larger, blocks")
    tokens = num_blocks * block_size
    if tokens < max_model_len:
        raise NoKVCacheMemory(f"the KV pool ({num_blocks:,} blocks of {block_size} = {tokens:,} tokens) cannot hold "
                              f"one max_model_len ({max_model_len:,}) request; give the cache more memory or lower "
                              f"max_model_len to <= {tokens:,}")


@dataclass(frozen=True)
class Occupancy:
    """What the engine holds now: requests running and waiting, KV blocks in use of the pool."""

    running: int
    waiting: int
    used_blocks: int
    num_blocks: int


@dataclass(frozen=True)
class EngineCounters:
    """Counters a measured run reads at its start and its end: preemptions since the engine
    started, and the peaks since ``reset_peak_stats``."""

    num_preemptions: int
    peak_used_blocks: int
    peak_running_seqs: int


class LLMEngine:
    """The serving engine: ``add_request`` then ``step`` until ``has_unfinished_requests`` is false.

    The scheduler and KV manager are pure Python; the executor does the rest: the model runner
    (real forwards, wall clock) or, given a ``cost_model``, the simulated executor (no tensors,
    each step charged its predicted time on a virtual clock). ``step_observer``, if set, gets
    every non-empty step's features and duration on the engine's clock (calibration fits the
    step-cost model to these). ``model``, a model another engine loaded (``engine.model``), is
    reused instead of loading the weights again: a search rebuilds only the KV cache, scheduler
    and CUDA graphs between trials. ``executor``, one built by the caller (a simulated executor
    that knows what it simulates), runs the steps instead of one the engine builds.
    """

    def __init__(self, config: EngineConfig, cost_model: StepCostModel | None = None,
                 model: LlamaForCausalLM | None = None, executor: Executor | None = None) -> None:
        assert (cost_model, model, executor).count(None) >= 2, "give at most one of cost_model, model, executor"
        self.config, self.model_config = config, mc = resolve_config(config)
        self.runner: Executor
        if executor is not None:
            self.runner = executor
        elif cost_model is not None:
            self.runner = SimulatedExecutor(config, mc, cost_model)
        elif config.tensor_parallel_size > 1:
            if model is not None:
                raise ConfigError("a loaded model cannot be reused with tensor_parallel_size > 1: "
                                 "every rank loads its own slice")
            self.runner = TensorParallelExecutor(config, mc)
        else:
            self.runner = ModelRunner(config, mc, model)
        self.clock = self.runner.clock
        self.simulated = self.clock.simulated
        assert config.max_model_len is not None
        try:
            num_blocks = config.num_kv_blocks or min(MAX_KV_BLOCKS, self.runner.determine_num_blocks())
            check_pool(num_blocks, config.block_size, config.max_model_len)
            self.runner.initialize_cache(num_blocks)
        except BaseException:
            self.shutdown()
            raise
        self.kv_cache_manager = KVCacheManager(num_blocks, config.block_size, config.max_model_len,
                                               config.enable_prefix_caching, config.kv_policy)
        self.scheduler = Scheduler(config, self.kv_cache_manager, self.clock.now)
        self.step_observer: Callable[[StepFeatures, float], None] | None = None
        self.num_kv_blocks = num_blocks
        self.peak_used_blocks = 0
        self.peak_running_seqs = 0
        self._ids = itertools.count()
        self._aborted: list[RequestOutput] = []
        self._failure: str | None = None

    @property
    def model(self) -> LlamaForCausalLM | None:
        """The loaded model, for reuse by the next engine (None when simulated or tensor-parallel)."""
        return self.runner.model if isinstance(self.runner, ModelRunner) else None

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (idempotent; the engine cannot step after it)."""
        self.runner.shutdown()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int],
                    params: SamplingParams | None = None, arrival_time: float | None = None) -> None:
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_token_ids]
        cfg, vocab = self.config, self.model_config.hf_config.vocab_size
        assert cfg.max_model_len is not None
        if not prompt:
            raise RequestRejected(f"request {request_id}: the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise RequestRejected(f"request {request_id}: prompt token ids must lie in [0, {vocab})")
        if params.stop_token_ids and (min(params.stop_token_ids) < 0 or max(params.stop_token_ids) >= vocab):
            raise RequestRejected(f"request {request_id}: stop token ids must lie in [0, {vocab})")
        total = len(prompt) + params.max_tokens
        if total > cfg.max_model_len:
            raise RequestRejected(f"request {request_id}: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) "
                             f"= {total} exceeds max_model_len ({cfg.max_model_len})")
        assert self.kv_cache_manager.blocks_needed(total) <= self.num_kv_blocks, "check_pool: max_model_len fits"
        if request_id in self.scheduler.requests:
            raise RequestRejected(f"request id {request_id!r} is already in use")
        request = Request(request_id, prompt, params, self.model_config.eos_token_ids,
                          self.clock.now() if arrival_time is None else arrival_time)
        self.scheduler.add_request(request)

    def abort_request(self, request_id: str, status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> bool:
        """End an unfinished request now (False if there is none): its output comes with the next
        step, finished ``abort``, or ``stop`` with ``FINISHED_STOPPED``."""
        request = self.scheduler.abort_request(request_id, status)
        if request is None:
            return False
        self._aborted.append(_output(request, []))
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self._aborted)

    # --- stepping -------------------------------------------------------------------------
    def step(self, stream: bool = True) -> list[RequestOutput]:
        """Schedule, run the model once, sample; outputs for requests that got a token
        (``stream=False``: only for requests that finished, which is all a load generator needs)."""
        if self._failure is not None:  # the scheduler advanced for a step that never ran
            raise RuntimeError(f"the engine cannot step after a failed step ({self._failure})")
        outputs, self._aborted = self._aborted, []
        observer = self.step_observer
        start = self.clock.now() if observer is not None else 0.0
        sched = self.scheduler.schedule()
        running = len(self.scheduler.running)
        if running > self.peak_running_seqs:
            self.peak_running_seqs = running
        used = self.kv_cache_manager.block_pool.num_used_blocks
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        if sched.is_empty:
            self.runner.release(sched.released_req_ids)
            return outputs
        features = step_features(sched)[0] if observer is not None else None
        try:
            sampled = self.runner.execute_model(sched)
        except BaseException as exc:
            self._failure = f"{type(exc).__name__}: {exc}"
            raise
        now = self.clock.now()
        self.scheduler.update_from_output(sched, sampled, now)
        if observer is not None and features is not None:
            observer(features, self.clock.now() - start)
        for request, token in zip(sched.requests, sampled):
            if token is not None and (stream or request.finish_reason is not None):
                outputs.append(_output(request, [token]))
        return outputs

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in the order of ``prompts``."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ConfigError(f"got {len(prompts)} prompts but {len(params)} sampling params")
        ids = [f"gen-{next(self._ids)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, params):
            self.add_request(rid, prompt, p)
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]

    def reset_peak_stats(self) -> None:
        """Start a new measurement window for ``peak_used_blocks`` and ``peak_running_seqs``."""
        self.peak_used_blocks = 0
        self.peak_running_seqs = 0

    def kv_stats(self) -> KVStats:
        return self.kv_cache_manager.kv_stats()

    def kv_usage(self) -> tuple[int, int]:
        """(tokens stored, tokens reserved) over the running requests, (0, 0) with none: the KV
        efficiency a load generator samples every step, without building a KVStats."""
        return self.kv_cache_manager.usage() if self.scheduler.running else (0, 0)

    def counters(self) -> EngineCounters:
        return EngineCounters(self.scheduler.num_preemptions, self.peak_used_blocks, self.peak_running_seqs)

    def occupancy(self) -> Occupancy:
        return Occupancy(len(self.scheduler.running), len(self.scheduler.waiting),
                         self.kv_cache_manager.block_pool.num_used_blocks, self.num_kv_blocks)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix block (free blocks only), so a new run starts cold."""
        self.kv_cache_manager.block_pool.reset_prefix_cache()


def _output(request: Request, new_tokens: list[int]) -> RequestOutput:
    return RequestOutput(request.request_id, request.prompt_token_ids, request.output_token_ids,
                         new_tokens, request.finish_reason is not None, request.finish_reason, request.metrics)
