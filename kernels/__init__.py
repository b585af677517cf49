"""Paged-attention and fused layer Triton kernels, and their pure-torch references (same signatures)."""

from tunekv.kernels.decode_attention import paged_decode_attention
from tunekv.kernels.layer_ops import rms_norm, rotary_embedding, silu_and_mul
from tunekv.kernels.layer_reference import rms_norm_ref, rotary_embedding_ref, silu_and_mul_ref
from tunekv.kernels.prefill_attention import paged_prefill_attention
from tunekv.kernels.reference import (
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    write_kv_cache_ref,
)
from tunekv.kernels.tile import DecodeTile, PrefillTile
from tunekv.kernels.write_kv_cache import write_kv_cache

__all__ = [
    "DecodeTile", "PrefillTile",
    "paged_decode_attention", "paged_decode_attention_ref",
    "paged_prefill_attention", "paged_prefill_attention_ref",
    "write_kv_cache", "write_kv_cache_ref",
    "rms_norm", "rms_norm_ref", "rotary_embedding", "rotary_embedding_ref", "silu_and_mul", "silu_and_mul_ref",
]
