"""Shared by the kernel tests: the device, the error measure, random block tables."""

from __future__ import annotations

import random

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def block_tables_for(seed: int, lens: list[int], block_size: int, num_blocks: int) -> torch.Tensor:
    """Each sequence gets distinct random blocks (shuffled, so neighbours are not adjacent)."""
    rng = random.Random(seed)
    need = [-(-n // block_size) for n in lens]
    width = max(max(need), 1)
    ids = rng.sample(range(num_blocks), sum(need))
    table = torch.zeros(len(lens), width, dtype=torch.int32)
    at = 0
    for i, nb in enumerate(need):
        table[i, :nb] = torch.tensor(ids[at:at + nb], dtype=torch.int32)
        at += nb
    return table.to(DEVICE)
