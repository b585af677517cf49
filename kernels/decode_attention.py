"""Paged decode attention, split-KV (flash-decoding) in two stages.

Stage 1, grid ``(num_seqs, num_kv_heads, num_splits)``: one program takes a KV head's whole
query group (padded to a power of two, at least 16 rows for ``tl.dot``) over one of
``num_splits`` equal slices of that sequence's own length, reading K/V through the block table
in tiles of ``BLOCK_N`` tokens (a tile may span several pages, so any block size works), and
writes a partial output and its log-sum-exp. An fp8 cache is dequantised tile by tile
(``stored * scale`` in fp32, then the query's dtype for the dot products).
Stage 2, grid ``(num_seqs, num_heads)``: merges the splits. Empty splits (short sequences, or
padding rows with ``seq_len == 0`` under CUDA graphs) give lse = -inf and weigh nothing; a row
with no keys at all outputs zeros, never NaN.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from tunekv.kernels.reference import check_scales
from tunekv.kernels.tile import DecodeTile, dot_precision, jit_generic, load_kv_tile, online_softmax_step


@jit_generic("stride_bt_s", "stride_po_s", "stride_po_h", "stride_pl_s", "stride_pl_h")
def _decode_stage1(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr,
                   k_scale_ptr, v_scale_ptr, scale, block_size,
                   stride_q_s, stride_q_h, stride_c_b, stride_c_s, stride_c_h, stride_bt_s,
                   stride_po_s, stride_po_h, stride_po_p, stride_pl_s, stride_pl_h,
                   GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, tl.num_programs(2)), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    rows = tl.arange(0, ROWS)
    row_mask = rows < GROUP
    heads = kv_head * GROUP + rows
    d = tl.arange(0, D_PAD)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_q_s + heads[:, None] * stride_q_h + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if FP8:
        dot_dtype = q_ptr.dtype.element_ty
        k_scale = tl.load(k_scale_ptr)
        v_scale = tl.load(v_scale_ptr)
    else:
        dot_dtype = k_cache_ptr.dtype.element_ty
    q = q.to(dot_dtype)

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, D_PAD], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for tile in range(start, end, BLOCK_N):
        pos = tile + n
        p_mask = pos < end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_bt_s, pos, p_mask, block_size,
                            kv_head, stride_c_b, stride_c_s, stride_c_h, d, d_mask)
        if FP8:
            k = (k.to(tl.float32) * k_scale).to(dot_dtype)
            v = (v.to(tl.float32) * v_scale).to(dot_dtype)
        m_i, l_i, acc = online_softmax_step(q, k, v, p_mask[None, :], scale, m_i, l_i, acc, PRECISION)

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(part_out_ptr + seq * stride_po_s + heads[:, None] * stride_po_h + split * stride_po_p + d[None, :],
             out, mask=row_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + seq * stride_pl_s + heads * stride_pl_h + split, lse, mask=row_mask)


@jit_generic("num_splits", "stride_po_s", "stride_po_h", "stride_pl_s", "stride_pl_h")
def _decode_stage2(part_out_ptr, part_lse_ptr, out_ptr, num_splits,
                   stride_po_s, stride_po_h, stride_po_p, stride_pl_s, stride_pl_h, stride_o_s, stride_o_h,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
                   SPLITS_CHUNK: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    lse_row = part_lse_ptr + seq * stride_pl_s + head * stride_pl_h
    sp = tl.arange(0, SPLITS_PAD)
    lse = tl.load(lse_row + sp, mask=sp < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(lse - m_safe), 0)
    d = tl.arange(0, D_PAD)
    d_mask = d < HEAD_DIM
    part_row = part_out_ptr + seq * stride_po_s + head * stride_po_h + d[None, :]
    acc = tl.zeros([D_PAD], tl.float32)
    chunk = tl.arange(0, SPLITS_CHUNK)
    for first in range(0, num_splits, SPLITS_CHUNK):  # only the real splits' partials are read
        splits = first + chunk
        splits_mask = splits < num_splits
        weight = tl.exp(tl.load(lse_row + splits, mask=splits_mask, other=float("-inf")) - m_safe)
        part = tl.load(part_row + splits[:, None] * stride_po_p, mask=splits_mask[:, None] & d_mask[None, :],
                       other=0.0)
        acc += tl.sum(part * weight[:, None], 0)
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_o_s + head * stride_o_h + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


MAX_SPLITS = 64  # stage 2 is compiled once for this many (its log-sum-exp vector), masked to the real count
PROGRAMS_PER_SM = 8


def default_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, block_n: int = 64,
                       num_sms: int = 132) -> int:
    """About ``PROGRAMS_PER_SM`` programs per SM from the batch's own work, never more splits than
    tiles. Fewer, longer splits win once the grid fills the card: on an H200 (graphed, llama-3-8b
    heads, 1k tokens) batch 32 read 59% of copy bandwidth at 9 splits and 64% at 4, batch 64 69%
    at 5 and 74% at 2, batch 256 80% at 2 and 83% at 1; batch 1 at 8k wants all 64 (60% vs 48% at 32)."""
    tiles = max(1, -(-max_seq_len // block_n))
    want = max(1, PROGRAMS_PER_SM * num_sms // max(1, num_seqs * num_kv_heads))
    return max(1, min(want, tiles, MAX_SPLITS))


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           out: torch.Tensor | None = None, num_splits: int | None = None,
                           max_seq_len: int | None = None, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None, tile: DecodeTile | None = None) -> torch.Tensor:
    """Same contract as ``paged_decode_attention_ref``. ``num_splits`` fixes the split count
    (CUDA graphs need it constant); otherwise it follows ``max_seq_len`` (read from ``seq_lens``
    if not given). Each sequence is cut into ``num_splits`` slices of its own length, so a
    graph captured for ``max_model_len`` still spreads short sequences over every split.
    ``tile`` overrides the launch shape (benchmarks sweep it)."""
    fp8 = check_scales(k_cache, k_scale, v_scale)
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert num_heads % kv_heads == 0, "query heads must be a multiple of KV heads"
    assert q.stride(2) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    group = num_heads // kv_heads
    if tile is None:
        tile = DecodeTile(64 if head_dim <= 128 else 32)
    block_n = tile.block_n
    if num_splits is None:
        if max_seq_len is None:
            max_seq_len = int(seq_lens.max())
        num_splits = default_num_splits(num_seqs, kv_heads, max_seq_len, block_n, _num_sms(q.device))
    assert 1 <= num_splits <= MAX_SPLITS, f"num_splits must be in [1, {MAX_SPLITS}]"
    part_out = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_stage1[(num_seqs, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse,
        k_scale if fp8 else None, v_scale if fp8 else None, scale, block_size,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        GROUP=group, ROWS=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        D_PAD=triton.next_power_of_2(head_dim), BLOCK_N=block_n,
        PRECISION=dot_precision(q, k_cache, fp8), FP8=fp8, num_warps=tile.num_warps, num_stages=tile.num_stages)
    _decode_stage2[(num_seqs, num_heads)](
        part_out, part_lse, out, num_splits,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim), SPLITS_PAD=MAX_SPLITS, SPLITS_CHUNK=8)
    return out
