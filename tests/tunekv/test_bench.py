"""Load generation against a real (tiny) engine, and the paged-vs-contiguous claim."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from tunekv.engine import EngineConfig, LLMEngine
from tunekv.measure.capacity import find_capacity
from tunekv.measure.run import BenchPlan, RunResult, RunWorkload, run_bench
from tunekv.workload.loadgen import KvSummary, Load, arrival_times
from tunekv.workload.metrics import DEFINITIONS, SLO, LatencySummary, ServingMetrics
from tunekv.workload.workloads import LengthDist, Workload, WorkloadRequest

WORKLOAD = Workload("small", num_requests=16, prompt_len=LengthDist("uniform", min=4, max=40),
                    output_len=LengthDist("uniform", min=2, max=24))


def engine(**kw) -> LLMEngine:
    cfg = dict(model="tiny-llama", device="cpu", max_model_len=64, num_kv_blocks=24, block_size=8, max_num_seqs=16)
    cfg.update(kw)
    return LLMEngine(EngineConfig(**cfg))


def plan(slo=None, n=16, warmup=0) -> BenchPlan:
    return BenchPlan(WORKLOAD, WORKLOAD.requests(0, 512, num_requests=n), 0, warmup, slo)


def latency(p99: float = math.nan) -> LatencySummary:
    return LatencySummary(math.nan, math.nan, math.nan, p99, (math.nan, math.nan))


def fake_result(completed: int, failed: int, ttft_p99: float, output_throughput_tok_s: float) -> RunResult:
    """A run with only the figures a capacity search reads (the rest NaN or empty)."""
    metrics = ServingMetrics(latency(ttft_p99), latency(), latency(), latency(), math.nan, output_throughput_tok_s,
                             math.nan, math.nan, math.nan, completed, failed, math.nan)
    return RunResult(EngineConfig(), RunWorkload("fake", completed + failed, 0, 0, Load(offline=True)),
                     {"type": "simulated", "name": "NVIDIA H100 80GB HBM3"}, metrics,
                     KvSummary(0, 0, 0, 0, 0.0, 0), None, True, False, None)


def test_run_result_json_is_the_bench_result_file_format():
    """``to_json`` is the file `tunekv bench --json` writes: these keys, in this order."""
    lat = LatencySummary(10.0, 9.0, 12.0, 15.0, (14.0, 16.0))
    config = EngineConfig(model="tiny-llama", block_size=8)
    result = RunResult(config, RunWorkload("chat", 9, 3, 1, Load(rate=2.0)), {"type": "cpu", "name": "x86_64"},
                       ServingMetrics(lat, lat, lat, lat, 2.0, 40.0, 90.0, 1.5, 0.75, 8, 1, 4.0),
                       KvSummary(24, 8, 20, 5, 0.5, 2), SLO(ttft_p99_ms=500), False, False, "too long")
    summary = {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 15.0, "p99_ci95": [14.0, 16.0]}
    expected = {
        "config": dataclasses.asdict(config),
        "workload": {"name": "chat", "num_requests": 9, "seed": 3, "warmup_requests": 1,
                     "load": {"offline": False, "rate": 2.0, "concurrency": None, "trace": False, "burst": 1,
                              "max_concurrency": None, "speedup": 1.0,
                              "burstiness": 1.0},
                     "load_description": "Poisson 2 req/s", "clipped_to": None},
        "device": {"type": "cpu", "name": "x86_64"},
        "metrics": {"ttft_ms": summary, "tpot_ms": summary, "itl_ms": summary, "e2e_ms": summary,
                    "request_throughput": 2.0, "output_throughput_tok_s": 40.0, "total_throughput_tok_s": 90.0,
                    "goodput_req_s": 1.5, "attainment": 0.75, "completed": 8, "failed": 1, "duration_s": 4.0,
                    "total_input_tokens": 0, "total_output_tokens": 0},
        "kv": {"num_blocks": 24, "block_size": 8, "peak_used_blocks": 20, "peak_running_seqs": 5, "efficiency": 0.5,
               "preemptions": 2},
        "slo": {"ttft_p99_ms": 500, "itl_p99_ms": None, "tpot_p99_ms": None, "e2e_p99_ms": None},
        "definitions": DEFINITIONS,
        "simulated": False,
        "cut": False,
        "first_rejection": "too long",
    }
    assert json.dumps(result.to_json()) == json.dumps(expected)


def test_offline_result_has_the_schema_and_counts_every_token():
    p = plan()
    result = run_bench(engine(), p, Load(offline=True)).to_json()
    m = result["metrics"]
    assert m["completed"] == 16 and m["failed"] == 0
    assert m["output_throughput_tok_s"] * m["duration_s"] == pytest.approx(sum(r.output_len for r in p.requests))
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(result["metrics"][key]) == {"mean", "p50", "p90", "p99", "p99_ci95"}
    assert set(result["kv"]) == {"num_blocks", "block_size", "peak_used_blocks", "peak_running_seqs", "efficiency",
                                 "preemptions"}
    assert 0 < result["kv"]["efficiency"] <= 1 and result["config"]["block_size"] == 8


def test_poisson_arrivals_are_seeded_and_bursty_when_asked():
    reqs = WORKLOAD.requests(0, 512)
    a = arrival_times(Load(rate=4.0), reqs, seed=1)
    assert a == arrival_times(Load(rate=4.0), reqs, seed=1) and a == sorted(a)
    assert 1.0 < a[-1] / len(a) * 4.0 < 4 * 1.0 + 2  # mean gap near 1/rate
    bursts = arrival_times(Load(rate=4.0, burst=4), reqs, seed=1)
    assert len(set(bursts)) == 4


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_arrivals_keep_the_rate_and_spread_as_their_burstiness_says(burstiness):
    """vLLM's --burstiness: gaps gamma(shape b, mean 1/rate), so their coefficient of variation is
    1/sqrt(b); b = 1 is Poisson, drawn as before (the same seed gives the same times as ever)."""
    reqs = [WorkloadRequest((1,), 1)] * 4000
    times = arrival_times(Load(rate=8.0, burstiness=burstiness), reqs, seed=5)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    assert mean == pytest.approx(1 / 8, rel=0.1) and cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.15)
    if burstiness == 1.0:
        rng = random.Random(5 + 7919)
        assert gaps[:50] == pytest.approx([rng.expovariate(8.0) for _ in range(50)])
    with pytest.raises(ValueError, match="--burstiness shapes the gaps between arrivals at a rate"):
        Load(concurrency=4, burstiness=burstiness + 1)


def test_an_infinite_burstiness_spaces_arrivals_evenly():
    times = arrival_times(Load(rate=4.0, burstiness=math.inf), [WorkloadRequest((1,), 1)] * 5, seed=0)
    assert times == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25])
    assert Load(rate=4.0, burstiness=math.inf).describe() == "evenly spaced 4 req/s"


def test_a_trace_replays_its_times_at_the_speed_asked():
    reqs = [dataclasses.replace(r, arrival_s=0.5 * i) for i, r in enumerate(WORKLOAD.requests(0, 512))]
    assert arrival_times(Load(trace=True), reqs, seed=1) == [0.5 * i for i in range(len(reqs))]
    assert arrival_times(Load(trace=True, speedup=4), reqs, seed=1) == [0.125 * i for i in range(len(reqs))]
    assert Load(trace=True, speedup=0.5).describe() == "trace arrival times at 0.5x speed"
    with pytest.raises(ValueError, match="--trace-speedup must be a number > 0, got 0"):
        Load(trace=True, speedup=0)
    with pytest.raises(ValueError, match="with --rate, --concurrency or --offline the trace's times are not used"):
        Load(rate=2.0, speedup=2)


def test_closed_loop_never_exceeds_its_users():
    result = run_bench(engine(), plan(), Load(concurrency=3))
    assert result.kv.peak_running_seqs <= 3 and result.metrics.completed == 16


def test_a_capped_open_loop_keeps_its_cap_and_counts_a_waiting_request_from_its_send():
    """16 requests due at once (1000 req/s) under a cap of 1 run one after another: were TTFT
    counted from the schedule, the last would wait for the 15 before it."""
    result = run_bench(engine(), plan(), Load(rate=1000.0, max_concurrency=1))
    m = result.metrics
    assert result.kv.peak_running_seqs == 1 and m.completed == 16
    assert m.ttft_ms.p99 < 0.25 * m.duration_s * 1000, (m.ttft_ms, m.duration_s)
    free = run_bench(engine(), plan(), Load(rate=1000.0))
    assert free.kv.peak_running_seqs > 1 and free.metrics.ttft_ms.p99 > m.ttft_ms.p99


def test_warmup_requests_are_run_but_not_measured():
    result = run_bench(engine(), plan(warmup=4), Load(offline=True))
    assert result.metrics.completed == 12


def test_paged_admission_holds_more_sequences_than_contiguous_on_the_same_pool():
    paged = run_bench(engine(kv_policy="paged"), plan(), Load(offline=True))
    contiguous = run_bench(engine(kv_policy="contiguous"), plan(), Load(offline=True))
    # 24 blocks of 8: contiguous reserves 64 tokens (8 blocks) per sequence, so at most 3 run at once.
    assert contiguous.kv.peak_running_seqs <= 3
    assert paged.kv.peak_running_seqs > contiguous.kv.peak_running_seqs
    assert paged.kv.efficiency > contiguous.kv.efficiency


def test_progress_counts_the_measured_requests_as_they_end():
    import io

    from rich.console import Console

    from tunekv.cli.bench_output import RunProgress

    seen: list[tuple[int, int]] = []
    result = run_bench(engine(), plan(n=16, warmup=4), Load(concurrency=4), progress=lambda e, t: seen.append((e, t)))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12) == (result.metrics.completed, 12)
    assert [e for e, _ in seen] == sorted(e for e, _ in seen), "it only counts up"
    with RunProgress(Console(file=io.StringIO())) as bars:
        assert bars.of("x") is None, "no bar when the output is not a terminal"
    terminal = Console(file=io.StringIO(), force_terminal=True)
    with RunProgress(terminal) as bars:
        progress = bars.of("rate 4")
        assert progress is not None
        progress(3, 12)
        assert bars.bar is not None and bars.bar.tasks[0].completed == 3 and bars.bar.tasks[0].total == 12


def test_find_capacity_doubles_then_bisects():
    seen = []

    def measure(users):
        seen.append(users)
        ttft = 100.0 * users  # 5 users -> 500 ms: the last load within a 550 ms target
        return fake_result(completed=10, failed=0, ttft_p99=ttft, output_throughput_tok_s=users)

    cap = find_capacity(measure, SLO(ttft_p99_ms=550), start=1, unit="users", max_load=64)
    assert cap.load == 5 and seen[:4] == [1, 2, 4, 8]
    assert "5 users at once" in cap.describe()


def test_capacity_probes_say_what_broke_and_servers_tables_have_no_kv_columns():
    from rich.console import Console

    from tunekv.cli.bench_output import capacity_json, print_capacity, probe_verdict
    from tunekv.render.results import print_comparison, print_sweep

    slo = SLO(ttft_p99_ms=550)

    def measure(users):
        failed = 1 if users == 64 else 0
        return fake_result(completed=10, failed=failed, ttft_p99=100.0 * users, output_throughput_tok_s=users)

    cap = find_capacity(measure, slo, start=1, unit="users", max_load=64)
    console = Console(record=True, width=200)
    print_capacity(cap, slo, console)
    text = console.export_text()
    assert "  1 user: within SLO (TTFT p99 100 ms)\n" in text and "  2 users: within SLO (TTFT p99 200 ms)" in text
    assert "  8 users: over SLO: TTFT p99 800 ms > 550\n" in text
    assert "capacity under SLO (ttft_p99<=550ms): 5 users at once" in text
    probe = capacity_json(cap, slo)["probe_runs"][3]
    assert (probe["load"], probe["within_slo"], probe["ttft_p99_ms"], probe["completed"]) == (8, False, 800.0, 10)
    assert probe_verdict(measure(64), slo) == "over SLO: 1 request failed"

    # An endpoint's run has no KV figures: its tables leave those columns out; with an SLO they
    # show goodput and whether the run held it.
    served = dataclasses.replace(fake_result(10, 0, 300.0, 50.0), kv=None, slo=slo)
    over = dataclasses.replace(served, metrics=dataclasses.replace(served.metrics, ttft_ms=latency(900.0)))
    console = Console(record=True, width=200)
    print_comparison([("http://a/v1", served), ("http://b/v1", over)], console, "two servers")
    print_sweep("rate", [1.0], {"http://a/v1": [served]}, console)
    text = console.export_text()
    assert "KV eff." not in text and "peak seqs" not in text and "preempt." not in text
    assert "held" in text and "missed" in text and "goodput req/s" in text
    console = Console(record=True, width=200)
    print_sweep("users", [1.0], {"engine": [measure(1)]}, console)
    assert "throughput and p99 latency by users · SIMULATED on NVIDIA H100 80GB HBM3" in console.export_text()


def test_find_capacity_halves_when_the_start_is_over_the_slo():
    seen = []

    def measure(users):
        seen.append(users)
        return fake_result(completed=10, failed=0, ttft_p99=100.0 * users, output_throughput_tok_s=users)

    cap = find_capacity(measure, SLO(ttft_p99_ms=550), start=32, unit="users", max_load=64)
    assert cap.load == 5 and seen[:4] == [32, 16, 8, 4]
    never = find_capacity(lambda u: measure(u + 100), SLO(ttft_p99_ms=550), start=8, unit="users", max_load=64)
    assert never.load is None and "lowest load (1 user)" in never.describe()


def test_a_traces_pace_halves_below_1x_bisects_between_fractions_and_names_the_rate():
    from rich.console import Console

    from tunekv.cli.bench_output import capacity_json, print_capacity

    seen = []

    def measure(speed):
        seen.append(speed)   # the trace sped up 0.3x is the most that keeps TTFT p99 within 550 ms
        return fake_result(completed=10, failed=0, ttft_p99=500.0 * speed / 0.3, output_throughput_tok_s=speed)

    slo = SLO(ttft_p99_ms=550)
    cap = find_capacity(measure, slo, start=1, unit="x", max_load=1024, min_load=1 / 64, rate_at_1x=4.0)
    assert seen[:3] == [1, 0.5, 0.25] and cap.probes[2] == (0.25, True)
    assert 0.25 < cap.load <= 0.33 and cap.load not in (0.25, 0.5), "bisected between 0.25x and 0.5x"
    assert cap.describe().startswith(f"{cap.load:.3g}x the trace's pace ({cap.load * 4:.3g} req/s on average)")
    console = Console(record=True, width=200)
    print_capacity(cap, slo, console)
    assert "  0.5x: over SLO: TTFT p99 833 ms > 550\n" in console.export_text()
    assert capacity_json(cap, slo)["trace_req_s_at_1x"] == 4.0 and capacity_json(cap, slo)["unit"] == "x"
    floor = find_capacity(lambda x: measure(x + 1), slo, start=1, unit="x", max_load=1024, min_load=1 / 64,
                          rate_at_1x=4.0)
    assert [p[0] for p in floor.probes] == [1 / 2 ** k for k in range(7)]
    assert floor.load is None and "lowest load (0.0156x)" in floor.describe()


def test_repeated_runs_start_from_a_cold_prefix_cache():
    e = engine(num_kv_blocks=64)
    shared = BenchPlan(WORKLOAD, [r for r in WORKLOAD.requests(0, 512, num_requests=6)], 0, 0, None)
    run_bench(e, shared, Load(offline=True))
    hits = e.kv_stats().prefix_hit_tokens
    run_bench(e, shared, Load(offline=True))
    assert e.kv_stats().prefix_hit_tokens == hits, "the second run hit blocks the first one left behind"


def test_offline_warmup_does_not_dilute_throughput():
    p = plan(warmup=4)
    result = run_bench(engine(), p, Load(offline=True))
    m = result.metrics
    # Every token counted falls inside the window, so throughput x duration never exceeds the
    # measured requests' output tokens.
    measured = range(4, 16)  # offline: all arrive at t=0, so the first four in order are the warm-up
    assert m.output_throughput_tok_s * m.duration_s <= sum(p.requests[i].output_len for i in measured) + 1e-6
    assert m.completed == 12


def test_deadline_counts_what_did_not_finish_as_failed():
    import time

    result = run_bench(engine(), plan(), Load(rate=20.0), deadline=time.perf_counter() + 0.15)
    m = result.metrics
    assert m.completed + m.failed == 16 and m.failed > 0


def test_nan_rate_is_rejected():
    with pytest.raises(ValueError, match="--rate must be > 0"):
        Load(rate=float("nan"))


def test_compare_pins_the_pool_in_tokens():
    from tunekv.measure.variants import variants

    base = EngineConfig(model="tiny-llama", block_size=8, num_kv_blocks=32)
    names = [n for n, _ in variants(base, "block_size=8,16")]
    assert names == ["block_size=8", "block_size=16"]
    for same in ("kv_policy=paged,paged", "block_size=16,016", "enable_prefix_caching=true,on"):
        with pytest.raises(ValueError, match="must differ"):
            variants(base, same)
    # a field whose default is None (sized from memory) still takes integers
    pools = [c.kv_cache_memory_bytes for _, c in variants(base, "kv_cache_memory_bytes=100000000,200000000")]
    assert pools == [100_000_000, 200_000_000]


def test_the_warm_up_count_does_not_move_the_measured_window():
    """The same chat requests, 8 users, with 0, 4 and 10 warm-up requests give the same throughput
    within 8% (on the simulator's virtual clock: no noise), and the window covers every measured
    request's E2E. Before, the window began when the slowest warm-up request finished: 10 warm-ups
    read 10% low here, and on a real CPU run one long warm-up request halved the throughput."""
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.workloads import load_workload

    chat = load_workload("chat")
    sim = simulated_engine(EngineConfig(model="qwen3-0.6b", max_model_len=4096, max_num_seqs=64), "h100-80gb")
    requests = chat.requests(0, sim.model_config.hf_config.vocab_size, None, 40)
    runs = {warmup: run_bench(sim, BenchPlan(chat, requests, 0, warmup, None), Load(concurrency=8))
            for warmup in (0, 4, 10)}
    throughputs = [r.metrics.output_throughput_tok_s for r in runs.values()]
    assert max(throughputs) / min(throughputs) < 1.08, throughputs
    for warmup, r in runs.items():
        assert r.metrics.completed == 40 - warmup and not r.metrics.failed
        # fewer than 100 requests: the nearest-rank p99 is the slowest one
        assert r.metrics.duration_s * 1e3 >= r.metrics.e2e_ms.p99
