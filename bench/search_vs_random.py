"""The search against random search, on a grid the simulator can enumerate.

Every config of a grid is simulated once; then tunekv's own search loop (``Search``, TPE with
constraints) and the same loop with Optuna's RandomSampler run against that table for several
seeds. Reported per method (median over seeds): distinct configs evaluated until the best found
is within 5% of the grid optimum, and the best found with a third of the grid. Duplicate proposals
cost nothing (the search reuses a seen config's result), so only distinct configs count.

    python bench/search_vs_random.py [--seeds 5] [--num-requests 40] [--workers 2] [--scenario NAME]

Two scenarios: ``latency`` (llama-3-8b on the l4-24gb preset, chat, capacity under the relaxed SLO:
the ITL target binds at a small batch, long before memory does) and ``memory`` (the same card at a
fixed 96 users under the batch SLO: the KV pool decides how many run at once, so utilisation, KV
policy, max_model_len and the batch limits all move the result).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import optuna

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_result  # noqa: E402
from tunekv.engine.model_config import load_model_config  # noqa: E402
from tunekv.hardware.gpus import gpu_preset  # noqa: E402
from tunekv.search.space import default_space, model_lengths, point_key, restrict  # noqa: E402
from tunekv.search.trials import Outcome, SearchTask, simulate  # noqa: E402
from tunekv.workload.loadgen import Load  # noqa: E402
from tunekv.workload.metrics import parse_slo  # noqa: E402
from tunekv.workload.workloads import load_workload  # noqa: E402

MODEL, GPU, WORKLOAD = "llama-3-8b", "l4-24gb", "chat"
SCENARIOS = {"latency": ("relaxed", None), "memory": ("batch", 96)}
FIX = ["enable_chunked_prefill=on,enable_prefix_caching=on"]
RANGE = ["block_size=16:32", "max_num_seqs=8:128", "max_num_batched_tokens=2048:8192"]


def make_task(num_requests: int, scenario: str):
    slo, users = SCENARIOS[scenario]
    mc = load_model_config(MODEL)
    workload = load_workload(WORKLOAD)
    requests = workload.requests(0, mc.hf_config.vocab_size, num_requests=num_requests)
    need = workload.longest_request(requests)
    space = restrict(default_space(model_lengths(need, mc.max_position_embeddings)[:2], (1,), True), FIX, RANGE)
    task = SearchTask(workload, requests, parse_slo(slo), Load(concurrency=users) if users else None, 0,
                      min(len(requests) // 10, 20),
                      {"model": MODEL, "dtype": "auto", "seed": 0}, gpu_preset(GPU), GPU)
    return task, space


def _simulate(args: tuple[int, str, dict]) -> dict:
    num_requests, scenario, point = args
    task, _ = make_task(num_requests, scenario)
    return simulate(task, point, lambda: False).to_attrs()


def run_search(task, space, table: dict, sampler: optuna.samplers.BaseSampler, trials_cap: int) -> list[float]:
    """The product's search loop against the table: the best feasible value after each distinct config."""
    import tunekv.search.ladder as search_module

    study = optuna.create_study(direction="maximize", sampler=sampler)
    trace: list[float] = []
    best = 0.0

    def lookup(task, point, stop):
        nonlocal best
        outcome = Outcome.from_attrs(table[point_key(point)])
        if outcome.feasible:
            best = max(best, outcome.value)
        trace.append(best)
        if len(trace) >= trials_cap:
            search.request_stop()
        return outcome

    original = search_module.simulate
    search_module.simulate = lookup
    try:
        search = search_module.Search(study, task, space, 1e9, True, None, patience=10**9)
        search.run()
    finally:
        search_module.simulate = original
    return trace


def first_within(trace: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(trace) if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--num-requests", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scenario", choices=SCENARIOS, default="memory")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task, space = make_task(args.num_requests, args.scenario)
    slo, users = SCENARIOS[args.scenario]
    grid = list(space.grid())
    began = time.perf_counter()
    with Pool(args.workers) as pool:
        outcomes = pool.map(_simulate, [(args.num_requests, args.scenario, p) for p in grid], chunksize=1)
    grid_seconds = time.perf_counter() - began
    table = {point_key(p): o for p, o in zip(grid, outcomes, strict=True)}
    feasible = [o["value"] for o in outcomes if all(v <= 0 for v in o["constraints"].values())]
    optimum = max(feasible)
    target = 0.95 * optimum
    cap = len(grid) // 3
    methods = {
        "tpe": lambda seed: optuna.samplers.TPESampler(multivariate=True, constant_liar=True, n_startup_trials=10,
                                                       seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    }
    rows = {}
    for name, make in methods.items():
        reach, exact, at_cap = [], [], []
        for seed in range(args.seeds):
            trace = run_search(task, space, table, make(seed), cap)
            n = first_within(trace, target)
            reach.append(n if n is not None else float("inf"))
            n = first_within(trace, optimum)
            exact.append(n if n is not None else float("inf"))
            at_cap.append(trace[min(cap, len(trace)) - 1] / optimum)
        rows[name] = {"configs_to_within_5pct": reach, "median_configs_to_within_5pct": statistics.median(reach),
                      "configs_to_optimum": exact, "median_configs_to_optimum": statistics.median(exact),
                      "best_at_third_of_grid": at_cap, "median_best_at_third_of_grid": statistics.median(at_cap),
                      "seeds_within_5pct_at_third": sum(1 for r in reach if r <= cap)}
    unfit = sum(1 for o in outcomes if o["constraints"].get("fits", 0) > 0)
    objective = f"throughput at {users} users" if users else "throughput at the capacity under the SLO"
    within = sum(1 for v in feasible if v >= target)
    print(f"scenario {args.scenario}: {objective}; {MODEL} on {GPU} (simulated), {WORKLOAD}, SLO {slo}")
    print(f"grid: {len(grid)} distinct configs; "
          f"simulated in {grid_seconds:.0f} s; {len(feasible)} feasible, {unfit} ruled out by the planner; "
          f"optimum {optimum:.0f} output tok/s; {within} configs within 5% of it")
    print(f"median over {args.seeds} seeds; a third of the grid is {cap} configs")
    print(f"{'method':<8} {'configs to within 5%':>21} {'configs to the optimum':>23} {'best at 1/3 grid':>17} "
          f"{'within 5% at 1/3':>17}")
    for name, row in rows.items():
        print(f"{name:<8} {row['median_configs_to_within_5pct']:>21} {row['median_configs_to_optimum']:>23} "
              f"{row['median_best_at_third_of_grid']:>17.3f} {row['seeds_within_5pct_at_third']:>13}/{args.seeds}")
    path = write_result(f"search-vs-random-sim-{args.scenario}", {
        "machine": machine(), "model": MODEL, "gpu": GPU, "workload": WORKLOAD, "slo": slo, "users": users,
        "objective": objective, "configs_within_5pct": within,
        "num_requests": args.num_requests, "space": space.describe(), "grid_size": len(grid),
        "grid_seconds": grid_seconds, "optimum": optimum, "feasible": len(feasible), "ruled_out_by_planner": unfit,
        "third_of_grid": cap, "methods": rows,
        "grid": [{"point": p, "value": o["value"], "constraints": o["constraints"], "capacity": o["capacity"]}
                 for p, o in zip(grid, outcomes, strict=True)]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
