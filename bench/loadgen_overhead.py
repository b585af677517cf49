"""What the load generator and metrics add to a run: the engine alone (``generate``) against the
same requests under ``tunekv bench --offline``'s driver, alternating, same engine. Target <= 2%.

Run: python bench/loadgen_overhead.py [--model tiny-llama] [--requests 64] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_result  # noqa: E402
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from tunekv.measure.run import BenchPlan, run_bench  # noqa: E402
from tunekv.workload.loadgen import Load  # noqa: E402
from tunekv.workload.workloads import LengthDist, Workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    workload = Workload("overhead", num_requests=args.requests, prompt_len=LengthDist("uniform", min=16, max=256),
                        output_len=LengthDist("uniform", min=16, max=256))
    engine = LLMEngine(EngineConfig(model=args.model, max_model_len=512, max_num_seqs=64, enable_prefix_caching=False))
    requests = workload.requests(0, engine.model_config.hf_config.vocab_size)
    plan = BenchPlan(workload, requests, 0, 0, None)
    prompts = [list(r.prompt_token_ids) for r in requests]
    params = [SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True) for r in requests]
    engine.generate(prompts[:2], params[:2])  # warm-up
    alone, driven = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        engine.generate(prompts, params)
        alone.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_bench(engine, plan, Load(offline=True))
        driven.append(time.perf_counter() - t)
    a, d = statistics.median(alone), statistics.median(driven)
    # Paired: each round's driven run against the engine-alone run just before it, so slow phases
    # of a noisy machine hit both sides of a pair.
    overhead = statistics.median(dr / al for al, dr in zip(alone, driven)) - 1
    device = engine.runner.device_description()["type"]
    print(f"{args.requests} requests, {args.model}, {device}, {args.rounds} alternating rounds (median s)")
    print(f"  engine.generate alone        {a:8.3f} s")
    print(f"  under the bench driver       {d:8.3f} s")
    print(f"  overhead (median of pairs)   {overhead:8.2%}  (target <= 2%)")
    path = write_result("loadgen_overhead-" + device, {
        "machine": machine(), "args": vars(args), "alone_s": alone, "driven_s": driven, "overhead": overhead})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
