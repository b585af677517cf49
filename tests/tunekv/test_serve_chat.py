"""`tunekv serve` on real weights (SmolLM2-135M-Instruct): chat through the model's own template,
text streamed as it decodes, stop strings, and the incremental detokenizer."""

from __future__ import annotations

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunekv.serve_process import ServeProcess
from tunekv.serve.detokenize import TextStream

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return smollm2_dir


@pytest.fixture(scope="module")
def server(smollm2):
    with ServeProcess("--model", str(smollm2), "--served-model-name", "smollm2", "--dtype", "float32",
                      "--max-model-len", "512", "--num-kv-blocks", "256") as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.stderr()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_chat_answers_the_capital_of_france_with_paris_streamed_and_not(server):
    api = client(server)
    answer = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40, temperature=0)
    text = answer.choices[0].message.content
    assert "Paris" in text and answer.choices[0].finish_reason == "stop", text
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens > 0
    chunks = list(api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=40, temperature=0,
                                              stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text, "the stream spells the same answer"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_text_completion_matches_its_token_ids(server, tokenizer):
    out = client(server).completions.create(model="smollm2", prompt="The capital of France is", max_tokens=12,
                                            temperature=0, extra_body={"return_token_ids": True})
    choice = out.choices[0]
    assert choice.text == tokenizer.decode(choice.token_ids, skip_special_tokens=True)
    assert out.usage.prompt_tokens == len(tokenizer("The capital of France is")["input_ids"])


def test_a_stop_string_ends_the_text_before_it(server):
    api = client(server)
    free = api.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0).choices[0]
    assert " 6" in free.text, free.text
    cut = api.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 6"])
    assert cut.choices[0].text == free.text[:free.text.index(" 6")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0,
                                      stop=[" 6"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 49151), min_size=1, max_size=30), cuts=st.lists(st.integers(1, 5), max_size=30))
def test_text_pushed_in_any_steps_is_the_decode_of_all_tokens(tokenizer, ids, cuts):
    stream = TextStream(tokenizer, [1, 2, 3], [])
    pieces, start = [], 0
    for size in cuts + [len(ids)]:
        pieces.append(stream.push(ids[start:start + size]))
        start += size
        if start >= len(ids):
            break
    pieces.append(stream.finish())
    assert "".join(pieces) == tokenizer.decode([1, 2, 3] + ids, skip_special_tokens=True)[
        len(tokenizer.decode([1, 2, 3], skip_special_tokens=True)):]
