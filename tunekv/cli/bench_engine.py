"""`tunekv bench` on tunekv's engine, real or simulated (`--simulate`): the runs, sweeps,
comparisons and capacity searches. Imported once `tunekv bench` has checked its arguments, so a
bad flag is refused before torch loads."""

from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console

from tunekv.cli.bench_output import (
    RunProgress,
    bench_plan,
    capacity_json,
    print_capacity,
    search_capacity,
    warn_failures,
    write_result,
)
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.model_config import ModelConfig
from tunekv.errors import BadInput
from tunekv.measure.run import BenchPlan, RunResult, device_info, run_bench
from tunekv.measure.variants import load_at, variants
from tunekv.predict.calibrate import save_samples, step_recorder
from tunekv.predict.simulate import simulated_engine
from tunekv.render.results import print_comparison, print_result, print_sweep
from tunekv.workload.loadgen import Load
from tunekv.workload.metrics import SLO
from tunekv.workload.tokenizer import load_tokenizer
from tunekv.workload.workloads import Workload

POOL_FIELDS = ("num_kv_blocks", "kv_cache_memory_bytes", "gpu_memory_utilization")


def engine_command(args: argparse.Namespace, console: Console, settings: dict, model_config: ModelConfig,
                   workload: Workload, load: Load, levels: tuple[str, list[float]] | None, slo: SLO | None) -> int:
    """The workload against the model checked (bad input: exit 2), then the runs (failures: exit
    1). ``settings``: the config file's and flags' engine settings, checked; ``model_config``:
    the model they name."""
    limit, whose = model_config.max_position_embeddings, f"{model_config.name}'s max_position_embeddings"
    if isinstance(settings.get("max_model_len"), int) and settings["max_model_len"] < limit:
        limit, whose = settings["max_model_len"], "max_model_len"
    workload = workload.fit_to(limit)
    workload.check_fits(limit, whose, args.num_requests)  # from the trace's rows, before any token is drawn
    tokenizer = load_tokenizer(model_config.path) if workload.trace is not None else None
    seed = settings["seed"]   # --seed, else the config file's, else the default
    requests = workload.requests(seed, model_config.hf_config.vocab_size, tokenizer, args.num_requests)
    workload.check_fits(limit, whose, requests=requests)  # text prompts, now tokenised
    config = engine_config(settings, model_config, max(len(r.prompt_token_ids) + r.output_len for r in requests))
    configs = variants(config, args.compare) if args.compare else [("engine", config)]
    plan = bench_plan(args, workload, requests, seed, load, levels, slo, console)
    note = workload.clip_note(whose)
    if note is not None:
        console.print(f"  {note}")

    if args.find_capacity:
        return _capacity(args, configs[0][1], plan, load, console)
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
        label = "" if name == "engine" else f"{name} "
        try:
            with RunProgress(console) as bars:
                if levels is not None:
                    kind, values = levels
                    results[name] = [run_bench(engine, plan,
                                               load_at(kind, v, args.burst, args.max_concurrency, args.burstiness),
                                               progress=bars.of(f"{label}{kind} {v:g}")) for v in values]
                else:
                    results[name] = [run_bench(engine, plan, load, progress=bars.of(label))]
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
        if compared == "kv_policy":
            _note_roomy_pool([runs[0] for runs in results.values()], console)
        write_result(args, {"compare": args.compare,
                            "results": {name: runs[0].to_json() for name, runs in results.items()}}, console)
    return 0


def engine_config(settings: dict, model_config: ModelConfig, max_total_len: int) -> EngineConfig:
    """``settings`` (--config, then flags), then defaults; max_model_len defaults to what the
    requests need. The config file was read once, by ``base_settings``: a pipe reads only once."""
    data = dict(settings)
    if "max_model_len" not in data:
        data["max_model_len"] = min(max_total_len, model_config.max_position_embeddings)
    return EngineConfig.from_dict(data)


def _capacity(args: argparse.Namespace, config: EngineConfig, plan: BenchPlan, load: Load, console: Console) -> int:
    assert plan.slo is not None
    slo = plan.slo
    engine = _engine(config, console, args)
    samples = step_recorder(engine)
    try:
        with RunProgress(console) as bars:
            cap = search_capacity(args, load, plan,
                                  lambda at, label: run_bench(engine, plan, at, progress=bars.of(f"probe {label}")))
        _record(engine, samples, console)
    finally:
        engine.shutdown()
    print_capacity(cap, slo, console)
    if cap.result is not None:
        print_result(cap.result, console)
    write_result(args, {"capacity": capacity_json(cap, slo),
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
        warning = f" [yellow]({q.warning})[/yellow]" if q.warning else ""
        console.print(f"  step-cost calibration of {engine.model_config.name} on {calibration.device} updated with "
                      f"this run's steps: {q.samples} steps, median step error {q.median_rel_err:.0%}{warning}")


def _note_roomy_pool(runs: list[RunResult], console: Console) -> None:
    """Paged and contiguous KV differ in how many sequences a pool holds at once; a pool that held
    the load's every sequence either way (the CPU's default is 2,097,152 tokens) shows none of it."""
    kvs = [r.kv for r in runs]
    if all(kv is not None and kv.preemptions == 0 for kv in kvs) and len({kv.peak_running_seqs for kv in kvs
                                                                          if kv is not None}) == 1:
        console.print("[yellow]  the KV pool held every running sequence under both policies, so they batched "
                      "alike; a smaller pool (--num-kv-blocks) or more users shows what paging buys[/yellow]")


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
