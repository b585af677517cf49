"""The `tunekv` command line. Bad input: one sentence on stderr, exit 2; run-time failure: exit 1."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from typing import NoReturn

from tunekv import __version__
from tunekv.cli import EXIT_INTERRUPTED
from tunekv.defaults import (
    CPU_MODEL,
    CPU_SLO,
    ENDPOINT_REQUEST_TIMEOUT_S,
    FLEET_BUDGET,
    FLEET_GPUS,
    FLEET_OUT,
    GPU_MODEL,
    GPU_SLO,
    REQUESTS_PER_USER_SEARCH,
)
from tunekv.engine.config import DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, EngineConfig
from tunekv.engine.errors import ConfigError
from tunekv.errors import BadInput, RunFailure
from tunekv.export import FORMATS as EXPORT_FORMATS
from tunekv.search.options import DEFAULT_OUT, SERVERS, STARTUP_TIMEOUT, SearchOptions

EXIT_BAD_INPUT = 2
# Each command's code is imported only when it runs, so `tunekv --help` stays fast.
COMMANDS = {"bench": ("tunekv.cli.bench", "bench_command"), "probe": ("tunekv.cli.plan", "probe_command"),
            "plan": ("tunekv.cli.plan", "plan_command"), "calibrate": ("tunekv.cli.plan", "calibrate_command"),
            "search": ("tunekv.cli.search", "search_command"), "export": ("tunekv.cli.export", "export_command"),
            "serve": ("tunekv.cli.serve", "serve_command")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineConfig field (vLLM's spelling: --block-size, --max-num-seqs, ...)."""
    group = parser.add_argument_group("engine settings (override --config)")
    for f in dataclasses.fields(EngineConfig):
        if f.name in ("model", "seed"):  # --model and --seed (workload and engine) are the bench's own
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.type in ("float", float):
            group.add_argument(flag, type=float, default=None)
        elif "int" in str(f.type):
            group.add_argument(flag, type=int, default=None)
        else:
            group.add_argument(flag, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunekv", description="Find the LLM-serving settings that give the most throughput "
                                                "under your latency targets.")
    parser.add_argument("--version", action="version", version=f"tunekv {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    bench = sub.add_parser("bench", help="one measured run of the engine on a workload",
                           description="Run a workload through tunekv's engine (or, with --simulate, predict it; "
                                       "with --endpoint, send it to a running server) and report throughput and "
                                       "TTFT/TPOT/ITL/E2E percentiles.")
    bench.add_argument("--model", help="preset name or local HF model directory (default: the config's model, "
                                       f"else {GPU_MODEL} on a GPU and {CPU_MODEL} on a CPU)")
    bench.add_argument("--workload", default="chat", help="preset (chat, rag, batch, nano-vllm), a .yaml file or a "
                                                          "trace: .jsonl (tunekv's, Mooncake's), .csv (Azure's, "
                                                          "BurstGPT's) or .json (a ShareGPT dataset)")
    bench.add_argument("--config", help="tunekv config YAML (flat EngineConfig keys); flags override it")
    load = bench.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals at R requests/s")
    load.add_argument("--concurrency", type=int, help="closed loop: N users, each sends when its last finishes")
    load.add_argument("--offline", action="store_true", help="submit everything at once (pure throughput)")
    bench.add_argument("--burst", type=int, default=1, help="with --rate: requests arrive in bursts of this size")
    bench.add_argument("--burstiness", type=float, default=1.0,
                       help="with --rate: gamma-distributed gaps of this shape, as vllm bench serve's (1: Poisson, "
                            "below 1 burstier, above 1 more even, inf evenly spaced)")
    bench.add_argument("--max-concurrency", type=int,
                       help="with --rate or a trace: at most N requests in flight; an arrival waits for a free slot "
                            "and its TTFT counts from when it is sent (as vllm bench serve's)")
    bench.add_argument("--trace-speedup", type=float,
                       help="replay a trace's arrival times X times faster (0.5: at half its rate); with "
                            "--find-capacity, the pace the search starts from")
    bench.add_argument("--num-requests", type=int, help="override the workload's request count")
    bench.add_argument("--seed", type=int, help="the workload's and the engine's seed: same seed, same requests "
                                                 "(default: the config's seed, else 0)")
    bench.add_argument("--warmup", type=int, help="requests run but not measured (default: a tenth of an online "
                                                  "run's, at most 20; 0 offline)")
    bench.add_argument("--slo", help="targets like ttft_p99=500ms,itl_p99=50ms, or interactive|relaxed|batch")
    bench.add_argument("--find-capacity", action="store_true",
                       help="find the highest load whose p99s stay within --slo (doubling, then bisection): req/s "
                            "from --rate, users from --concurrency, on a trace a multiple of its pace (from "
                            "--trace-speedup or 1x), else users from 1")
    bench.add_argument("--compare", help="FIELD=V1,V2: run each variant on the same requests (and the same KV "
                                         "pool unless FIELD sizes it), e.g. kv_policy=paged,contiguous")
    bench.add_argument("--sweep", help="concurrency=1,8,32, rate=1,2,4 or (a trace) trace-speedup=0.5,1,2: one run per "
                                       "level (per variant)")
    bench.add_argument("--simulate", action="store_true",
                       help="predict instead of run: the engine's scheduler on a virtual clock with the calibrated "
                            "step-cost model (result marked simulated)")
    bench.add_argument("--gpu", help="with --simulate: a GPU preset to simulate (default: this device)")
    bench.add_argument("--json", dest="json_path", help="write the result JSON here")
    remote = bench.add_argument_group("a running server instead of tunekv's engine")
    remote.add_argument("--endpoint", action="append", metavar="URL",
                        help="an OpenAI-compatible server (its root or /v1): vLLM, SGLang, TGI, tunekv serve; "
                             "repeat to run the same requests against each, one after the other")
    remote.add_argument("--served-model", help="the model name to send (default: the first /v1/models lists)")
    remote.add_argument("--tokenizer", help="the served model's HF directory: its vocabulary, and text prompts "
                                            "where the server takes no token ids")
    remote.add_argument("--api", choices=("completions", "chat"), default="completions",
                        help="/v1/completions (default; token-id prompts where taken) or /v1/chat/completions")
    remote.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY); never printed")
    remote.add_argument("--request-timeout", type=float, default=ENDPOINT_REQUEST_TIMEOUT_S,
                        help=f"seconds one request may take before it counts as failed "
                             f"(default {ENDPOINT_REQUEST_TIMEOUT_S:g})")
    _engine_flags(bench)

    probe = sub.add_parser("probe", help="the local GPUs through NVML (or why there are none)",
                           description="Show every GPU NVML sees: memory, utilisation, temperature, power, "
                                       "compute capability, driver and CUDA versions, links and processes.")
    probe.add_argument("--json", action="store_true", help="print JSON instead of tables")

    plan = sub.add_parser("plan", help="memory and capacity plan for a model on a GPU, without a run",
                          description="Where the GPU memory goes (weights, activations, CUDA graphs, KV cache) and "
                                      "how many sequences the KV pool holds, paged and contiguous.")
    plan.add_argument("--model", default=GPU_MODEL, help="preset name or local HF model directory "
                                                         f"(default: {GPU_MODEL})")
    plan.add_argument("--gpu", help="local (measure this machine's GPU; an estimate with --tp above 1 or "
                                    "--quantization) or a GPU preset (default: local if a GPU is here, else h100-80gb)")
    plan.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    plan.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    plan.add_argument("--block-size", type=int, default=EngineConfig.block_size)
    plan.add_argument("--max-model-len", type=int, help="default: the model's max_position_embeddings")
    plan.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    plan.add_argument("--max-num-batched-tokens", type=int)
    plan.add_argument("--gpu-memory-utilization", type=float, default=EngineConfig.gpu_memory_utilization)
    plan.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (and no graph memory)")
    plan.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                      help="auto (the model's dtype) or fp8 (one byte a KV element, as vLLM's fp8 e4m3)")
    plan.add_argument("--quantization", choices=QUANTIZATIONS,
                      help="size the weights as this format loads them (an estimate; tunekv's engine runs "
                           "unquantized weights)")
    plan.add_argument("--workload", help="preset or file: adds the concurrency at the workload's mean length")
    plan.add_argument("--json", action="store_true", help="print the plan JSON")
    fleet = plan.add_argument_group(
        "a fleet for a target load",
        "a short search per GPU type (simulated on a preset, real trials on local); it searches the engine settings "
        "(tp, batch limits, block size, KV dtype), so only --model, --dtype, --quantization and --workload "
        "of the flags above apply")
    fleet.add_argument("--target-load", help="the load at peak, such as 40rps or 2000users: which GPU, how many, "
                                            "in what layout, at what cost")
    fleet.add_argument("--gpus",
                       help="GPU presets to compare, and local for this machine's device (measured), comma-separated "
                            f"(default {','.join(FLEET_GPUS)})")
    fleet.add_argument("--slo", help=f"SLO profile or targets (default {GPU_SLO})")
    fleet.add_argument("--budget", help="wall clock for all the searches: local gets half, the presets share the "
                                        f"rest equally (default {FLEET_BUDGET})")
    fleet.add_argument("--price", action="append", default=[],
                       help="KEY=USD per GPU-hour, repeatable or comma-joined (overrides the preset and "
                            "$TUNEKV_HOME/prices.yaml)")
    fleet.add_argument("--num-requests", type=int, help="requests a run draws (default: the workload's)")
    fleet.add_argument("--out", help=f"the searches' study and the report (default {FLEET_OUT})")

    cal = sub.add_parser("calibrate", help="fit the simulator's step-cost model to this device",
                         description="Time the real engine's steps over decode batches, prefill chunks and "
                                     "workload runs, fit the step-cost model and save it for this device and model.")
    cal.add_argument("--model", help=f"preset name or local HF model directory (default: {GPU_MODEL} on a GPU, "
                                     f"{CPU_MODEL} on a CPU)")
    cal.add_argument("--workload", default="chat,rag", help="comma-separated workloads for mixed steps")
    cal.add_argument("--budget", default="2m", help="time for the probes, e.g. 90s or 5m (default 2m)")
    cal.add_argument("--max-model-len", type=int, help="default: the model's maximum, at most 4096")
    cal.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    cal.add_argument("--max-num-batched-tokens", type=int)
    cal.add_argument("--dtype", default="auto")
    cal.add_argument("--device", default="auto", help="auto, cuda or cpu")
    cal.add_argument("--json", action="store_true", help="print the fit as JSON")
    add_search_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    return parser


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the engine as an OpenAI-compatible HTTP API, with Prometheus metrics",
                       description="/v1/completions and /v1/chat/completions (streamed or not), /v1/models, /health, "
                                   "/version and /metrics (vLLM's metric names with a tunekv: prefix).")
    p.add_argument("--config", help="tunekv config YAML, as `tunekv search` writes it; flags override it")
    p.add_argument("--model", help="preset name or local HF model directory (default: the config's model, "
                                   f"else {GPU_MODEL} on a GPU and {CPU_MODEL} on a CPU)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="the model name(s) clients send; responses carry the first (default: the model as given by "
                        "--model or the config)")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="require this bearer token on /v1 (repeat for several; default: $TUNEKV_API_KEY); /health, "
                        "/version and /metrics stay open, as in vLLM")
    p.add_argument("--shutdown-timeout", type=int, default=30,
                   help="seconds requests in flight get to finish after SIGTERM or Ctrl-C (default 30)")
    p.add_argument("--seed", type=int, help="the engine's sampling seed (default: the config's seed, else 0)")
    _engine_flags(p)


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    defaults = SearchOptions()
    p = sub.add_parser("search", help="search the engine settings for the most throughput under an SLO",
                       description="Optuna search over block size, batch limits, max model length, memory "
                                   "utilisation, chunked prefill, prefix caching, KV policy, KV cache dtype and "
                                   "tensor-parallel size: the planner rules out "
                                   "what cannot fit, the simulator ranks, real runs confirm, the best are certified.")
    p.add_argument("--budget", default=defaults.budget,
                   help=f"wall clock for the whole search: 90s, 30m, 2h, 1h30m (default {defaults.budget})")
    p.add_argument("--model", help=f"preset or local HF model directory (default: {GPU_MODEL} on a GPU, "
                                   f"{CPU_MODEL} on a CPU, a demonstration)")
    p.add_argument("--workload", default=defaults.workload,
                   help="preset (chat, rag, batch, nano-vllm), .yaml, or a .jsonl, .csv or .json trace")
    p.add_argument("--slo", help="ttft_p99=500ms,itl_p99=50ms, interactive|relaxed|batch or a YAML file "
                                 f"(default: {GPU_SLO} on a GPU, {CPU_SLO} on a CPU)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="objective at a fixed Poisson load (req/s) instead of capacity")
    load.add_argument("--concurrency", type=int, help="objective at a fixed number of users instead of capacity")
    load.add_argument("--trace-speedup", type=float,
                      help="objective at a trace's own arrival times X times faster (0.5: at half its pace) instead "
                           "of the fastest pace that holds the SLO")
    p.add_argument("--fix", action="append", default=defaults.fix, help="pin knobs: --fix block_size=16 (repeatable)")
    p.add_argument("--range", action="append", default=defaults.range,
                   help="bound knobs: --range max_num_seqs=32:512 (repeatable)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///f.db, journal:FILE (several processes on one host) or "
                                     "postgresql+psycopg2://user:pw@host/db (several machines); default: an SQLite "
                                     "file in --out")
    p.add_argument("--study", help="study name (default: derived from model, workload and settings, so re-running "
                                   "the same command resumes)")
    p.add_argument("--out", default=defaults.out, help=f"output directory (default {defaults.out})")
    p.add_argument("--num-requests", type=int, help="requests per run (default: the workload's; a capacity probe "
                                                    f"sends at least {REQUESTS_PER_USER_SEARCH} a user)")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help=f"the workload's and the engine's seed, written into the exports (default {defaults.seed})")
    p.add_argument("--dtype", default=defaults.dtype, choices=DTYPES,
                   help="model dtype (default auto: bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--quantization", choices=QUANTIZATIONS,
                   help="the weights' format: sizes and simulates them; real trials need a server that loads them "
                        "(--server vllm, sglang or tgi), as tunekv's engine runs unquantized weights")
    p.add_argument("--simulate", action="store_true", help="simulated trials only (no real runs)")
    p.add_argument("--gpu", help="simulate this GPU preset instead of using the local device (implies --simulate)")
    p.add_argument("--json-lines", action="store_true", help="print one JSON event per line instead of the live table")
    p.add_argument("--target-load", help="the load at peak, such as 40rps or 2000users: the summary and report add "
                                         "the fleet the best config needs (replicas x tp, GPUs, cost)")
    p.add_argument("--price", action="append", default=[],
                   help="KEY=USD per GPU-hour for --target-load (KEY: a GPU preset, or local for this device)")
    server = p.add_argument_group("a real server", "measure a server over HTTP instead of tunekv's engine in this "
                                                   "process: launched per config (its start-up counts in the budget), "
                                                   "or running already")
    server.add_argument("--server", choices=SERVERS,
                        help="launch this server with each real or certified config (vllm serve, python -m "
                             "sglang.launch_server, text-generation-launcher, tunekv serve) on 127.0.0.1")
    server.add_argument("--server-cmd", metavar="TEMPLATE",
                        help="launch any server: a command line with {port} and optional {host}, {model} and "
                             "{knob} placeholders (only the knobs named are searched)")
    server.add_argument("--health", metavar="PATH", help="--server-cmd's health path (default /health)")
    server.add_argument("--endpoint", metavar="URL",
                        help="a running OpenAI-compatible deployment: its capacity under the SLO (no knobs)")
    server.add_argument("--served-model", metavar="NAME", help="--endpoint's model name, when it serves several")
    server.add_argument("--tokenizer", metavar="DIR",
                        help="the served model's tokenizer, for servers that take text prompts (TGI)")
    server.add_argument("--startup-timeout", metavar="DURATION",
                        help=f"how long a launched server may take to answer healthy (default {STARTUP_TIMEOUT})")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the best config of a search as tunekv, vLLM, SGLang or TGI config, or a report",
                       description="Write the best trial of a study (certified > real > simulated, then throughput).")
    p.add_argument("--study", required=True, help="study name (tunekv search prints it)")
    p.add_argument("--storage", help=f"the search's storage (default: the SQLite file in ./{DEFAULT_OUT})")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--out", help="file to write (default: standard output); for report a directory "
                                 "(default: STUDY-report)")
    p.add_argument("--target-load", help="with --format report: add the fleet the best config needs for this load "
                                         "at peak, such as 40rps or 2000users")
    p.add_argument("--price", action="append", default=[],
                   help="KEY=USD per GPU-hour for --target-load (KEY: the study's GPU preset, or local)")


def join_negative_values(argv: list[str]) -> list[str]:
    """``--budget -5m`` -> ``--budget=-5m``: argparse takes a token that starts with '-' and a
    digit or '.' for an option and says "expected one argument"; joined, the value reaches its
    parser, which says what is wrong with it. No option of ours starts with a digit or '.'."""
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if (re.match(r"-[\d.]", token) and previous.startswith("--") and "=" not in previous
                and previous != "--"):
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.print_help()
            print("\n`tunekv` alone opens the terminal app, which needs a terminal; the commands above run anywhere.")
            return 0
        from tunekv.tui import run_tui

        return run_tui()
    module, function = COMMANDS[args.command]
    try:
        return getattr(importlib.import_module(module), function)(args)
    except (BadInput, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a run-time failure: short reason on screen, the traceback in a log
        log = _write_log()
        print(f"error: {type(exc).__name__}: {exc} (details: {log})", file=sys.stderr)
        return 1


def _write_log() -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="tunekv-error-", suffix=".log")
    with open(fd, "w") as f:
        traceback.print_exc(file=f)
    return path


if __name__ == "__main__":
    sys.exit(main())
