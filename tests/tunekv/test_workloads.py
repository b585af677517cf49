from __future__ import annotations

import json

import pytest

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
