"""The fused RMSNorm, rotary and SiLU-and-mul kernels against their torch references
(transformers' numerics; CPU: Triton's interpreter, fp32 and fp16)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, rel_err
from tunekv.kernels import (
    rms_norm,
    rms_norm_ref,
    rotary_embedding,
    rotary_embedding_ref,
    silu_and_mul,
    silu_and_mul_ref,
)

TOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# bf16, the serving dtype, only on a GPU: Triton's interpreter computes bf16 wrongly.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_matches_reference(dtype, hidden):
    gen = torch.Generator().manual_seed(hidden)
    x = randn(gen, 5, hidden, dtype=dtype) * 3
    weight = randn(gen, hidden, dtype=dtype)
    assert rel_err(rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_adds_the_residual_in_place_first(dtype):
    gen = torch.Generator().manual_seed(1)
    x, residual, weight = randn(gen, 4, 64, dtype=dtype), randn(gen, 4, 64, dtype=dtype), randn(gen, 64, dtype=dtype)
    original = residual.clone()
    expected = rms_norm_ref(x, weight, 1e-5, residual=original.clone())
    out = rms_norm(x, weight, 1e-5, residual=residual)
    assert torch.equal(residual, x + original), "the residual must become x + residual, rounded as torch rounds"
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_heads, k_heads, head_dim, norm", [(4, 2, 16, False), (6, 3, 20, True), (2, 2, 32, True)])
def test_rotary_embedding_matches_reference(dtype, q_heads, k_heads, head_dim, norm):
    gen = torch.Generator().manual_seed(head_dim + q_heads)
    tokens = 3
    qkv = randn(gen, tokens, (q_heads + 2 * k_heads) * head_dim, dtype=dtype)
    q_size, kv_size = q_heads * head_dim, k_heads * head_dim
    # Strided views of a fused projection, as the model passes them.
    q = qkv[:, :q_size].reshape(tokens, q_heads, head_dim)
    k = qkv[:, q_size:q_size + kv_size].reshape(tokens, k_heads, head_dim)
    angles = torch.rand(tokens, head_dim // 2, generator=gen) * 6
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(dtype).to(DEVICE)
    sin = torch.cat((angles.sin(), angles.sin()), -1).to(dtype).to(DEVICE)
    weights = (randn(gen, head_dim, dtype=dtype), randn(gen, head_dim, dtype=dtype)) if norm else (None, None)
    before = qkv.clone()
    got_q, got_k = rotary_embedding(q, k, cos, sin, *weights, eps=1e-6)
    ref_q, ref_k = rotary_embedding_ref(q, k, cos, sin, *weights, eps=1e-6)
    assert torch.equal(qkv, before), "the projection's output is left as it was"
    assert rel_err(got_q, ref_q) < TOL[dtype] and rel_err(got_k, ref_k) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [48, 1500])
def test_silu_and_mul_matches_reference(dtype, n):
    gen = torch.Generator().manual_seed(n)
    x = randn(gen, 3, 2 * n, dtype=dtype) * 4
    assert rel_err(silu_and_mul(x), silu_and_mul_ref(x)) < TOL[dtype]


def test_empty_inputs_launch_nothing():
    x = torch.empty(0, 64, device=DEVICE)
    assert rms_norm(x, torch.ones(64, device=DEVICE), 1e-6).shape == (0, 64)
    assert silu_and_mul(torch.empty(0, 64, device=DEVICE)).shape == (0, 32)
