"""Scheduler + KV manager invariants under random workloads (no model: tokens are random)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunekv.engine.config import EngineConfig
from tunekv.engine.kv_cache_manager import KVCacheManager, cdiv
from tunekv.engine.request import Request
from tunekv.engine.sampling_params import SamplingParams
from tunekv.engine.scheduler import Scheduler


def check_invariants(sched: Scheduler, kv: KVCacheManager) -> None:
    pool = kv.block_pool
    free_ids = pool.free_block_ids()
    assert len(free_ids) == len(set(free_ids)) == pool.get_num_free_blocks()
    assert pool.get_num_free_blocks() + pool.num_used_blocks == pool.num_blocks
    owners: Counter[int] = Counter()
    for rid, blocks in kv.req_to_blocks.items():
        ids = [b.block_id for b in blocks]
        assert len(ids) == len(set(ids)), f"request {rid} holds a block twice"
        owners.update(ids)
    running_ids = {r.request_id for r in sched.running}
    assert set(kv.req_to_blocks) <= running_ids, "a request that is not running holds blocks"
    assert set(owners) <= {b.block_id for b in pool.blocks}, "a request holds a block the pool never handed out"
    free = set(free_ids)
    for block in pool.blocks:
        assert block.ref_cnt == owners[block.block_id], f"block {block.block_id} ref_cnt is wrong"
        assert (block.ref_cnt == 0) == (block.block_id in free)
        if owners[block.block_id] > 1:
            assert block.block_hash is not None, "only cached prefix blocks may be shared"
    for request in sched.running:
        held = len(kv.req_to_blocks[request.request_id])
        assert held * kv.block_size >= request.num_computed_tokens
        assert request.block_ids == [b.block_id for b in kv.req_to_blocks[request.request_id]]
    stats = kv.kv_stats()
    assert stats.tokens_stored <= stats.tokens_reserved
    assert len(sched.running) <= sched.max_num_seqs


workloads = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16),
    "block_size": st.sampled_from([1, 2, 4, 8, 16]),
    "max_model_len": st.integers(8, 96),
    "pool_slack": st.integers(0, 40),
    "max_num_seqs": st.integers(1, 8),
    "budget_extra": st.integers(0, 64),
    "policy": st.sampled_from(["paged", "contiguous"]),
    "batching": st.sampled_from(["continuous", "static"]),
    "chunked": st.booleans(),
    "caching": st.booleans(),
    "num_requests": st.integers(1, 24),
    "shared_prefix": st.integers(0, 20),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=workloads)
def test_random_workloads_finish_without_leaks(w):
    rng = random.Random(w["seed"])
    bs, max_len = w["block_size"], w["max_model_len"]
    budget = w["max_num_seqs"] + w["budget_extra"]
    if not w["chunked"]:
        budget = max(budget, max_len)
    cfg = EngineConfig(block_size=bs, max_model_len=max_len, max_num_seqs=w["max_num_seqs"],
                       max_num_batched_tokens=budget, kv_policy=w["policy"], batching=w["batching"],
                       enable_chunked_prefill=w["chunked"], enable_prefix_caching=w["caching"])
    # The pool can always hold one max-length request (the engine rejects anything larger).
    num_blocks = cdiv(max_len, bs) + w["pool_slack"]
    kv = KVCacheManager(num_blocks, bs, max_len, cfg.enable_prefix_caching, cfg.kv_policy)
    sched = Scheduler(cfg, kv)
    prefix = [rng.randrange(50) for _ in range(min(w["shared_prefix"], max_len - 2))]
    requests = []
    for i in range(w["num_requests"]):
        out_len = rng.randint(1, max_len - len(prefix) - 1)
        prompt_len = rng.randint(1, max_len - len(prefix) - out_len)
        prompt = prefix + [rng.randrange(50) for _ in range(prompt_len)]
        params = SamplingParams(max_tokens=out_len, ignore_eos=rng.random() < 0.7)
        request = Request(f"r{i}", prompt, params, frozenset({0}), arrival_time=0.0)
        requests.append(request)
        sched.add_request(request)

    steps = 0
    aborted = set()
    while sched.has_unfinished_requests():
        out = sched.schedule()
        assert not out.is_empty, "deadlock: requests wait but nothing was scheduled"
        assert out.total_num_tokens <= budget
        for request, n, before in zip(out.requests, out.num_new_tokens, out.num_computed_before, strict=True):
            assert before + n == request.num_computed_tokens <= request.num_tokens
        check_invariants(sched, kv)
        sampled = [rng.randrange(50) if r.num_computed_tokens == r.num_tokens else None for r in out.requests]
        sched.update_from_output(out, sampled, now=float(steps))
        if rng.random() < 0.03 and sched.running:
            victim = rng.choice(sched.running)
            sched.abort_request(victim.request_id)
            aborted.add(victim.request_id)
        check_invariants(sched, kv)
        steps += 1
        assert steps < 20_000, "no progress"

    for request in requests:
        assert request.is_finished
        if request.request_id not in aborted:
            assert request.finish_reason in ("stop", "length")
            assert 1 <= request.num_output_tokens <= request.sampling_params.max_tokens
    assert kv.block_pool.get_num_free_blocks() == num_blocks, "blocks leaked"
    assert not kv.req_to_blocks
