"""The paged-attention serving engine (imported as ``tunekv.engine``)."""

from tunekv.engine.config import EngineConfig
from tunekv.engine.kv_cache_manager import KVStats
from tunekv.engine.llm_engine import LLMEngine
from tunekv.engine.request import RequestMetrics, RequestOutput
from tunekv.engine.sampling_params import SamplingParams

__all__ = ["EngineConfig", "KVStats", "LLMEngine", "RequestMetrics", "RequestOutput", "SamplingParams"]
