from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tunekv.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (``time.perf_counter`` seconds) of one request's life."""

    arrival_time: float
    scheduled_time: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_time: float | None = None
    preemptions: int = 0
    num_cached_tokens: int = 0


@dataclass(eq=False)
class Request:
    """One sequence inside the engine. ``token_ids`` holds the prompt and the outputs so far;
    ``block_ids`` and ``num_cached_blocks`` belong to the KV cache manager."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    arrival_time: float
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        self.token_ids: list[int] = list(self.prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.block_ids: list[int] = []
        self.num_cached_blocks = 0
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        params = self.sampling_params
        # What ends it, precomputed for the per-token check: these tokens, or this many tokens
        # in all (the scheduler lowers the limit to max_model_len when the request arrives).
        self.stop_ids: frozenset[int] = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self.eos_token_ids)
        self.length_limit = self.num_prompt_tokens + params.max_tokens
        # Below this many tokens in all, the stop tokens are masked out of sampling (min_tokens).
        self.stop_floor = self.num_prompt_tokens + params.min_tokens

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None  # set together with a finished status


@dataclass(slots=True)
class RequestOutput:
    """What ``LLMEngine.step`` and ``generate`` return for a request that advanced.

    ``output_token_ids`` is the request's live list (cumulative, not copied each step, so a
    step stays O(batch) rather than O(tokens generated)).
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    metrics: RequestMetrics
