"""`tunekv bench`: argument handling around tunekv.measure.run (kept apart so `tunekv --help` stays fast)."""

from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console

from tunekv.cli.bench_output import bench_plan, warn_failures, write_result
from tunekv.defaults import default_model
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.model_config import load_model_config
from tunekv.errors import BadInput
from tunekv.fileio import check_output_path, read_config
from tunekv.measure.capacity import CapacityUnit, find_capacity
from tunekv.measure.run import BenchPlan, RunResult, device_info, run_bench
from tunekv.measure.variants import load_at, parse_levels, variants
from tunekv.predict.calibrate import save_samples, step_recorder
from tunekv.predict.simulate import simulated_engine
from tunekv.render.results import cli_console, print_comparison, print_result, print_sweep
from tunekv.workload.loadgen import Load, check_arrival_span
from tunekv.workload.metrics import parse_slo
from tunekv.workload.tokenizer import load_tokenizer
from tunekv.workload.workloads import MAX_REQUESTS, load_workload


def engine_config(args: argparse.Namespace, max_total_len: int) -> EngineConfig:
    """--config, then flags, then defaults; max_model_len defaults to what the requests need."""
    data = base_settings(args)
    if "max_model_len" not in data:
        data["max_model_len"] = min(max_total_len, load_model_config(str(data["model"])).max_position_embeddings)
    return EngineConfig.from_dict(data)


def base_settings(args: argparse.Namespace) -> dict:
    data = read_config(args.config) if args.config else {}
    if args.model:
        data["model"] = args.model
    data.setdefault("seed", args.seed)
    for f in dataclasses.fields(EngineConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in ("model", "seed"):
            data[f.name] = value
    if "model" not in data:
        import torch

        simulated_gpu = bool(getattr(args, "simulate", False) and getattr(args, "gpu", None) not in (None, "local"))
        data["model"] = default_model(simulated_gpu or torch.cuda.is_available())
    return data


POOL_FIELDS = ("num_kv_blocks", "kv_cache_memory_bytes", "gpu_memory_utilization")


def bench_command(args: argparse.Namespace) -> int:
    """Validate everything first (bad input: exit 2), then run (failures: exit 1)."""
    console = cli_console()
    if args.num_requests is not None and not 1 <= args.num_requests <= MAX_REQUESTS:
        raise BadInput(f"--num-requests must be an integer from 1 to {MAX_REQUESTS}, got {args.num_requests}")
    if args.find_capacity and not args.slo:
        raise BadInput("--find-capacity needs --slo, e.g. --slo ttft_p99=500ms,itl_p99=50ms")
    if args.find_capacity and (args.sweep or args.compare):
        raise BadInput("--find-capacity runs alone; drop --sweep and --compare")
    if args.gpu and not args.simulate:
        raise BadInput("--gpu picks the GPU to simulate: add --simulate (a real run uses this machine's device)")
    if args.find_capacity and args.offline:
        raise BadInput("--find-capacity searches over --concurrency or --rate, not --offline")
    if args.json_path is not None and not args.json_path.strip():
        raise BadInput("--json needs a file name")
    if args.json_path:
        check_output_path(args.json_path)
    fixed_load = ("--rate" if args.rate is not None else "--concurrency" if args.concurrency is not None
                  else "--offline" if args.offline else None)
    if args.sweep and fixed_load is not None:
        raise BadInput(f"--sweep sets the load of each run; leave out {fixed_load}")
    slo = parse_slo(args.slo) if args.slo is not None else None
    workload = load_workload(args.workload)
    load = load_for(args, workload)
    levels = parse_levels(args.sweep) if args.sweep else None
    count = workload.count(args.num_requests)
    if levels is None:
        check_arrival_span(load, count)
    elif levels[0] == "rate":
        for rate in levels[1]:
            check_arrival_span(Load(rate=rate), count)

    if args.endpoint:
        from tunekv.cli.bench_endpoint import endpoint_command

        return endpoint_command(args, console, workload, load, levels, slo)
    settings = base_settings(args)
    EngineConfig.from_dict(settings)  # every setting's type and value, before any work
    model_config = load_model_config(str(settings["model"]))
    limit, whose = model_config.max_position_embeddings, f"{model_config.name}'s max_position_embeddings"
    if isinstance(settings.get("max_model_len"), int) and settings["max_model_len"] < limit:
        limit, whose = settings["max_model_len"], "max_model_len"
    workload = workload.fit_to(limit)
    workload.check_fits(limit, whose, args.num_requests)  # from the trace's rows, before any token is drawn
    tokenizer = load_tokenizer(model_config.path) if workload.trace is not None else None
    requests = workload.requests(args.seed, model_config.hf_config.vocab_size, tokenizer, args.num_requests)
    workload.check_fits(limit, whose, requests=requests)  # text prompts, now tokenised
    config = engine_config(args, max(len(r.prompt_token_ids) + r.output_len for r in requests))
    configs = variants(config, args.compare) if args.compare else [("engine", config)]
    plan = bench_plan(args, workload, requests, load, levels is not None, slo, console)
    note = workload.clip_note(whose)
    if note is not None:
        console.print(f"  {note}")

    if args.find_capacity:
        return _capacity(args, configs[0][1], plan, console)
    results: dict[str, list[RunResult]] = {}   # per variant: one run, or one per sweep level
    pool_tokens: int | None = None
    compared = args.compare.partition("=")[0] if args.compare else ""
    for name, cfg in configs:
        if pool_tokens is not None and compared not in POOL_FIELDS:
            # Same KV pool for every variant: the first variant's pool, in tokens.
            cfg = dataclasses.replace(cfg, num_kv_blocks=max(1, pool_tokens // cfg.block_size))
        engine = _engine(cfg, console, args)
        if pool_tokens is None:
            pool_tokens = engine.num_kv_blocks * engine.config.block_size
        samples = step_recorder(engine)
        try:
            if levels is not None:
                kind, values = levels
                results[name] = [run_bench(engine, plan, load_at(kind, v)) for v in values]
            else:
                results[name] = [run_bench(engine, plan, load)]
            _record(engine, samples, console)
        finally:
            engine.shutdown()
            del engine
            _free_device_memory()
    if levels is not None:
        kind, values = levels
        print_sweep(kind, values, results, console)
        sweep = {name: [r.to_json() for r in runs] for name, runs in results.items()}
        write_result(args, {"sweep": {"kind": kind, "levels": values, "results": sweep}}, console)
    elif len(results) == 1:
        [result] = results["engine"]
        print_result(result, console)
        warn_failures(result, console)
        write_result(args, result.to_json(), console)
    else:
        pool = f", same KV pool ({pool_tokens} tokens)" if compared not in POOL_FIELDS else ""
        print_comparison([(name, runs[0]) for name, runs in results.items()], console,
                         f"{args.compare}: same workload{pool}")
        write_result(args, {"compare": args.compare,
                            "results": {name: runs[0].to_json() for name, runs in results.items()}}, console)
    return 0


def _capacity(args: argparse.Namespace, config: EngineConfig, plan: BenchPlan, console: Console) -> int:
    assert plan.slo is not None
    slo = plan.slo
    unit: CapacityUnit = "req/s" if args.rate is not None else "users"
    start = args.rate if args.rate is not None else float(args.concurrency or 1)
    engine = _engine(config, console, args)
    samples = step_recorder(engine)
    kind = "rate" if unit == "req/s" else "concurrency"
    max_load = 1000.0 if unit == "req/s" else float(len(plan.requests))
    try:
        cap = find_capacity(lambda level: run_bench(engine, plan, load_at(kind, level)), slo, start, unit,
                            max_load)
        _record(engine, samples, console)
    finally:
        engine.shutdown()
    for level, ok in cap.probes:
        console.print(f"  {level:g} {unit}: {'within' if ok else 'over'} SLO ({slo.describe()})")
    console.print(f"[bold]capacity under SLO[/bold]: {cap.describe()}")
    if cap.result is not None:
        print_result(cap.result, console)
    write_result(args, {"capacity": {"unit": cap.unit, "load": cap.load, "at_least": cap.capped,
                                     "probes": cap.probes, "slo": slo.describe()},
                        "result": None if cap.result is None else cap.result.to_json()}, console)
    return 0


def _engine(config: EngineConfig, console: Console, args: argparse.Namespace) -> LLMEngine:
    """The real engine, or with --simulate the simulated one."""
    if args.simulate:
        engine = simulated_engine(config, args.gpu)
        device = device_info(engine)
        cost = device["cost_model"]
        console.print(f"  simulated engine: {engine.model_config.name} on {device['name']} ({cost['source']} cost "
                      f"model{': ' + cost['note'] if cost['note'] else ''}), {engine.num_kv_blocks} KV blocks of "
                      f"{engine.config.block_size}, max_model_len {engine.config.max_model_len}")
        return engine
    engine = LLMEngine(config)
    weights = "local weights" if engine.model_config.path else "random weights"
    device = engine.runner.device_description()
    console.print(f"  engine: {engine.model_config.name} ({weights}) on {device['type']} ({device['name']}), "
                  f"{engine.num_kv_blocks} KV blocks of {engine.config.block_size}, max_model_len "
                  f"{engine.config.max_model_len}")
    return engine


def _record(engine: LLMEngine, samples: list, console: Console) -> None:
    """Real runs refine this device's step-cost calibration with the steps they measured; a
    calibration that cannot be written is a warning, never a lost result."""
    try:
        calibration = save_samples(engine, samples)
    except (OSError, BadInput) as exc:
        console.print(f"[yellow]step-cost calibration not updated: {exc}[/yellow]")
        return
    if calibration is not None and calibration.quality is not None:
        q = calibration.quality
        console.print(f"  step-cost calibration of {engine.model_config.name} on {calibration.device} refitted: "
                      f"{q.samples} steps, median step error {q.median_rel_err:.0%}")


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_for(args: argparse.Namespace, workload) -> Load:
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
