"""`tunekv bench`: its arguments, checked before torch loads (bad input: exit 2 at once), then the
runs on tunekv's engine (cli/bench_engine.py) or on a server (cli/bench_endpoint.py)."""

from __future__ import annotations

import argparse
import dataclasses

from tunekv.defaults import default_model
from tunekv.engine import EngineConfig
from tunekv.engine.model_config import load_model_config
from tunekv.errors import BadInput
from tunekv.fileio import check_output_path, read_config
from tunekv.measure.variants import load_at, parse_levels, variants
from tunekv.render.results import cli_console
from tunekv.workload.loadgen import Load, check_arrival_span
from tunekv.workload.metrics import parse_slo
from tunekv.workload.traces import MAX_REQUESTS
from tunekv.workload.workloads import load_workload


def base_settings(args: argparse.Namespace) -> dict:
    data = read_config(args.config) if args.config else {}
    if args.model:
        data["model"] = args.model
    if args.seed is not None:   # the file's seed unless --seed is given
        data["seed"] = args.seed
    data.setdefault("seed", EngineConfig.seed)
    for f in dataclasses.fields(EngineConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in ("model", "seed"):
            data[f.name] = value
    if "model" not in data:
        import torch

        simulated_gpu = bool(getattr(args, "simulate", False) and getattr(args, "gpu", None) not in (None, "local"))
        data["model"] = default_model(simulated_gpu or torch.cuda.is_available())
    return data


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
    levels = parse_levels(args.sweep) if args.sweep else None
    if args.burst != 1 and args.rate is None and not (levels is not None and levels[0] == "rate"):
        raise BadInput("--burst shapes Poisson arrivals: it goes with --rate or --sweep rate=...")
    if args.burstiness != 1.0 and args.rate is None and not (levels is not None and levels[0] == "rate"):
        raise BadInput("--burstiness shapes the gaps between arrivals at a rate: it goes with --rate or "
                       "--sweep rate=...")
    if args.max_concurrency is not None and args.find_capacity:
        raise BadInput("--find-capacity finds the load the server sustains; --max-concurrency would queue the "
                       "rest in the client, where the SLO does not see it: leave it out")
    if args.max_concurrency is not None and levels is not None and levels[0] == "concurrency":
        raise BadInput("--max-concurrency caps a --sweep rate=...; each level of a concurrency sweep already "
                       "fixes the requests in flight")
    load = load_for(args, workload)
    if levels is None and args.max_concurrency is not None:
        load = dataclasses.replace(load, max_concurrency=args.max_concurrency)
    count = workload.count(args.num_requests)
    trace_span = 0.0
    if load.trace:   # the workload's own arrival times: no --rate, --concurrency or --offline replaced them
        assert workload.trace is not None, "a load on a trace's times comes from a trace"
        times = [row.get("arrival_s") or 0.0 for row in workload.trace[:count]]
        trace_span = max(times)
        if args.find_capacity and min(times) == trace_span:
            raise BadInput(f"--find-capacity would speed up the arrivals of {workload.name}, but its requests all "
                           "arrive at once: search over users (--concurrency 1) or a rate (--rate 1) instead")
    if args.trace_speedup is not None:
        if levels is not None:
            raise BadInput("--trace-speedup replays a trace at one pace; --sweep sets each run's load (--sweep "
                           "trace-speedup=1,2,4 replays it at several)")
        if not load.trace:
            raise BadInput(f"--trace-speedup scales a trace's arrival times: workload {workload.name} has none"
                           if fixed_load is None else f"--trace-speedup scales a trace's arrival times, which "
                           f"{fixed_load} replaces")
        load = dataclasses.replace(load, speedup=args.trace_speedup)
    if levels is not None and levels[0] == "trace-speedup" and not load.trace:
        raise BadInput(f"--sweep trace-speedup=... scales a trace's arrival times: workload {workload.name} has none")
    if levels is None:
        check_arrival_span(load, count, trace_span)
    else:
        for level in levels[1]:
            check_arrival_span(load_at(levels[0], level, args.burst, args.max_concurrency, args.burstiness), count,
                               trace_span)

    if args.endpoint:
        from tunekv.cli.bench_endpoint import endpoint_command

        return endpoint_command(args, console, workload, load, levels, slo)
    settings = base_settings(args)
    base = EngineConfig.from_dict(settings)   # every setting's type and value, before any work
    if args.compare:
        variants(base, args.compare)
    model_config = load_model_config(str(settings["model"]))
    from tunekv.cli.bench_engine import engine_command  # torch and the engine load from here on

    return engine_command(args, console, settings, model_config, workload, load, levels, slo)


def load_for(args: argparse.Namespace, workload) -> Load:
    if args.rate is not None:
        return Load(rate=args.rate, burst=args.burst, burstiness=args.burstiness)
    if args.concurrency is not None:
        return Load(concurrency=args.concurrency)
    if args.offline or workload.offline:
        return Load(offline=True)
    if workload.trace is not None and any("arrival_s" in r for r in workload.trace):
        return Load(trace=True)
    if workload.rate is not None:
        return Load(rate=workload.rate)
    return Load(offline=True)
