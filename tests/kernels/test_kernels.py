"""Triton kernels against their torch references (CPU: Triton's interpreter, fp32 and fp16)."""

from __future__ import annotations

import random

import pytest
import torch

from tests.kernels.helpers import DEVICE, block_tables_for, rel_err
from tunekv.kernels import (
    PrefillTile,
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
    write_kv_cache,
    write_kv_cache_ref,
)

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_cache(seed: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    return k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size, head_dim", [(8, 64), (16, 80), (128, 128)])
def test_write_kv_cache_matches_reference(dtype, block_size, head_dim):
    seed = random.randrange(2**31)
    k_cache, v_cache = make_cache(seed, 6, block_size, 2, head_dim, dtype)
    gen = torch.Generator().manual_seed(seed)
    num_slots = 6 * block_size
    slots = torch.randperm(num_slots, generator=gen)[:7]
    slots[2] = -1
    key = torch.randn(7, 2, head_dim, generator=gen).to(dtype).to(DEVICE)
    value = torch.randn(7, 2, head_dim, generator=gen).to(dtype).to(DEVICE)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    write_kv_cache_ref(key, value, ref_k, ref_v, slots.to(DEVICE))
    write_kv_cache(key, value, k_cache, v_cache, slots.to(DEVICE))
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v), f"seed {seed}"


# (dtype, heads, kv_heads, head_dim, block_size, seq lens, num_splits): GQA groups 1/2/3/4/8,
# head_dim 64/80/128, block sizes 8-128, lengths 1 and exact block multiples.
DECODE_CASES = [
    (torch.float32, 4, 4, 64, 8, [1, 8, 37], None),
    (torch.float16, 4, 2, 64, 16, [16, 5, 70], 1),
    (torch.float32, 6, 2, 80, 16, [33, 1, 64], 3),
    (torch.float16, 8, 2, 128, 32, [96, 7], 2),
    (torch.float32, 8, 1, 64, 64, [129, 64, 2], 4),
    (torch.float16, 12, 4, 80, 128, [200, 128], 3),
    (torch.float32, 16, 2, 64, 8, [50], 7),
]


@pytest.mark.parametrize("dtype, heads, kv_heads, head_dim, block_size, lens, splits", DECODE_CASES)
def test_paged_decode_matches_reference(dtype, heads, kv_heads, head_dim, block_size, lens, splits):
    seed = random.randrange(2**31)
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    k_cache, v_cache = make_cache(seed, num_blocks, block_size, kv_heads, head_dim, dtype)
    tables = block_tables_for(seed, lens, block_size, num_blocks)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(len(lens), heads, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    scale = head_dim ** -0.5
    ref = paged_decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, scale)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, scale, out=out, num_splits=splits,
                           max_seq_len=max(lens) if splits else None)
    assert not out.isnan().any(), f"unwritten or NaN output (seed {seed})"
    assert rel_err(out, ref) < TOL[dtype], f"seed {seed}"


def test_paged_decode_padding_rows_and_empty_splits_give_zeros_not_nan():
    k_cache, v_cache = make_cache(1, 4, 16, 2, 64, torch.float32)
    tables = torch.tensor([[0, 1], [2, 3], [0, 0]], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor([3, 20, 0], dtype=torch.int32, device=DEVICE)
    q = torch.randn(3, 4, 64, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    # 8 splits over max_seq_len 256: most splits of every row are empty.
    paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, 0.125, out=out, num_splits=8, max_seq_len=256)
    ref = paged_decode_attention_ref(q[:2], k_cache, v_cache, tables[:2], seq_lens[:2], 0.125)
    assert rel_err(out[:2], ref) < TOL[torch.float32]
    assert torch.equal(out[2], torch.zeros_like(out[2]))


# (dtype, heads, kv_heads, head_dim, block_size, [(cached prefix, new tokens), ...])
PREFILL_CASES = [
    (torch.float32, 4, 4, 64, 8, [(0, 1), (0, 8), (5, 11)]),
    (torch.float16, 6, 2, 80, 16, [(16, 16), (0, 37)]),
    (torch.float32, 8, 2, 128, 32, [(40, 1), (3, 70)]),
    (torch.float16, 4, 1, 64, 128, [(0, 20), (130, 9)]),
    (torch.float32, 8, 1, 64, 8, [(24, 40)]),
    # A group of 16 (one token per 16-row tile), a group wider than a 16-row tile (rows grow to
    # 32), and head_dim 256 (the wide-head tile).
    (torch.float16, 16, 1, 32, 16, [(70, 5), (0, 2)]),
    (torch.float32, 20, 1, 16, 8, [(9, 4)]),
    (torch.float16, 2, 1, 256, 16, [(40, 30)]),
]


@pytest.mark.parametrize("tile", [None, PrefillTile(16, 16)], ids=["default-tile", "16x16"])
@pytest.mark.parametrize("dtype, heads, kv_heads, head_dim, block_size, seqs", PREFILL_CASES)
def test_paged_prefill_matches_reference(dtype, heads, kv_heads, head_dim, block_size, seqs, tile):
    """Small tiles put many query tiles on a sequence, and keys before the diagonal on the
    unmasked path; grouped heads pack several tokens' group into one tile (padded when the group
    is not a power of two)."""
    seed = random.randrange(2**31)
    lens = [ctx + new for ctx, new in seqs]
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    k_cache, v_cache = make_cache(seed, num_blocks, block_size, kv_heads, head_dim, dtype)
    tables = block_tables_for(seed, lens, block_size, num_blocks)
    qsl = torch.tensor([0] + list(torch.tensor([n for _, n in seqs]).cumsum(0)), dtype=torch.int32, device=DEVICE)
    q = torch.randn(int(qsl[-1]), heads, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    scale = head_dim ** -0.5
    ref = paged_prefill_attention_ref(q, k_cache, v_cache, tables, qsl, seq_lens, scale)
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, k_cache, v_cache, tables, qsl, seq_lens, scale, out=out, tile=tile)
    assert not out.isnan().any(), f"unwritten or NaN output (seed {seed})"
    assert rel_err(out, ref) < TOL[dtype], f"seed {seed}"
