"""Bad values that used to hang a command, exhaust its memory or crash it through the catch-all
(exit 1, "details: <log>"): each is now refused where it is read, as a user would meet it: exit 2,
one sentence that echoes at most a short piece of the input, quickly, and nothing written."""

from __future__ import annotations

import pytest
import torch

from tests.tunekv.run_cli import refused
from tunekv.units import clock

SEARCH = ("search", "--gpu", "h100-80gb", "--model", "qwen3-0.6b")   # simulate-only: quick past validation
LONG = "x" * 100_000
CUT = "x" * 60 + "…"           # what a message keeps of LONG
DIRECTORY = None               # a file entry that is a directory
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
TRACE = '{"prompt_len": %s, "output_len": 2%s}\n'


def workload(body: str) -> dict:
    return {"w.yaml": "num_requests: 4\n" + body}


def case(name: str, files: dict, args: tuple, message: str, marks=()):
    """One bad input: ``files`` (name -> text, bytes or DIRECTORY) written into the run's folder,
    the command's ``args``, and what its one line must say."""
    return pytest.param(files, args, message, id=name, marks=marks)


CASES = [
    # 1. a trace number too large for a float (json reads it as inf): bench waited for an arrival at t=inf
    case("trace-arrival-inf", {"t.jsonl": TRACE % (4, ', "arrival_s": 1e400')}, ("bench", "--workload", "t.jsonl"),
         "trace t.jsonl line 1: 1e400 is not a finite number"),
    case("trace-arrival-1e300", {"t.jsonl": TRACE % (4, ', "arrival_s": 1e300')}, ("bench", "--workload", "t.jsonl"),
         "arrival_s must be a number of seconds from 0 to 86400 (24 hours)"),
    # 2. lengths past any model: token lists built until memory ran out
    case("trace-prompt-1e12-bench", {"t.jsonl": TRACE % (10**12, "")}, ("bench", "--workload", "t.jsonl"),
         "trace t.jsonl line 1: prompt_len must be an integer from 1 to 16777216"),
    case("trace-prompt-1e12-search", {"t.jsonl": TRACE % (10**12, "")}, (*SEARCH, "--workload", "t.jsonl"),
         "trace t.jsonl line 1: prompt_len must be an integer from 1 to 16777216"),
    case("trace-prompt-1e12-plan", {"t.jsonl": TRACE % (10**12, "")}, ("plan", "--workload", "t.jsonl"),
         "trace t.jsonl line 1: prompt_len must be an integer from 1 to 16777216"),
    case("prefix-1e11-bench", workload("shared_prefix: {groups: 1, length: 100000000000}\n"),
         ("bench", "--workload", "w.yaml"),
         "workload w: shared_prefix length must be a whole number of tokens from 1 to 16777216"),
    case("prefix-1e11-plan", workload("shared_prefix: {groups: 1, length: 100000000000}\n"),
         ("plan", "--workload", "w.yaml"),
         "workload w: shared_prefix length must be a whole number of tokens"),
    case("prefix-groups-1e11-search", workload("shared_prefix: {groups: 100000000000, length: 4}\n"),
         (*SEARCH, "--workload", "w.yaml"),
         "workload w: shared_prefix groups must be a whole number from 1 to 16777216"),
    # 3. request counts that never finish
    case("num-requests-yaml", {"w.yaml": "num_requests: 100000000000\n"}, ("bench", "--workload", "w.yaml"),
         "workload w: num_requests must be an integer from 1 to 1000000"),
    case("num-requests-flag-bench", {}, ("bench", "--num-requests", "100000000000"),
         "--num-requests must be an integer from 1 to 1000000"),
    case("num-requests-flag-search", {}, (*SEARCH, "--num-requests", "100000000000"),
         "--num-requests must be an integer from 1 to 1000000"),
    # 4. arrivals spread over years
    case("rate-1e-9-bench", {}, ("bench", "--rate", "1e-9"),
         "requests at 1e-09 requests/s arrive over about"),
    case("rate-1e-9-search", {}, (*SEARCH, "--rate", "1e-9"),
         "more than 86400 s (24 hours)"),
    case("sweep-rate-1e-9", {}, ("bench", "--sweep", "rate=1,1e-9"),
         "requests at 1e-09 requests/s arrive over about"),
    # 5. distributions that overflowed (OverflowError through the catch-all)
    case("fixed-inf", workload("prompt_len: {dist: fixed, value: .inf}\n"), ("bench", "--workload", "w.yaml"),
         "workload w: prompt_len value must be a whole number of tokens from 1 to 16777216, got inf"),
    case("uniform-1e400", workload("output_len: {dist: uniform, min: 1, max: 1.0e+400}\n"),
         ("bench", "--workload", "w.yaml"),
         "workload w: output_len max must be a whole number of tokens"),
    case("sigma-1e300", workload("prompt_len: {dist: lognormal, median: 100, sigma: 1e300, max: 200}\n"),
         ("bench", "--workload", "w.yaml"),
         "workload w: prompt_len sigma must be a number from 0 to 10"),
    case("median-inf", workload("prompt_len: {dist: lognormal, median: .inf, sigma: 1, max: 200}\n"),
         ("plan", "--workload", "w.yaml"),
         "workload w: prompt_len median must be a number of tokens above 0"),
    # 6. a budget that overflowed the live table's clock (time_t)
    case("budget-overflow", {}, (*SEARCH, "--budget", "99999999999999999999h"),
         "--budget is at most 168h (7 days)"),
    # 7. config values of the wrong type: a crash in torch, or taken as true
    case("config-seed-text", {"c.yaml": "seed: x\n"}, ("bench", "--config", "c.yaml"),
         "config field seed must be an integer, got 'x'"),
    case("config-bool-maybe", {"c.json": '{"enable_prefix_caching": "maybe"}'}, ("bench", "--config", "c.json"),
         "config field enable_prefix_caching must be true or false, got 'maybe'"),
    case("config-bool-as-number", {"c.yaml": "gpu_memory_utilization: true\n"}, ("bench", "--config", "c.yaml"),
         "config field gpu_memory_utilization must be a finite number, got True"),
    # 8. huge values echoed whole, or crashing in the file system (file name too long)
    case("long-model", {}, ("bench", "--model", LONG),
         f"unknown model '{CUT}'"),
    case("long-model-path", {}, ("bench", "--model", "models/" + LONG),
         f"model directory models/{'x' * 53}… does not exist"),
    case("long-slo", {}, ("bench", "--slo", LONG),
         f"unknown SLO profile '{CUT}'"),
    case("long-workload", {}, ("bench", "--workload", LONG),
         f"unknown workload '{CUT}'"),
    case("long-workload-file", {}, ("bench", "--workload", LONG + ".yaml"),
         f"workload file {CUT} cannot be read"),
    case("long-config", {}, ("bench", "--config", LONG),
         f"config file {CUT} cannot be read"),
    case("long-gpu", {}, (*SEARCH, "--gpu", LONG),
         f"unknown GPU preset '{CUT}'"),
    case("long-fix", {}, (*SEARCH, "--fix", "block_size=" + LONG),
         f"--fix: block_size takes an integer >= 1, got '{CUT}'"),
    case("long-dtype", {}, ("bench", "--dtype", LONG),
         f"dtype must be one of auto, bfloat16, float16, float32; got '{'x' * 59}…"),
    case("long-study", {}, (*SEARCH, "--study", LONG),
         "--study takes a name of 1 to 128 characters, got 100000"),
    case("long-storage", {}, (*SEARCH, "--storage", "sqlite:///" + LONG),
         "--storage takes a URL of at most 2048 characters"),
    # 9. a device torch does not know
    case("calibrate-device-tpu", {}, ("calibrate", "--device", "tpu"),
         "--device must be auto, cpu or cuda; got 'tpu'"),
    # 10. SLO files that hold no SLO, and targets that are no targets
    case("slo-empty-file", {"s.yaml": ""}, ("bench", "--slo", "s.yaml"),
         "SLO file s.yaml holds no SLO targets; it must hold a YAML mapping of targets"),
    case("slo-unrelated-yaml", {"s.yaml": "model: qwen3-0.6b\n"}, (*SEARCH, "--slo", "s.yaml"),
         "SLO file s.yaml holds no SLO targets"),
    case("slo-png", {"s.png": PNG}, ("bench", "--slo", "s.png"),
         "SLO file s.png is not UTF-8 text"),
    case("slo-empty-flag", {}, ("bench", "--slo", ""),
         "the SLO is empty; give targets like ttft_p99=500ms"),
    case("slo-inf", {}, ("bench", "--slo", "ttft_p99=infms"),
         "SLO target ttft_p99=infms must be a positive duration"),
    case("slo-inf-search", {}, (*SEARCH, "--slo", "ttft_p99=500ms,itl_p99=infs"),
         "SLO target itl_p99=infs must be a positive duration"),
    # 11. bytes that are not text, and directories where a file is wanted
    case("binary-workload", {"w.yaml": b"num_requests: 4\n\xff\xfe\n"}, ("bench", "--workload", "w.yaml"),
         "workload file w.yaml is not UTF-8 text"),
    case("binary-config", {"c.yaml": b"\xff\xfe\x00block_size"}, ("bench", "--config", "c.yaml"),
         "config file c.yaml is not UTF-8 text"),
    case("directory-workload", {"d.yaml": DIRECTORY}, ("bench", "--workload", "d.yaml"),
         "workload file d.yaml is a directory, not a file"),
    case("directory-trace", {"d.jsonl": DIRECTORY}, (*SEARCH, "--workload", "d.jsonl"),
         "trace file d.jsonl is a directory, not a file"),
    case("directory-config", {"d": DIRECTORY}, ("bench", "--config", "d"),
         "config file d is a directory, not a file"),
    case("directory-slo", {"d": DIRECTORY}, ("bench", "--slo", "d"),
         "SLO file d is a directory, not a file"),
    # 12. a range that is no range, and a range on a knob the search holds (it blamed a --fix never given)
    case("range-nan-inf", {}, (*SEARCH, "--range", "gpu_memory_utilization=nan:inf"),
         "--range gpu_memory_utilization=nan:inf: the bounds must be finite numbers"),
    case("range-held-knob", {}, ("search", "--simulate", "--model", "tiny-llama", "--budget", "10s", "--range",
                                 "gpu_memory_utilization=0.8:0.9"),
         "this search holds gpu_memory_utilization at 0.9 (it has no effect on this device)",
         marks=pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the search turns the knob")),
    # every length within bounds, but together more than the memory: refused before a token is drawn
    case("total-tokens-past-memory", {"w.yaml": "num_requests: 1000000\nprompt_len: 40000\noutput_len: 8\n"},
         ("bench", "--simulate", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--workload", "w.yaml"),
         "the requests hold 40,000,000,000 prompt tokens, about 1,341.1 GiB in memory, more than half of the"),
    # 13. a negative value that argparse took for an option
    case("budget-negative", {}, ("calibrate", "--budget", "-5m"),
         "--budget must be longer than zero; got '-5m'"),
]


@pytest.mark.parametrize("files, args, message", CASES)
def test_a_bad_value_is_refused_in_one_sentence(tmp_path, files, args, message):
    for path, content in files.items():
        target = tmp_path / path
        if content is DIRECTORY:
            target.mkdir()
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    refused(*args, cwd=tmp_path, message=message, timeout=90)


@pytest.mark.parametrize("seconds, shown", [(0, "00:00:00"), (59.9, "00:00:59"), (3587, "00:59:47"),
                                            (25 * 3600, "25:00:00"), (7 * 24 * 3600, "168:00:00"),
                                            (-3, "00:00:00"), (float("nan"), "00:00:00")])
def test_the_time_left_counts_hours_past_a_day(seconds, shown):
    assert clock(seconds) == shown
