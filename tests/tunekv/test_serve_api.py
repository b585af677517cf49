"""`tunekv serve` through the official `openai` client and plain HTTP, over 127.0.0.1: tokens equal
the in-process engine's, 64 streams at once, aborts on disconnect, bad requests, /metrics."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from urllib.parse import urlparse

import openai
import pytest

from tests.tunekv.serve_process import ServeProcess, get, metrics, post, wait_for
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [[1, 5, 9, 200, 31], [7, 7, 7], list(range(40, 90))]
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
SETTINGS = ("--max-model-len", "256", "--num-kv-blocks", "512", "--block-size", "16")


@pytest.fixture(scope="module")
def server():
    with ServeProcess("--model", "tiny-llama", *SETTINGS) as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.stderr()


@pytest.fixture(scope="module")
def reference():
    engine = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=256, num_kv_blocks=512))
    return {tuple(p): engine.generate([p], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0]
            .output_token_ids for p in PROMPTS}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_greedy_completions_equal_the_engines_tokens_streamed_and_not(server, reference):
    api = client(server)
    for prompt in PROMPTS:
        whole = api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
        assert whole.choices[0].token_ids == reference[tuple(prompt)]
        assert whole.choices[0].text == "" and whole.choices[0].finish_reason == "length"
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt), 12)
        chunks = list(api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}))
        streamed = [t for c in chunks if c.choices for t in c.choices[0].token_ids]
        assert streamed == reference[tuple(prompt)]
        assert len([c for c in chunks if c.choices]) == 12, "one chunk per step that produced a token"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_a_batch_of_prompts_is_one_choice_each_in_order(server, reference):
    out = client(server).completions.create(model="tiny-llama", prompt=PROMPTS, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True})
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.token_ids for c in out.choices] == [reference[tuple(p)] for p in PROMPTS]
    assert out.usage.prompt_tokens == sum(map(len, PROMPTS)) and out.usage.completion_tokens == 36


def test_stream_options_take_vllms_defaults_and_continuous_usage_counts_each_chunk(server):
    api = client(server)
    prompt = PROMPTS[0]
    asked = dict(model="tiny-llama", prompt=prompt, max_tokens=5, temperature=0, stream=True,
                 extra_body={"ignore_eos": True})
    chunks = list(api.completions.create(**asked, stream_options={}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5, "include_usage defaults to true"
    chunks = list(api.completions.create(**asked, stream_options={"continuous_usage_stats": True}))
    usage = [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks if c.choices]
    assert usage == [(len(prompt), n) for n in range(1, 6)], usage
    chunks = list(api.completions.create(**asked, stream_options={"include_usage": False,
                                                                  "continuous_usage_stats": True}))
    assert all(c.usage is None for c in chunks), "continuous usage needs include_usage"


def test_models_version_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-llama"] and models.data[0].max_model_len == 256
    assert json.loads(get(server.url + "/version")[1])["version"]
    assert get(server.url + "/health")[0] == 200


def test_64_concurrent_streams_all_finish_with_the_tokens_they_asked_for(server):
    before = metrics(server.url)
    api = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
    asked = [4 + i % 9 for i in range(64)]

    async def one(i: int) -> tuple[int, str | None]:
        stream = await api.completions.create(model="tiny-llama", prompt=[3 + i, 11, 12], max_tokens=asked[i],
                                              temperature=0.8, seed=i, stream=True,
                                              extra_body={"ignore_eos": True})
        tokens, reason = 0, None
        async for chunk in stream:
            tokens += len(chunk.choices[0].token_ids)
            reason = chunk.choices[0].finish_reason or reason
        return tokens, reason

    async def everyone():
        try:
            return await asyncio.gather(*(one(i) for i in range(64)))
        finally:
            await api.close()

    results = asyncio.run(everyone())
    assert [r[0] for r in results] == asked and {r[1] for r in results} == {"length"}
    after = metrics(server.url)
    assert after["tunekv:request_success_total{finished_reason=length}"] - \
        before["tunekv:request_success_total{finished_reason=length}"] == 64
    assert after["tunekv:generation_tokens_total"] - before["tunekv:generation_tokens_total"] == sum(asked)
    assert after["tunekv:prompt_tokens_total"] - before["tunekv:prompt_tokens_total"] == 64 * 3
    assert after["tunekv:time_to_first_token_seconds_count"] - before["tunekv:time_to_first_token_seconds_count"] == 64
    assert after["tunekv:num_requests_running"] == 0 and after["tunekv:kv_cache_usage_perc"] == 0


def _open_stream(url: str, body: dict) -> socket.socket:
    """A raw streamed request whose first chunk has arrived."""
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: ", "the first chunk came"
    assert conn.sock is not None
    return conn.sock


def test_a_client_that_disconnects_mid_stream_has_its_request_aborted(server):
    before = metrics(server.url)["tunekv:request_success_total{finished_reason=abort}"]
    sock = _open_stream(server.url, {"model": "tiny-llama", "prompt": [5, 6, 7], "max_tokens": 240,
                                     "ignore_eos": True, "stream": True})
    assert metrics(server.url)["tunekv:num_requests_running"] == 1
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()

    def aborted():
        m = metrics(server.url)
        return (m["tunekv:request_success_total{finished_reason=abort}"] == before + 1
                and m["tunekv:num_requests_running"] == 0 and m["tunekv:kv_cache_usage_perc"] == 0)

    wait_for(aborted, timeout=30)
    assert post(server.url + "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})[0] == 200


def test_a_client_that_disconnects_before_a_whole_response_has_its_request_aborted(server):
    before = metrics(server.url)["tunekv:request_success_total{finished_reason=abort}"]
    where = urlparse(server.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": [5, 6], "max_tokens": 240, "ignore_eos": True}),
                 {"Content-Type": "application/json"})
    wait_for(lambda: metrics(server.url)["tunekv:num_requests_running"] == 1, timeout=30)
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_for(lambda: metrics(server.url)["tunekv:request_success_total{finished_reason=abort}"] == before + 1)
    assert metrics(server.url)["tunekv:kv_cache_usage_perc"] == 0


BAD_REQUESTS = [
    ("completions", b"{not json", None, "not valid JSON"),
    ("completions", b"[1, 2]", None, "must be a JSON object"),
    ("completions", b"[" * 100_000 + b"]" * 100_000, None, "the request body nests too deeply"),
    ("completions", b'{"prompt": [1, 2], "model": "\\ud800"}', None, "lone UTF-16 surrogate"),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', None, "lone UTF-16 surrogate"),
    ("completions", {"max_tokens": 4}, "prompt", "prompt is required"),
    ("completions", {"prompt": 42}, "prompt", "prompt must be"),
    ("completions", {"prompt": []}, "prompt", "prompt must be"),
    ("completions", {"prompt": "hello"}, "prompt", "this model has no tokenizer"),
    ("completions", {"prompt": [1, 2, 10**9]}, "prompt", "token ids must lie in [0, "),
    ("completions", {"prompt": [-1]}, "prompt", "token ids must lie in [0, "),
    ("completions", {"prompt": [1] * 300}, "prompt", "the prompt is 300 tokens and this model's max_model_len is 256"),
    ("completions", {"prompt": [1, 2], "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1"),
    ("completions", {"prompt": [1, 2], "max_tokens": "ten"}, "max_tokens", "max_tokens must be an integer"),
    ("completions", {"prompt": [1, 2], "max_tokens": 255}, "max_tokens", "the request asks for 257"),
    ("completions", {"prompt": [1, 2], "temperature": -0.5}, "temperature", "temperature must be >= 0"),
    ("completions", {"prompt": [1, 2], "temperature": "hot"}, "temperature", "temperature must be a number"),
    ("completions", {"prompt": [1, 2], "top_p": 0}, "top_p", "top_p must be in (0, 1]"),
    ("completions", {"prompt": [1, 2], "top_k": -2}, "top_k", "top_k must be >= -1"),
    ("completions", {"prompt": [1, 2], "max_tokens": 2.5}, "max_tokens", "max_tokens must be an integer"),
    ("completions", {"prompt": [1, 2], "logprobs": 0}, "logprobs", "logprobs must be null"),
    ("completions", {"prompt": [1, 2], "logit_bias": {"5": 100}}, "logit_bias", "applies no logit bias"),
    ("completions", {"prompt": [1, 2], "min_p": 0.1}, "min_p", "min_p must be 0"),
    ("completions", {"prompt": [1, 2], "suffix": "x"}, "suffix", "suffix is not supported"),
    ("completions", {"prompt": [1, 2], "response_format": {"type": "json_object"}}, "response_format",
     "no guided decoding"),
    ("completions", {"prompt": [1, 2], "n": 2}, "n", "n must be 1"),
    ("completions", {"prompt": [1, 2], "echo": True}, "echo", "echo must be false"),
    ("completions", {"prompt": [1, 2], "logprobs": 3}, "logprobs", "logprobs must be null"),
    ("completions", {"prompt": [1, 2], "stream": "yes"}, "stream", "stream must be true or false"),
    ("completions", {"prompt": [1, 2], "stream_options": {"include_usage": True}}, "stream_options",
     "only allowed with stream"),
    ("completions", {"prompt": [1, 2], "stop": "x"}, "stop", "stop strings need a tokenizer"),
    ("completions", {"prompt": [1, 2], "stop": [1]}, "stop", "stop must be a string or a list of strings"),
    ("completions", {"prompt": [1, 2], "stop_token_ids": [10**9]}, "stop_token_ids", "stop_token_ids must lie"),
    ("completions", {"prompt": [1, 2], "min_tokens": 9, "max_tokens": 4}, "min_tokens", "must not exceed"),
    ("completions", {"prompt": [1, 2], "seed": 1.5}, "seed", "seed must be an integer"),
    ("completions", {"prompt": [1, 2], "stop_token_ids": 0}, "stop_token_ids", "must be a list of integer"),
    ("chat/completions", {"messages": USER, "tools": [TOOL]}, "tool_choice", "tools need tool_choice \"none\""),
    ("chat/completions", {"messages": USER, "tool_choice": "required"}, "tool_choice", "parses no tool calls"),
    ("chat/completions", {"messages": USER, "tools": {"a": 1}, "tool_choice": "none"}, "tools", "must be a list"),
    ("chat/completions", {"messages": USER, "continue_final_message": True}, "continue_final_message",
     "needs add_generation_prompt: false"),
    ("chat/completions", {"messages": USER, "continue_final_message": True, "add_generation_prompt": False},
     "continue_final_message", "must be the assistant's"),
    ("chat/completions", {"messages": USER, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs",
     "may not set tokenize"),
    ("chat/completions", {"messages": USER, "chat_template_kwargs": [1]}, "chat_template_kwargs",
     "must be an object"),
    ("chat/completions", {"messages": USER, "chat_template": "{{ 1 }}"}, "chat_template", "is not supported"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "messages", "this model has no tokenizer"),
    ("chat/completions", {"messages": []}, "messages", "messages must be a non-empty list"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages", "role is one of"),
]


@pytest.mark.parametrize("endpoint, body, param, message", BAD_REQUESTS,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD_REQUESTS)])
def test_a_bad_request_is_a_400_naming_the_field_and_the_server_goes_on(server, endpoint, body, param, message):
    status, answer = post(f"{server.url}/v1/{endpoint}", body)
    assert status == 400, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "BadRequestError"
    assert error["param"] == param and message in error["message"], error
    assert metrics(server.url)["tunekv:kv_cache_usage_perc"] == 0, "nothing was left allocated"
    assert post(server.url + "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})[0] == 200


def test_what_vllm_takes_is_taken(server):
    """A default max_tokens cut to what fits, top_k 0 (off), 3.0 as an integer, top_logprobs 0."""
    status, answer = post(server.url + "/v1/completions", {"prompt": [1] * 250, "ignore_eos": True})
    assert status == 200 and answer["usage"]["completion_tokens"] == 6, answer
    assert answer["choices"][0]["finish_reason"] == "length"
    status, answer = post(server.url + "/v1/completions", {"prompt": [1, 2], "max_tokens": 3.0, "top_k": 0,
                                                           "top_logprobs": 0, "ignore_eos": True})
    assert status == 200 and answer["usage"]["completion_tokens"] == 3, answer


def test_a_method_a_route_does_not_take_is_openais_405(server):
    status, body = get(server.url + "/v1/completions")
    error = json.loads(body)["error"]
    assert status == 405 and error["type"] == "MethodNotAllowedError" and "does not take GET" in error["message"]


def test_a_stop_token_id_ends_the_choice_and_is_its_stop_reason(server, reference):
    prompt = PROMPTS[0]
    ref = reference[tuple(prompt)]
    stop_id = ref[3]
    upto = ref.index(stop_id)
    out = client(server).completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0,
                                            extra_body={"stop_token_ids": [stop_id], "ignore_eos": True})
    choice = out.choices[0]
    assert choice.token_ids == ref[:upto + 1] and choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop_id


def test_an_unknown_model_is_openais_404(server):
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).completions.create(model="gpt-7", prompt=[1, 2], max_tokens=2)
    assert "The model `gpt-7` does not exist" in str(caught.value) and caught.value.code == "model_not_found"


def test_metrics_count_what_was_sent(server):
    before = metrics(server.url)
    for prompt in PROMPTS:
        assert post(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": 5, "ignore_eos": True})[0] == 200
    after = metrics(server.url)
    assert after["tunekv:prompt_tokens_total"] - before["tunekv:prompt_tokens_total"] == sum(map(len, PROMPTS))
    assert after["tunekv:generation_tokens_total"] - before["tunekv:generation_tokens_total"] == 15
    assert after["tunekv:e2e_request_latency_seconds_count"] - before["tunekv:e2e_request_latency_seconds_count"] == 3
    assert after["tunekv:inter_token_latency_seconds_count"] - before["tunekv:inter_token_latency_seconds_count"] == 12
    assert after["tunekv:prefix_cache_queries_total"] >= after["tunekv:prefix_cache_hits_total"] >= 0
    assert {"tunekv:num_requests_waiting", "tunekv:num_preemptions_total",
            "tunekv:request_queue_time_seconds_count"} <= set(after)
