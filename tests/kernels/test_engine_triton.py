"""The engine on the Triton backend (attention and the fused layer ops; Triton's interpreter on the
CPU) gives transformers' greedy tokens."""

from __future__ import annotations

import pytest

from tests.engine.hf_models import build_hf_model, hf_greedy
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams


@pytest.mark.parametrize("name", ["qwen2-g3", "llama-g2", "qwen3-g4"])
def test_triton_backend_greedy_matches_transformers(name, tmp_path):
    path, model = build_hf_model(name, tmp_path)
    # A shared prefix forces a prefix-cache hit (the extend kernel over cached blocks); a budget of
    # 12 tokens forces chunked prefill; decode batches mix in as prompts finish.
    prompts = [[5, 9, 14, 3, 77, 31, 8, 100, 42, 7, 19], [5, 9, 14, 3, 77, 31, 8, 100, 42, 12, 50, 60], [200]]
    expected = hf_greedy(model, prompts, 6)
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", attention_backend="triton",
                                    block_size=8, max_model_len=64, num_kv_blocks=16, max_num_seqs=1,
                                    max_num_batched_tokens=12))
    outs = engine.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert [o.output_token_ids for o in outs] == expected
    assert engine.kv_stats().prefix_hit_tokens >= 8


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        LLMEngine(EngineConfig(model="tiny-llama", device="cpu", attention_backend="triton", num_kv_blocks=4,
                               max_model_len=64))


def test_padded_static_decode_path_keeps_tokens(tmp_path):
    """The CUDA-graph input path (static buffers, batch padded with slot -1 / seq_len 0 rows)
    run eagerly: same tokens as transformers."""
    path, model = build_hf_model("llama-g2", tmp_path)
    prompts = [[5, 9, 14], [7, 3], [100, 101, 102, 103, 104]]
    expected = hf_greedy(model, prompts, 5)
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", attention_backend="triton",
                                    block_size=8, max_model_len=32, num_kv_blocks=16, max_num_seqs=5))
    assert engine.runner.capture_cuda_graphs(capture=False)
    assert engine.runner.decode_graphs.sizes == [1, 2, 4, 5]
    calls = []
    run = engine.runner.decode_graphs.run
    engine.runner.decode_graphs.run = lambda *a: calls.append(a[2].num_seqs) or run(*a)
    outs = engine.generate(prompts, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert [o.output_token_ids for o in outs] == expected
    assert 3 in calls, "3 decodes should have run padded to the size-4 buffers"
