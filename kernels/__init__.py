"""Paged-attention kernels and their pure-torch references (same signatures)."""

from tunekv.kernels.reference import (
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    write_kv_cache_ref,
)

__all__ = ["paged_decode_attention_ref", "paged_prefill_attention_ref", "write_kv_cache_ref"]
