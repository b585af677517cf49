"""An EngineConfig resolved against its model: the one place the engine, the planner and the
simulator turn settings into a checked config."""

from __future__ import annotations

import dataclasses

from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError
from tunekv.engine.model_config import ModelConfig, load_model_config

__all__ = ["resolve_config"]


def resolve_config(config: EngineConfig) -> tuple[EngineConfig, ModelConfig]:
    """A copy of ``config`` with its derived fields filled in for its model, checked against it
    (ConfigError naming the problem); the engine and the planner both start here."""
    config = dataclasses.replace(config)
    mc = load_model_config(config.model)
    config.resolve(mc.max_position_embeddings)
    assert config.max_model_len is not None
    if mc.num_heads % mc.num_kv_heads:
        raise ConfigError(f"model {mc.name}: num_attention_heads ({mc.num_heads}) must be a multiple "
                         f"of num_key_value_heads ({mc.num_kv_heads})")
    problem = mc.tp_problem(config.tensor_parallel_size)
    if problem:
        raise ConfigError(problem)
    window = getattr(mc.hf_config, "sliding_window", None)
    use_window = getattr(mc.hf_config, "use_sliding_window", True)
    if window and use_window and config.max_model_len > window:
        raise ConfigError(f"model {mc.name} uses sliding-window attention ({window} tokens), which this "
                         f"engine does not implement; set max_model_len <= {window}")
    return config, mc
