"""Paged prefill (extend) attention: a chunk of new query tokens attends to its cached prefix
(every key) and causally to itself, under one online softmax; serves chunked prefill and
prefix-cache hits.

Grid ``(num_seqs, num_heads, cdiv(max_query_len, BLOCK_M))``: one program takes ``BLOCK_M``
query rows of one head and walks K/V tiles of ``BLOCK_N`` tokens through the block table up to
its last query position. Rows past a sequence's query length are masked, not computed. An fp8
cache is dequantised tile by tile (``stored * scale`` in fp32, then the query's dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tunekv.kernels.reference import check_scales
from tunekv.kernels.tile import PrefillTile, dot_precision, jit_generic, load_kv_tile, online_softmax_step


@jit_generic("block_tables_ptr", "seq_lens_ptr", "stride_bt_s")
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
                    k_scale_ptr, v_scale_ptr, scale, block_size,
                    stride_q_t, stride_q_h, stride_c_b, stride_c_s, stride_c_h, stride_bt_s, stride_o_t, stride_o_h,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    tile_m = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    q_len = tl.load(query_start_loc_ptr + seq + 1).to(tl.int64) - q_start
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int64)
    ctx = seq_len - q_len
    kv_head = head // GROUP

    m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < q_len
    d = tl.arange(0, D_PAD)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + (q_start + m)[:, None] * stride_q_t + head * stride_q_h + d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if FP8:
        dot_dtype = q_ptr.dtype.element_ty
        k_scale = tl.load(k_scale_ptr)
        v_scale = tl.load(v_scale_ptr)
    else:
        dot_dtype = k_cache_ptr.dtype.element_ty
    q = q.to(dot_dtype)
    q_pos = ctx + m

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    kv_end = tl.minimum(seq_len, ctx + (tile_m + 1) * BLOCK_M)
    n = tl.arange(0, BLOCK_N)
    for tile in range(0, kv_end, BLOCK_N):
        pos = tile + n
        p_mask = pos < kv_end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_bt_s, pos, p_mask, block_size,
                            kv_head, stride_c_b, stride_c_s, stride_c_h, d, d_mask)
        if FP8:
            k = (k.to(tl.float32) * k_scale).to(dot_dtype)
            v = (v.to(tl.float32) * v_scale).to(dot_dtype)
        visible = p_mask[None, :] & (pos[None, :] <= q_pos[:, None])
        m_i, l_i, acc = online_softmax_step(q, k, v, visible, scale, m_i, l_i, acc, PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + (q_start + m)[:, None] * stride_o_t + head * stride_o_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None,
                            max_query_len: int | None = None, k_scale: torch.Tensor | None = None,
                            v_scale: torch.Tensor | None = None, tile: PrefillTile | None = None) -> torch.Tensor:
    """Same contract as ``paged_prefill_attention_ref``. ``tile`` overrides the launch shape
    (benchmarks sweep it); ``block_m`` shrinks to the longest query."""
    fp8 = check_scales(k_cache, k_scale, v_scale)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert num_heads % kv_heads == 0, "query heads must be a multiple of KV heads"
    assert q.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    if out is None:
        out = torch.empty_like(q)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if tile is None:
        tile = PrefillTile(64, 64) if head_dim <= 128 else PrefillTile(32, 32)
    block_m = min(tile.block_m, max(16, triton.next_power_of_2(max_query_len)))
    block_n = tile.block_n
    grid = (num_seqs, num_heads, triton.cdiv(max_query_len, block_m))
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        k_scale if fp8 else None, v_scale if fp8 else None, scale, block_size,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=num_heads // kv_heads, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=dot_precision(q, k_cache, fp8), FP8=fp8,
        num_warps=tile.num_warps, num_stages=tile.num_stages)
    return out
