"""Scatter this step's K/V into the paged cache: one program per token, slot -1 skips. An fp8
cache stores ``clamp(x / scale, -448, 448)`` (see ``reference``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tunekv.kernels.reference import FP8_MAX, check_scales


@triton.jit
def _write_kv_cache_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_scale_ptr, v_scale_ptr,
                           stride_key_t, stride_value_t, stride_cache_block, stride_cache_slot,
                           block_size, HD: tl.constexpr, HD_PAD: tl.constexpr, FP8: tl.constexpr,
                           FP8_MAX: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    offs = tl.arange(0, HD_PAD)
    mask = (offs < HD) & ((offs * 0 + slot) >= 0)
    t64 = token.to(tl.int64)
    k = tl.load(key_ptr + t64 * stride_key_t + offs, mask=mask)
    v = tl.load(value_ptr + t64 * stride_value_t + offs, mask=mask)
    if FP8:
        k = tl.clamp(k.to(tl.float32) / tl.load(k_scale_ptr), -FP8_MAX, FP8_MAX)
        v = tl.clamp(v.to(tl.float32) / tl.load(v_scale_ptr), -FP8_MAX, FP8_MAX)
    dst = (slot // block_size) * stride_cache_block + (slot % block_size) * stride_cache_slot + offs
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """Same contract as ``write_kv_cache_ref``: ``key``/``value`` ``[num_tokens, kv_heads, head_dim]``."""
    fp8 = check_scales(k_cache, k_scale, v_scale)
    num_tokens, kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    assert key.stride(2) == 1 and key.stride(1) == head_dim, "key rows must be contiguous per token"
    assert value.stride(2) == 1 and value.stride(1) == head_dim, "value rows must be contiguous per token"
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the KV cache must be contiguous"
    hd = kv_heads * head_dim
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping, k_scale if fp8 else None, v_scale if fp8 else None,
        key.stride(0), value.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.shape[1], HD=hd, HD_PAD=triton.next_power_of_2(hd), FP8=fp8, FP8_MAX=FP8_MAX)
