from __future__ import annotations

import pytest

from tunekv.engine.block_pool import BlockPool, FreeKVCacheBlockQueue, KVCacheBlock
from tunekv.engine.kv_cache_manager import KVCacheManager
from tunekv.engine.request import Request
from tunekv.engine.sampling_params import SamplingParams


def _req(rid: str, tokens: list[int], max_tokens: int = 4) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=max_tokens), frozenset(), 0.0)


def test_free_queue_is_lru_with_o1_middle_removal():
    blocks = [KVCacheBlock(i) for i in range(5)]
    queue = FreeKVCacheBlockQueue(blocks)
    queue.remove(blocks[2])
    assert queue.block_ids() == [0, 1, 3, 4]
    assert queue.popleft().block_id == 0
    queue.append(blocks[2])
    assert queue.block_ids() == [1, 3, 4, 2]
    assert queue.num_free_blocks == 4
    with pytest.raises(AssertionError):
        queue.append(blocks[2])


def test_allocate_returns_none_without_side_effects_when_pool_is_short():
    kv = KVCacheManager(num_blocks=3, block_size=4, max_model_len=64, enable_caching=False)
    a, b = _req("a", list(range(8))), _req("b", list(range(100, 108)))
    assert len(kv.allocate_slots(a, 8)) == 2
    assert kv.allocate_slots(b, 8) is None
    assert kv.block_pool.get_num_free_blocks() == 1 and "b" not in kv.req_to_blocks


def test_prefix_lookup_stops_at_first_miss_and_spares_last_token():
    kv = KVCacheManager(num_blocks=16, block_size=4, max_model_len=64, enable_caching=True)
    a = _req("a", list(range(12)))
    kv.allocate_slots(a, 12)
    a.num_computed_tokens = 12
    # Same 12 tokens: only 2 blocks may hit, the third holds the last prompt token.
    same = _req("same", list(range(12)))
    blocks, hit = kv.get_computed_blocks(same)
    assert hit == 8 and [b.block_id for b in blocks] == a.block_ids[:2]
    # A different second block stops the lookup even though the third block's tokens match.
    diverge = _req("d", [0, 1, 2, 3, 99, 99, 99, 99, 8, 9, 10, 11, 12])
    blocks, hit = kv.get_computed_blocks(diverge)
    assert hit == 4


def test_free_releases_tail_first_and_cached_blocks_revive():
    kv = KVCacheManager(num_blocks=4, block_size=2, max_model_len=16, enable_caching=True)
    a = _req("a", [1, 2, 3, 4, 5, 6])
    kv.allocate_slots(a, 6)
    ids = list(a.block_ids)
    kv.free(a)
    assert kv.block_pool.free_block_ids()[-3:] == ids[::-1]
    b = _req("b", [1, 2, 3, 4, 5, 6, 7])
    blocks, hit = kv.get_computed_blocks(b)
    assert hit == 6 and [x.block_id for x in blocks] == ids
    assert kv.allocate_slots(b, 1, blocks) is not None
    assert all(x.ref_cnt == 1 for x in blocks)
    assert kv.block_pool.get_num_free_blocks() == 0


def test_contiguous_policy_reserves_max_model_len_at_admission():
    kv = KVCacheManager(num_blocks=10, block_size=4, max_model_len=20, enable_caching=True, policy="contiguous")
    a = _req("a", [1, 2, 3])
    assert len(kv.allocate_slots(a, 3)) == 5
    a.num_computed_tokens = 3
    stats = kv.kv_stats()
    assert (stats.tokens_stored, stats.tokens_reserved, stats.cached_blocks) == (3, 20, 0)
    assert stats.efficiency == pytest.approx(3 / 20)


def test_a_pool_hands_out_never_used_blocks_in_id_order_before_freed_ones():
    """Blocks are made on first use, in the order an eagerly built pool would hand them out."""
    pool = BlockPool(10**9, enable_caching=False)   # a billion blocks: only the ones used are made
    first = pool.get_new_blocks(3)
    assert [b.block_id for b in first] == [0, 1, 2] and len(pool.blocks) == 3
    pool.free_blocks([first[1]])
    assert pool.get_num_free_blocks() == 10**9 - 2 and pool.num_used_blocks == 2
    assert [b.block_id for b in pool.get_new_blocks(2)] == [3, 4], "unused blocks go before freed ones"
    small = BlockPool(3, enable_caching=False)
    a, b, c = small.get_new_blocks(3)
    small.free_blocks([c, a])
    assert small.free_block_ids() == [2, 0]
    assert [x.block_id for x in small.get_new_blocks(2)] == [2, 0] and small.get_num_free_blocks() == 0
    with pytest.raises(AssertionError, match="asked for 1 blocks with 0 free"):
        small.get_new_blocks(1)


def test_pool_asserts_on_double_free():
    pool = BlockPool(2, enable_caching=False)
    blocks = pool.get_new_blocks(1)
    pool.free_blocks(blocks)
    with pytest.raises(AssertionError):
        pool.free_blocks(blocks)


def test_block_hash_chains_the_whole_prefix():
    from tunekv.engine.block_pool import hash_block

    a = hash_block(None, (1, 2, 3))
    assert hash_block(None, (1, 2, 3)) == a != hash_block(None, (1, 2, 4))
    assert hash_block(a, (5, 6)) != hash_block(hash_block(None, (1, 2, 4)), (5, 6))
    assert len(a) == 32


def test_prefix_stats_count_first_admissions_only():
    from tunekv.engine.config import EngineConfig
    from tunekv.engine.scheduler import Scheduler

    cfg = EngineConfig(block_size=4, max_model_len=32, max_num_seqs=1, max_num_batched_tokens=32)
    kv = KVCacheManager(num_blocks=16, block_size=4, max_model_len=32, enable_caching=True)
    sched = Scheduler(cfg, kv)
    for rid in ("a", "b"):
        sched.add_request(_req(rid, list(range(10)), max_tokens=1))
    for _ in range(6):  # "b" waits at the head of the queue while "a" runs
        out = sched.schedule()
        sched.update_from_output(out, [7 if r.num_computed_tokens == r.num_tokens else None for r in out.requests],
                                 0.0)
    stats = kv.kv_stats()
    assert stats.prefix_query_tokens == 20 and stats.prefix_hit_tokens == 8
