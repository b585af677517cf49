"""Pure-torch paged attention: the ground truth the Triton kernels are tested against.

Shapes: K/V cache ``[num_blocks, block_size, num_kv_heads, head_dim]``; ``block_tables``
``[num_seqs, max_blocks]`` (int32, padding arbitrary); ``seq_lens`` ``[num_seqs]`` = tokens in
the cache for each sequence after this step's writes; queries are the last tokens of each
sequence (decode: exactly one; prefill/extend: ``query_start_loc`` delimits them).

An fp8 cache (``torch.float8_e4m3fn``) stores ``clamp(x / scale, -448, 448)`` with one fp32
scale for K and one for V (``k_scale``, ``v_scale``: 0-dim or one-element tensors, so a CUDA
graph reads their current values); reads dequantise ``stored * scale`` in fp32, then attend in
the query's dtype. A cache in any other dtype stores values as they are and ignores the scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0: e4m3fn has no infinity; a cast past it gives NaN


def check_scales(cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> bool:
    """Whether ``cache`` is fp8 (asserting it then has both scales, fp32)."""
    if cache.dtype != FP8_DTYPE:
        return False
    assert k_scale is not None and v_scale is not None, "an fp8 KV cache needs k_scale and v_scale"
    assert k_scale.dtype == v_scale.dtype == torch.float32 and k_scale.numel() == v_scale.numel() == 1, \
        "k_scale and v_scale are one fp32 value each"
    return True


def quantize_kv(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None) -> torch.Tensor:
    """``x`` as a cache of ``dtype`` stores it: fp8 saturates ``x / scale`` to +-448 (never NaN)."""
    if dtype != FP8_DTYPE:
        return x.to(dtype)
    assert scale is not None, "an fp8 KV cache needs its scale"
    return (x.float() / scale.reshape(())).clamp(-FP8_MAX, FP8_MAX).to(dtype)


def dequantize_kv(stored: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Cache values as attention reads them: fp8 as ``stored * scale`` in fp32, cast to ``dtype``
    (the query's); any other cache as it is."""
    if stored.dtype != FP8_DTYPE:
        return stored
    assert scale is not None, "an fp8 KV cache needs its scale"
    return (stored.float() * scale.reshape(())).to(dtype)


def write_kv_cache_ref(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                       k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """Scatter ``key``/``value`` ``[num_tokens, kv_heads, head_dim]`` to flat slots; -1 skips."""
    check_scales(k_cache, k_scale, v_scale)
    num_blocks, block_size, kv_heads, head_dim = k_cache.shape
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_cache.view(num_blocks * block_size, kv_heads, head_dim)[slots] = quantize_kv(key[valid], k_cache.dtype, k_scale)
    v_cache.view(num_blocks * block_size, kv_heads, head_dim)[slots] = quantize_kv(value[valid], v_cache.dtype,
                                                                                   v_scale)


def _gather(cache: torch.Tensor, block_ids: torch.Tensor, length: int) -> torch.Tensor:
    """``[length, kv_heads, head_dim]`` of one sequence, read through its block ids."""
    _, block_size, kv_heads, head_dim = cache.shape
    num = -(-length // block_size)
    return cache.index_select(0, block_ids[:num].long()).reshape(num * block_size, kv_heads, head_dim)[:length]


# A decode batch mixes context lengths. Padding every sequence to the longest makes the work
# num_seqs x longest instead of the sum of the lengths, which is what the Triton kernel reads and
# the step-cost model charges: on two CPU cores under a chat load at 48 users that padding made
# decode steps about 1.7x slower than the calibrated model predicted. So the sequences, longest
# first, are attended in groups, a new group starting where the padding it saves the rest of the
# batch reaches this many query-key multiply-adds (keys x heads x head_dim): about what the dozen
# torch calls of one more group cost on a CPU core.
DECODE_GROUP_MIN_SAVING = 1 << 18


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                               out: torch.Tensor | None = None, num_splits: int | None = None,
                               max_seq_len: int | None = None, k_scale: torch.Tensor | None = None,
                               v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence (``q``: ``[num_seqs, heads, head_dim]``) over its whole cache.
    ``num_splits`` and ``max_seq_len`` are the kernel's launch hints; the reference needs neither."""
    check_scales(k_cache, k_scale, v_scale)
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0:
        return out
    lens = seq_lens.tolist()
    assert min(lens) >= 1, "a decoding sequence has at least its new token in the cache"
    groups = decode_length_groups(lens, q.shape[1] * q.shape[2])
    if len(groups) == 1:
        out.copy_(_decode_padded(q, k_cache, v_cache, block_tables, seq_lens, max(lens), scale, k_scale, v_scale))
        return out
    for group in groups:
        rows = torch.tensor(group, device=q.device)
        out[rows] = _decode_padded(q[rows], k_cache, v_cache, block_tables[rows], seq_lens[rows], lens[group[0]],
                                   scale, k_scale, v_scale).to(out.dtype)
    return out


def decode_length_groups(lens: list[int], work_per_key: int) -> list[list[int]]:
    """Indices of ``lens``, longest first, in groups: a group ends before the sequence from which
    on padding to the group's longest would cost ``DECODE_GROUP_MIN_SAVING`` or more
    (``work_per_key``: heads x head_dim)."""
    order = sorted(range(len(lens)), key=lambda i: -lens[i])
    groups = [[order[0]]]
    longest = lens[order[0]]
    for rank, i in enumerate(order[1:], start=1):
        if (len(order) - rank) * (longest - lens[i]) * work_per_key >= DECODE_GROUP_MIN_SAVING:
            groups.append([i])
            longest = lens[i]
        else:
            groups[-1].append(i)
    return groups


def _decode_padded(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                   seq_lens: torch.Tensor, max_len: int, scale: float, k_scale: torch.Tensor | None,
                   v_scale: torch.Tensor | None) -> torch.Tensor:
    """Attention of every row of ``q`` over its cache, keys padded to ``max_len`` and masked."""
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    num = -(-max_len // block_size)
    ids = block_tables[:, :num].reshape(-1).long()
    k = dequantize_kv(k_cache.index_select(0, ids), k_scale, q.dtype)
    v = dequantize_kv(v_cache.index_select(0, ids), v_scale, q.dtype)
    k = k.reshape(num_seqs, num * block_size, kv_heads, head_dim).transpose(1, 2)
    v = v.reshape(num_seqs, num * block_size, kv_heads, head_dim).transpose(1, 2)
    mask = torch.arange(num * block_size, device=q.device)[None, :] < seq_lens[:, None]
    attn = F.scaled_dot_product_attention(
        q.unsqueeze(2).to(k.dtype), k, v, attn_mask=mask[:, None, None, :], scale=scale,
        enable_gqa=num_heads != kv_heads)
    return attn.squeeze(2)


def paged_prefill_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                                seq_lens: torch.Tensor, scale: float,
                                out: torch.Tensor | None = None, max_query_len: int | None = None,
                                k_scale: torch.Tensor | None = None,
                                v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Each sequence's new tokens attend to its cached prefix (all of it) and causally to
    themselves. ``q``: ``[num_tokens, heads, head_dim]``; the new tokens sit at the end.
    ``max_query_len`` is the kernel's launch hint; the reference does not need it."""
    check_scales(k_cache, k_scale, v_scale)
    num_heads = q.shape[1]
    kv_heads = k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        q_lo, q_hi = starts[i], starts[i + 1]
        q_len = q_hi - q_lo
        if q_len == 0:
            continue
        ctx = seq_len - q_len
        k = dequantize_kv(_gather(k_cache, block_tables[i], seq_len), k_scale, q.dtype).transpose(0, 1)
        v = dequantize_kv(_gather(v_cache, block_tables[i], seq_len), v_scale, q.dtype).transpose(0, 1)
        qi = q[q_lo:q_hi].transpose(0, 1).to(k.dtype)
        if ctx == 0:
            attn = F.scaled_dot_product_attention(qi, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=num_heads != kv_heads)
        else:
            key_pos = torch.arange(seq_len, device=q.device)
            mask = key_pos[None, :] <= (ctx + torch.arange(q_len, device=q.device))[:, None]
            attn = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale,
                                                  enable_gqa=num_heads != kv_heads)
        out[q_lo:q_hi] = attn.transpose(0, 1)
    return out
