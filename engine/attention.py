"""The pluggable attention backend: metadata built once per step, then one call per layer."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from tunekv.engine.errors import ConfigError
from tunekv.kernels.layer_reference import rms_norm_ref, rotary_embedding_ref, silu_and_mul_ref
from tunekv.kernels.reference import (
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    write_kv_cache_ref,
)


@dataclass
class AttentionMetadata:
    """Per-step inputs shared by every layer. Sequences are ordered decodes first:
    the first ``num_decodes`` sequences have exactly one query token each."""

    slot_mapping: torch.Tensor      # [num_tokens] int64, -1 = padding (no write)
    block_tables: torch.Tensor      # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor          # [num_seqs] int32, cached tokens after this step
    query_start_loc: torch.Tensor   # [num_seqs + 1] int32 (cu_seqlens of the queries)
    num_decodes: int
    num_seqs: int
    max_seq_len: int                # host-side bounds, so kernels launch without a device sync
    max_query_len: int


@dataclass(frozen=True)
class LayerKVCache:
    """One layer's paged K and V pools ``[num_blocks, block_size, kv_heads, head_dim]`` and their
    scales (fp32, one element each, tensors so the kernels and CUDA graphs read them on the device).

    An fp8 pool (``kv_cache_dtype="fp8"``, e4m3) stores ``clamp(x / scale, -448, 448)`` and reads
    ``stored * scale``. The scales are 1.0, vLLM's default when a checkpoint has no calibrated ones:
    e4m3 reaches +-448, ample for the K/V of normal models, and a value beyond it saturates rather
    than turning to NaN. A pool in the model's dtype ignores them."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor


@dataclass(frozen=True)
class LayerOps:
    """The rest of a decoder layer's small ops, from the same kernel family as the attention:
    transformers' torch ops (``layer_reference``) or their fused Triton kernels (``layer_ops``)."""

    rms_norm: Callable[..., torch.Tensor]
    rotary_embedding: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


class AttentionBackend(Protocol):
    name: str
    supports_cuda_graphs: bool
    ops: LayerOps

    def prepare(self, metadata: AttentionMetadata) -> None: ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerKVCache,
                metadata: AttentionMetadata, scale: float) -> torch.Tensor: ...


class PagedAttentionBackend:
    """Writes the step's K/V into the paged cache, then runs the decode function over the
    one-token sequences and the prefill (extend) function over the rest.

    ``torch``: the pure-torch references, any device. ``triton``: the Triton kernels, whose
    launches depend only on host-side sizes, so the decode path can be captured in a CUDA graph
    (``max_seq_len`` then is ``max_model_len``, fixing the split count)."""

    def __init__(self, name: str, write, decode, prefill, supports_cuda_graphs: bool, ops: LayerOps) -> None:
        self.name = name
        self.supports_cuda_graphs = supports_cuda_graphs
        self.ops = ops
        self._write, self._decode, self._prefill = write, decode, prefill

    def prepare(self, metadata: AttentionMetadata) -> None:
        nd = metadata.num_decodes
        self._prefill_qsl = metadata.query_start_loc[nd:] - metadata.query_start_loc[nd]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerKVCache,
                metadata: AttentionMetadata, scale: float) -> torch.Tensor:
        scales = dict(k_scale=cache.k_scale, v_scale=cache.v_scale)
        self._write(k, v, cache.k, cache.v, metadata.slot_mapping, **scales)
        out = torch.empty_like(q)
        nd = metadata.num_decodes
        if nd:
            self._decode(q[:nd], cache.k, cache.v, metadata.block_tables[:nd], metadata.seq_lens[:nd], scale,
                         out=out[:nd], max_seq_len=metadata.max_seq_len, **scales)
        if metadata.num_seqs > nd:
            self._prefill(q[nd:], cache.k, cache.v, metadata.block_tables[nd:], self._prefill_qsl,
                          metadata.seq_lens[nd:], scale, out=out[nd:], max_query_len=metadata.max_query_len,
                          **scales)
        return out


def get_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """``auto``: the Triton kernels on CUDA, the torch reference elsewhere."""
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return PagedAttentionBackend("torch", write_kv_cache_ref, paged_decode_attention_ref,
                                     paged_prefill_attention_ref, supports_cuda_graphs=False,
                                     ops=LayerOps(rms_norm_ref, rotary_embedding_ref, silu_and_mul_ref))
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("attention_backend 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 to run the "
                         "kernels in Triton's interpreter); use 'torch' or 'auto' on the CPU")
    from tunekv.kernels import (
        paged_decode_attention,
        paged_prefill_attention,
        rms_norm,
        rotary_embedding,
        silu_and_mul,
        write_kv_cache,
    )

    return PagedAttentionBackend("triton", write_kv_cache, paged_decode_attention, paged_prefill_attention,
                                 supports_cuda_graphs=True, ops=LayerOps(rms_norm, rotary_embedding, silu_and_mul))
