"""A quick, real measurement of the engine on this machine: ``python -m tunekv.engine.bench``.

Runs a mixed-length batch of requests through ``LLMEngine`` with random weights of a preset
model (GPU: qwen3-0.6b in bf16; CPU: smollm2-135m in fp32) and prints throughput and latency.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError
from tunekv.engine.llm_engine import LLMEngine
from tunekv.engine.sampling_params import SamplingParams
from tunekv.engine.stats import percentile


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m tunekv.engine.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b" if cuda else "smollm2-135m",
                        help="preset name or local HF model directory")
    parser.add_argument("--requests", type=int, default=256 if cuda else 32)
    parser.add_argument("--prompt-len", default="100-1024" if cuda else "32-128", help="uniform range lo-hi")
    parser.add_argument("--output-len", default="100-1024" if cuda else "16-64", help="uniform range lo-hi")
    parser.add_argument("--max-num-seqs", type=int, default=256 if cuda else 16)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        p_lo, p_hi = (int(x) for x in args.prompt_len.split("-"))
        o_lo, o_hi = (int(x) for x in args.output_len.split("-"))
        if not 1 <= p_lo <= p_hi or not 1 <= o_lo <= o_hi:
            raise ValueError
    except ValueError:
        print("error: --prompt-len and --output-len take a range lo-hi of positive integers, e.g. 32-128",
              file=sys.stderr)
        return 2
    try:
        engine = LLMEngine(EngineConfig(model=args.model, block_size=args.block_size,
                                        max_model_len=p_hi + o_hi, max_num_seqs=args.max_num_seqs,
                                        max_num_batched_tokens=max(8192 if cuda else 2048, args.max_num_seqs),
                                        seed=args.seed))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    vocab = engine.model_config.hf_config.vocab_size
    requests = [([rng.randrange(vocab) for _ in range(rng.randint(p_lo, p_hi))], rng.randint(o_lo, o_hi))
                for _ in range(args.requests)]
    weights = "local weights" if engine.model_config.path else "random weights"
    device = engine.runner.device_description()
    print(f"tunekv engine: {engine.model_config.name} ({weights}), {device['type']}, "
          f"{device['dtype']}, {engine.num_kv_blocks} KV blocks of "
          f"{args.block_size}; {args.requests} requests, prompts {args.prompt_len}, outputs {args.output_len}")
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))  # warm-up
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for _, n in requests]
    start = time.perf_counter()
    outs = engine.generate([p for p, _ in requests], params)
    elapsed = time.perf_counter() - start

    out_tokens = sum(len(o.output_token_ids) for o in outs)
    in_tokens = sum(len(p) for p, _ in requests)
    ttft, tpot = [], []
    for o in outs:
        first, finished = o.metrics.first_token_time, o.metrics.finished_time
        assert first is not None and finished is not None, "generate returns finished requests"
        ttft.append((first - o.metrics.arrival_time) * 1e3)
        if len(o.output_token_ids) > 1:
            tpot.append((finished - first) * 1e3 / (len(o.output_token_ids) - 1))
    print(f"  duration            {elapsed:10.2f} s")
    print(f"  output throughput   {out_tokens / elapsed:10.1f} tok/s")
    print(f"  total throughput    {(in_tokens + out_tokens) / elapsed:10.1f} tok/s")
    print(f"  TTFT p50 / p99      {percentile(ttft, 50):10.1f} / {percentile(ttft, 99):.1f} ms "
          "(all requests arrive at t=0)")
    print(f"  TPOT p50 / p99      {percentile(tpot, 50):10.1f} / {percentile(tpot, 99):.1f} ms")
    print(f"  peak running seqs   {engine.peak_running_seqs:10d}")
    print(f"  peak KV blocks used {engine.peak_used_blocks:10d} of {engine.num_kv_blocks}")
    print(f"  preemptions         {engine.scheduler.num_preemptions:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
