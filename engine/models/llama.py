"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm).

Numerics follow transformers' implementation op for op (fp32 RMSNorm statistics, rope applied
in the activation dtype), so greedy tokens match ``generate`` exactly in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tunekv.engine.attention import AttentionBackend, AttentionMetadata, LayerKVCache
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


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
        """cos and sin ``[num_tokens, 1, head_dim]`` for this step, once for all layers."""
        cos = self.get_buffer("cos").index_select(0, positions).to(dtype).unsqueeze(1)
        sin = self.get_buffer("sin").index_select(0, positions).to(dtype).unsqueeze(1)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, attn: LlamaAttention, tp: TPContext) -> None:
        super().__init__()
        self.self_attn = attn
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                kv_cache: LayerKVCache, backend: AttentionBackend,
                metadata: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(rope, self.input_layernorm(x), kv_cache, backend, metadata)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x = layer(rope, x, kv_cache, backend, metadata)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits over the whole vocabulary on rank 0; None on the other ranks."""
        return self.lm_head.compute_logits(hidden)
