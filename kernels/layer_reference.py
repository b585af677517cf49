"""Pure-torch RMSNorm, rotary embedding and SiLU-and-mul: transformers' numerics op for op (fp32
RMSNorm statistics, every other op rounded to the activation dtype), the ground truth of the
fused Triton kernels and the engine's path off CUDA (greedy tokens match ``generate`` exactly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of ``x`` over its last dimension. With ``residual``, first ``residual += x`` (in
    place, in the activation dtype, as a decoder layer's skip connection) and normalise that."""
    if residual is not None:
        residual.add_(x)
        x = residual
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_embedding_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                         eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` ``[tokens, heads, head_dim]`` and ``k`` ``[tokens, kv_heads, head_dim]`` by
    ``cos``/``sin`` ``[tokens, head_dim]`` (rotate-half layout, the activation dtype); with norm
    weights (Qwen3), each head is RMS-normalised first. Returns new tensors."""
    if q_norm_weight is not None and k_norm_weight is not None:
        q, k = rms_norm_ref(q, q_norm_weight, eps), rms_norm_ref(k, k_norm_weight, eps)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``x = [gate | up]`` along the last dimension."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
