"""`tunekv bench` through a subprocess with real arguments."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.tunekv.run_cli import tunekv

SMALL = """description: tiny CLI test workload
num_requests: 8
prompt_len: {dist: uniform, min: 4, max: 24}
output_len: {dist: uniform, min: 2, max: 12}
arrival: {rate: 50}
"""
ENGINE = ["--num-kv-blocks", "32", "--block-size", "8", "--device", "cpu"]


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return str(path)


def test_bench_prints_vllm_block_and_writes_json(workload, tmp_path):
    out = tmp_path / "r.json"
    done = tunekv("bench", "--workload", workload, "--slo", "ttft_p99=60s,itl_p99=60s", "--json", str(out), *ENGINE)
    assert done.returncode == 0, done.stderr
    assert "Serving Benchmark Result" in done.stdout and "P99 TTFT (ms):" in done.stdout
    result = json.loads(out.read_text())
    assert result["metrics"]["completed"] + result["workload"]["warmup_requests"] == 8
    assert result["metrics"]["attainment"] == 1.0
    assert result["config"]["block_size"] == 8 and result["workload"]["load"]["rate"] == 50
    assert not list(tmp_path.glob("*.tmp")), "temp files left behind"


def test_config_file_with_flag_override(workload, tmp_path):
    """The config comes through a pipe (`--config <(cat c.yaml)`): it was read twice, and the
    second read of the pipe found it empty ("must be a mapping of engine settings")."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-llama\nblock_size: 16\nmax_num_seqs: 4\ntuned_for: {gpu: h100-80gb}\n")
    out = tmp_path / "r.json"
    command = (f"{shlex.quote(sys.executable)} -m tunekv bench --workload {shlex.quote(workload)} --config "
               f"<(cat {shlex.quote(str(cfg))}) --offline --json {shlex.quote(str(out))} --num-kv-blocks 32 "
               "--block-size 8")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["config"]["block_size"] == 8 and result["config"]["max_num_seqs"] == 4
    assert result["workload"]["load"]["offline"]


def test_compare_kv_policies_prints_one_table(workload):
    done = tunekv("bench", "--workload", workload, "--offline", "--compare", "kv_policy=paged,contiguous",
                  "--max-model-len", "64", *ENGINE)
    assert done.returncode == 0, done.stderr
    assert "kv_policy=paged" in done.stdout and "kv_policy=contiguous" in done.stdout
    assert "same KV pool (256 tokens)" in done.stdout
    assert "batched alike" not in done.stdout, "a 256-token pool holds 4 contiguous reservations of 64, more paged"
    roomy = tunekv("bench", "--workload", workload, "--offline", "--compare", "kv_policy=paged,contiguous",
                   "--max-model-len", "64", "--num-kv-blocks", "1024", "--block-size", "8", "--device", "cpu")
    assert roomy.returncode == 0, roomy.stderr
    assert "held every running sequence under both policies, so they batched alike" in roomy.stdout


@pytest.mark.parametrize("args, words", [
    (["--workload", "chatty"], "unknown workload 'chatty'"),
    (["--slo", "ttft_p99=fast"], "must be a positive duration"),
    (["--rate", "0"], "--rate must be > 0"),
    (["--rate", "inf"], "--rate inf sends every request at once: that is --offline (and vLLM's --request-rate inf "
                        "--max-concurrency N is --concurrency N)"),
    (["--concurrency", "-2"], "--concurrency must be an integer >= 1"),
    (["--model", "llama-9b"], "unknown model 'llama-9b'"),
    (["--block-size", "0"], "block_size must be an integer >= 1"),
    (["--find-capacity"], "--find-capacity needs --slo"),
    (["--compare", "kv_polcy=paged"], "--compare takes FIELD=V1,V2"),
    (["--compare", "kv_policy=paged"], "--compare takes two or more values to compare"),
    (["--sweep", "users=1,2"], "--sweep takes concurrency="),
    (["--sweep", "rate=1,2", "--rate", "3"], "--sweep sets the load of each run; leave out --rate"),
    (["--sweep", "concurrency=1,2", "--offline"], "--sweep sets the load of each run; leave out --offline"),
    (["--json", ""], "--json needs a file name"),
    (["--concurrency", "2", "--burst", "4"], "--burst shapes Poisson arrivals: it goes with --rate or --sweep rate="),
    (["--rate", "2", "--offline"], "not allowed with argument"),
    (["--concurrency", "4", "--max-concurrency", "2"],
     "--max-concurrency caps an open loop (--rate, or a trace's arrival times); N users sending back to back are "
     "--concurrency N"),
    (["--rate", "4", "--max-concurrency", "0"], "--max-concurrency must be an integer >= 1, got 0"),
    (["--concurrency", "2", "--burstiness", "0.5"], "--burstiness shapes the gaps between arrivals at a rate"),
    (["--rate", "2", "--burstiness", "0"], "--burstiness must be a number > 0 (1: Poisson, inf: evenly spaced), got 0"),
    (["--sweep", "concurrency=1,2", "--max-concurrency", "2"], "--max-concurrency caps a --sweep rate=..."),
    (["--rate", "4", "--max-concurrency", "2", "--find-capacity", "--slo", "relaxed"],
     "--find-capacity finds the load the server sustains; --max-concurrency would queue the rest in the client"),
])
def test_bad_input_is_one_sentence_and_exit_2(args, words):
    done = tunekv("bench", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert words in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_config_key_names_the_closest(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("blok_size: 16\n")
    done = tunekv("bench", "--config", str(cfg))
    assert done.returncode == 2 and "did you mean 'block_size'" in done.stderr


def test_sweep_prints_table_and_chart(workload, tmp_path):
    out = tmp_path / "s.json"
    done = tunekv("bench", "--workload", workload, "--sweep", "concurrency=1,4,16", "--json", str(out), *ENGINE)
    assert done.returncode == 0, done.stderr
    assert "throughput and p99 latency by concurrency" in done.stdout and "output tok/s (max" in done.stdout
    sweep = json.loads(out.read_text())["sweep"]
    assert sweep["levels"] == [1, 4, 16] and len(sweep["results"]["engine"]) == 3
    # 16 users and 8 requests: the run says that level cannot load them all.
    assert "16 users exceed the 8 measured requests: such a run has at most 8 at once" in done.stdout


def test_a_rate_sweep_arrives_in_the_bursts_and_under_the_cap_asked_for(workload, tmp_path):
    """--burst reached single runs only: a rate sweep (and a capacity search over rates) ran
    plain Poisson arrivals, and before that --sweep rate=... --burst 4 was refused as "needs --rate"."""
    out = tmp_path / "s.json"
    done = tunekv("bench", "--workload", workload, "--sweep", "rate=20,40", "--burst", "4", "--burstiness", "0.5",
                  "--max-concurrency", "2", "--json", str(out), *ENGINE)
    assert done.returncode == 0, done.stderr
    header = " ".join(done.stdout.split())   # the terminal's width may wrap it
    assert "sweep over rate=20,40 in bursts of 4, gamma gaps of burstiness 0.5, at most 2 in flight" in header
    runs = json.loads(out.read_text())["sweep"]["results"]["engine"]
    loads = [r["workload"]["load"] for r in runs]
    assert [(load["rate"], load["burst"], load["burstiness"], load["max_concurrency"]) for load in loads] == [
        (20, 4, 0.5, 2), (40, 4, 0.5, 2)]
    assert all(r["kv"]["peak_running_seqs"] <= 2 for r in runs)


def test_find_capacity_reports_users(workload, tmp_path):
    out = tmp_path / "c.json"
    done = tunekv("bench", "--workload", workload, "--find-capacity", "--slo", "ttft_p99=60s", "--json", str(out),
                  *ENGINE)
    assert done.returncode == 0, done.stderr
    assert "capacity under SLO" in done.stdout and "users at once" in done.stdout
    assert "capacity search under the SLO from 1 user" in done.stdout and "Poisson" not in done.stdout, done.stdout
    capacity = json.loads(out.read_text())["capacity"]
    assert capacity["unit"] == "users" and capacity["load"] == 8  # every level passes up to the request count


@pytest.mark.parametrize("content, words", [
    ("num_requests: 4\narrival: 5\n", "arrival must be a mapping"),
    ("num_requests: 4\narrival: {rate: fast}\n", "arrival rate must be a number > 0"),
    ("num_requests: 4\narrival: {rate: .nan}\n", "arrival rate must be a number > 0"),
])
def test_bad_workload_files_are_one_sentence(tmp_path, content, words):
    path = tmp_path / "w.yaml"
    path.write_text(content)
    done = tunekv("bench", "--workload", str(path))
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


def test_nan_in_a_trace_is_rejected_not_hung(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_len": 4, "output_len": 2, "arrival_s": NaN}\n')
    done = tunekv("bench", "--workload", str(path))
    assert done.returncode == 2 and "line 1: not valid JSON" in done.stderr


def test_json_into_a_directory_fails_before_running(workload, tmp_path):
    done = tunekv("bench", "--workload", workload, "--json", str(tmp_path), *ENGINE)
    assert done.returncode == 2 and "is a directory" in done.stderr


def test_empty_series_are_null_in_json(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("num_requests: 3\nprompt_len: 4\noutput_len: 1\narrival: {offline: true}\n")
    out = tmp_path / "r.json"
    done = tunekv("bench", "--workload", str(path), "--json", str(out), *ENGINE)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["itl_ms"]["p99"] is None
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


def test_a_preset_longer_than_the_model_is_clipped_and_the_result_says_so(tmp_path):
    out = tmp_path / "r.json"
    done = tunekv("bench", "--workload", "chat", "--num-requests", "6", "--offline", "--max-model-len", "96",
                  "--json", str(out), *ENGINE)
    assert done.returncode == 0, done.stderr
    assert "workload chat: requests clipped to 96 tokens (max_model_len); the preset allows 3072" in done.stdout
    result = json.loads(out.read_text())
    assert result["workload"]["clipped_to"] == 96
    assert result["metrics"]["completed"] == 6 and result["metrics"]["failed"] == 0, "nothing was rejected"


def test_a_trace_longer_than_the_model_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_len": 4, "output_len": 2}\n{"prompt_len": 2100, "output_len": 2}\n')
    done = tunekv("bench", "--workload", str(path), "--model", "tiny-llama")
    assert done.returncode == 2, done.stderr
    assert ("the trace's longest request (2102 tokens) exceeds tiny-llama's max_position_embeddings (2048)"
            in done.stderr)
