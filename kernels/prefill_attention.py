"""Paged prefill (extend) attention: a chunk of new query tokens attends to its cached prefix
(every key) and causally to itself, under one online softmax; serves chunked prefill and
prefix-cache hits.

Grid ``(query tiles, num_seqs, num_kv_heads)``: one program takes ``BLOCK_M`` rows of one KV
head's query group, packed token-major (``BLOCK_M / GROUP_PAD`` tokens x the group's heads), so
each K/V tile read through the block table serves the whole group. Query tiles run last-first
(the longest causal spans start earliest). Keys every row of the tile sees are walked without the
causal mask; only the tiles on the diagonal are masked. Scores are scaled into base 2 (``exp2``).
An fp8 cache is dequantised tile by tile (``stored * scale`` in fp32, then the query's dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tunekv.kernels.reference import check_scales
from tunekv.kernels.tile import PrefillTile, dot_precision, jit_generic, load_kv_tile

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q, k, v, visible, qk_scale, m_i, l_i, acc, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """One K/V tile of the online softmax in base 2. Every row has seen a key by its first tile
    (see the grid's docstring), so the running max is finite and needs no -inf guard."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@jit_generic("block_tables_ptr", "seq_lens_ptr", "stride_bt_s")
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
                    k_scale_ptr, v_scale_ptr, qk_scale, block_size,
                    stride_q_t, stride_q_h, stride_c_b, stride_c_s, stride_c_h, stride_bt_s, stride_o_t, stride_o_h,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr):
    tile_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)
    kv_head = tl.program_id(2)
    TOKENS: tl.constexpr = BLOCK_M // GROUP_PAD
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    q_len = tl.load(query_start_loc_ptr + seq + 1).to(tl.int64) - q_start
    first = tile_m * TOKENS
    if first >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int64)
    ctx = seq_len - q_len

    r = tl.arange(0, BLOCK_M)
    t = first + r // GROUP_PAD
    g = r % GROUP_PAD
    row_mask = (t < q_len) & (g < GROUP)
    head = kv_head * GROUP + g
    d = tl.arange(0, D_PAD)
    d_mask = d < HEAD_DIM
    q_rows = (q_start + t) * stride_q_t + head * stride_q_h
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if FP8:
        dot_dtype = q_ptr.dtype.element_ty
        k_scale = tl.load(k_scale_ptr)
        v_scale = tl.load(v_scale_ptr)
    else:
        dot_dtype = k_cache_ptr.dtype.element_ty
    q = q.to(dot_dtype)
    q_pos = ctx + t

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt_s
    n = tl.arange(0, BLOCK_N)
    # Keys before the tile's first query position are visible to every row: no causal mask.
    full_end = (ctx + first + 1) // BLOCK_N * BLOCK_N
    for tile in range(0, full_end, BLOCK_N):
        pos = tile + n
        p_mask = pos < full_end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, table_row, pos, p_mask, block_size, kv_head,
                            stride_c_b, stride_c_s, stride_c_h, d, d_mask)
        if FP8:
            k = (k.to(tl.float32) * k_scale).to(dot_dtype)
            v = (v.to(tl.float32) * v_scale).to(dot_dtype)
        m_i, l_i, acc = _attend_tile(q, k, v, p_mask[None, :], qk_scale, m_i, l_i, acc, PRECISION, False)
    kv_end = tl.minimum(seq_len, ctx + first + TOKENS)
    for tile in range(full_end, kv_end, BLOCK_N):
        pos = tile + n
        p_mask = pos < kv_end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, table_row, pos, p_mask, block_size, kv_head,
                            stride_c_b, stride_c_s, stride_c_h, d, d_mask)
        if FP8:
            k = (k.to(tl.float32) * k_scale).to(dot_dtype)
            v = (v.to(tl.float32) * v_scale).to(dot_dtype)
        visible = p_mask[None, :] & (pos[None, :] <= q_pos[:, None])
        m_i, l_i, acc = _attend_tile(q, k, v, visible, qk_scale, m_i, l_i, acc, PRECISION, True)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_rows = (q_start + t) * stride_o_t + head * stride_o_h
    tl.store(out_ptr + o_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])


def default_prefill_tile(head_dim: int) -> PrefillTile:
    """Measured on an H200 (bf16, llama-3-8b heads, 4 x 2k and 1 x 8k prompts): 128 x 64 with 4
    warps and 2 stages ran 191 and 258 TFLOP/s, with 8 warps 179 and 217, 64 x 64 tiles 167 and 187.
    Wider heads keep the earlier kernel's 32 x 32 tiles (not yet timed: a 64-row fp32 accumulator
    of 256 columns would spill with 4 warps)."""
    return PrefillTile(128, 64, 4, 2) if head_dim <= 128 else PrefillTile(32, 32, 4, 3)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None,
                            max_query_len: int | None = None, k_scale: torch.Tensor | None = None,
                            v_scale: torch.Tensor | None = None, tile: PrefillTile | None = None) -> torch.Tensor:
    """Same contract as ``paged_prefill_attention_ref``. ``tile`` overrides the launch shape
    (benchmarks sweep it); ``block_m`` shrinks to the longest query's rows (tokens x group)."""
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
        tile = default_prefill_tile(head_dim)
    group = num_heads // kv_heads
    group_pad = triton.next_power_of_2(group)
    block_m = max(tile.block_m, group_pad)
    block_m = min(block_m, max(16, triton.next_power_of_2(max_query_len * group_pad)))
    grid = (triton.cdiv(max_query_len, block_m // group_pad), num_seqs, kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        k_scale if fp8 else None, v_scale if fp8 else None, scale * LOG2E, block_size,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m, BLOCK_N=tile.block_n, PRECISION=dot_precision(q, k_cache, fp8), FP8=fp8,
        num_warps=tile.num_warps if block_m >= 64 else 4, num_stages=tile.num_stages)
    return out
