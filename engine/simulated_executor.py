"""The simulated executor: the engine's own scheduler and KV cache manager, no tensors.

Each step is charged the cost model's predicted seconds on a virtual clock. Every sampled token
is the same non-EOS id, so simulated runs must use ``ignore_eos`` (the load generator does): their
lengths then follow ``max_tokens`` exactly as a real run's do."""

from __future__ import annotations

from typing import Any

from tunekv.engine.clock import VirtualClock
from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError
from tunekv.engine.memory import num_blocks_for_bytes
from tunekv.engine.model_config import ModelConfig
from tunekv.engine.scheduler import SchedulerOutput
from tunekv.engine.step_cost import StepCostModel, step_features


class SimulatedExecutor:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, cost_model: StepCostModel,
                 device: dict[str, Any] | None = None) -> None:
        """``device``: what is simulated, for result files (its builder knows: a GPU preset, this
        device with its calibration, ...). The cost model's KV bytes size the pool, so they count the
        config's cache elements (``ModelCosts.from_model(..., kv_itemsize=kv_cache_itemsize(...))``).
        ``config.quantization`` is accepted: its weights are sized by whoever built the cost model."""
        fp8_bytes = model_config.kv_bytes_per_token(1, config.tensor_parallel_size)  # e4m3: one byte an element
        assert config.kv_cache_dtype != "fp8" or cost_model.costs.kv_bytes_per_token == fp8_bytes, \
            "an fp8 KV cache's cost model must count one byte per KV element (kv_itemsize=1)"
        self.config = config
        self.cost_model = cost_model
        self.clock = VirtualClock()
        eos = model_config.eos_token_ids
        self.token = next(t for t in range(len(eos) + 1) if t not in eos)
        self.steps = 0
        self.device: dict[str, Any] = device if device is not None else {"type": "simulated"}

    def determine_num_blocks(self) -> int:
        cfg = self.config
        if cfg.kv_cache_memory_bytes is None:
            raise ConfigError("a simulated engine needs its KV pool: set num_kv_blocks (tunekv plan gives it) "
                             "or kv_cache_memory_bytes")
        return num_blocks_for_bytes(cfg.kv_cache_memory_bytes, int(self.cost_model.costs.kv_bytes_per_token),
                                    cfg.block_size)

    def initialize_cache(self, num_blocks: int) -> None:
        pass

    def device_description(self) -> dict[str, Any]:
        return dict(self.device)

    def shutdown(self) -> None:
        pass

    def release(self, request_ids: list[str]) -> None:
        pass

    def execute_model(self, sched: SchedulerOutput) -> list[int | None]:
        features, sampled = step_features(sched)
        self.clock.advance(self.cost_model.predict(features))
        self.steps += 1
        token = self.token
        return [token if s else None for s in sampled]
