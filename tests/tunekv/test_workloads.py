from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunekv.workload.workloads import load_workload, workload_names


def test_presets_exist_and_are_deterministic():
    assert {"chat", "rag", "batch", "nano-vllm"} <= set(workload_names())
    for name in workload_names():
        w = load_workload(name)
        a, b = w.requests(3, 1000), w.requests(3, 1000)
        assert a == b and len(a) == w.num_requests
        assert a != w.requests(4, 1000)
        assert all(len(r.prompt_token_ids) >= 1 and r.output_len >= 1 for r in a)


def test_nano_vllm_lengths_and_shared_prefixes():
    reqs = load_workload("nano-vllm").requests(0, 5000)
    assert len(reqs) == 256
    assert all(100 <= len(r.prompt_token_ids) <= 1024 and 100 <= r.output_len <= 1024 for r in reqs)
    chat = load_workload("chat").requests(0, 5000)
    grouped = [r for r in chat if r.prefix_group == 0]
    assert len(grouped) > 100
    assert len({r.prompt_token_ids[:90] for r in grouped if len(r.prompt_token_ids) > 96}) == 1


def test_trace_requests_and_line_numbers(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"prompt_len": 5, "output_len": 3, "arrival_s": 0.5}\n\n{"prompt_len": 9, "output_len": 2, '
                     '"prefix_group": 1}\n')
    reqs = load_workload(str(trace)).requests(0, 100)
    assert [len(r.prompt_token_ids) for r in reqs] == [5, 9] and reqs[0].arrival_s == 0.5
    trace.write_bytes(b'\xef\xbb\xbf{"prompt_len": 5, "output_len": 3}\n')   # a byte-order mark, as Notepad writes
    assert len(load_workload(str(trace)).requests(0, 100)) == 1
    trace.write_text('{"prompt_len": 5, "output_len": 3}\n{"prompt_len": 5}\n')
    with pytest.raises(ValueError, match="line 2: needs output_len"):
        load_workload(str(trace))
    trace.write_text('{"prompt_len": 5, "output_len": 3}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_workload(str(trace))


def test_text_trace_needs_a_tokenizer(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"prompt": "hello there", "output_len": 4}) + "\n")
    with pytest.raises(ValueError, match="needs a model directory with a tokenizer"):
        load_workload(str(trace)).requests(0, 100)

    class Tok:
        def encode(self, text):
            return [len(w) for w in text.split()]

    assert load_workload(str(trace)).requests(0, 100, tokenizer=Tok())[0].prompt_token_ids == (5, 5)


def test_unknown_workload_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="unknown workload 'chatty'"):
        load_workload("chatty")
    bad = tmp_path / "w.yaml"
    bad.write_text("prompt_len: {dist: gaussian}\n")
    with pytest.raises(ValueError, match="dist: fixed, uniform, lognormal, empirical"):
        load_workload(str(bad))


def test_lengths_are_the_requests_lengths_without_their_tokens(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"prompt_len": 5, "output_len": 3}\n{"prompt_len": 9000, "output_len": 2, "prefix_group": 1}\n')
    for workload in [load_workload(name) for name in workload_names()] + [load_workload("rag").fit_to(1500),
                                                                          load_workload(str(trace))]:
        for seed, vocab, n in ((0, 1000, None), (4, 151936, 30)):
            requests = workload.requests(seed, vocab, None, n)
            assert workload.lengths(seed, vocab, n) == [(len(r.prompt_token_ids), r.output_len) for r in requests]


@pytest.mark.parametrize("body, words", [
    ("prompt_len: 16777217\n", "prompt_len must be a whole number of tokens from 1 to 16777216, got 16777217"),
    ("output_len: {dist: empirical, values: [4, 0]}\n", "output_len values must be a whole number of tokens"),
    ("prompt_len: {dist: uniform, min: 9, max: 3}\n", "the uniform distribution needs min <= max, got 9 > 3"),
    ("shared_prefix: {groups: 4096, length: 8192}\n", "at most 16777216; got 4096 x 8192"),
    ("1: 2\n", "unknown key '1'"),
])
def test_workload_files_are_bounded_where_they_are_read(tmp_path, body, words):
    path = tmp_path / "w.yaml"
    path.write_text(body)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_workload(str(path))


def test_lognormal_fields_written_as_yaml_text_still_count():
    """PyYAML reads 1e3 (no dot) as text; a median or a length written so is still the number."""
    from tunekv.workload.workloads import LengthDist

    dist = LengthDist.parse({"dist": "lognormal", "median": "1e3", "sigma": "0.5", "max": "4096"}, "prompt_len")
    assert (dist.median, dist.sigma, dist.max) == (1000.0, 0.5, 4096)


@settings(max_examples=60, deadline=None)
@given(max_len=st.integers(min_value=16, max_value=3100), seed=st.integers(min_value=0, max_value=5))
def test_a_preset_clipped_to_a_model_sends_nothing_longer_and_keeps_what_fits(max_len, seed):
    chat = load_workload("chat")
    clipped = chat.fit_to(max_len)
    original, requests = chat.requests(seed, 500, None, 60), clipped.requests(seed, 500, None, 60)
    assert clipped.longest_request(requests) == min(max_len, 2048 + 1024)
    for before, after in zip(original, requests, strict=True):
        total = len(before.prompt_token_ids) + before.output_len
        assert len(after.prompt_token_ids) + after.output_len <= max_len
        if total <= max_len:
            assert after == before, "a request that fits is sent as the preset drew it"
        else:
            assert after.output_len >= min(before.output_len, 8) and len(after.prompt_token_ids) >= 8


def test_a_clip_names_itself_and_a_trace_is_never_clipped(tmp_path):
    chat = load_workload("chat")
    assert chat.fit_to(4096) is chat and chat.clip_note("x") is None
    clipped = chat.fit_to(2048)
    assert clipped.clip_note("tiny-llama's max_position_embeddings") == (
        "workload chat: requests clipped to 2048 tokens (tiny-llama's max_position_embeddings); the preset allows 3072")
    assert clipped.digest() != chat.digest() and chat.digest() == chat.fit_to(9999).digest()
    with pytest.raises(ValueError, match="shortest request \\(16 tokens\\) is longer than 10 tokens"):
        chat.fit_to(10)
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"prompt_len": 3000, "output_len": 3}\n')
    long_trace = load_workload(str(trace))
    assert long_trace.fit_to(2048) is long_trace
