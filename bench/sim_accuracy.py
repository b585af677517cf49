"""Simulated vs measured: does the calibrated simulator predict the real engine?

Calibrates the step-cost model for a model on this device (into a fresh TUNEKV_HOME), then runs
each config x workload twice, for real and simulated, on the same requests and load, and
reports the relative error of output throughput and of p50/p99 TTFT and ITL. Also times the
simulation of 1,000 chat requests. Targets (issue 5): throughput within 10%, latencies within
20%, 1,000 chat requests simulated in <= 2 s.

    python bench/sim_accuracy.py                 # tiny-llama on the CPU, ~6 minutes
    python bench/sim_accuracy.py --model qwen3-0.6b --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_result  # noqa: E402

if TYPE_CHECKING:
    from tunekv.workload.metrics import ServingMetrics

CONFIGS = {
    "default": {},
    "block32-seqs16": {"block_size": 32, "max_num_seqs": 16},
    "budget256": {"max_num_batched_tokens": 256},
    "contiguous": {"kv_policy": "contiguous"},
    "static": {"batching": "static"},
    "no-chunk-no-cache": {"enable_chunked_prefill": False, "enable_prefix_caching": False},
}
METRICS: dict[str, Callable[[ServingMetrics], float]] = {
    "output_throughput_tok_s": lambda m: m.output_throughput_tok_s,
    "ttft_p50_ms": lambda m: m.ttft_ms.p50,
    "ttft_p99_ms": lambda m: m.ttft_ms.p99,
    "itl_p50_ms": lambda m: m.itl_ms.p50,
    "itl_p99_ms": lambda m: m.itl_ms.p99,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: steadier timings)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--calibration-budget", type=float, default=90.0)
    parser.add_argument("--num-kv-blocks", type=int, default=1024, help="pool (small enough that contiguous queues)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="2 configs, 40 requests: checks the script")
    parser.add_argument("--no-repeat", action="store_true", help="skip the second real run (the noise floor)")
    args = parser.parse_args()
    os.environ.setdefault("TUNEKV_HOME", tempfile.mkdtemp(prefix="tunekv-sim-accuracy-"))
    torch.set_num_threads(args.threads)

    from tunekv.engine import EngineConfig
    from tunekv.predict.calibrate import calibrate
    from tunekv.workload.loadgen import Load
    from tunekv.workload.workloads import load_workload

    base = dict(model=args.model, device=args.device, max_model_len=args.max_model_len, max_num_seqs=64,
                max_num_batched_tokens=2048, num_kv_blocks=args.num_kv_blocks)
    configs = dict(list(CONFIGS.items())[:2]) if args.quick else CONFIGS
    n = 40 if args.quick else args.requests
    on_gpu = args.device == "cuda"
    loads = {"chat": Load(rate=16.0 if on_gpu else 6.0), "nano-vllm": Load(concurrency=64 if on_gpu else 12)}

    t0 = time.perf_counter()
    cal = calibrate(EngineConfig(**{**base, "num_kv_blocks": None}),
                    [load_workload("chat"), load_workload("nano-vllm")], args.calibration_budget)
    q = cal.calibration.quality
    print(f"calibrated on {cal.samples} steps in {time.perf_counter() - t0:.0f} s: median step error "
          f"{q.median_rel_err:.1%}, p90 {q.p90_rel_err:.1%}", flush=True)

    rows = compare(base, configs, loads, n, args.max_model_len, progress=True, repeat_real=not args.no_repeat)
    speed = sim_speed(args.model, base)
    summary, medians = error_summary(rows)
    noise = noise_summary(rows)
    print("\nworst |error| per metric: " + ", ".join(f"{k} {v:.1%}" for k, v in summary.items()))
    print("median |error| per metric: " + ", ".join(f"{k} {v:.1%}" for k, v in medians.items()))
    if noise:
        print("median |real - same real again| per metric: " + ", ".join(f"{k} {v:.1%}" for k, v in noise.items()))
    for name, value in speed.items():
        print(f"simulating {value['requests']} chat requests, {name}: {value['median_s']:.2f} s (median of "
              f"{len(value['runs_s'])}; {value['steps']} steps)")
    path = write_result(f"sim-accuracy-{args.model}-{args.device}", {
        "machine": machine(), "model": args.model, "device": args.device, "threads": args.threads,
        "calibration": {"steps": cal.samples, **cal.calibration.describe()}, "rows": rows,
        "worst_abs_error": summary, "median_abs_error": medians, "median_real_vs_real": noise,
        "sim_speed_1000_chat": speed})
    print(f"wrote {path}")
    return 0


def compare(base: dict, configs: dict, loads: dict, n: int, max_model_len: int, progress: bool = False,
            repeat_real: bool = False) -> list[dict]:
    """Each config x workload run for real and simulated on the same requests and load. With
    ``repeat_real`` each real run is done twice and the rows also carry the real-vs-real
    difference: the noise floor the simulator's error should be read against."""
    from tunekv.engine import EngineConfig, LLMEngine
    from tunekv.measure.run import BenchPlan, run_bench
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.workloads import load_workload

    rows = []
    for cfg_name, overrides in configs.items():
        config = EngineConfig(**{**base, **overrides})
        engine = LLMEngine(config)
        vocab = engine.model_config.hf_config.vocab_size
        # The simulation gets the real engine's pool, block for block.
        sim_engine = simulated_engine(dataclasses.replace(config, num_kv_blocks=engine.num_kv_blocks))
        for wl_name, load in loads.items():
            workload = load_workload(wl_name)
            requests = [r for r in workload.requests(0, vocab, None, n)
                        if len(r.prompt_token_ids) + r.output_len <= max_model_len]
            plan = BenchPlan(workload, requests, 0, len(requests) // 10, None)
            real = run_bench(engine, plan, load)
            again = run_bench(engine, plan, load) if repeat_real else None
            t = time.perf_counter()
            sim = run_bench(sim_engine, plan, load)
            row = {"workload": wl_name, "config": cfg_name, "load": load.describe(),
                   "sim_seconds": time.perf_counter() - t}
            for name, figure in METRICS.items():
                r, s = figure(real.metrics), figure(sim.metrics)
                row[name] = {"real": r, "sim": s, "err": (s - r) / r if r else None}
                if again is not None:
                    r2 = figure(again.metrics)
                    row[name]["real_again"] = r2
                    row[name]["real_vs_real"] = (r2 - r) / r if r else None
            rows.append(row)
            if progress:
                print(_line(row), flush=True)
        del engine
    return rows


def error_summary(rows: list[dict]) -> tuple[dict, dict]:
    """(worst, median) absolute relative error per metric."""
    keys = [k for k, v in rows[0].items() if isinstance(v, dict)]
    errors = {k: [abs(r[k]["err"]) for r in rows if r[k]["err"] is not None] for k in keys}
    return ({k: max(v) for k, v in errors.items() if v}, {k: statistics.median(v) for k, v in errors.items() if v})


def noise_summary(rows: list[dict]) -> dict:
    """Median |real - real again| / real per metric (empty without repeated runs)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, dict) and "real_vs_real" in v]
    return {k: statistics.median(abs(r[k]["real_vs_real"]) for r in rows if r[k]["real_vs_real"] is not None)
            for k in keys}


def _line(row: dict) -> str:
    parts = [f"{row['workload']:<10}{row['config']:<19}"]
    for key, value in row.items():
        if isinstance(value, dict):
            again = f" (again {value['real_again']:.4g})" if "real_again" in value else ""
            parts.append(f"{key.replace('output_throughput_tok_s', 'tok/s')} real {value['real']:.4g}{again} "
                         f"sim {value['sim']:.4g} ({value['err']:+.0%})")
    return "  ".join(parts)


def sim_speed(model: str, base: dict, runs: int = 3) -> dict:
    """Wall time to simulate 1,000 chat requests at the preset's rate: this device's calibrated
    model, and qwen3-0.6b on the h100-80gb preset (what a GPU search simulates)."""
    from tunekv.engine import EngineConfig
    from tunekv.measure.run import BenchPlan, run_bench
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.loadgen import Load
    from tunekv.workload.workloads import load_workload

    workload = load_workload("chat")
    out = {}
    targets = {f"{model} calibrated here": (EngineConfig(**{**base, "num_kv_blocks": 100_000, "max_num_seqs": 256}),
                                            None),
               "qwen3-0.6b on h100-80gb": (EngineConfig(model="qwen3-0.6b", max_model_len=4096), "h100-80gb")}
    for name, (config, gpu) in targets.items():
        times, steps = [], 0
        for _ in range(runs):
            engine = simulated_engine(config, gpu)
            requests = [r for r in workload.requests(0, engine.model_config.hf_config.vocab_size, None, 1000)
                        if len(r.prompt_token_ids) + r.output_len <= engine.config.max_model_len]
            t = time.perf_counter()
            run_bench(engine, BenchPlan(workload, requests, 0, 0, None), Load(rate=workload.rate or 4.0))
            times.append(time.perf_counter() - t)
            steps = engine.runner.steps
        out[name] = {"runs_s": times, "median_s": statistics.median(times), "steps": steps,
                     "requests": len(requests)}
    return out


if __name__ == "__main__":
    sys.exit(main())
