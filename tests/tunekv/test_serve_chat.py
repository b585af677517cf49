"""`tunekv serve` on real weights (SmolLM2-135M-Instruct): chat through the model's own template,
text streamed as it decodes, stop strings, and the incremental detokenizer."""

from __future__ import annotations

import json
import time

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunekv.run_cli import tunekv
from tests.tunekv.serve_process import ServeProcess, metrics, wait_for
from tunekv.serve.detokenize import TextStream

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# The model's own sampling defaults (generation_config.json), for requests that leave them out:
# top_k 1 samples the most likely token, whatever the temperature.
SAMPLING_DEFAULTS = {"top_k": 1}
# Prepended to the model's chat template: renders a variable only chat_template_kwargs can set.
TEMPLATE_HOOK = "{% if house_style is defined %}{{ house_style }}{% endif %}"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir, tmp_path_factory):
    """SmolLM2's files, linked, with the template hook above (renders nothing unless asked)."""
    linked = tmp_path_factory.mktemp("smollm2") / smollm2_dir.name
    linked.mkdir()
    for file in smollm2_dir.iterdir():
        if file.name not in ("chat_template.jinja", "generation_config.json"):
            (linked / file.name).symlink_to(file)
    (linked / "chat_template.jinja").write_text(TEMPLATE_HOOK + (smollm2_dir / "chat_template.jinja").read_text())
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    (linked / "generation_config.json").write_text(json.dumps({**generation, **SAMPLING_DEFAULTS}))
    return linked


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


def test_the_role_chunk_comes_with_the_first_token_not_before_the_prefill(server):
    """vLLM's `bench serve --backend openai-chat` times TTFT at the first chunk with choices: a role
    chunk sent before the prefill would make every TTFT look instant."""
    long = [{"role": "user", "content": " ".join(["word"] * 450)}]
    sent = time.perf_counter()
    seen = []
    for chunk in client(server).chat.completions.create(model="smollm2", messages=long, max_tokens=4, stream=True,
                                                        extra_body={"ignore_eos": True}):
        seen.append((time.perf_counter(), chunk.choices[0].delta))
    role_at = next(t for t, delta in seen if delta.role == "assistant")
    token_at = next(t for t, delta in seen if delta.content)
    assert token_at - role_at < role_at - sent, (role_at - sent, token_at - sent)


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


def test_stop_strings_as_vllm_applies_them(server):
    """After min_tokens only; kept with include_stop_str_in_output; named in stop_reason; a stop
    string in the step that also reached max_tokens still finishes "stop"; counted as stop in
    /metrics, not as an abort."""
    api = client(server)
    prompt = dict(model="smollm2", prompt="1, 2, 3, 4,", temperature=0)
    free = api.completions.create(**prompt, max_tokens=16, extra_body={"return_token_ids": True}).choices[0]
    first = free.text.index(",")
    assert "," in free.text[first + 1:], free.text
    before = metrics(server.url)
    cut = api.completions.create(**prompt, max_tokens=16, stop=[","]).choices[0]
    assert (cut.text, cut.finish_reason, cut.model_extra["stop_reason"]) == (free.text[:first], "stop", ",")
    stops, aborts = (f"tunekv:request_success_total{{finished_reason={r}}}" for r in ("stop", "abort"))
    # the engine ends the request a step after the response went out
    after = wait_for(lambda: (m := metrics(server.url))[stops] > before[stops] and m)
    assert after[stops] == before[stops] + 1 and after[aborts] == before[aborts]
    kept = api.completions.create(**prompt, max_tokens=16, stop=[","],
                                  extra_body={"include_stop_str_in_output": True}).choices[0]
    assert kept.text == free.text[:first + 1]
    # min_tokens: the stop string counts only once the output has more tokens than that
    tokens_to_first = next(i for i in range(1, 17) if "," in api.completions.create(
        **prompt, max_tokens=i).choices[0].text)
    late = api.completions.create(**prompt, max_tokens=16, stop=[","],
                                  extra_body={"min_tokens": tokens_to_first}).choices[0]
    assert late.text.startswith(free.text[:first + 1]) and late.finish_reason == "stop"
    # the stop string arrives in the last token max_tokens allows
    last = api.completions.create(**prompt, max_tokens=tokens_to_first, stop=[","]).choices[0]
    assert (last.text, last.finish_reason, last.model_extra["stop_reason"]) == (free.text[:first], "stop", ",")


def test_a_stop_token_ends_the_output_without_its_text(server, tokenizer):
    api = client(server)
    free = api.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=8, temperature=0,
                                  extra_body={"return_token_ids": True}).choices[0]
    stop_id = free.token_ids[2]
    cut = api.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=8, temperature=0,
                                 extra_body={"return_token_ids": True, "stop_token_ids": [stop_id]}).choices[0]
    upto = free.token_ids.index(stop_id)
    assert cut.token_ids == free.token_ids[:upto + 1] and cut.finish_reason == "stop"
    assert cut.model_extra["stop_reason"] == stop_id
    assert cut.text == tokenizer.decode([*tokenizer("1, 2, 3, 4,")["input_ids"], *free.token_ids[:upto]])[
        len(tokenizer.decode(tokenizer("1, 2, 3, 4,")["input_ids"])):]


def test_chat_text_parts_are_joined_by_newlines(server):
    api = client(server)
    parts = api.chat.completions.create(model="smollm2", max_tokens=1, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]}])
    joined = api.chat.completions.create(model="smollm2", max_tokens=1,
                                         messages=[{"role": "user", "content": "Say\nhello"}])
    assert parts.usage.prompt_tokens == joined.usage.prompt_tokens


def test_the_chat_template_options_vllm_takes(server, tokenizer):
    """continue_final_message, add_generation_prompt and chat_template_kwargs reach the template
    (the prompt's token count is the template's rendering with them); tools with tool_choice
    "none" are the template's to render."""
    api = client(server)
    started = [*QUESTION, {"role": "assistant", "content": "The capital of France is"}]
    options = {"continue_final_message": True, "add_generation_prompt": False}
    out = api.chat.completions.create(model="smollm2", messages=started, max_tokens=4, temperature=0,
                                      extra_body=options)
    assert out.usage.prompt_tokens == len(tokenizer.apply_chat_template(started, tokenize=True, **options)["input_ids"])
    assert "Paris" in out.choices[0].message.content, out.choices[0].message.content
    kwargs = {"house_style": "Answer in French."}
    styled = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=1,
                                         extra_body={"chat_template_kwargs": kwargs})
    plain = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=1)
    expected = tokenizer.apply_chat_template(QUESTION, tokenize=True, add_generation_prompt=True, **kwargs)
    assert styled.usage.prompt_tokens == len(expected["input_ids"]) > plain.usage.prompt_tokens
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    quiet = api.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=1, tools=[tool],
                                        tool_choice="none")
    assert quiet.usage.prompt_tokens == plain.usage.prompt_tokens, "SmolLM2's template renders no tools"


def test_a_request_that_leaves_sampling_out_gets_the_models_generation_config(server):
    """As vLLM's --generation-config auto: top_k 1 from generation_config.json makes a sample at
    temperature 1 the greedy answer; a top_k the request sends wins."""
    api = client(server)
    prompt = dict(model="smollm2", prompt="Once upon a time", max_tokens=12)
    greedy = api.completions.create(**prompt, temperature=0).choices[0].text
    assert api.completions.create(**prompt, temperature=1.0, seed=3).choices[0].text == greedy
    sampled = {api.completions.create(**prompt, temperature=1.0, seed=seed, extra_body={"top_k": -1}).choices[0].text
               for seed in range(4)}
    assert sampled != {greedy}, "the request's own top_k (off) samples"


def test_bench_over_chat_leaves_room_for_the_template_and_counts_prompts_with_it(server, smollm2, tmp_path):
    """Prompts drawn up to the server's whole max_model_len (512) are clipped to what a chat
    request can hold once the template wraps them, so none is refused; the server's prompt counts
    are the workload's plus the template's."""
    workload = tmp_path / "long.yaml"
    workload.write_text("num_requests: 4\nprompt_len: {dist: uniform, min: 470, max: 500}\noutput_len: 8\n")
    done = tunekv("bench", "--endpoint", server.url, "--api", "chat", "--tokenizer", str(smollm2), "--workload",
                  str(workload), "--concurrency", "2", "--warmup", "0", "--json", str(tmp_path / "r.json"),
                  timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"]["completed"] == 4 and result["client"]["errors"] == [], result["client"]
    assert result["client"]["prompt_mismatch"] <= 1, "a text prompt may re-tokenise differently, rarely"


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
