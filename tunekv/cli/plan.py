"""`tunekv probe`, `tunekv plan` and `tunekv calibrate`: argument handling and tables. Each command
checks its arguments before it imports what loads torch or a search, so bad input is said at once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunekv.cli.signals import EXIT_INTERRUPTED, stop_on_signals
from tunekv.defaults import FLEET_BUDGET, FLEET_GPUS, FLEET_OUT, GPU_SLO
from tunekv.engine import EngineConfig
from tunekv.engine.config import DEVICES, TP_SIZES
from tunekv.errors import BadInput, RunFailure, shorten
from tunekv.hardware.gpus import gpu_preset, gpu_presets, local_gpu_spec, match_gpu, parse_price_flags, user_prices
from tunekv.hardware.probe import ProbeResult, probe
from tunekv.predict.fleet import TargetLoad
from tunekv.render.fleet import fleet_notes, fleet_table
from tunekv.render.plan import plan_tables, tp_comm_line, weights_line
from tunekv.render.results import cli_console
from tunekv.render.tables import Column, FittedTable
from tunekv.search.fleetplan import budget_shares, check_gpus
from tunekv.search.options import SearchOptions
from tunekv.units import GIB, parse_duration
from tunekv.workload.workloads import load_workload, mean_tokens

if TYPE_CHECKING:
    from tunekv.predict.planner import Plan


def _na(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


# --- probe ----------------------------------------------------------------------------------------

def probe_command(args: argparse.Namespace) -> int:
    result = probe()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print_probe(result, cli_console())
    return 0


def print_probe(result: ProbeResult, console: Console) -> None:
    if not result.available:
        console.print(f"no NVIDIA GPU: {result.reason}. tunekv plans against a GPU preset instead "
                      f"({', '.join(gpu_presets())}).", soft_wrap=not console.is_terminal)
        return
    console.print(f"driver {_na(result.driver_version)}, CUDA {_na(result.cuda_driver_version)}, "
                  f"NVML {_na(result.nvml_version)}")
    columns = [Column("#"), Column("name", "left"), Column("memory used / total"), Column("free"),
               Column("util", hide=2), Column("temp", hide=1), Column("power / limit", hide=3), Column("CC", hide=4),
               Column("preset", "left")]
    rows = []
    for g in result.gpus:
        used = _na(g.memory_used_bytes and g.memory_used_bytes / GIB, "{:.1f}")
        total = _na(g.memory_total_bytes and g.memory_total_bytes / GIB, "{:.1f} GiB")
        spec = match_gpu(g.name or "")
        rows.append([str(g.index), _na(g.name), f"{used} / {total}",
                     _na(g.memory_free_bytes and g.memory_free_bytes / GIB, "{:.1f} GiB"),
                     _na(g.utilization_gpu_pct, "{}%"), _na(g.temperature_c, "{} C"),
                     f"{_na(g.power_draw_w, '{:.0f}')} / {_na(g.power_limit_w, '{:.0f} W')}",
                     _na(g.compute_capability), spec.key if spec else "none"])
    console.print(FittedTable("GPUs", columns, [rows]))
    if result.links:
        console.print(FittedTable("links between GPUs", [Column("GPUs", "left"), Column("link", "left")],
                                  [[[f"{link.a} - {link.b}", link.kind] for link in result.links]]))
    procs = [(g.index, p) for g in result.gpus for p in g.processes]
    if procs:
        console.print(FittedTable("processes on the GPUs", [Column("GPU"), Column("pid"), Column("name", "left"),
                                                            Column("memory")],
                                  [[[str(index), str(p.pid), _na(p.name),
                                     _na(p.used_bytes and p.used_bytes / GIB, "{:.2f} GiB")] for index, p in procs]]))


# --- plan -----------------------------------------------------------------------------------------

def fleet_command(args: argparse.Namespace) -> int:
    """`tunekv plan --target-load`: a short search per GPU (simulated on a preset, measured on local)
    and the fleet each best config needs for the target, cheapest per hour first."""
    target = TargetLoad.parse(args.target_load)
    if args.gpu is not None:
        raise BadInput("--target-load compares the GPUs of --gpus; give --gpus instead of --gpu")
    keys = check_gpus(args.gpus or ",".join(FLEET_GPUS))
    budget_shares(parse_duration(args.budget or FLEET_BUDGET), keys)   # plan_fleet's own check, before it loads
    out = args.out or FLEET_OUT
    prices = parse_price_flags(args.price)
    user_prices()   # a bad prices file is refused before any search
    from tunekv.search.fleet import FleetStop, plan_fleet, write_fleet_report

    console = Console(stderr=True) if args.json else cli_console()
    # One SLO for every row: a local search on a CPU would otherwise take the CPU's default.
    base = SearchOptions(budget=args.budget or FLEET_BUDGET, model=args.model, workload=args.workload or "chat",
                         slo=args.slo or GPU_SLO, out=out, num_requests=args.num_requests, dtype=args.dtype,
                         quantization=args.quantization)
    # Ctrl-C or SIGTERM: the GPU being searched stops with its finished trials, the rest are not
    # searched, and the table and report of what is done still come; again quits at once.
    stop = FleetStop()
    with stop_on_signals(stop.request, console, "stopping the search of this GPU; the GPUs after it are "
                         "not searched, completed trials are kept") as signals:
        fleet = plan_fleet(target, keys, base, prices,
                           lambda line: console.print(line, soft_wrap=not console.is_terminal), stop)
    try:
        written = write_fleet_report(fleet, Path(out))
    except OSError as exc:
        raise RunFailure(f"could not write {exc.filename or out} ({exc.strerror or exc})") from None
    if args.json:
        print(json.dumps(fleet.to_json(), indent=2))
    else:
        console.print(fleet_table(fleet))
        for line in fleet_notes(fleet):
            console.print(f"  {line}", soft_wrap=not console.is_terminal, markup=False)
    console.print(f"  wrote {', '.join(str(p) for p in written)}", soft_wrap=not console.is_terminal, markup=False)
    if fleet.stopped:
        return signals.exit_code(EXIT_INTERRUPTED)
    if all(g.fleet is None for g in fleet.gpus):
        print("error: no config on any GPU of --gpus met the SLO in the budget; give a longer --budget or a looser "
              "--slo", file=sys.stderr)
        return 2
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from tunekv.engine.model_config import load_model_config

    console = cli_console()
    if args.target_load is not None:
        return fleet_command(args)
    fleet_only = [flag for flag, value in (("--gpus", args.gpus), ("--slo", args.slo), ("--budget", args.budget),
                                           ("--price", args.price), ("--num-requests", args.num_requests),
                                           ("--out", args.out)) if value]
    if fleet_only:
        raise BadInput(f"{fleet_only[0]} goes with --target-load (it shapes the searches for a fleet); a plain plan "
                       "sizes one config's memory")
    for flag, value in (("--tp", args.tp), ("--block-size", args.block_size), ("--max-num-seqs", args.max_num_seqs)):
        if value < 1:
            raise BadInput(f"{flag} must be an integer >= 1")
    if args.tp not in TP_SIZES:
        raise BadInput(f"--tp must be {', '.join(map(str, TP_SIZES[:-1]))} or {TP_SIZES[-1]}; got {args.tp}")
    workload = load_workload(args.workload) if args.workload else None
    mc = load_model_config(args.model)
    config = EngineConfig(model=args.model, dtype=args.dtype, block_size=args.block_size,
                          max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens,
                          gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                          tensor_parallel_size=args.tp, kv_cache_dtype=args.kv_cache_dtype,
                          quantization=args.quantization)
    mean = (mean_tokens(workload, mc.hf_config.vocab_size, args.max_model_len or mc.max_position_embeddings, mc.path)
            if workload is not None else None)
    import torch

    from tunekv.predict.planner import plan_for_gpu

    gpu = args.gpu
    if gpu is None and not torch.cuda.is_available():
        gpu = "h100-80gb"
        if not args.json:
            console.print(f"no local GPU ({_no_gpu_reason()}); planning for the h100-80gb preset (choose with --gpu)",
                          soft_wrap=not console.is_terminal)
    if gpu in (None, "local"):
        if not torch.cuda.is_available():
            raise BadInput(f"--gpu local needs a GPU, and there is none here ({_no_gpu_reason()}); plan against a "
                           f"preset instead: --gpu {'|'.join(gpu_presets())}")
        plan = _plan_local_gpu(config, args.workload, mean)
    else:
        spec = gpu_preset(gpu)
        plan = plan_for_gpu(config, spec, args.workload, mean)
        if not plan.fits and plan.min_tp is None:
            largest = max(t for t in TP_SIZES if mc.tp_problem(t) is None)
            widest = plan_for_gpu(dataclasses.replace(config, tensor_parallel_size=largest), spec, args.workload, mean)
            raise BadInput(f"{mc.name} does not fit on {spec.key} even at tp={largest}: {widest.why}")
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print_plan(plan, console)
    return 0


def _no_gpu_reason() -> str:
    result = probe()
    return result.reason or "torch sees no CUDA device"


def _plan_local_gpu(config: EngineConfig, workload: str | None, mean: float | None) -> Plan:
    """Measure on this GPU, unless the weights alone cannot fit (then say so from the estimate
    rather than run out of memory loading them) or are quantized (the engine loads them unquantized)."""
    from tunekv.predict.planner import plan_for_gpu, plan_local

    estimate = plan_for_gpu(config, local_gpu_spec(), workload, mean)
    if config.tensor_parallel_size > 1 or config.quantization is not None or (
            not estimate.fits and "weights" in estimate.why):
        return estimate  # a measured plan profiles one device; tp > 1 is the per-rank estimate
    return plan_local(config, workload, mean)


def print_plan(plan: Plan, console: Console) -> None:
    where = f"estimate for the {plan.gpu} preset" if plan.estimate else f"measured on {plan.gpu}"
    console.print(f"[bold]plan[/bold]: {plan.model} on {plan.gpu}, tp {plan.tp}, {plan.dtype} ({where})")
    memory, capacity = plan_tables(plan)
    console.print(memory)
    console.print(f"KV: {plan.kv_bytes_per_token:,} bytes per token ({plan.kv_cache_dtype}), "
                  f"{plan.num_kv_blocks:,} blocks of {plan.block_size} = {plan.num_kv_blocks * plan.block_size:,} "
                  "tokens")
    if plan.quantization is not None:
        console.print(weights_line(plan), soft_wrap=not console.is_terminal)
    console.print(capacity)
    if plan.tp_comm:
        console.print(tp_comm_line(plan.tp_comm), soft_wrap=not console.is_terminal)
    held = plan.max_concurrent_seqs.at_workload_mean or plan.max_concurrent_seqs.at_max_model_len
    if held > plan.max_num_seqs:
        console.print(f"max_num_seqs ({plan.max_num_seqs}) caps the running batch below what the pool holds")
    verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
    console.print(f"{verdict}: {plan.why}", soft_wrap=not console.is_terminal)


# --- calibrate ------------------------------------------------------------------------------------

def calibrate_command(args: argparse.Namespace) -> int:
    from tunekv.defaults import default_model
    from tunekv.engine.model_config import load_model_config
    from tunekv.workload.workloads import load_workload

    console = cli_console()
    budget = parse_duration(args.budget)
    if args.device not in DEVICES:
        raise BadInput(f"--device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}; got '{shorten(args.device)}'")
    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    loaded = [load_workload(name) for name in workloads]
    if args.model is not None:
        load_model_config(args.model)   # a bad name is said before torch loads
    import torch

    from tunekv.engine.memory import resolve_device
    from tunekv.predict.calibrate import calibrate

    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda needs a CUDA GPU, and torch sees none here; use --device cpu or auto")
    device = resolve_device(args.device)
    model = args.model or default_model(device.type == "cuda")
    max_len = args.max_model_len or min(4096, load_model_config(model).max_position_embeddings)
    config = EngineConfig(model=model, device=args.device, dtype=args.dtype, max_model_len=max_len,
                          max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    if not args.json:
        console.print(f"calibrating {model} on {device} for up to {budget:g} s ...")
    run = calibrate(config, loaded, budget)
    cal = run.calibration
    out = {"device": run.device, "model": model, "steps": run.samples, "probes": run.probes,
           "seconds": round(run.seconds, 1), **cal.describe()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    q = cal.quality
    assert q is not None
    p = cal.params
    console.print(f"fitted on {q.samples} steps of {run.device} ({run.probes} probes, {run.seconds:.0f} s): "
                  f"median step error {q.median_rel_err:.1%}, p90 {q.p90_rel_err:.1%}"
                  f"{f', {q.dropped_outliers} outliers dropped' if q.dropped_outliers else ''}")
    if q.warning:
        console.print(f"[yellow]  {q.warning}[/yellow]")
    def rate(seconds_per_unit: float, scale: float, unit: str) -> str:
        return f"{1 / seconds_per_unit / scale:.4g} {unit}" if seconds_per_unit > 0 else "(never the bound)"

    console.print(f"  step = {p.overhead_s * 1e3:.3f} ms (+ {p.mixed_overhead_s * 1e3:.3f} ms with a prefill)"
                  f" + {p.per_seq_s * 1e6:.2f} us x seqs + {p.per_prefill_s * 1e6:.2f} us x prefills"
                  f" + max(matmul FLOPs / {rate(p.s_per_linear_flop, 1e12, 'TFLOP/s')},"
                  f" weight bytes / {rate(p.s_per_byte, 1e9, 'GB/s')})"
                  f" + max(attention FLOPs / {rate(p.s_per_attn_flop, 1e12, 'TFLOP/s')},"
                  f" KV bytes / {rate(p.s_per_byte, 1e9, 'GB/s')})",
                  soft_wrap=not console.is_terminal)
    return 0
