"""The paged-attention serving engine (imported as ``tunekv.engine``).

``LLMEngine`` is imported on first use: the configuration and request types load without torch
or transformers, so command lines that only parse arguments start fast."""

from tunekv.engine.config import EngineConfig
from tunekv.engine.kv_cache_manager import KVStats
from tunekv.engine.request import RequestMetrics, RequestOutput
from tunekv.engine.sampling_params import SamplingParams

__all__ = ["EngineConfig", "KVStats", "LLMEngine", "RequestMetrics", "RequestOutput", "SamplingParams"]


def __getattr__(name: str):
    if name == "LLMEngine":
        from tunekv.engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
