from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from tunekv.engine.errors import ConfigError, shorten

KV_POLICIES = ("paged", "contiguous")
BATCHING_MODES = ("continuous", "static")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
DTYPES = ("auto", "bfloat16", "float16", "float32")
BLOCK_SIZES = (8, 16, 32, 64, 128)     # what the kernels and the search offer (vLLM: multiples of 16 on GPU)
TP_SIZES = (1, 2, 4, 8)                # tensor-parallel sizes that plans and searches consider
DEVICES = ("auto", "cpu", "cuda")
KV_CACHE_DTYPES = ("auto", "fp8")        # auto: the model's dtype; fp8: e4m3 with a scale (vLLM's --kv-cache-dtype fp8)
QUANTIZATIONS = ("fp8", "int8", "awq", "gptq")   # weight formats plans, simulations and exports size
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass
class EngineConfig:
    """Everything that shapes one engine instance; the knobs tunekv searches over.

    Names follow vLLM's engine arguments. ``None`` means "derive it": ``max_model_len`` from the
    model's ``max_position_embeddings``, ``max_num_batched_tokens`` from the chunked-prefill
    setting, ``num_kv_blocks`` from memory (``gpu_memory_utilization`` on CUDA,
    ``kv_cache_memory_bytes`` or 1 GiB on the CPU). ``tensor_parallel_size`` ranks run one
    process each (a GPU each on CUDA); ``distributed_timeout_s`` bounds how long a step waits for
    them before the engine raises instead of hanging.
    """

    model: str = "tiny-llama"
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.90
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    kv_policy: str = "paged"
    batching: str = "continuous"
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0
    attention_backend: str = "auto"
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    distributed_timeout_s: float = 300.0
    seed: int = 0
    kv_cache_dtype: str = "auto"
    quantization: str | None = None      # the weights' format for plans, simulations and exports

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("kv_policy", self.kv_policy, KV_POLICIES)
        _choice("batching", self.batching, BATCHING_MODES)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        if self.quantization is not None:
            _choice("quantization", self.quantization, QUANTIZATIONS)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a preset name or a local Hugging Face model directory")
        _positive_int("block_size", self.block_size)
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("tensor_parallel_size", self.tensor_parallel_size)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if self.max_num_batched_tokens is not None:
            _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.num_kv_blocks is not None:
            _positive_int("num_kv_blocks", self.num_kv_blocks)
        if self.kv_cache_memory_bytes is not None:
            _positive_int("kv_cache_memory_bytes", self.kv_cache_memory_bytes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(1 << 63) <= self.seed < (1 << 64):
            raise ConfigError(f"seed must be an integer from -2^63 to 2^64 - 1 (torch's range), "
                              f"got {shorten(repr(self.seed))}")
        if not isinstance(self.long_prefill_token_threshold, int) or self.long_prefill_token_threshold < 0:
            raise ConfigError("long_prefill_token_threshold must be an integer >= 0 (0 means no limit)")
        if isinstance(self.distributed_timeout_s, bool) or not isinstance(self.distributed_timeout_s, (int, float)) \
                or not self.distributed_timeout_s > 0:
            raise ConfigError(f"distributed_timeout_s must be a number of seconds > 0, "
                              f"got {shorten(repr(self.distributed_timeout_s))}")
        if isinstance(self.gpu_memory_utilization, bool) or not isinstance(self.gpu_memory_utilization, (int, float)) \
                or not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {shorten(repr(self.gpu_memory_utilization))}"
            )
        if self.kv_policy == "contiguous":
            # A contiguous reservation per sequence (the TGI-like baseline) cannot share blocks.
            self.enable_prefix_caching = False
        if self.max_num_batched_tokens is not None:
            self._check_budget(self.max_num_batched_tokens, self.max_model_len)

    def _check_budget(self, budget: int, max_model_len: int | None) -> None:
        if budget < self.max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens ({budget}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        if not self.enable_chunked_prefill and max_model_len is not None and budget < max_model_len:
            raise ConfigError(
                f"max_num_batched_tokens ({budget}) must be >= max_model_len ({max_model_len}) "
                "when chunked prefill is off, or no long prompt could ever be scheduled"
            )

    def resolve(self, max_position_embeddings: int) -> None:
        """Fill the derived fields once the model is known, and check them against it."""
        if self.max_model_len is None:
            self.max_model_len = max_position_embeddings
        elif self.max_model_len > max_position_embeddings:
            raise ConfigError(
                f"max_model_len ({self.max_model_len}) exceeds the model's "
                f"max_position_embeddings ({max_position_embeddings})"
            )
        if self.max_num_batched_tokens is None:
            if self.enable_chunked_prefill:
                self.max_num_batched_tokens = max(8192, self.max_num_seqs)
            else:
                self.max_num_batched_tokens = max(self.max_model_len, self.max_num_seqs)
        self._check_budget(self.max_num_batched_tokens, self.max_model_len)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from a flat mapping (a tunekv config YAML).

        ``tuned_for`` (provenance written by ``tunekv export``) is ignored; any other unknown key
        is an error naming the closest valid one, and a value of the wrong type (a file's
        ``block_size: sixteen``) one naming the field, the type and the value.
        """
        types = {f.name: str(f.type) for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "tuned_for"}
        for key, value in data.items():
            if key not in types:
                close = difflib.get_close_matches(str(key), list(types), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown config key '{shorten(str(key))}'{hint}")
            _check_type(key, types[key], value)
        return cls(**data)


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"{name} must be one of {', '.join(accepted)}; got {shorten(repr(value))}")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {shorten(repr(value))}")


_TYPE_NAMES = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}


def _check_type(name: str, annotation: str, value: object) -> None:
    """``value`` fits the field's annotation (``int``, ``int | None``, ``float``, ``bool``, ``str``)."""
    kind, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
    if value is None and optional:
        return
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, {"int": int, "bool": bool, "str": str}[kind]) and (
            kind == "bool" or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config field {name} must be {_TYPE_NAMES[kind]}{' or null' if optional else ''}, "
                          f"got {shorten(repr(value))}")
