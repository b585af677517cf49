"""`tunekv bench --endpoint URL`: the bench's workloads, loads and metrics against running servers."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Callable

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
from tunekv.engine import ConfigError, EngineConfig
from tunekv.errors import BadInput, RunFailure
from tunekv.measure.endpoint import Target, api_base, open_target, run_endpoint
from tunekv.measure.run import BenchPlan, RunResult
from tunekv.measure.variants import load_at
from tunekv.render.results import print_comparison, print_result, print_sweep
from tunekv.units import MAX_DURATION_S
from tunekv.workload.loadgen import Load
from tunekv.workload.metrics import SLO
from tunekv.workload.tokenizer import load_tokenizer
from tunekv.workload.workloads import Workload

ENGINE_ONLY = ("simulate", "gpu", "compare", "config")


def endpoint_command(args: argparse.Namespace, console: Console, workload: Workload, load: Load,
                     levels: tuple[str, list[float]] | None, slo: SLO | None) -> int:
    """Checks, then each server reached before any load, then the runs one server after another."""
    for name in ENGINE_ONLY:
        if getattr(args, name, None):
            raise BadInput(f"--{name} is for tunekv's own engine; an --endpoint run measures the server as it is")
    if args.model:
        raise BadInput("--model is for tunekv's own engine; name the served model with --served-model")
    for f in dataclasses.fields(EngineConfig):
        if f.name not in ("model", "seed") and getattr(args, f.name, None) is not None:
            flag = "--" + f.name.replace("_", "-")
            raise BadInput(f"{flag} is an engine setting for tunekv's own engine; an --endpoint run measures the "
                           "server as it was started")
    if not 0 < args.request_timeout <= MAX_DURATION_S:
        raise BadInput(f"--request-timeout must be more than 0 and at most {MAX_DURATION_S:g} seconds, "
                       f"got {args.request_timeout:g}")
    tokenizer = None
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
        if tokenizer is None:
            raise BadInput(f"--tokenizer {args.tokenizer}: no Hugging Face tokenizer loads from it")
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    seen: dict[str, str] = {}
    for url in args.endpoint:
        base, shown = api_base(url)
        if base in seen:
            raise BadInput(f"--endpoint {shown} is given twice ({seen[base]!r} and {url!r}); a run per server, "
                           "each once")
        seen[base] = url
    targets = [open_target(url, args.served_model, args.api, api_key, tokenizer) for url in args.endpoint]
    # Token ids every server takes: with servers of different vocabularies, the smallest.
    vocab = min(_vocab(t, tokenizer) for t in targets)
    # the room a prompt has: a chat request's template takes its share of max_model_len
    limits = [t.max_model_len - t.prompt_overhead for t in targets if t.max_model_len is not None]
    if limits:
        workload = workload.fit_to(min(limits))
        workload.check_fits(min(limits), "the server's max_model_len", args.num_requests)
    seed = EngineConfig.seed if args.seed is None else args.seed   # the one default seed, as the engine's
    requests = workload.requests(seed, vocab, tokenizer, args.num_requests)
    plan = bench_plan(args, workload, requests, seed, load, levels, slo, console)
    for t in targets:
        console.print(f"  endpoint {t.url}: model {t.model}, {t.server or 'server unnamed'}, /v1/{t.api} with "
                      f"{'token-id' if t.token_ids else 'text'} prompts")
    note = workload.clip_note("the server's max_model_len")
    if note is not None:
        console.print(f"  {note}")

    runs: dict[str, list[RunResult]] = {t.url: [] for t in targets}

    def run(target: Target, at: Load) -> RunResult:
        label = f"{target.url} " if len(targets) > 1 else ""
        with RunProgress(console) as bars:
            result = run_endpoint(target, plan, at, args.request_timeout,
                                  progress=bars.of(f"{label}{at.describe()}"))[0]
        runs[target.url].append(result)
        return result

    if args.find_capacity:
        _capacity(args, targets, run, plan, load, console)
        return _verdict(args, runs)
    if levels is not None:
        kind, values = levels
        sweep = {t.url: [run(t, load_at(kind, v, args.burst, args.max_concurrency, args.burstiness))
                         for v in values] for t in targets}
        print_sweep(kind, values, sweep, console)
        write_result(args, {"sweep": {"kind": kind, "levels": values,
                                      "results": {u: [r.to_json() for r in rs] for u, rs in sweep.items()}}}, console)
        return _verdict(args, runs)
    results = [(t.url, run(t, load)) for t in targets]
    if len(results) == 1:
        result = results[0][1]
        print_result(result, console)
        warn_failures(result, console)
        write_result(args, result.to_json(), console)
    else:
        print_comparison(results, console, f"the same {len(requests)} requests against {len(results)} servers, "
                                           "one after the other")
        for url, result in results:
            warn_failures(result, console, url)
        write_result(args, {"compare": "endpoints", "results": {u: r.to_json() for u, r in results}}, console)
    return _verdict(args, runs)


def _verdict(args: argparse.Namespace, runs: dict[str, list[RunResult]]) -> int:
    """After the results are printed and written: exit 1 (RunFailure) when a server stopped
    answering mid-run (the runs here have no deadline or stop, so a cut run is a server that
    stopped taking connections) or when not one of a server's requests succeeded."""
    where = f"in {args.json_path}" if args.json_path else "above"
    for url, results in runs.items():
        cut = next((r for r in results if r.cut), None)
        if cut is not None:
            why = (cut.client or {}).get("ended_early") or "the run ended early"
            m = cut.metrics
            raise RunFailure(f"{url} stopped answering mid-run: {why}; the partial result ({m.completed} of "
                             f"{m.completed + m.failed} measured requests completed) is {where}")
    for url, results in runs.items():
        if results and all(r.metrics.completed == 0 for r in results):
            errors = [e for r in results for e in (r.client or {}).get("errors") or []]
            first = errors[0] if errors else "none was answered"
            raise RunFailure(f"every request to {url} failed; first error: {first}; the result is {where}")
    return 0


def _vocab(target: Target, tokenizer) -> int:
    """Token ids the served model takes: the tokenizer's, else its preset's or directory's, by the
    served name or what /v1/models says it was loaded from."""
    if tokenizer is not None:
        return len(tokenizer)
    from tunekv.engine.model_config import load_model_config

    for name in dict.fromkeys(n for n in (target.model, target.root) if n):
        try:
            return load_model_config(name).hf_config.vocab_size
        except ConfigError:
            continue
    raise BadInput(f"cannot tell the vocabulary of {target.model!r} (not a preset or a local model directory): "
                   "give --tokenizer DIR")


def _probe(run: Callable[[Target, Load], RunResult], target: Target, load: Load, label: str) -> RunResult:
    """A capacity probe against ``target`` (its progress bar is ``run``'s, labelled by the load)."""
    return run(target, load)


def _capacity(args: argparse.Namespace, targets: list[Target], run: Callable[[Target, Load], RunResult],
              plan: BenchPlan, load: Load, console: Console) -> int:
    slo = plan.slo
    assert slo is not None, "--find-capacity needs --slo (checked first)"
    out = {}
    for target in targets:
        cap = search_capacity(args, load, plan, functools.partial(_probe, run, target))
        console.print(f"[bold]{target.url}[/bold]")
        print_capacity(cap, slo, console)
        if cap.result is not None:
            print_result(cap.result, console)
        out[target.url] = {"capacity": capacity_json(cap, slo),
                           "result": None if cap.result is None else cap.result.to_json()}
    write_result(args, out[targets[0].url] if len(targets) == 1 else {"compare": "endpoints", "results": out},
                 console)
    return 0
