"""Tensor-parallel layers (Megatron-style) and the rank's place in its group.

A column-parallel linear splits its output features across ranks, a row-parallel linear its
input features (its partial outputs are summed by an all-reduce). Attention is column-parallel
by head; the MLP's gate/up are column-parallel and its down projection row-parallel, so each
decoder layer needs two all-reduces. The embedding and LM head split the vocabulary; the LM
head's slices are gathered on rank 0, which samples.

Every parallel parameter tells the weight loader which slice of the checkpoint tensor it holds
(``shard_spec``), so each rank reads only its slice, and random init cuts the same slice out of
the full tensor a single device would draw (tp=N starts from tp=1's exact weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TPContext:
    """This rank's place in the tensor-parallel group (size 1: no collectives at all)."""

    rank: int = 0
    size: int = 1
    group: Any = field(default=None, compare=False)   # torch.distributed ProcessGroup

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's ``x`` along the last dimension on rank 0 (None elsewhere)."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
                    group=self.group)
        return torch.cat(parts, dim=-1) if parts is not None else None


@dataclass(frozen=True)
class ShardSpec:
    """The slice of a checkpoint tensor one rank holds: ``length`` entries from ``start`` along
    ``dim`` (of ``full`` in the checkpoint), stored at ``offset`` along ``dim`` of the local
    parameter (fused parameters hold several parts one after another)."""

    dim: int
    start: int
    length: int
    full: int
    offset: int


def heads_of_rank(num_heads: int, tp: TPContext) -> tuple[int, int]:
    """(first head, head count) of this rank: an even split, or, with fewer heads than ranks (KV
    heads under GQA), the one head this rank's query heads use, replicated across ranks."""
    if num_heads >= tp.size:
        assert num_heads % tp.size == 0, f"{num_heads} heads do not split over {tp.size} ranks"
        per_rank = num_heads // tp.size
        return tp.rank * per_rank, per_rank
    assert tp.size % num_heads == 0, f"{tp.size} ranks do not share {num_heads} heads evenly"
    return tp.rank // (tp.size // num_heads), 1


@runtime_checkable
class Sharded(Protocol):
    """A module whose weight is split across tensor-parallel ranks."""

    def shard_spec(self, shard: int | None) -> ShardSpec: ...


class ColumnParallelLinear(nn.Module):
    """``y = x W^T (+ b)`` with W's rows (output features) split by part: ``parts`` lists, for
    each fused part (q, k, v or gate, up), this rank's (start, length) and the part's full size."""

    def __init__(self, in_features: int, parts: list[tuple[int, int, int]], bias: bool) -> None:
        super().__init__()
        self.parts = parts
        out = sum(length for _, length, _ in parts)
        self.weight = nn.Parameter(torch.empty(out, in_features))
        self.bias = nn.Parameter(torch.empty(out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def shard_spec(self, shard: int | None) -> ShardSpec:
        index = 0 if shard is None else shard
        offset = sum(length for _, length, _ in self.parts[:index])
        start, length, full = self.parts[index]
        return ShardSpec(0, start, length, full, offset)


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x_rank W_rank^T)``: W's columns (input features) split evenly."""

    def __init__(self, in_features: int, out_features: int, tp: TPContext) -> None:
        super().__init__()
        assert in_features % tp.size == 0, f"{in_features} input features do not split over {tp.size} ranks"
        self.tp = tp
        self.in_per_rank, self.in_full = in_features // tp.size, in_features
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(x, self.weight))

    def shard_spec(self, shard: int | None) -> ShardSpec:
        return ShardSpec(1, self.tp.rank * self.in_per_rank, self.in_per_rank, self.in_full, 0)


class VocabParallelEmbedding(nn.Module):
    """Rows of the vocabulary split over ranks (the last slice padded with zero rows); a token
    outside this rank's rows looks up zeros and the all-reduce fills in the owner's row."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPContext) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp.size)
        self.start = tp.rank * self.per_rank
        self.end = min(vocab_size, self.start + self.per_rank)
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.start) | (input_ids >= self.end)
        local = (input_ids - self.start).masked_fill(outside, 0)
        return self.tp.all_reduce(F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0))

    def shard_spec(self, shard: int | None) -> ShardSpec:
        return ShardSpec(0, self.start, max(0, self.end - self.start), self.vocab_size, 0)


class ParallelLMHead(VocabParallelEmbedding):
    """The vocabulary projection, split like the embedding (and sharing its weight when tied);
    rank 0 gets the full logits, the other ranks None."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.tp.gather_last_dim(F.linear(hidden, self.weight))
        return None if logits is None else logits[..., :self.vocab_size]
