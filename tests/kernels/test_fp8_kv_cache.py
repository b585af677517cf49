"""An fp8 (e4m3) KV cache: the torch reference's quantisation error and saturation, and the Triton
kernels (Triton's interpreter on the CPU) against the reference.

Error bound of one stored element: e4m3 keeps 3 mantissa bits, so a normal value ``y = x / scale``
(|y| >= 2^-6) lies in a binade [2^e, 2^(e+1)) whose values are 2^(e-3) apart, and rounding to the
nearest is off by at most 2^(e-4) <= 2^-4 |y|; below 2^-6 (subnormals, 2^-9 apart) by at most
2^-10. Dequantised: |x' - x| <= max(2^-4 |x|, 2^-10 scale).

The interpreter converts fp8 to fp32 exactly, but its fp32 -> fp8 conversion rounds wrongly
(Triton 3.9: a mantissa that rounds up past 7 does not carry into the exponent, 31.8 becomes 16,
and subnormals truncate), so here the Triton write kernel stores values that are already on the
e4m3 grid (its addressing, scale and saturation); its rounding is checked on a GPU by
bench/gpu_check.py (the fp8 section).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, block_tables_for, rel_err
from tunekv.kernels import (
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
    write_kv_cache,
    write_kv_cache_ref,
)
from tunekv.kernels.reference import FP8_DTYPE, FP8_MAX, dequantize_kv, quantize_kv

# Attention over the fp8 cache vs the same attention over the original cache (randn K/V and
# queries): per-element K/V errors of up to 2^-4 relative move the scores and the weighted values.
# Over 300 seeds of the cases below the largest error was 0.077 of the output's largest magnitude;
# asserted with twice that margin.
UNQUANTISED_TOL = 0.15


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=DEVICE)


def e4m3_grid() -> torch.Tensor:
    """Every finite e4m3 value (254: the 256 bytes less the two NaNs)."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    return values[values.isfinite()]


def fp8_caches(seed: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
               k_scale: torch.Tensor, v_scale: torch.Tensor):
    """(original K, V in fp32; the same quantised into fp8 caches)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(DEVICE)
    v = torch.randn(shape, generator=gen).to(DEVICE)
    return k, v, quantize_kv(k, FP8_DTYPE, k_scale), quantize_kv(v, FP8_DTYPE, v_scale)


@pytest.mark.parametrize("scale", [1.0, 0.05, 3.0])
def test_reference_write_then_read_is_within_e4m3_rounding(scale):
    gen = torch.Generator().manual_seed(7)
    key = (torch.randn(40, 2, 16, generator=gen) * 20 * scale).to(DEVICE)
    key[0, 0, :4] = torch.tensor([1e-4, -3e-3, 0.0, 2.0**-7]) * scale   # subnormal and zero territory
    value = -key
    k_cache = torch.zeros(8, 8, 2, 16, dtype=FP8_DTYPE, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(64, generator=gen)[:40].to(DEVICE)
    write_kv_cache_ref(key, value, k_cache, v_cache, slots, k_scale=scalar(scale), v_scale=scalar(scale))
    flat_k = dequantize_kv(k_cache, scalar(scale), torch.float32).view(64, 2, 16)[slots]
    flat_v = dequantize_kv(v_cache, scalar(scale), torch.float32).view(64, 2, 16)[slots]
    bound = torch.maximum(2.0**-4 * key.abs(), torch.full_like(key, 2.0**-10 * scale)) * (1 + 1e-6)
    assert ((flat_k - key).abs() <= bound).all()
    assert ((flat_v - value).abs() <= bound).all()
    assert (flat_k - key).abs().max() > 0, "randn * 20 cannot all be on the e4m3 grid"


@pytest.mark.parametrize("scale", [1.0, 0.25, 5.0])
def test_reference_saturates_at_448_times_the_scale_not_nan(scale):
    x = torch.tensor([1000.0, -1000.0, 449.0, -460.0, 448.0, float("inf"), -float("inf"), 1.0], device=DEVICE) * scale
    stored = quantize_kv(x, FP8_DTYPE, scalar(scale))
    assert not stored.float().isnan().any()
    read = dequantize_kv(stored, scalar(scale), torch.float32)
    top = FP8_MAX * scale
    assert read[:7].tolist() == pytest.approx([top, -top, top, -top, top, top, -top], rel=1e-6)
    assert read[7].item() == pytest.approx(scale, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.125, 4.0, 0.3])
def test_reference_round_trips_values_on_the_grid_times_the_scale(scale):
    grid = e4m3_grid().to(DEVICE)
    read = dequantize_kv(quantize_kv(grid * scale, FP8_DTYPE, scalar(scale)), scalar(scale), torch.float32)
    assert torch.allclose(read, grid * scale, rtol=1e-6, atol=0)


def test_caches_in_the_models_dtype_ignore_the_scales():
    key = torch.randn(3, 2, 8, device=DEVICE)
    caches = [torch.zeros(2, 4, 2, 8, device=DEVICE) for _ in range(2)]
    slots = torch.tensor([0, 5, -1], device=DEVICE)
    write_kv_cache_ref(key, key, *caches, slots, k_scale=scalar(2.0), v_scale=scalar(2.0))
    assert torch.equal(caches[0].view(8, 2, 8)[slots[:2]], key[:2])


@pytest.mark.parametrize("scale", [1.0, 0.5, 4.0])
def test_triton_write_matches_reference_on_grid_values_and_saturates(scale):
    """Values already on the e4m3 grid (times a power-of-two scale, so x / scale is exact) plus
    out-of-range ones: the kernel must store the reference's bytes."""
    grid = e4m3_grid()
    gen = torch.Generator().manual_seed(3)
    heads, head_dim, tokens = 2, 16, 9
    pick = grid[torch.randint(len(grid), (2, tokens, heads, head_dim), generator=gen)] * scale
    pick[0, 0, 0, :3] = torch.tensor([600.0, -5000.0, 448.0]) * scale
    key, value = pick[0].to(DEVICE), pick[1].to(DEVICE)
    slots = torch.randperm(4 * 8, generator=gen)[:tokens]
    slots[4] = -1
    slots = slots.to(DEVICE)
    scales = dict(k_scale=scalar(scale), v_scale=scalar(scale / 2))
    got = [torch.zeros(4, 8, heads, head_dim, dtype=FP8_DTYPE, device=DEVICE) for _ in range(2)]
    want = [c.clone() for c in got]
    write_kv_cache(key, value, *got, slots, **scales)
    write_kv_cache_ref(key, value, *want, slots, **scales)
    assert all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, want))
    assert dequantize_kv(got[0], scalar(scale), torch.float32).abs().max().item() == FP8_MAX * scale


# (q dtype, heads, kv_heads, head_dim, block_size, seq lens, num_splits, k_scale, v_scale)
FP8_DECODE_CASES = [
    (torch.float32, 4, 2, 64, 8, [1, 8, 37], None, 1.0, 1.0),
    (torch.float32, 6, 2, 80, 16, [33, 64], 3, 0.05, 3.0),
    (torch.float16, 4, 1, 64, 16, [20, 5], 2, 1.0, 0.5),
]


@pytest.mark.parametrize("dtype, heads, kv_heads, head_dim, block_size, lens, splits, ks, vs", FP8_DECODE_CASES)
def test_triton_decode_on_fp8_cache_matches_dequantised_reference(dtype, heads, kv_heads, head_dim, block_size,
                                                                  lens, splits, ks, vs):
    seed = 11
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    k_scale, v_scale = scalar(ks), scalar(vs)
    k, v, k8, v8 = fp8_caches(seed, num_blocks, block_size, kv_heads, head_dim, k_scale, v_scale)
    tables = block_tables_for(seed, lens, block_size, num_blocks)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(len(lens), heads, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    sm = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k8, v8, tables, seq_lens, sm, out=out, num_splits=splits,
                           max_seq_len=max(lens) if splits else None, k_scale=k_scale, v_scale=v_scale)
    ref = paged_decode_attention_ref(q, k8, v8, tables, seq_lens, sm, k_scale=k_scale, v_scale=v_scale)
    # The same attention over the dequantised values, stored in the query's dtype (what the fp8 path
    # computes with): equal up to the summation order, the tolerance of the unquantised kernel tests.
    dequantised = paged_decode_attention_ref(q, dequantize_kv(k8, k_scale, dtype), dequantize_kv(v8, v_scale, dtype),
                                             tables, seq_lens, sm)
    tol = 2e-5 if dtype == torch.float32 else 2e-3
    assert rel_err(out, ref) < tol and rel_err(out, dequantised) < tol
    unquantised = paged_decode_attention_ref(q.float(), k, v, tables, seq_lens, sm)
    assert 0 < rel_err(out, unquantised) < UNQUANTISED_TOL


FP8_PREFILL_CASES = [
    (torch.float32, 4, 2, 64, 8, [(0, 8), (5, 11)], 1.0, 1.0),
    (torch.float16, 4, 1, 64, 16, [(16, 3), (0, 20)], 0.25, 2.0),
    # A cached prefix past the 64-key tile: keys before the diagonal take the unmasked path.
    (torch.float16, 8, 2, 64, 16, [(130, 5), (70, 9)], 0.5, 1.0),
]


@pytest.mark.parametrize("dtype, heads, kv_heads, head_dim, block_size, seqs, ks, vs", FP8_PREFILL_CASES)
def test_triton_prefill_on_fp8_cache_matches_dequantised_reference(dtype, heads, kv_heads, head_dim, block_size,
                                                                   seqs, ks, vs):
    seed = 5
    lens = [ctx + new for ctx, new in seqs]
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    k_scale, v_scale = scalar(ks), scalar(vs)
    k, v, k8, v8 = fp8_caches(seed, num_blocks, block_size, kv_heads, head_dim, k_scale, v_scale)
    tables = block_tables_for(seed, lens, block_size, num_blocks)
    qsl = torch.tensor([0] + list(torch.tensor([n for _, n in seqs]).cumsum(0)), dtype=torch.int32, device=DEVICE)
    q = torch.randn(int(qsl[-1]), heads, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    sm = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, k8, v8, tables, qsl, seq_lens, sm, out=out, k_scale=k_scale, v_scale=v_scale)
    ref = paged_prefill_attention_ref(q, k8, v8, tables, qsl, seq_lens, sm, k_scale=k_scale, v_scale=v_scale)
    dequantised = paged_prefill_attention_ref(q, dequantize_kv(k8, k_scale, dtype), dequantize_kv(v8, v_scale, dtype),
                                              tables, qsl, seq_lens, sm)
    tol = 2e-5 if dtype == torch.float32 else 2e-3
    assert rel_err(out, ref) < tol and rel_err(out, dequantised) < tol
    unquantised = paged_prefill_attention_ref(q.float(), k, v, tables, qsl, seq_lens, sm)
    assert 0 < rel_err(out, unquantised) < UNQUANTISED_TOL


def test_an_fp8_cache_without_scales_is_refused():
    k8 = torch.zeros(2, 4, 1, 8, dtype=FP8_DTYPE, device=DEVICE)
    with pytest.raises(AssertionError, match="needs k_scale and v_scale"):
        write_kv_cache_ref(torch.zeros(1, 1, 8, device=DEVICE), torch.zeros(1, 1, 8, device=DEVICE), k8, k8.clone(),
                           torch.zeros(1, dtype=torch.long, device=DEVICE))
