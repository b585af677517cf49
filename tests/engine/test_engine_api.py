from __future__ import annotations

import json

import pytest

from tunekv.engine import EngineConfig, LLMEngine, SamplingParams
from tunekv.engine.errors import ConfigError, NoKVCacheMemory
from tunekv.engine.model_config import load_model_config


@pytest.fixture(scope="module")
def engine():
    return LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=128, num_kv_blocks=32,
                                  max_num_seqs=4, max_num_batched_tokens=64))


@pytest.mark.parametrize("kwargs, words", [
    (dict(block_size=0), "block_size must be an integer >= 1"),
    (dict(max_num_seqs=64, max_num_batched_tokens=32), "max_num_batched_tokens (32) must be >= max_num_seqs (64)"),
    (dict(enable_chunked_prefill=False, max_model_len=512, max_num_batched_tokens=256), "when chunked prefill is off"),
    (dict(kv_policy="blocks"), "kv_policy must be one of paged, contiguous"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization must be in (0, 1]"),
])
def test_bad_config_values_name_the_field(kwargs, words):
    with pytest.raises(ValueError) as err:
        EngineConfig(**kwargs)
    assert words in str(err.value)


def test_unknown_config_key_names_the_closest(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'block_size'"):
        EngineConfig.from_dict({"blok_size": 16})
    assert EngineConfig.from_dict({"block_size": 32, "tuned_for": {"gpu": "h100"}}).block_size == 32


@pytest.mark.parametrize("data, words", [
    ({"block_size": "sixteen"}, "config field block_size must be an integer, got 'sixteen'"),
    ({"max_num_seqs": [1]}, "config field max_num_seqs must be an integer, got [1]"),
    ({"enable_prefix_caching": "maybe"}, "config field enable_prefix_caching must be true or false, got 'maybe'"),
    ({"max_model_len": 1.5}, "config field max_model_len must be an integer or null, got 1.5"),
    ({"distributed_timeout_s": float("inf")}, "config field distributed_timeout_s must be a finite number, got inf"),
    ({"dtype": "f" * 10_000}, "dtype must be one of auto, bfloat16, float16, float32; got 'fffff"),
])
def test_config_values_of_the_wrong_type_name_the_field_the_type_and_the_value(data, words):
    with pytest.raises(ValueError) as err:
        EngineConfig.from_dict(data)
    assert words in str(err.value) and len(str(err.value)) < 200
    assert EngineConfig.from_dict({"gpu_memory_utilization": 1, "max_model_len": None}).gpu_memory_utilization == 1


@pytest.mark.parametrize("model, words", [
    ("llama-9b", "unknown model 'llama-9b'"),
    ("/nonexistent/dir", "does not exist"),
])
def test_bad_models_are_one_sentence(model, words):
    with pytest.raises(ValueError, match=words):
        LLMEngine(EngineConfig(model=model, device="cpu"))


def test_model_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        LLMEngine(EngineConfig(model=str(tmp_path), device="cpu"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LLMEngine(EngineConfig(model=str(tmp_path), device="cpu"))
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ValueError, match="architecture 'GPT2LMHeadModel' is not supported"):
        LLMEngine(EngineConfig(model=str(tmp_path), device="cpu"))


LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 0}, "config field num_attention_heads must be a positive integer, got 0"),
    ({"max_position_embeddings": -1}, "config field max_position_embeddings must be a positive integer, got -1"),
    ({"hidden_size": "64"}, "config field hidden_size must be a positive integer, got '64'"),
    ({"hidden_size": True}, "config field hidden_size must be a positive integer, got True"),
    ({"num_attention_heads": 3}, "is not a multiple of the number of attention heads"),
    ({"tie_word_embeddings": "yes"}, "expected bool, got str"),
])
def test_a_broken_config_json_is_one_sentence(tmp_path, change, words):
    """transformers' own validation errors and a division by zero come out as one ConfigError."""
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, **change}))
    with pytest.raises(ConfigError) as err:
        load_model_config(str(tmp_path))
    assert words in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)


def test_generation_config_adds_eos_ids_and_sampling_defaults_as_vllm_reads_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "eos_token_id": 2}))
    assert load_model_config(str(tmp_path)).sampling_defaults == {}, "no generation_config.json: none"
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [2, 7], "temperature": 0.6, "top_p": 0.95, "top_k": 0, "do_sample": True}))
    mc = load_model_config(str(tmp_path))
    assert mc.eos_token_ids == frozenset({2, 7})
    assert mc.sampling_defaults == {"temperature": 0.6, "top_p": 0.95, "top_k": -1}, "top_k 0 is off"


@pytest.mark.parametrize("content, words", [
    ("{nope", "generation_config.json is not valid JSON"),
    ("[1]", "generation_config.json is not a mapping"),
    ('{"eos_token_id": "2"}', "eos_token_id must be a token id or a list of them"),
    ('{"temperature": "warm"}', "temperature must be a number"),
    ('{"top_k": 2.5}', "top_k must be a number"),
    ('{"top_p": 1.5}', "top_p must be in (0, 1]"),
])
def test_a_broken_generation_config_is_one_sentence(tmp_path, content, words):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_model_config(str(tmp_path))
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_add_request_rejects_what_could_never_run(engine):
    with pytest.raises(ValueError, match=r"exceeds max_model_len \(128\)"):
        engine.add_request("long", [5] * 100, SamplingParams(max_tokens=50))
    with pytest.raises(NoKVCacheMemory, match=r"the KV pool \(2 blocks of 16 = 32 tokens\) cannot hold one "
                                              r"max_model_len \(128\) request; .* lower max_model_len to <= 32"):
        LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=128, num_kv_blocks=2,
                               block_size=16, max_num_seqs=4, max_num_batched_tokens=64))
    with pytest.raises(NoKVCacheMemory, match=r"num_kv_blocks \(99,999,999,999,999\) is more than the engine manages"):
        LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=128, num_kv_blocks=99_999_999_999_999))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("empty", [])
    with pytest.raises(ValueError, match=r"must lie in \[0, 512\)"):
        engine.add_request("oov", [600])


def test_step_streams_cumulative_outputs_with_metrics(engine):
    engine.add_request("s", [3, 4, 5], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    seen = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.append((list(out.output_token_ids), out.new_token_ids, out.finished))
    assert [len(s[0]) for s in seen] == [1, 2, 3, 4, 5]
    assert all(s[0][-1] == s[1][0] for s in seen)
    assert seen[-1][2] and not any(s[2] for s in seen[:-1])
    final = seen[-1]
    assert len(final[0]) == 5
    metrics = engine.generate([[3, 4, 5]], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
    assert metrics.output_token_ids == final[0]
    m = metrics.metrics
    assert m.arrival_time <= m.scheduled_time <= m.first_token_time <= m.finished_time
    assert len(m.token_times) == 5 and m.token_times == sorted(m.token_times)


def test_abort_frees_blocks_and_reports(engine):
    engine.add_request("x", [1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.kv_stats().used_blocks > 0
    assert engine.abort_request("x")
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("x", "abort")]
    assert engine.kv_stats().used_blocks == 0 and not engine.has_unfinished_requests()


def test_seeded_sampling_is_reproducible_and_independent_of_batch(engine):
    params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=123, ignore_eos=True)
    alone = engine.generate([[7, 8, 9]], params)[0].output_token_ids
    others = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    batch = engine.generate([[1, 2], [7, 8, 9], [4]], [others, params, others])
    assert batch[1].output_token_ids == alone
    greedy = engine.generate([[7, 8, 9]], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0]
    top1 = engine.generate([[7, 8, 9]], SamplingParams(max_tokens=12, temperature=5.0, top_k=1, ignore_eos=True))[0]
    assert top1.output_token_ids == greedy.output_token_ids


def test_a_temperature_too_small_to_divide_by_samples_at_vllms_floor(engine):
    """1e-45 overflows the logits to inf and the softmax to NaN: it is raised to 0.01, as vLLM does."""
    tiny, floor = (SamplingParams(max_tokens=8, temperature=t, seed=5, ignore_eos=True) for t in (1e-45, 0.01))
    assert tiny.temperature == 0.01
    out = engine.generate([[7, 8, 9]], [tiny])[0].output_token_ids
    assert out == engine.generate([[7, 8, 9]], [floor])[0].output_token_ids and set(out) != {0}, out
    assert SamplingParams(seed=-1).seed is None, "vLLM's seed -1: no seed"


def test_eos_stops_unless_ignored(tmp_path):
    engine = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=64, num_kv_blocks=16))
    out = engine.generate([[1, 2]], SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[]))[0]
    first = out.output_token_ids[0]
    stopped = engine.generate([[1, 2]], SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[first]))[0]
    assert stopped.output_token_ids == [first] and stopped.finish_reason == "stop"


def test_min_tokens_masks_the_stop_tokens_until_reached():
    engine = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=64, num_kv_blocks=16))
    free = engine.generate([[1, 2]], SamplingParams(max_tokens=30, temperature=0.0))[0].output_token_ids
    stop = [free[0]]
    params = SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=stop, min_tokens=5)
    out = engine.generate([[1, 2]], params)[0]
    assert len(out.output_token_ids) >= 5 and free[0] not in out.output_token_ids[:5], out.output_token_ids
    assert out.finish_reason == "stop" or len(out.output_token_ids) == 30
    if out.finish_reason == "stop":
        assert out.output_token_ids[-1] == free[0] and free[0] not in out.output_token_ids[:-1]


@pytest.mark.parametrize("bad", [dict(min_tokens=-1), dict(min_tokens=17, max_tokens=16)])
def test_min_tokens_outside_zero_to_max_tokens_is_refused(bad):
    with pytest.raises(ConfigError, match="min_tokens must be an integer from 0 to max_tokens"):
        SamplingParams(**bad)


def test_seeded_sampling_survives_preemption():
    def run(num_blocks: int) -> tuple[list[list[int]], int]:
        e = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=48, block_size=4,
                                   num_kv_blocks=num_blocks, max_num_seqs=4, max_num_batched_tokens=32))
        params = [SamplingParams(max_tokens=24, temperature=1.0, seed=s, ignore_eos=True) for s in range(4)]
        outs = e.generate([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]] * 4, params)
        return [o.output_token_ids for o in outs], e.scheduler.num_preemptions

    roomy, none = run(256)
    tight, some = run(12)
    assert none == 0 and some > 0
    assert tight == roomy


def test_static_batch_fills_across_chunked_prefill_steps():
    e = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=64, block_size=8, num_kv_blocks=200,
                               max_num_seqs=8, max_num_batched_tokens=64, batching="static"))
    prompts = [[10 + i] * 40 for i in range(4)]
    e.generate(prompts, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert e.peak_running_seqs == 4


def test_weights_larger_than_the_memory_are_refused_before_they_are_allocated():
    """Llama-3-70B in fp32 (280 GB) on the CPU: the kernel killed the process minutes into
    allocating it; now one sentence with the numbers, and nothing allocated."""
    with pytest.raises(ConfigError, match=r"llama-3-70b's weights need 262\.\d GiB in float32, more than the"):
        LLMEngine(EngineConfig(model="llama-3-70b", device="cpu", dtype="float32", max_model_len=256))
