"""Device functions shared by the paged attention kernels."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class DecodeTile:
    """Launch shape of the decode kernel's first stage: keys per tile, warps, pipeline stages."""

    block_n: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        assert self.block_n >= 16 and self.block_n & (self.block_n - 1) == 0, "block_n must be a power of two >= 16"


@dataclass(frozen=True)
class PrefillTile:
    """Launch shape of the prefill kernel: query rows and keys per tile, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for size in (self.block_m, self.block_n):
            assert size >= 16 and size & (size - 1) == 0, "tile sizes must be powers of two >= 16"


def jit_generic(*names: str):
    """``triton.jit`` compiling one kernel for every value of ``names``. Triton specializes
    integer arguments (== 1, divisible by 16) and pointers (16-byte aligned) by default, so an
    argument that changes from step to step (a block-table width, a split count, a slice's
    offset) would compile new variants in the middle of a serving run, seconds of stall each."""
    kwargs: dict = {"do_not_specialize": names}
    if "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters:
        kwargs["do_not_specialize_on_alignment"] = names
    return triton.jit(**kwargs)


def dot_precision(q: torch.Tensor, k_cache: torch.Tensor, fp8: bool) -> str:
    """``tl.dot``'s precision: IEEE fp32 where the operands are fp32 (the query's dtype for an fp8
    cache, which is dequantised to it; the cache's otherwise), else tf32 (moot for 16-bit operands)."""
    return "ieee" if (q if fp8 else k_cache).dtype == torch.float32 else "tf32"


@triton.jit
def load_kv_tile(k_cache_ptr, v_cache_ptr, block_table_row_ptr, pos, p_mask, block_size, kv_head,
                 stride_c_b, stride_c_s, stride_c_h, d, d_mask):
    """K and V ``[BLOCK_N, D_PAD]`` for token positions ``pos`` of one sequence and KV head, read
    through the sequence's block table (a tile may span pages); masked rows load zeros."""
    block = tl.load(block_table_row_ptr + pos // block_size, mask=p_mask, other=0).to(tl.int64)
    kv_off = block * stride_c_b + (pos % block_size).to(tl.int64) * stride_c_s + kv_head * stride_c_h
    kv_mask = p_mask[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def online_softmax_step(q, k, v, visible, scale, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One tile of the online softmax: scores for the ``visible`` (row, key) pairs, rescaled
    running max ``m_i``, sum ``l_i`` and output ``acc``. Rows that have seen no key yet keep
    m = -inf without producing NaN."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc
