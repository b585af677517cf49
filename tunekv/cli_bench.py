"""`tunekv bench`: argument handling around tunekv.bench (kept apart so `tunekv --help` stays fast)."""

from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console

from tunekv.bench import BenchPlan, find_capacity, load_at, parse_levels, run_bench, variants
from tunekv.cli import BadInput, read_config
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.model_config import load_model_config
from tunekv.loadgen import Load
from tunekv.metrics import parse_slo
from tunekv.report import print_comparison, print_result, print_sweep, write_json
from tunekv.workloads import load_workload


def default_model() -> str:
    """qwen3-0.6b where a GPU makes it quick; tiny-llama on a CPU."""
    import torch

    return "qwen3-0.6b" if torch.cuda.is_available() else "tiny-llama"


def engine_config(args: argparse.Namespace, max_total_len: int) -> EngineConfig:
    """--config, then flags, then defaults; max_model_len defaults to what the workload needs."""
    data = read_config(args.config) if args.config else {}
    if args.model:
        data["model"] = args.model
    for f in dataclasses.fields(EngineConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "model":
            data[f.name] = value
    data.setdefault("model", default_model())
    if "max_model_len" not in data:
        data["max_model_len"] = min(max_total_len, load_model_config(str(data["model"])).max_position_embeddings)
    return EngineConfig.from_dict(data)


def bench_command(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=130)  # piped output: wide enough that tables never wrap names
    if args.num_requests is not None and args.num_requests < 1:
        raise BadInput("--num-requests must be an integer >= 1")
    if args.find_capacity and not args.slo:
        raise BadInput("--find-capacity needs --slo, e.g. --slo ttft_p99=500ms,itl_p99=50ms")
    if args.find_capacity and (args.sweep or args.compare):
        raise BadInput("--find-capacity runs alone; drop --sweep and --compare")
    slo = parse_slo(args.slo) if args.slo else None
    workload = load_workload(args.workload)
    load = _load(args, workload)
    levels = parse_levels(args.sweep) if args.sweep else None
    config = engine_config(args, workload.max_total_len)
    configs = variants(config, args.compare) if args.compare else [("", config)]

    engine = LLMEngine(configs[0][1])
    tokenizer = _tokenizer(engine) if workload.trace is not None else None
    requests = workload.requests(args.seed, engine.model_config.hf_config.vocab_size, tokenizer, args.num_requests)
    warmup = args.warmup if args.warmup is not None else (0 if load.offline else min(len(requests) // 10, 20))
    if not 0 <= warmup < len(requests):
        raise BadInput(f"--warmup must be in [0, {len(requests)}) for {len(requests)} requests")
    plan = BenchPlan(workload, requests, args.seed, warmup, slo)
    weights = "local weights" if engine.model_config.path else "random weights"
    console.print(f"[bold]tunekv bench[/bold]: {engine.model_config.name} ({weights}) on {engine.runner.device}, "
                  f"{engine.num_kv_blocks} KV blocks of {engine.config.block_size}; workload {workload.name}, "
                  f"{len(requests)} requests (seed {args.seed}, {warmup} warm-up); "
                  f"{'sweep over ' + levels[0] if levels else load.describe()}")

    if args.find_capacity:
        assert slo is not None
        unit = "req/s" if args.rate is not None else "users"
        start = args.rate if args.rate is not None else float(args.concurrency or 1)
        cap = find_capacity(lambda level: run_bench(engine, plan, load_at("rate" if unit == "req/s" else "concurrency",
                                                                           level)),
                            slo, start, unit, max_load=1000.0 if unit == "req/s" else float(len(requests)))
        for level, ok in cap.probes:
            console.print(f"  {level:g} {unit}: {'within' if ok else 'over'} SLO ({slo.describe()})")
        console.print(f"[bold]capacity under SLO[/bold]: {cap.describe()}")
        payload = {"capacity": {"unit": cap.unit, "load": cap.load, "probes": cap.probes, "slo": slo.describe()},
                   "result": cap.result}
        if cap.result:
            print_result(cap.result, console)
        _write(args, payload, console)
        return 0

    engines = [(configs[0][0], engine)]
    for name, cfg in configs[1:]:
        engines.append((name, LLMEngine(dataclasses.replace(cfg, num_kv_blocks=engine.num_kv_blocks))))
    if levels is not None:
        kind, values = levels
        rows = {name or "engine": [run_bench(e, plan, load_at(kind, v)) for v in values] for name, e in engines}
        print_sweep(kind, values, rows, console)
        _write(args, {"sweep": {"kind": kind, "levels": values, "results": rows}}, console)
        return 0
    results = [(name, run_bench(e, plan, load)) for name, e in engines]
    if len(results) == 1:
        print_result(results[0][1], console)
        _write(args, results[0][1], console)
    else:
        print_comparison(results, console, f"{args.compare}: same workload, same KV pool "
                                           f"({engine.num_kv_blocks} blocks of {engine.config.block_size})")
        _write(args, {"compare": args.compare, "results": dict(results)}, console)
    return 0


def _load(args: argparse.Namespace, workload) -> Load:
    if args.burst != 1 and args.rate is None:
        raise BadInput("--burst needs --rate")
    if args.rate is not None:
        return Load(rate=args.rate, burst=args.burst)
    if args.concurrency is not None:
        return Load(concurrency=args.concurrency)
    if args.offline or workload.offline:
        return Load(offline=True)
    if workload.trace is not None and any("arrival_s" in r for r in workload.trace):
        return Load(trace=True)
    if workload.rate is not None:
        return Load(rate=workload.rate)
    return Load(offline=True)


def _tokenizer(engine: LLMEngine):
    path = engine.model_config.path
    if path is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _write(args: argparse.Namespace, payload: dict, console: Console) -> None:
    if args.json_path:
        write_json(args.json_path, payload)
        console.print(f"wrote {args.json_path}")
