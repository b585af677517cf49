from __future__ import annotations

from dataclasses import dataclass, field

from tunekv.engine.errors import ConfigError

# As vLLM: a positive temperature below this is raised to it. Dividing logits by 1e-45 overflows
# to inf and the softmax to NaN, which samples token 0 whatever the logits say.
MIN_TEMPERATURE = 1e-2


@dataclass
class SamplingParams:
    """Per-request generation settings (vLLM names and defaults).

    temperature 0 means greedy; a positive one below ``MIN_TEMPERATURE`` is raised to it. ``seed``
    makes a sampled request reproducible on its own, whatever else shares its batch; -1, as in
    vLLM, means none.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    min_tokens: int = 0              # output tokens before EOS or a stop token may end the request

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            self.temperature = MIN_TEMPERATURE
        if self.seed == -1:
            self.seed = None
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(f"min_tokens must be an integer from 0 to max_tokens ({self.max_tokens}), "
                              f"got {self.min_tokens!r}")
        if self.top_k == 0 or self.top_k < -1:
            raise ConfigError(f"top_k must be -1 (off) or >= 1, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
