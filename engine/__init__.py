"""The paged-attention serving engine (imported as ``tunekv.engine``).

``LLMEngine`` (and the tensor-parallel ``WorkerError`` and ``run_tp_worker``) are imported on
first use: the configuration and request types load without torch or transformers, so command
lines that only parse arguments start fast."""

import importlib

from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError, NoKVCacheMemory, RequestRejected
from tunekv.engine.kv_cache_manager import KVStats
from tunekv.engine.request import RequestMetrics, RequestOutput, RequestStatus
from tunekv.engine.sampling_params import SamplingParams

__all__ = ["ConfigError", "EngineConfig", "KVStats", "LLMEngine", "NoKVCacheMemory", "RequestMetrics", "RequestOutput",
           "RequestRejected", "RequestStatus", "SamplingParams", "WorkerError", "run_tp_worker"]
_LAZY = {"LLMEngine": "tunekv.engine.llm_engine", "WorkerError": "tunekv.engine.tp_executor",
         "run_tp_worker": "tunekv.engine.tp_executor"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
