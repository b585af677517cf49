from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tunekv.engine.config import EngineConfig
from tunekv.engine.kv_cache_manager import KVCacheManager
from tunekv.engine.request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan: which requests run and how many new tokens each computes.

    ``num_computed_before[i]`` is where request i's new tokens start. ``released_req_ids`` names the
    requests whose blocks were freed since the last step (finished, aborted, preempted), so the
    model runner can drop its per-request state.
    """

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_computed_before: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    released_req_ids: list[str] = field(default_factory=list)

    @property
    def total_num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.requests


class Scheduler:
    """One token budget per step, shared by decodes and (chunked) prefills; vLLM v1's policy.

    1. Running requests in order each take ``min(remaining, budget, long_prefill_threshold)``
       tokens; if their slots cannot be allocated the newest running request is preempted
       (blocks freed, progress reset, requeued at the front: recompute) until they fit.
    2. If nothing was preempted and ``len(running) < max_num_seqs``, waiting requests are
       admitted in FCFS order after a prefix-cache lookup, with a chunk that fits the budget.
    Under ``batching="static"`` a batch is formed when nothing runs: it takes waiting requests up
    to ``max_num_seqs`` and the KV pool (over several steps when the token budget is what stops
    it), then nothing joins until it has fully drained (batch-level scheduling, the baseline).
    """

    def __init__(self, config: EngineConfig, kv_cache_manager: KVCacheManager,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        assert config.max_model_len is not None and config.max_num_batched_tokens is not None, (
            "EngineConfig.resolve() must run before the scheduler is built"
        )
        self.config = config
        self.kv = kv_cache_manager
        self.clock = clock
        self.max_model_len = config.max_model_len
        self.token_budget = config.max_num_batched_tokens
        self.max_num_seqs = config.max_num_seqs
        self.chunked = config.enable_chunked_prefill
        self.static = config.batching == "static"
        self.long_prefill = config.long_prefill_token_threshold or self.token_budget
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._released: list[str] = []
        self.num_preemptions = 0
        self._batch_open = True  # static batching: the batch takes members until its first token

    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, f"duplicate request id {request.request_id!r}"
        request.length_limit = min(request.length_limit, self.max_model_len)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(released_req_ids=self._released)
        self._released = []
        budget = self.token_budget
        running = self.running
        now = self.clock()

        kv = self.kv
        scheduled, num_tokens, before = out.requests, out.num_new_tokens, out.num_computed_before
        long_prefill = self.long_prefill
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            computed = request.num_computed_tokens
            num_new = min(len(request.token_ids) - computed, budget, long_prefill)
            assert num_new > 0, f"running request {request.request_id} has nothing to compute"
            while kv.allocate_slots(request, num_new) is None:
                victim = running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                out.released_req_ids.append(victim.request_id)
                if victim is request:
                    break
            else:
                scheduled.append(request)
                num_tokens.append(num_new)
                before.append(computed)
                request.num_computed_tokens = computed + num_new
                budget -= num_new
                i += 1
                continue
            break

        if self.static and not running:
            self._batch_open = True
        admit = not out.preempted and (not self.static or self._batch_open)
        out_of_budget = False
        while admit and self.waiting and len(running) < self.max_num_seqs:
            request = self.waiting[0]
            computed_blocks: list = []
            num_cached = 0
            if request.num_computed_tokens == 0:
                computed_blocks, num_cached = self.kv.get_computed_blocks(request)
            remaining = request.num_tokens - num_cached
            if budget <= 0 or (not self.chunked and remaining > budget):
                out_of_budget = True
                break
            num_new = min(remaining, budget, self.long_prefill)
            if self.kv.allocate_slots(request, num_new, computed_blocks) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.metrics.scheduled_time is None:
                request.metrics.scheduled_time = now
                request.metrics.num_cached_tokens = num_cached
                self.kv.record_prefix_lookup(request.num_tokens, num_cached)
            request.status = RequestStatus.RUNNING
            running.append(request)
            self._schedule(out, request, num_new)
            budget -= num_new
        if self.static and admit:
            # The batch stays open only while this step's token budget was what stopped it.
            self._batch_open = out_of_budget
        return out

    def _schedule(self, out: SchedulerOutput, request: Request, num_new: int) -> None:
        out.requests.append(request)
        out.num_new_tokens.append(num_new)
        out.num_computed_before.append(request.num_computed_tokens)
        request.num_computed_tokens += num_new

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.metrics.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update_from_output(self, out: SchedulerOutput, sampled: list[int | None], now: float) -> list[Request]:
        """Append sampled tokens (None: the request is still mid-prompt) and retire finished ones.

        This runs for every request every step, so the stop checks are inlined."""
        finished: list[Request] = []
        running = RequestStatus.RUNNING
        for request, token in zip(out.requests, sampled):
            if token is None or request.status is not running:
                continue
            tokens = request.token_ids
            tokens.append(token)
            request.output_token_ids.append(token)
            metrics = request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.token_times.append(now)
            if token in request.stop_ids and len(tokens) > request.stop_floor:
                status = RequestStatus.FINISHED_STOPPED
            elif len(tokens) >= request.length_limit:
                status = RequestStatus.FINISHED_LENGTH
            else:
                continue
            self._finish(request, status, now)
            finished.append(request)
        if finished:
            self.running = [r for r in self.running if r.finish_reason is None]
        return finished

    def abort_request(self, request_id: str,
                      status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> Request | None:
        """End an unfinished request from outside the schedule: aborted, or with ``FINISHED_STOPPED``
        stopped (a server found a stop string in its text)."""
        assert status in (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_STOPPED), status
        request = self.requests.get(request_id)
        if request is None or request.is_finished:
            return None
        if request in self.waiting:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
        self._finish(request, status, self.clock())
        return request

    def _finish(self, request: Request, status: RequestStatus, now: float) -> None:
        request.status = status
        request.finish_reason = status.value
        request.metrics.finished_time = now
        self.kv.free(request)
        self.kv.forget(request)
        self._released.append(request.request_id)
        del self.requests[request.request_id]
