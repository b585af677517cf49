"""The search space: knobs, --fix/--range, and vLLM's validity rules on every point."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunekv.engine import EngineConfig
from tunekv.search.space import (
    BATCHED_TOKENS,
    KNOBS,
    MAX_NUM_SEQS,
    check_fixed_consistent,
    default_space,
    make_valid,
    model_lengths,
    restrict,
)


def space(on_gpu=True):
    return default_space(model_lengths(3000, 40960), (1,), on_gpu)


def test_model_lengths_cover_the_workload_and_stop_at_the_model_limit():
    assert model_lengths(3000, 40960) == (3000, 4096, 8192, 16384)
    assert model_lengths(4096, 4096) == (4096,)
    assert model_lengths(100, 2048) == (100, 128, 256, 512)


def test_cpu_holds_memory_utilization_which_has_no_effect_there_and_the_models_kv_dtype():
    assert space(on_gpu=False).fixed == {"gpu_memory_utilization": 0.90, "kv_cache_dtype": "auto"}
    assert "gpu_memory_utilization" in space(on_gpu=True).searched


def test_a_gpu_searches_an_fp8_kv_cache_and_fix_pins_it_anywhere():
    assert space(on_gpu=True).choices["kv_cache_dtype"] == ("auto", "fp8") and "kv_cache_dtype" in KNOBS
    assert restrict(space(), ["kv_cache_dtype=fp8"], []).fixed["kv_cache_dtype"] == "fp8"
    assert restrict(space(on_gpu=False), ["kv_cache_dtype=fp8"], []).fixed["kv_cache_dtype"] == "fp8"
    point = next(iter(space().grid()))
    assert EngineConfig(**point).kv_cache_dtype == point["kv_cache_dtype"] == "auto"


def test_fix_and_range_restrict_the_space():
    s = restrict(space(), ["block_size=16", "enable_prefix_caching=off,kv_policy=paged"], ["max_num_seqs=32:500"])
    assert s.fixed["block_size"] == 16 and s.fixed["enable_prefix_caching"] is False
    assert s.choices["max_num_seqs"] == (32, 64, 128, 256, 500)  # the upper end is a candidate too
    assert "block_size" not in s.searched
    assert restrict(space(), ["block_size=16", "block_size=16"], []).fixed["block_size"] == 16   # said twice, alike
    open_ended = restrict(space(), [], ["max_num_batched_tokens=8192:"])
    assert open_ended.choices["max_num_batched_tokens"] == tuple(v for v in BATCHED_TOKENS if v >= 8192)


@pytest.mark.parametrize("fixes, ranges, message", [
    (["blok_size=16"], [], "unknown knob 'blok_size' (did you mean block_size?)"),
    (["block_size=big"], [], "block_size takes an integer >= 1"),
    (["block_size=7"], [], "block sizes are 8, 16, 32, 64, 128"),
    ([], ["block_size=9:15"], "leaves no candidate value"),
    (["enable_chunked_prefill=maybe"], [], "takes true or false"),
    (["kv_policy=ring"], [], "kv_policy takes paged or contiguous"),
    (["kv_cache_dtype=fp8_e5m2"], [], "kv_cache_dtype takes auto or fp8, got 'fp8_e5m2'"),
    ([], ["kv_cache_dtype=auto:fp8"], "LOW:HIGH on a numeric knob"),
    (["gpu_memory_utilization=1.5"], [], "in (0, 1]"),
    ([], ["max_num_seqs=512:32"], "is empty: 512 > 32"),
    ([], ["tensor_parallel_size=2:4"], "leaves no candidate value"),
    (["max_num_seqs=64"], ["max_num_seqs=32:128"], "contradicts --fix max_num_seqs=64"),
    ([], ["kv_policy=a:b"], "LOW:HIGH on a numeric knob"),
    ([], ["max_num_seqs"], "KNOB=VALUE"),
    (["tensor_parallel_size=2"], [], "possible here are 1"),
    (["max_model_len=1024"], [], "shorter than the workload's longest request"),
    (["block_size=16", "max_num_seqs=64,block_size=32"], [], "--fix gives block_size two values (16 and 32)"),
    ([], ["max_num_seqs=32:64,max_num_seqs=128:256"], "--range gives max_num_seqs two ranges"),
])
def test_bad_fixes_and_ranges_say_what_is_wrong(fixes, ranges, message):
    with pytest.raises(ValueError) as err:
        restrict(space(), fixes, ranges)
    assert message in str(err.value)


def test_contradictory_pins_are_bad_input_not_repaired():
    with pytest.raises(ValueError, match="max_num_batched_tokens >= max_num_seqs"):
        check_fixed_consistent(restrict(space(), ["max_num_seqs=512,max_num_batched_tokens=256"], []))
    with pytest.raises(ValueError, match="chunked prefill off"):
        check_fixed_consistent(restrict(space(), ["enable_chunked_prefill=false,max_num_batched_tokens=1024,"
                                                  "max_model_len=4096"], []))


@settings(max_examples=200, deadline=None)
@given(seqs=st.sampled_from(MAX_NUM_SEQS), budget=st.sampled_from(BATCHED_TOKENS), chunked=st.booleans(),
       mml=st.sampled_from((3000, 4096, 8192, 16384)), policy=st.sampled_from(("paged", "contiguous")),
       prefix=st.booleans())
def test_every_point_passes_vllms_checks_and_builds_an_engine_config(seqs, budget, chunked, mml, policy, prefix):
    p = make_valid({"max_num_seqs": seqs, "max_num_batched_tokens": budget, "enable_chunked_prefill": chunked,
                    "max_model_len": mml, "kv_policy": policy, "enable_prefix_caching": prefix})
    assert p["max_num_batched_tokens"] >= p["max_num_seqs"]
    if not chunked:
        assert p["max_num_batched_tokens"] >= p["max_model_len"]
    assert p["max_num_batched_tokens"] in (budget, seqs, mml), "only raised to the bound it must meet"
    EngineConfig(model="qwen3-0.6b", **p).resolve(40960)


def test_grid_is_every_distinct_valid_point_in_knob_order():
    s = restrict(space(), ["block_size=16,gpu_memory_utilization=0.9,enable_prefix_caching=on,kv_policy=paged,"
                           "kv_cache_dtype=auto,max_model_len=4096"], [])
    grid = list(s.grid())
    keys = {tuple(sorted(p.items())) for p in grid}
    assert len(keys) == len(grid) == s.grid_size()
    assert all(list(p) == [k for k in KNOBS if k in p] for p in grid)
    # Without chunked prefill every budget below 4096 becomes 4096: fewer distinct points.
    assert len(grid) < len(MAX_NUM_SEQS) * len(BATCHED_TOKENS) * 2


def test_max_model_len_candidates_hold_any_request_the_workload_can_send():
    from tunekv.workload.workloads import load_workload

    chat = load_workload("chat")
    few = chat.requests(0, 1000, num_requests=10)
    assert max(len(r.prompt_token_ids) + r.output_len for r in few) < chat.longest_request(few) == 2048 + 1024


def test_max_model_len_never_exceeds_the_model():
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        restrict(space(), ["max_model_len=99999"], [], model_max_len=40960)
    capped = restrict(space(), [], ["max_model_len=:99999"], model_max_len=40960)
    assert max(capped.choices["max_model_len"]) <= 40960


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_pinned_space_admits_exactly_the_points_that_keep_the_pins(data):
    """What the TUI's pins rely on: every point a pinned space proposes is admitted, and a point
    with another value of a pinned knob is not."""
    full = space()
    pinned = restrict(full, ["block_size=32,kv_policy=paged"], [])
    point = pinned.suggest(lambda name, values: data.draw(st.sampled_from(values), label=name))
    assert pinned.admits(point) and full.admits(point)
    other = make_valid({**point, "block_size": 64})
    assert not pinned.admits(other) and full.admits(other)
