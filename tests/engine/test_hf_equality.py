"""Greedy tokens equal transformers' greedy ``generate``, token for token, in float32."""

from __future__ import annotations

import random

import pytest

from tests.engine.hf_models import MODELS, build_hf_model, hf_greedy
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams

MAX_NEW = 24


def _prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, 256) for _ in range(37)]
    prompts = [[rng.randrange(3, 256) for _ in range(n)] for n in (1, 5, 16, 33, 70)]
    prompts += [shared + [rng.randrange(3, 256) for _ in range(n)] for n in (1, 9)]
    return prompts


@pytest.fixture(scope="module", params=sorted(MODELS))
def reference(request, tmp_path_factory):
    path, model = build_hf_model(request.param, tmp_path_factory.mktemp("hf"))
    prompts = _prompts(len(request.param))
    return path, prompts, hf_greedy(model, prompts, MAX_NEW)


def _run(path, prompts, **overrides) -> tuple[list[list[int]], LLMEngine]:
    cfg = dict(model=str(path), device="cpu", dtype="float32", max_model_len=256, num_kv_blocks=512,
               max_num_seqs=8, max_num_batched_tokens=512)
    cfg.update(overrides)
    engine = LLMEngine(EngineConfig(**cfg))
    outs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True))
    assert not engine.has_unfinished_requests()
    return [o.output_token_ids for o in outs], engine


@pytest.mark.parametrize("block_size", [1, 8, 16, 32])
def test_greedy_matches_transformers(reference, block_size):
    path, prompts, expected = reference
    got, _ = _run(path, prompts, block_size=block_size, num_kv_blocks=4096 // block_size)
    assert got == expected


def test_preemption_and_chunked_prefill_keep_tokens(reference):
    path, prompts, expected = reference
    # 14 blocks of 8 = 112 slots for 7 requests of up to ~94 tokens: forces recompute preemption.
    # A budget of 16 tokens per step forces every prompt longer than that into chunks.
    got, engine = _run(path, prompts, block_size=8, num_kv_blocks=14, max_num_seqs=4,
                       max_num_batched_tokens=16, max_model_len=112)
    assert got == expected
    assert engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("caching", [True, False])
def test_prefix_caching_keeps_tokens_and_counts_hits(reference, caching):
    path, prompts, expected = reference
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", max_model_len=256,
                                    block_size=8, num_kv_blocks=256, max_num_seqs=1,
                                    enable_prefix_caching=caching))
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    got = [o.output_token_ids for o in engine.generate(prompts, params)]
    assert got == expected
    hits = engine.kv_stats().prefix_hit_tokens
    # The last two prompts share 37 tokens = 4 full blocks of 8; max_num_seqs=1 runs them in turn.
    assert (hits >= 32) if caching else (hits == 0)


def test_static_batching_and_contiguous_policy_keep_tokens(reference):
    path, prompts, expected = reference
    got, _ = _run(path, prompts, batching="static", kv_policy="contiguous", block_size=16, num_kv_blocks=64)
    assert got == expected
