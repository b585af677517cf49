"""The CPU decode path: one padded batch vs length groups, on the context lengths a chat load mixes.

The torch reference decode (the engine's attention off CUDA) once padded every sequence's keys to
the longest in the batch; it now attends groups of similar length
(``tunekv.kernels.reference.DECODE_GROUP_MIN_SAVING``). This times both on the same inputs,
alternating, for each model's attention shape and batch size: the median milliseconds of a call,
their ratio, and the keys each computes against the keys the batch really has. The padded side
is the same function with the grouping threshold set out of reach (one group).

    python bench/decode_grouping.py             # tiny-llama, smollm2-135m, qwen3-0.6b shapes; ~1 minute
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_result  # noqa: E402
from tunekv.engine import EngineConfig  # noqa: E402
from tunekv.engine.resolve import resolve_config  # noqa: E402
from tunekv.kernels import paged_decode_attention_ref, reference  # noqa: E402
from tunekv.workload.workloads import load_workload  # noqa: E402

BLOCK_SIZE = 16


def chat_contexts(batch: int, seed: int, max_len: int) -> list[int]:
    """Context lengths of ``batch`` chat requests caught mid-answer (a uniform point of each one's output)."""
    rng = random.Random(seed)
    requests = load_workload("chat").fit_to(max_len).requests(seed, 512, None, batch)
    return [len(r.prompt_token_ids) + rng.randint(1, r.output_len) for r in requests]


def time_case(model: str, batch: int, reps: int, seed: int) -> dict:
    _, mc = resolve_config(EngineConfig(model=model, device="cpu"))
    heads, kv_heads, head_dim = mc.num_heads, mc.num_kv_heads, mc.head_dim
    lens = chat_contexts(batch, seed, 2048)
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // BLOCK_SIZE) for n in lens]
    num_blocks = sum(need) + 1
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=gen)
    ids = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(batch, max(need), dtype=torch.int32)
    at = 0
    for i, nb in enumerate(need):
        tables[i, :nb] = ids[at:at + nb]
        at += nb
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(batch, heads, head_dim, generator=gen)
    out: dict[str, list[float]] = {"padded": [], "grouped": []}
    for _ in range(reps):   # alternating, so drift in this machine's speed hits both sides alike
        for side in ("padded", "grouped"):
            with mock.patch.object(reference, "DECODE_GROUP_MIN_SAVING",
                                   float("inf") if side == "padded" else reference.DECODE_GROUP_MIN_SAVING):
                start = time.perf_counter()
                paged_decode_attention_ref(q, k_cache, v_cache, tables, seq_lens, head_dim ** -0.5)
                out[side].append(time.perf_counter() - start)
    padded_ms, grouped_ms = (statistics.median(out[s]) * 1e3 for s in ("padded", "grouped"))
    groups = reference.decode_length_groups(lens, heads * head_dim)
    return {"model": model, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "batch": batch,
            "keys": sum(lens), "keys_padded": batch * -(-max(lens) // BLOCK_SIZE) * BLOCK_SIZE,
            "keys_grouped": sum(-(-lens[g[0]] // BLOCK_SIZE) * BLOCK_SIZE * len(g) for g in groups),
            "groups": len(groups), "padded_ms": padded_ms, "grouped_ms": grouped_ms,
            "speedup": padded_ms / grouped_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-llama,smollm2-135m,qwen3-0.6b")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [time_case(model, int(b), args.reps, args.seed) for model in args.models.split(",")
            for b in args.batches.split(",")]
    print(f"{'model':14} {'batch':>5} {'keys':>7} {'padded':>8} {'grouped':>8} {'padded ms':>10} "
          f"{'grouped ms':>10} {'speedup':>8} {'groups':>6}")
    for r in rows:
        print(f"{r['model']:14} {r['batch']:>5} {r['keys']:>7} {r['keys_padded']:>8} {r['keys_grouped']:>8} "
              f"{r['padded_ms']:>10.3f} {r['grouped_ms']:>10.3f} {r['speedup']:>7.2f}x {r['groups']:>6}")
    path = write_result("decode-grouping-cpu", {
        "machine": machine(), "block_size": BLOCK_SIZE, "reps": args.reps,
        "min_saving": reference.DECODE_GROUP_MIN_SAVING, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
