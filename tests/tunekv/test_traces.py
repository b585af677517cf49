"""Published traces read as they are: Azure's and BurstGPT's CSVs, Mooncake's JSONL with its shared
blocks; a request that failed in the trace left out and counted; bad rows named by line and column."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunekv.run_cli import tunekv
from tunekv.units import rate_text
from tunekv.workload.traces import MOONCAKE_BLOCK_TOKENS
from tunekv.workload.workloads import load_workload

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,0
2023-11-16 19:15:46.6805901,91,16
"""
BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45.5,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,1,418,API log
"""


def test_an_azure_trace_keeps_its_arrivals_to_the_microsecond_and_leaves_out_what_failed(tmp_path):
    path = tmp_path / "conv.csv"
    path.write_text(AZURE)
    w = load_workload(str(path))
    assert [(r["prompt_len"], r["output_len"]) for r in w.trace] == [(374, 44), (396, 109), (91, 16)]
    arrivals = [r["arrival_s"] for r in w.trace]
    assert arrivals[0] == 0.0 and math.isclose(arrivals[1], 4.314579, abs_tol=1e-9)
    assert math.isclose(arrivals[2], 3600 + 1e-7, abs_tol=1e-9), "Azure's seventh digit is kept"
    assert w.description == ("Azure LLM inference trace conv.csv; 1 of its 4 requests left out "
                             "(no output tokens or no prompt: requests that failed)")
    requests = w.requests(0, 1000)
    assert [len(r.prompt_token_ids) for r in requests] == [374, 396, 91] and requests[1].arrival_s == arrivals[1]


def test_azure_2024_timestamps_with_a_zone_are_the_same_instants(tmp_path):
    path = tmp_path / "code_1week.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 02:00:00.25+02:00,10,2\n"
                    "2024-05-10 00:00:01.000001Z,10,2\n2024-05-09T23:00:02-01:00,10,2\n")
    assert [r["arrival_s"] for r in load_workload(str(path)).trace] == pytest.approx([0.0, 0.750001, 1.75])


def test_a_csv_with_lone_carriage_returns_reads_as_lines(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(AZURE.replace("\n", "\r").encode())
    assert [r["prompt_len"] for r in load_workload(str(path)).trace] == [374, 396, 91]


def test_mooncake_times_count_from_its_first_request(tmp_path):
    path = tmp_path / "epoch.jsonl"
    path.write_text('{"timestamp": 1700000000000, "input_length": 9, "output_length": 2}\n'
                    '{"timestamp": 1700000000250.5, "input_length": 9, "output_length": 2}\n')
    assert [r["arrival_s"] for r in load_workload(str(path)).trace] == pytest.approx([0.0, 0.2505])


def test_a_burstgpt_trace_reads_its_columns_by_name(tmp_path):
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(BURSTGPT)
    w = load_workload(str(path))
    assert w.trace == [{"prompt_len": 472, "output_len": 18, "arrival_s": 0.0},
                       {"prompt_len": 417, "output_len": 1, "arrival_s": 113.0}]
    assert w.description.startswith("BurstGPT trace BurstGPT_1.csv; 1 of its 3 requests left out")


hash_chains = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=2, max_size=5)


@settings(max_examples=40, deadline=None)
@given(chains=hash_chains, cut=st.integers(0, MOONCAKE_BLOCK_TOKENS - 1), seed=st.integers(0, 3))
def test_mooncake_requests_share_exactly_the_blocks_their_hash_ids_share(tmp_path_factory, chains, cut, seed):
    """Each id stands for one 512-token block, the same wherever it is: two requests agree on their
    first k blocks when their first k ids agree, and the first block whose ids differ differs."""
    path = tmp_path_factory.mktemp("mooncake") / "trace.jsonl"
    rows = [{"timestamp": 250 * i, "input_length": max(1, MOONCAKE_BLOCK_TOKENS * len(ids) - cut),
             "output_length": 3, "hash_ids": ids} for i, ids in enumerate(chains)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    w = load_workload(str(path))
    requests = w.requests(seed, 50_000)
    assert w.description == "Mooncake trace trace.jsonl"
    assert [len(r.prompt_token_ids) for r in requests] == [row["input_length"] for row in rows]
    assert [r.arrival_s for r in requests] == [0.25 * i for i in range(len(rows))]
    for a, ra in zip(chains, requests):
        for b, rb in zip(chains, requests):
            same = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            shared = min(MOONCAKE_BLOCK_TOKENS * same, len(ra.prompt_token_ids), len(rb.prompt_token_ids))
            assert ra.prompt_token_ids[:shared] == rb.prompt_token_ids[:shared]
            if same < min(len(a), len(b)):
                lo, hi = MOONCAKE_BLOCK_TOKENS * same, MOONCAKE_BLOCK_TOKENS * (same + 1)
                if min(len(ra.prompt_token_ids), len(rb.prompt_token_ids)) >= hi:
                    assert ra.prompt_token_ids[lo:hi] != rb.prompt_token_ids[lo:hi]
    assert requests == w.requests(seed, 50_000), "same seed, same tokens"


@pytest.mark.parametrize("name, text, words", [
    ("t.csv", "time,in,out\n1,2,3\n", "a CSV trace needs the columns of the Azure LLM inference trace's (TIMESTAMP, "
     "ContextTokens, GeneratedTokens) or BurstGPT trace's (Timestamp, Request tokens, Response tokens); its header "
     "is 'time,in,out'"),
    ("t.csv", AZURE.replace("396,109", "396,lots"), "trace t.csv line 3: GeneratedTokens must be a whole number of "
     "tokens from 0 to 16777216, got 'lots'"),
    ("t.csv", AZURE.replace("2023-11-16 18:15:50.9951690", "16/11/2023 18:15"), "trace t.csv line 3: TIMESTAMP must be "
     "a date and time like 2023-11-16 18:15:46.6805900, got '16/11/2023 18:15'"),
    ("t.csv", AZURE.replace("2023-11-16 19:15", "2023-11-18 19:15"), "trace t.csv: its requests arrive over 49.0 "
     "hours, more than 24; replay a part of it (its first 2 requests arrive within 24 hours)"),
    ("t.csv", AZURE.replace("374,44", "374,44,\"" + "x" * 200_000 + "\""), "trace t.csv line 2: not a CSV row"),
    ("t.csv", BURSTGPT.replace("\n118,", "\nnever,"), "trace t.csv line 4: Timestamp must be a number of seconds, "
     "got 'never'"),
    ("t.csv", BURSTGPT.replace("472,18", "472"), "trace t.csv line 2: has 5 fields, its header 6"),
    ("t.csv", "Timestamp,Request tokens,Response tokens\n1,5,0\n", "trace t.csv has no requests"),
    ("t.jsonl", '{"timestamp": 0, "input_length": 9, "output_length": 2, "hash_ids": ["a"]}\n',
     "trace t.jsonl line 1: hash_ids must be a list of integers >= 0"),
    ("t.jsonl", '{"timestamp": 0, "input_length": 9, "output_length": 2}\n{"input_length": -1, "output_length": 2}\n',
     "trace t.jsonl line 2: input_length must be an integer from 0 to 16777216, got -1"),
    ("t.jsonl", '{"timestamp": -5, "input_length": 9, "output_length": 2}\n',
     "trace t.jsonl line 1: timestamp must be a number of milliseconds >= 0, got -5"),
    ("t.jsonl", '{"timestamp": 0, "input_length": 9, "output_length": 2}\n{"timestamp": 9e7, "input_length": 9, '
     '"output_length": 2}\n', "trace t.jsonl: its requests arrive over 25.0 hours, more than 24; replay a part of "
     "it (its first 1 requests arrive within 24 hours)"),
    ("t.jsonl", '{"prompt_len": 600, "output_len": 4, "hash_ids": 5}\n',
     "trace t.jsonl line 1: hash_ids must be a list of integers >= 0"),
])
def test_bad_rows_are_named_by_line_and_column(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_workload(str(path))


def test_bench_replays_a_published_trace_at_the_speed_asked_and_says_how_it_read_it(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{i:02d}.0000000,{8 + i},{0 if i == 3 else 3}\n" for i in range(8)))
    out = tmp_path / "r.json"
    done = tunekv("bench", "--workload", str(path), "--warmup", "0", "--trace-speedup", "10", "--json", str(out),
                  "--num-kv-blocks", "32", "--block-size", "8", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())   # the terminal's width may wrap a line
    assert "7 requests (seed 0, 0 warm-up); trace arrival times at 10x speed" in said
    assert "Azure LLM inference trace AzureLLMInferenceTrace_conv.csv; 1 of its 8 requests left out" in said
    result = json.loads(out.read_text())
    assert result["metrics"]["completed"] == 7 and result["metrics"]["total_input_tokens"] == sum(
        8 + i for i in range(8) if i != 3)
    assert result["workload"]["load"]["trace"] and result["workload"]["load"]["speedup"] == 10


@pytest.mark.parametrize("args, words", [
    (["--rate", "2"], "--trace-speedup scales a trace's arrival times, which --rate replaces"),
    (["--sweep", "concurrency=1,2"], "--trace-speedup replays a trace at one pace; --sweep sets each run's load"),
    (["--trace-speedup", "0.00001"], "at --trace-speedup 1e-05 the trace's requests arrive over 119.8 hours, more "
     "than 24"),
    (["--trace-speedup", "-1"], "--trace-speedup must be a number > 0, got -1"),
])
def test_a_trace_speedup_that_cannot_apply_is_one_sentence(tmp_path, args, words):
    path = tmp_path / "t.csv"
    path.write_text(AZURE.replace("2023-11-16 19:15", "2023-11-16 18:15"))
    done = tunekv("bench", "--workload", str(path), "--trace-speedup", "2", *args)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
    plain = tunekv("bench", "--workload", "chat", "--trace-speedup", "2")
    assert plain.returncode == 2 and "workload chat has none" in plain.stderr
    swept = tunekv("bench", "--workload", "chat", "--sweep", "trace-speedup=1,2")
    assert swept.returncode == 2 and "--sweep trace-speedup=... scales a trace's arrival times: workload chat has " \
        "none" in swept.stderr
    burst = tmp_path / "burst.jsonl"
    burst.write_text('{"prompt_len": 4, "output_len": 2, "arrival_s": 3}\n' * 3)
    at_once = tunekv("bench", "--workload", str(burst), "--find-capacity", "--slo", "relaxed")
    assert at_once.returncode == 2 and "its requests all arrive at once: search over users (--concurrency 1) or a " \
        "rate (--rate 1) instead" in " ".join(at_once.stderr.split()), at_once.stderr


def test_capacity_on_a_trace_is_its_pace_sped_up_and_a_sweep_replays_it_at_each_pace(tmp_path):
    path = tmp_path / "t.jsonl"   # 12 requests over 40 ms: 300 req/s at the recorded pace
    path.write_text("".join(json.dumps({"prompt_len": 6, "output_len": 3, "arrival_s": i * 0.04 / 11}) + "\n"
                            for i in range(12)))
    engine = ("--num-kv-blocks", "32", "--block-size", "8", "--device", "cpu", "--warmup", "0")
    out = tmp_path / "c.json"
    held = tunekv("bench", "--workload", str(path), "--find-capacity", "--slo", "ttft_p99=60s", "--trace-speedup",
                  "256", "--json", str(out), *engine)
    assert held.returncode == 0, held.stderr
    said = " ".join(held.stdout.split())
    assert "capacity search under the SLO from 256x the trace's pace" in said
    assert "at least 1024x the trace's pace (307,200 req/s on average)" in said, said
    data = json.loads(out.read_text())
    assert [p[0] for p in data["capacity"]["probes"]] == [256, 512, 1024]
    assert data["capacity"]["unit"] == "x" and data["capacity"]["trace_req_s_at_1x"] == pytest.approx(300)
    assert data["result"]["workload"]["load"]["trace"] and data["result"]["workload"]["load"]["speedup"] == 1024

    missed = tunekv("bench", "--workload", str(path), "--find-capacity", "--slo", "ttft_p99=0.001ms", "--json",
                    str(out), *engine)
    assert missed.returncode == 0, missed.stderr
    assert [p[0] for p in json.loads(out.read_text())["capacity"]["probes"]] == [1 / 2 ** k for k in range(7)]
    assert "the SLO is not met even at the lowest load (0.0156x)" in " ".join(missed.stdout.split())

    swept = tunekv("bench", "--workload", str(path), "--sweep", "trace-speedup=0.5,4", "--max-concurrency", "2",
                   "--json", str(out), *engine)
    assert swept.returncode == 0, swept.stderr
    sweep = json.loads(out.read_text())["sweep"]
    loads = [r["workload"]["load"] for r in sweep["results"]["engine"]]
    assert sweep["kind"] == "trace-speedup" and [(x["speedup"], x["max_concurrency"]) for x in loads] == [
        (0.5, 2), (4, 2)]
    durations = [r["metrics"]["duration_s"] for r in sweep["results"]["engine"]]
    assert durations[0] >= 0.04 / 0.5 * (10 / 11), "at half its pace the trace's last request arrives after 80 ms"


def test_search_on_a_traces_own_times_tunes_for_its_pace_and_sizes_the_fleet_in_req_s(tmp_path):
    path = tmp_path / "t.jsonl"   # 30 requests over 2.9 s: about 10.3 req/s at the recorded pace
    path.write_text("".join(json.dumps({"prompt_len": 64 + 16 * (i % 5), "output_len": 16 + i % 7,
                                        "arrival_s": round(0.1 * i, 3)}) + "\n" for i in range(30)))
    out = tmp_path / "out"
    flags = ["--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--workload", str(path), "--fix",
             "block_size=16,enable_prefix_caching=on", "--range", "max_num_seqs=8:64", "--slo",
             "ttft_p99=40ms,itl_p99=50ms", "--json-lines"]
    result = tunekv("search", *flags, "--budget", "10s", "--target-load", "4000rps", "--out", str(out))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    trials = [e for e in events if e["event"] == "trial" and e["state"] == "complete" and e["capacity"]]
    assert trials and {e["capacity_unit"] for e in trials} == {"x"}
    assert events[0]["capacity_unit"] == "x" and events[0]["trace_req_s_at_1x"] == pytest.approx(30 / 2.9)
    best = events[-1]["best"]
    assert best["capacity_unit"] == "x" and 1 < best["capacity"] < 1024, "an H100 carries a 10 req/s trace faster"
    said = " ".join(result.stderr.split())
    assert "replayed at its arrival times: capacity as a multiple of its pace, 10.3 req/s at 1x" in said
    rate = best["capacity"] * 30 / 2.9
    tuned = (out / "tunekv.yaml").read_text()
    assert "capacity under the SLO (the trace's arrival times, sped up or slowed; 10.3 req/s on average at 1x)" \
        in tuned
    assert f"at {best['capacity']:g}x the trace's pace ({rate_text(rate)} req/s on average)" in tuned
    report = " ".join((out / "report.md").read_text().split())
    assert "| trial | fidelity | tok/s | capacity (pace) |" in report
    # The fleet's replica (the cheapest feasible config) carries its pace's share of the arrivals.
    row = re.search(r"\| h100-80gb \| predicted \| (?:at least )?([\d.,]+) req/s \| (\d+) x (\d+) = (\d+) GPU", report)
    assert row is not None, report
    per_replica = next(t["capacity"] * 30 / 2.9 for t in trials if rate_text(t["capacity"] * 30 / 2.9) == row[1])
    replicas, tp, gpus = int(row[2]), int(row[3]), int(row[4])
    assert replicas == math.ceil(4000 / per_replica) and gpus == replicas * tp
    assert "fastest pace of the trace it carries times the trace's 10.3 req/s at 1x" in report

    fixed = tunekv("search", *flags, "--budget", "10s", "--trace-speedup", "2", "--out", str(tmp_path / "fixed"))
    assert fixed.returncode == 0, fixed.stderr
    runs = [json.loads(line) for line in fixed.stdout.splitlines()]
    assert {(e["capacity"], e["capacity_unit"]) for e in runs if e["event"] == "trial" and e["capacity"]} == {(2, "x")}
    assert "load: trace arrival times at 2x speed" in (tmp_path / "fixed" / "tunekv.yaml").read_text()
    study = re.search(r"tunekv export --study (\S+)", fixed.stderr)[1]
    refused = tunekv("export", "--study", study, "--storage", f"sqlite:///{tmp_path / 'fixed' / 'study.db'}",
                     "--format", "report", "--target-load", "40rps")
    assert refused.returncode == 2 and f"study '{study}' measured a fixed load (trace arrival times at 2x speed), " \
        "not a capacity" in refused.stderr


class Words:
    """A tokenizer of words: a word's token is its length."""

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def conversation(prompt_words: int, answer_words: int | None, tag: str = "") -> dict:
    turns = [{"from": "human", "value": " ".join([f"q{tag}"] * prompt_words)}]
    if answer_words is not None:
        turns.append({"from": "gpt", "value": " ".join(["answer"] * answer_words)})
    return {"id": tag, "conversations": turns}


def test_a_sharegpt_dataset_draws_its_requests_as_vllms_benchmark_does(tmp_path):
    """Shuffled by the seed; a prompt and an answer of 4 tokens at least, the prompt at most 1,024
    and both at most 2,048; 1,000 requests unless told, drawn again when too few are kept; a
    conversation with no answer left out."""
    kept = [conversation(4 + i, 4 + 2 * i, str(i)) for i in range(6)]
    filtered = [conversation(3, 10), conversation(10, 3), conversation(1025, 4), conversation(1000, 1049),
                conversation(0, 0)]
    path = tmp_path / "ShareGPT_V3_unfiltered_cleaned_split.json"
    path.write_text(json.dumps(kept[:3] + filtered + [conversation(8, None)] + kept[3:]))
    w = load_workload(str(path))
    assert w.description == ("ShareGPT dataset ShareGPT_V3_unfiltered_cleaned_split.json; 1 of its 12 entries are "
                             "not conversations of two turns or more")
    assert w.count() == 1000 and w.count(4) == 4
    requests = w.requests(7, 1000, Words(), num_requests=6)
    assert sorted((len(r.prompt_token_ids), r.output_len) for r in requests) == [(4 + i, 4 + 2 * i) for i in range(6)]
    assert requests == w.requests(7, 1000, Words(), num_requests=6)
    # vLLM's order: random.seed(seed); random.shuffle(the conversations of two turns or more), then its filter
    order = kept[:3] + filtered + kept[3:]
    random.Random(7).shuffle(order)
    expected = [len(c["conversations"][1]["value"].split()) for c in order if c in kept]
    assert [r.output_len for r in requests] == expected != sorted(expected)
    assert len(w.requests(7, 1000, Words(), num_requests=2)) == 2
    # Fewer kept than asked: vLLM's maybe_oversample_requests, random.seed(seed); random.choices(kept, k=rest)
    drawn = w.requests(7, 1000, Words())
    assert len(drawn) == 1000 and drawn[:6] == requests and drawn[6:] == random.Random(7).choices(requests, k=994)
    with pytest.raises(ValueError, match="a ShareGPT dataset needs the model's tokenizer"):
        w.requests(7, 1000)


@pytest.mark.parametrize("body, words", [
    ('{"conversations": []}', "a ShareGPT dataset is a JSON list of conversations; this holds a dict"),
    ('[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 5}]}]',
     'conversation 0: its first two turns need "value": text'),
    ("[{]", "is not valid JSON"),
    ('[{"conversations": [{"from": "human", "value": "hi"}]}, {"id": 3}]',
     "d.json: no entry is a conversation of two turns or more"),
    ("[]", "has no requests"),
])
def test_a_file_that_is_not_sharegpt_is_one_sentence(tmp_path, body, words):
    path = tmp_path / "d.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_workload(str(path))


def test_bench_sends_sharegpt_prompts_tokenised_by_the_model(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer

    chats = [conversation(0, None)] + [
        {"conversations": [{"from": "human", "value": f"Name {n} colours of the rainbow."},
                           {"from": "gpt", "value": "Red, orange, yellow and green."}]} for n in range(2, 6)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(chats))
    out = tmp_path / "r.json"
    done = tunekv("bench", "--model", str(smollm2_dir), "--workload", str(path), "--num-requests", "3", "--offline",
                  "--json", str(out), "--device", "cpu", "--num-kv-blocks", "64", "--block-size", "16")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "ShareGPT dataset sharegpt.json; 1 of its 5 entries are not conversations of two turns or more" in said
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    metrics = json.loads(out.read_text())["metrics"]
    answer = len(tokenizer.encode("Red, orange, yellow and green."))
    assert metrics["completed"] == 3 and metrics["total_output_tokens"] == 3 * answer
    prompts = sorted(len(tokenizer.encode(f"Name {n} colours of the rainbow.")) for n in range(2, 6))
    assert metrics["total_input_tokens"] in {sum(p) for p in itertools.combinations(prompts, 3)}


def test_plan_sizes_the_cache_for_a_dataset_by_its_tokenised_mean(tmp_path, smollm2_dir):
    """The planner's row at the workload's mean length counted the tokens of a text trace or a
    dataset with the model's tokenizer: before, it said a tokenizer was needed though one was there."""
    from transformers import AutoTokenizer

    text = "Which of these colours come first in a rainbow?"
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": text},
                                                   {"from": "gpt", "value": "Red comes first, then orange."}]}]))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    mean = len(tokenizer.encode(text)) + len(tokenizer.encode("Red comes first, then orange."))
    done = tunekv("plan", "--model", str(smollm2_dir), "--gpu", "h100-80gb", "--workload", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"chats.json mean ({mean})" in done.stdout
