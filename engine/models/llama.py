"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm).

Numerics follow transformers' implementation op for op (fp32 RMSNorm statistics, rope applied
in the activation dtype), so greedy tokens match ``generate`` exactly in float32. The norms, rope
and SiLU-and-mul come from the attention backend's ``LayerOps``: the torch ops themselves, or
Triton kernels that fuse them and round where they round.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tunekv.engine.attention import AttentionBackend, AttentionMetadata, LayerKVCache, LayerOps
from tunekv.engine.errors import ConfigError
from tunekv.engine.model_config import has_qk_norm, has_qkv_bias
from tunekv.engine.parallel import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    TPContext,
    VocabParallelEmbedding,
    heads_of_rank,
)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: LayerOps, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of ``x``; with ``residual``, of ``residual += x`` (see ``rms_norm_ref``)."""
        return ops.rms_norm(x, self.weight, self.eps, residual)


class RotaryEmbedding(nn.Module):
    """cos/sin table for every position, built with transformers' own rope-scaling functions."""

    def __init__(self, config: PretrainedConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        params = getattr(config, "rope_parameters", None) or {}
        rope_type = params.get("rope_type", "default")
        if rope_type == "default":
            base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
            scaling = 1.0
        elif rope_type in ("linear", "llama3", "yarn", "longrope"):
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        else:
            raise ConfigError(f"rope_type {rope_type!r} is not supported (default, linear, llama3, yarn, longrope)")
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[num_tokens, head_dim]`` for this step, once for all layers."""
        cos = self.get_buffer("cos").index_select(0, positions).to(dtype)
        sin = self.get_buffer("sin").index_select(0, positions).to(dtype)
        return cos, sin


class LlamaAttention(nn.Module):
    """Attention over this rank's query heads and the KV heads they use (all of them at tp=1)."""

    def __init__(self, config: PretrainedConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                 qkv_bias: bool, qk_norm: bool, tp: TPContext) -> None:
        super().__init__()
        q_first, self.num_heads = heads_of_rank(num_heads, tp)
        kv_first, self.num_kv_heads = heads_of_rank(num_kv_heads, tp)
        self.head_dim = head_dim
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.scale = head_dim ** -0.5
        kv_part = (kv_first * head_dim, self.kv_size, num_kv_heads * head_dim)
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size, [(q_first * head_dim, self.q_size, num_heads * head_dim), kv_part, kv_part],
            bias=qkv_bias)
        self.o_proj = RowParallelLinear(num_heads * head_dim, config.hidden_size, tp)
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps) if qk_norm else None

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                kv_cache: LayerKVCache, backend: AttentionBackend,
                metadata: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = backend.ops.rotary_embedding(q, k, *rope, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        else:
            q, k = backend.ops.rotary_embedding(q, k, *rope)
        out = backend.forward(q, k, v, kv_cache, metadata, self.scale)
        return self.o_proj(out.reshape(-1, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str, tp: TPContext) -> None:
        super().__init__()
        if act != "silu":
            raise ConfigError(f"hidden_act {act!r} is not supported (silu)")
        assert intermediate_size % tp.size == 0, f"intermediate_size does not split over {tp.size} ranks"
        self.intermediate_size = per_rank = intermediate_size // tp.size
        part = (tp.rank * per_rank, per_rank, intermediate_size)
        self.gate_up_proj = ColumnParallelLinear(hidden_size, [part, part], bias=False)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, tp)

    def forward(self, x: torch.Tensor, ops: LayerOps) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, attn: LlamaAttention, tp: TPContext) -> None:
        super().__init__()
        self.self_attn = attn
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, residual: torch.Tensor | None,
                kv_cache: LayerKVCache, backend: AttentionBackend,
                metadata: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` is the previous layer's MLP output and ``residual`` the stream before it (None at the
        first layer, whose ``x`` is the embedding): returns this layer's pair. Each norm adds its
        input into the residual first, so the stream is ``residual + x`` as transformers computes it."""
        ops = backend.ops
        if residual is None:
            residual = x
            h = self.input_layernorm(x, ops)
        else:
            h = self.input_layernorm(x, ops, residual)
        h = self.self_attn(rope, h, kv_cache, backend, metadata)
        h = self.post_attention_layernorm(h, ops, residual)
        return self.mlp(h, ops), residual


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                 max_positions: int, tp: TPContext) -> None:
        super().__init__()
        qkv_bias, qk_norm = has_qkv_bias(config), has_qk_norm(config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, LlamaAttention(config, num_heads, num_kv_heads, head_dim,
                                                     qkv_bias, qk_norm, tp), tp)
            for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config, head_dim, max_positions)


class LlamaForCausalLM(nn.Module):
    """Module names mirror transformers' so checkpoints map one to one, except the fused
    ``qkv_proj`` (q/k/v) and ``gate_up_proj`` (gate/up), filled part by part at load. Under
    tensor parallelism each rank builds its own slice of every layer (``tp``)."""

    stacked_params = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: PretrainedConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                 max_positions: int, tp: TPContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.tp = tp = tp or TPContext()
        self.model = LlamaModel(config, num_heads, num_kv_heads, head_dim, max_positions, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[LayerKVCache], backend: AttentionBackend,
                metadata: AttentionMetadata) -> torch.Tensor:
        backend.prepare(metadata)
        x = self.model.embed_tokens(input_ids)
        rope = self.model.rotary.lookup(positions, x.dtype)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(rope, x, residual, kv_cache, backend, metadata)
        return self.model.norm(x, backend.ops, residual)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits over the whole vocabulary on rank 0; None on the other ranks."""
        return self.lm_head.compute_logits(hidden)
