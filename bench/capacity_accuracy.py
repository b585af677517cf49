"""Simulated vs measured capacity: does the calibrated simulator give the same fleet?

Calibrates the step-cost model for a model on this device (into a fresh TUNEKV_HOME), then for
each config searches the capacity under an SLO twice, on the real engine and on the simulated one
(the same ``find_capacity`` procedure through ``tunekv.search.trials.measure``: same requests,
seeds, SLO, start and bisections; the simulation gets the real engine's KV pool, block for block).
Each capacity is turned into the fleet it implies for a target load (``predict.fleet.fleet_for``),
so the error is read in GPUs as well as in users and tok/s. With ``--pace R`` the workload's
requests arrive as a trace (bursty: gamma gaps of shape 0.5 at R req/s on average) and the capacity
is the fastest pace of that trace whose p99s hold, as `tunekv search` searches a trace. Static
batching's real search on such a trace halves far below 1x (a request that arrives during a batch
waits for all of it), each halving doubling the run, so a pace run names its configs.

    python bench/capacity_accuracy.py                 # tiny-llama on the CPU, 8-12 minutes
    python bench/capacity_accuracy.py --pace 4 --requests 96 --no-repeat \
        --configs default,seqs8,budget256,contiguous,no-chunk-no-cache   # a bursty trace: capacity in x its pace
    python bench/capacity_accuracy.py --quick         # 2 configs, checks the script
    python bench/capacity_accuracy.py --model qwen3-0.6b --device cuda --slo interactive   # on a GPU

bench/gpu_check.py runs ``compare_capacity`` on a GPU (its "capacity accuracy" section).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_result  # noqa: E402
from tunekv.units import LOAD_TITLES, load_cell  # noqa: E402

if TYPE_CHECKING:
    from tunekv.predict.fleet import FleetRow, TargetLoad
    from tunekv.search.trials import Outcome
    from tunekv.workload.metrics import SLO
    from tunekv.workload.workloads import Workload

# Configs whose capacity binds differently: the pool (contiguous reserves max_model_len a
# sequence), the batch cap (max_num_seqs), the prefill budget, static batching's wait for a batch.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "seqs8": {"max_num_seqs": 8},
    "budget256": {"max_num_batched_tokens": 256},
    "contiguous": {"kv_policy": "contiguous"},
    "static": {"batching": "static"},
    "no-chunk-no-cache": {"enable_chunked_prefill": False, "enable_prefix_caching": False},
}
# On two CPU cores tiny-llama meets p99 TTFT 1 s / ITL 40 ms at a handful to a few dozen users
# depending on the config (sim-accuracy: ITL p99 10-30 ms, TTFT p99 0.3-0.5 s at 12 users).
CPU_SLO = "ttft_p99=1000ms,itl_p99=40ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: steadier timings)")
    parser.add_argument("--workload", default="chat")
    parser.add_argument("--slo", default=CPU_SLO, help=f"a preset or targets (default {CPU_SLO})")
    parser.add_argument("--requests", type=int, default=24,
                        help="requests a probe sends at least (3 a user when that is more, as a search does)")
    parser.add_argument("--bisections", type=int, default=2, help="as a search trial (2)")
    parser.add_argument("--calibration-budget", type=float, default=90.0)
    parser.add_argument("--num-kv-blocks", type=int, default=1024, help="pool (small enough that contiguous queues)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--target-load", default="64users", help="the load the fleets carry (64users, 20rps)")
    parser.add_argument("--price", type=float, default=2.0, help="USD per GPU-hour (any fixed number)")
    parser.add_argument("--no-repeat", action="store_true", help="skip the second real search (the noise floor)")
    parser.add_argument("--quick", action="store_true", help="2 configs, 12 requests: checks the script")
    parser.add_argument("--configs", default=None,
                        help=f"the configs to compare, comma-separated (default all: {', '.join(CONFIGS)})")
    parser.add_argument("--pace", type=float, default=None,
                        help="replay the requests as a bursty trace at this mean req/s and search its pace")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default bench/results/...-<date>.json)")
    args = parser.parse_args()
    os.environ.setdefault("TUNEKV_HOME", tempfile.mkdtemp(prefix="tunekv-capacity-accuracy-"))
    torch.set_num_threads(args.threads)

    from tunekv.engine import EngineConfig
    from tunekv.predict.calibrate import calibrate
    from tunekv.predict.fleet import TargetLoad
    from tunekv.workload.metrics import parse_slo
    from tunekv.workload.workloads import load_workload

    slo, target, workload = parse_slo(args.slo), TargetLoad.parse(args.target_load), load_workload(args.workload)
    n = 12 if args.quick else args.requests
    calibration_workload = workload
    if args.pace is not None:
        workload = bursty_trace(workload.fit_to(args.max_model_len), args.pace, n,
                                Path(os.environ["TUNEKV_HOME"]) / "trace.jsonl")
    base = dict(model=args.model, device=args.device, max_model_len=args.max_model_len, max_num_seqs=64,
                max_num_batched_tokens=2048, num_kv_blocks=args.num_kv_blocks)
    names = args.configs.split(",") if args.configs else list(CONFIGS)[:2] if args.quick else list(CONFIGS)
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; the configs are {', '.join(CONFIGS)}")
    configs = {name: CONFIGS[name] for name in names}

    t0 = time.perf_counter()
    load_before = os.getloadavg()   # others' work on a shared machine stretches the real runs and the fit
    # As sim_accuracy.py: the workload's steps and nano-vllm's (long prompts and answers, all at once).
    cal = calibrate(EngineConfig(**{**base, "num_kv_blocks": None}), [calibration_workload, load_workload("nano-vllm")],
                    10 if args.quick else args.calibration_budget)
    q = cal.calibration.quality
    assert q is not None, "a calibration that measured steps has a fit"
    print(f"calibrated on {cal.samples} steps in {time.perf_counter() - t0:.0f} s: median step error "
          f"{q.median_rel_err:.1%}, p90 {q.p90_rel_err:.1%}", flush=True)
    how = f"a bursty trace at {args.pace:g} req/s (capacity in x its pace)" if args.pace else "closed-loop users"
    print(f"SLO {slo.describe()}; target {target.describe()}; {args.workload}, at least {n} requests a probe; {how}",
          flush=True)

    repeat = not (args.no_repeat or args.quick)
    rows = compare_capacity(base, configs, workload, slo, target, args.price, n, bisections=args.bisections,
                            repeat_real=repeat, progress=print)
    summary = capacity_summary(rows)
    print()
    print(table(rows, target))
    print()
    print(summary_line(summary))
    kind = "capacity-accuracy" if args.pace is None else "capacity-accuracy-pace"
    path = write_result(f"{kind}-{args.model}-{args.device}", {
        "machine": {**machine(), "load_avg_1_5_15_min": {"start": load_before, "end": os.getloadavg()}},
        "model": args.model, "device": args.device, "threads": args.threads,
        "settings": {"workload": args.workload, "pace_req_s": args.pace, "slo": slo.describe(),
                     "target_load": target.describe(),
                     "price_per_gpu_hour_usd": args.price, "min_requests_per_probe": n,
                     "bisections": args.bisections, "repeat_real": repeat, "base": base, "configs": configs},
        "calibration": {"steps": cal.samples, "seconds": cal.seconds, **cal.calibration.describe()},
        "rows": rows, "summary": summary, "seconds": time.perf_counter() - t0}, args.out)
    print(f"wrote {path}")
    return 0


def bursty_trace(workload: Workload, rate: float, n: int, path: Path) -> Workload:
    """The lengths of ``n`` of ``workload``'s requests (seed 0; shared prefixes left out) as a JSONL
    trace at ``path``, arriving in bursts: gamma gaps of shape 0.5 (burstier than Poisson) at
    ``rate`` req/s on average, the first at 0."""
    import json

    from tunekv.workload.loadgen import Load, arrival_times
    from tunekv.workload.workloads import load_workload

    requests = workload.requests(0, 32000, None, n)
    times = arrival_times(Load(rate=rate, burstiness=0.5), requests, 0)
    path.write_text("".join(json.dumps({"prompt_len": len(r.prompt_token_ids), "output_len": r.output_len,
                                        "arrival_s": round(t - times[0], 6)}) + "\n"
                            for r, t in zip(requests, times, strict=True)))
    return load_workload(str(path))


def compare_capacity(base: dict[str, Any], configs: dict[str, dict[str, Any]], workload: Workload, slo: SLO,
                     target: TargetLoad, price: float, num_requests: int, *, seed: int = 0, bisections: int = 2,
                     max_requests: int | None = None, stop: Callable[[], bool] = lambda: False,
                     repeat_real: bool = False, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Per config: the capacity under ``slo`` (closed-loop users, or a trace's pace when the
    workload is a trace with arrival times) searched on the simulated engine,
    then on the real one, as a search trial does (``tunekv.search.trials.measure``; at least
    ``num_requests`` requests a probe, 3 a user when that is more, ``max_requests`` at most); and
    the fleet each capacity implies for ``target`` at ``price`` a GPU-hour. ``stop`` ends a real
    search early (its row is marked ``cut``) and skips the configs not yet started (no row). With
    ``repeat_real`` the real search runs twice and the row also carries the second one: the noise
    floor the simulator's error is read against.
    The step-cost calibration must already be in place: real runs here do not refit it."""
    from tunekv.engine import EngineConfig, LLMEngine
    from tunekv.predict.simulate import simulated_engine
    from tunekv.search.trials import SearchTask, engine_probe, measure

    rows = []
    for name, overrides in configs.items():
        if stop():
            break
        config = EngineConfig(**{**base, **overrides})
        engine = LLMEngine(config)
        try:
            vocab = engine.model_config.hf_config.vocab_size
            limit = engine.config.max_model_len
            assert limit is not None
            fitted = workload.fit_to(limit)   # longer requests clipped, as `tunekv search` does
            task = SearchTask(fitted, fitted.requests(seed, vocab, None, num_requests), slo, None, seed,
                              max(1, num_requests // 10), {}, None, None)
            # The simulation gets the real engine's pool, block for block.
            sim_engine = simulated_engine(dataclasses.replace(config, num_kv_blocks=engine.num_kv_blocks))
            t = time.perf_counter()
            sim = measure(task, engine_probe(sim_engine, lambda: False), vocab, sim_engine.config.max_num_seqs,
                          bisections=bisections, max_requests=max_requests)
            sim_s = time.perf_counter() - t
            t = time.perf_counter()
            real = measure(task, engine_probe(engine, stop), vocab, engine.config.max_num_seqs,
                           bisections=bisections, max_requests=max_requests)
            real_s = time.perf_counter() - t
            rate = task.pace_rate
            row = _row(name, overrides, engine.num_kv_blocks, real, sim, target, price, rate)
            row.update(real_seconds=real_s, sim_seconds=sim_s)
            if repeat_real:
                again = _side(measure(task, engine_probe(engine, stop), vocab, engine.config.max_num_seqs,
                                      bisections=bisections, max_requests=max_requests), target, price, rate)
                first = row["measured"]
                row["measured_again"] = again
                row["real_vs_real_capacity"] = (
                    (again["capacity"] - first["capacity"]) / first["capacity"]
                    if first["capacity"] and again["capacity"] is not None else None)
                row["real_vs_real_gpus"] = (again["fleet"]["gpus"] - first["fleet"]["gpus"]
                                            if first["fleet"] and again["fleet"] else None)
        finally:
            engine.shutdown()
            del engine
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rows.append(row)
        if progress is not None:
            progress(_line(row))
    return rows


def _side(outcome: Outcome, target: TargetLoad, price: float, rate_at_1x: float | None = None) -> dict[str, Any]:
    """One capacity search (real or simulated) and the fleet it implies (a pace: ``rate_at_1x``
    req/s times it, as `tunekv search` sizes a fleet)."""
    from tunekv.predict.fleet import ReplicaCapacity, fleet_for, what_binds

    cut = outcome.cut
    if cut:
        settled = outcome.settled()
        outcome = settled if settled is not None else outcome
    out: dict[str, Any] = {"capacity": outcome.capacity, "unit": outcome.unit, "capped": outcome.capacity_capped,
                           "cut": cut,
                           "probes": [list(p) for p in outcome.probes], "output_tok_s": None, "reason": outcome.reason,
                           "run_seconds": outcome.run_seconds, "binds": None, "fleet": None}
    if outcome.capacity is None or outcome.metrics is None:
        return out
    m, kv = outcome.metrics, outcome.kv
    binds = what_binds(kv.preemptions if kv else 0, kv.peak_used_blocks if kv else None,
                       kv.num_blocks if kv else None, outcome.constraints)
    e2e_s = m.e2e_ms.mean / 1000
    out.update(output_tok_s=outcome.value, ttft_p99_ms=m.ttft_ms.p99, itl_p99_ms=m.itl_ms.p99, e2e_mean_s=e2e_s,
               preemptions=kv.preemptions if kv else None, peak_used_blocks=kv.peak_used_blocks if kv else None,
               binds=binds)
    if outcome.unit == "x":
        assert rate_at_1x is not None, "a pace converts to req/s with the trace's rate"
        replica = ReplicaCapacity("local", outcome.capacity * rate_at_1x, "req/s", outcome.value, e2e_s, 1, price,
                                  binds, outcome.capacity_capped)
    else:
        replica = ReplicaCapacity("local", outcome.capacity, "users", outcome.value, e2e_s, 1, price, binds,
                                  outcome.capacity_capped)
    fleet: FleetRow = fleet_for(target, replica)
    out["fleet"] = {"replicas": fleet.replicas, "gpus": fleet.gpus, "headroom": fleet.headroom,
                    "cost_per_hour_usd": fleet.cost_per_hour_usd, "output_tok_s": fleet.output_tok_s,
                    "usd_per_million_tokens": fleet.usd_per_million_tokens}
    return out


def _row(name: str, overrides: dict[str, Any], kv_blocks: int, real: Outcome, sim: Outcome, target: TargetLoad,
         price: float, rate_at_1x: float | None) -> dict[str, Any]:
    r, s = _side(real, target, price, rate_at_1x), _side(sim, target, price, rate_at_1x)
    row: dict[str, Any] = {"config": name, "overrides": overrides, "kv_blocks": kv_blocks, "measured": r,
                           "simulated": s, "capacity_err": None, "output_tok_s_err": None, "gpus_err": None,
                           "gpus_rel_err": None, "gpus_match": None,
                           "binds_match": r["binds"] == s["binds"] if r["binds"] and s["binds"] else None}
    if r["capacity"] and s["capacity"] is not None:
        row["capacity_err"] = (s["capacity"] - r["capacity"]) / r["capacity"]
        row["output_tok_s_err"] = (s["output_tok_s"] - r["output_tok_s"]) / r["output_tok_s"]
    if r["fleet"] and s["fleet"]:
        rg, sg = r["fleet"]["gpus"], s["fleet"]["gpus"]
        row.update(gpus_err=sg - rg, gpus_rel_err=(sg - rg) / rg, gpus_match=sg == rg)
    return row


def capacity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median |capacity error|, |tok/s error|, |GPU-count error| (GPUs and relative), exact GPU
    counts and matching bindings, over the configs where both sides found a capacity."""
    both = [r for r in rows if r["gpus_err"] is not None]

    def median_abs(key: str) -> float | None:
        values = [abs(r[key]) for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"configs": len(rows), "compared": len(both),
            "median_abs_capacity_err": median_abs("capacity_err"),
            "median_abs_output_tok_s_err": median_abs("output_tok_s_err"),
            "median_abs_gpus_err": median_abs("gpus_err"), "median_abs_gpus_rel_err": median_abs("gpus_rel_err"),
            "worst_abs_gpus_err": max((abs(r["gpus_err"]) for r in both), default=None),
            "gpus_exact": sum(1 for r in both if r["gpus_match"]),
            "binds_match": sum(1 for r in rows if r["binds_match"]),
            "median_abs_real_vs_real_capacity": median_abs("real_vs_real_capacity"),
            "median_abs_real_vs_real_gpus": median_abs("real_vs_real_gpus"),
            "capped": [r["config"] for r in rows if r["measured"]["capped"] or r["simulated"]["capped"]],
            "no_capacity": [r["config"] for r in rows
                            if r["measured"]["capacity"] is None or r["simulated"]["capacity"] is None]}


def summary_line(s: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0%}"

    gpus = "n/a" if s["median_abs_gpus_err"] is None else f"{s['median_abs_gpus_err']:g}"
    noise = ""
    if s["median_abs_real_vs_real_capacity"] is not None:
        noise = (f"; real vs real again: median |capacity difference| {pct(s['median_abs_real_vs_real_capacity'])}, "
                 f"median |GPU-count difference| {s['median_abs_real_vs_real_gpus']:g}")
    return (f"{s['compared']}/{s['configs']} configs compared: "
            f"median |capacity error| {pct(s['median_abs_capacity_err'])}, "
            f"median |tok/s error| {pct(s['median_abs_output_tok_s_err'])}, median |GPU-count error| {gpus} "
            f"({pct(s['median_abs_gpus_rel_err'])}), GPU count exact for {s['gpus_exact']}/{s['compared']}, "
            f"same binding for {s['binds_match']}/{s['configs']}{noise}")


def _cap(side: dict[str, Any]) -> str:
    if side["capacity"] is None:
        return "none"
    return f"{'>=' if side['capped'] else ''}{load_cell(side['unit'], side['capacity'])}{' cut' if side['cut'] else ''}"


_BINDS = {"KV memory": "KV", "the TTFT target": "TTFT", "the ITL target (decode step time)": "ITL", "unknown": "?"}


def table(rows: list[dict[str, Any]], target: TargetLoad) -> str:
    """Plain aligned text: per config, real vs simulated capacity, tok/s there, GPUs for the target."""
    unit = next((LOAD_TITLES[row["measured"]["unit"]] for row in rows), "users")
    head = (f"{'config':<19}{unit + ' real':>11}{'sim':>7}{'err':>7}{'tok/s real':>12}{'sim':>8}{'err':>7}"
            f"{'GPUs real':>11}{'sim':>5}{'diff':>6}   binds real/sim   (GPUs for {target.describe()})")
    lines = [head]
    for row in rows:
        r, s = row["measured"], row["simulated"]
        lines.append(
            f"{row['config']:<19}{_cap(r):>11}{_cap(s):>7}{_pct(row['capacity_err']):>7}"
            f"{_num(r['output_tok_s']):>12}{_num(s['output_tok_s']):>8}{_pct(row['output_tok_s_err']):>7}"
            f"{_gpus(r):>11}{_gpus(s):>5}{_signed(row['gpus_err']):>6}   "
            f"{_BINDS.get(r['binds'] or '', '-')}/{_BINDS.get(s['binds'] or '', '-')}")
    return "\n".join(lines)


def _line(row: dict[str, Any]) -> str:
    r, s = row["measured"], row["simulated"]
    again = row.get("measured_again")
    repeat = f" again {_cap(again)} (probes {_probes(again)})" if again else ""
    return (f"{row['config']:<19}{LOAD_TITLES[r['unit']]} real {_cap(r)} (probes {_probes(r)}){repeat} "
            f"sim {_cap(s)} (probes {_probes(s)}); "
            f"GPUs real {_gpus(r)} sim {_gpus(s)}; {row['real_seconds']:.0f} s real, {row['sim_seconds']:.1f} s sim")


def _probes(side: dict[str, Any]) -> str:
    return " ".join(f"{load_cell(side['unit'], load)}{'+' if ok else '-'}" for load, ok in side["probes"])


def _gpus(side: dict[str, Any]) -> str:
    return "-" if side["fleet"] is None else str(side["fleet"]["gpus"])


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0%}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _signed(v: int | None) -> str:
    return "-" if v is None else f"{v:+d}"


if __name__ == "__main__":
    sys.exit(main())
