"""KV pool sizing, shared by the engine and the planner so both count the same blocks."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

from tunekv.engine.errors import ConfigError

GIB = 1 << 30
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model_dtype: torch.dtype | str | None) -> torch.dtype:
    """``auto``: the checkpoint's half dtype (bfloat16 if it is fp32) on CUDA; float32 on the CPU."""
    if name != "auto":
        return _DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    if isinstance(model_dtype, str):
        model_dtype = _DTYPES.get(model_dtype)
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def kv_cache_torch_dtype(kv_cache_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The KV cache's storage dtype: the model's (``auto``) or fp8 e4m3 (``fp8``)."""
    return torch.float8_e4m3fn if kv_cache_dtype == "fp8" else dtype


def kv_cache_itemsize(kv_cache_dtype: str, dtype: torch.dtype) -> int:
    """Bytes one KV element takes: what every pool size (engine, planner, simulator) counts with."""
    return kv_cache_torch_dtype(kv_cache_dtype, dtype).itemsize


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation can take now: free GPU memory, or the CPU's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def num_blocks_for_bytes(kv_bytes: float, kv_bytes_per_token: int, block_size: int) -> int:
    """floor(bytes available for KV / bytes of one block)."""
    return max(0, int(kv_bytes // (kv_bytes_per_token * block_size)))


@dataclass(frozen=True)
class MemoryProfile:
    """How the KV pool was sized; the planner reports these same numbers.

    ``source``: ``kv_cache_memory_bytes`` (an explicit budget), ``cpu-default`` (1 GiB), or
    ``profiled`` (CUDA: ``total x gpu_memory_utilization - used - activations - CUDA graphs``,
    where ``used`` is everything resident before the cache: weights, the CUDA context and
    other processes)."""

    source: str
    weights_bytes: int
    kv_bytes: float
    kv_bytes_per_token: int
    block_size: int
    total_bytes: int | None = None
    used_bytes: int | None = None
    activation_bytes: int = 0
    cuda_graph_bytes: int = 0

    @property
    def num_blocks(self) -> int:
        return num_blocks_for_bytes(self.kv_bytes, self.kv_bytes_per_token, self.block_size)


def describe_device(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """A device as result files record it: type, name, dtype and torch version, plus the memory of
    a GPU or the thread count of a CPU."""
    info: dict[str, Any] = {"type": device.type, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_bytes=props.total_memory)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info
