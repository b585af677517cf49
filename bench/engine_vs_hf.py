"""tunekv's engine vs transformers ``generate`` in static batches, same weights and requests.

Mixed-length workload (default: 48 requests, prompts 16-128, outputs 8-128 tokens, seed 0) on a
random-weight small Llama (the smollm2-135m preset architecture) in float32 on the CPU. Both
sides run one after the other in one process with the same thread count; the figure of merit is
useful output tokens/s (tokens a request asked for; padding and tokens past a request's target
that static batching computes anyway do not count).

Run: python bench/engine_vs_hf.py [--threads 2] [--batch 16]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_result  # noqa: E402
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from tunekv.engine.presets import preset_dir  # noqa: E402


def workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, vocab) for _ in range(rng.randint(16, 128))], rng.randint(8, 128)) for _ in range(n)]


def run_hf(model, requests, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        chunk = requests[i:i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, (prompt, _) in enumerate(chunk):
            ids[j, width - len(prompt):] = torch.tensor(prompt)
            mask[j, width - len(prompt):] = 1
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                           max_new_tokens=max(n for _, n in chunk))
    return time.perf_counter() - start


def run_engine(path: Path, requests, batch: int) -> tuple[float, int]:
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", max_model_len=512,
                                    max_num_seqs=batch, max_num_batched_tokens=2048))
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for _, n in requests]
    start = time.perf_counter()
    outs = engine.generate([p for p, _ in requests], params)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.output_token_ids) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model preset (random weights)")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="HF static batch size = engine max_num_seqs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = yaml.safe_load((preset_dir() / "models" / f"{args.model}.yaml").read_text())
    config = transformers.AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    requests = workload(args.requests, args.seed, config.vocab_size)
    useful = sum(n for _, n in requests)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        run_hf(model, requests[:2], args.batch)  # warm-up
        hf_s = run_hf(model, requests, args.batch)
        eng_s, produced = run_engine(Path(tmp), requests, args.batch)
    assert produced == useful, f"engine produced {produced} tokens, expected {useful}"

    rows = {"transformers generate (static)": hf_s, "tunekv engine (continuous)": eng_s}
    print(f"{args.requests} requests, prompts 16-128, outputs 8-128 ({useful} useful output tokens), "
          f"{args.model} random fp32, batch {args.batch}, {args.threads} threads")
    print(f"{'':34}{'wall s':>10}{'useful tok/s':>15}")
    for name, seconds in rows.items():
        print(f"{name:34}{seconds:10.2f}{useful / seconds:15.1f}")
    speedup = hf_s / eng_s
    print(f"speedup: {speedup:.2f}x (target >= 2x)")
    path = write_result(f"engine_vs_hf-cpu-{args.model}", {
        "machine": machine(), "args": vars(args), "useful_output_tokens": useful,
        "wall_s": {"transformers_generate_static": hf_s, "tunekv_engine": eng_s},
        "useful_tok_s": {"transformers_generate_static": useful / hf_s, "tunekv_engine": useful / eng_s},
        "speedup": speedup,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
