"""One search from its settings to its exports, shared by `tunekv search` and the TUI.

``prepare_search`` checks every setting (bad input raises ``BadInput``/``ValueError`` before
anything runs), opens or resumes the study and builds the task, the space and the real-trial
runner; ``write_exports`` writes the best trial's configs and report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from tunekv.defaults import default_model, default_slo, warmup_requests
from tunekv.engine.errors import ConfigError
from tunekv.errors import BadInput, NoCalibration, shorten
from tunekv.export import EXPORTERS, FILE_NAMES, Best, model_source
from tunekv.fileio import check_output_path, write_atomic
from tunekv.hardware.gpus import GpuSpec, gpu_preset, local_gpu_spec
from tunekv.measure.endpoint import Target, open_target
from tunekv.search.checks import CheckedOptions, check_options
from tunekv.search.ladder import Event, Search, best_trial
from tunekv.search.options import SearchOptions
from tunekv.search.report import write_report
from tunekv.search.server_spec import ServerSpec, server_knobs
from tunekv.search.servers import ServerRunner, for_server
from tunekv.search.space import (
    SearchSpace,
    check_fixed_consistent,
    default_space,
    model_lengths,
    named_knobs,
    restrict,
)
from tunekv.search.storage import default_url, mask, open_storage
from tunekv.search.trials import RealRunner, SearchTask, TrialRunner, config_of
from tunekv.units import rate_text
from tunekv.workload.metrics import SLO, parse_slo
from tunekv.workload.workloads import Workload

if TYPE_CHECKING:
    from tunekv.search.fleetplan import FleetPlan

SPEC_KEYS = ("model", "dtype", "gpu", "workload", "workload_digest", "num_requests", "seed", "slo", "load", "space",
             "simulate_only", "server", "quantization", "capacity_unit")
# Keys added after studies were stored: their value in those studies. A spec with this value keeps
# the study name it had before the key existed.
SPEC_DEFAULTS = {"capacity_unit": "users"}


@dataclass
class PreparedSearch:
    """A checked search, ready to run: its study (new or resumed), task, space and runner."""

    options: SearchOptions
    budget_s: float
    started: float                     # time.monotonic() when the budget began
    study: optuna.Study
    name: str
    url: str
    out: Path
    task: SearchTask
    space: SearchSpace
    full_space: SearchSpace            # before --fix/--range: what a pin may choose from
    model_max_len: int
    runner: TrialRunner | None
    needs_calibration: bool
    simulate_only: bool
    model_name: str
    model_weights: str                 # "local weights" or "random weights"
    gpu_name: str
    workload: Workload
    slo: SLO
    server: ServerSpec | None = None   # the server measured (None: tunekv's engine in this process)

    def make_search(self, on_event: Callable[[Event], None]) -> Search:
        return Search(self.study, self.task, self.space, self.budget_s, self.simulate_only, self.runner, on_event,
                      started=self.started)

    def pinned(self, pins: dict[str, Any]) -> SearchSpace:
        """The space with ``pins`` (knob -> value) added to the options' --fix; ValueError when a
        pin is not a candidate or contradicts vLLM's rules, exactly as --fix would."""
        if self.server is not None and set(pins) - set(server_knobs(self.server)):
            lacking = ", ".join(sorted(set(pins) - set(server_knobs(self.server))))
            raise BadInput(f"{self.server.name} has no {lacking} to pin")
        def unpinned(specs: list[str]) -> list[str]:   # the user's --fix or --range parts on other knobs
            return [part for spec in specs for part in spec.split(",") if part.partition("=")[0].strip() not in pins]

        fixes = unpinned(self.options.fix) + [f"{k}={_flag_value(v)}" for k, v in pins.items()]
        ranges = unpinned(self.options.range)
        space = restrict(self.full_space, fixes, ranges, self.model_max_len)
        check_fixed_consistent(space)
        return space

    def headline(self) -> str:
        previous = len(self.study.trials)
        demo = "a CPU demonstration (the method, with this CPU's figures; a GPU finds configs to deploy): " if (
            self.task.gpu is None) else ""
        if self.server is not None and self.server.kind == "endpoint":
            demo = f"the capacity of the deployment at {self.server.endpoint} under the SLO: "
        elif self.server is not None:
            demo = f"{demo}{self.server.name} launched per config, "
        weights = self.model_weights + (f", {self.options.quantization}-quantized as a server loads them"
                                        if self.options.quantization else "")
        rate = self.task.pace_rate
        pace = "" if rate is None else (f", replayed at its arrival times: capacity as a multiple of its pace, "
                                        f"{rate_text(rate)} req/s at 1x")
        return (f"{demo}{self.model_name} ({weights}) on {self.gpu_name}; workload {self.workload.name} "
                f"({len(self.task.requests)} requests{pace}); SLO {self.slo.describe()}; budget {self.options.budget}; "
                f"study {self.name} in {mask(self.url)}" + (f" ({previous} trials already)" if previous else ""))


def tp_candidates(mc, on_gpu: bool) -> tuple[int, ...]:
    """Tensor-parallel sizes to search: on a GPU (local or a preset) every size up to 8 that splits
    the model (real runs go up to this machine's GPU count, the simulator beyond it); on the CPU 1."""
    from tunekv.engine.config import TP_SIZES

    return tuple(t for t in TP_SIZES if mc.tp_problem(t) is None) if on_gpu else (1,)


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def prepare_search(opts: SearchOptions, say: Callable[[str], None], started: float | None = None,
                   checked: CheckedOptions | None = None) -> PreparedSearch:
    """Check the settings and open the study; ``say`` gets one-line remarks (the default model).
    ``checked``: what ``check_options`` already made of ``opts`` (the CLI checks before torch loads)."""
    started = time.monotonic() if started is None else started
    checked = check_options(opts) if checked is None else checked
    budget, simulate_only, slo, workload, load, preset = (checked.budget_s, checked.simulate_only, checked.slo,
                                                          checked.workload, checked.load, checked.preset)
    server, startup_s = checked.server, checked.startup_s
    import torch

    from tunekv.engine.memory import resolve_dtype
    from tunekv.engine.model_config import load_model_config
    from tunekv.workload.tokenizer import load_tokenizer

    given_tokenizer = None
    if opts.tokenizer is not None:
        given_tokenizer = load_tokenizer(opts.tokenizer)
        if given_tokenizer is None:
            raise BadInput(f"--tokenizer {shorten(opts.tokenizer)}: no Hugging Face tokenizer loads from it")
    target: Target | None = None
    if server is not None and server.kind == "endpoint":
        assert opts.endpoint is not None, "an endpoint search has its URL"
        target = open_target(opts.endpoint, opts.served_model, "completions",
                             os.environ.get("OPENAI_API_KEY") or None, given_tokenizer)
        server = dataclasses.replace(server, endpoint=target.url)
    on_gpu = preset is not None or torch.cuda.is_available()
    model = opts.model or (target.model if target is not None else default_model(on_gpu))
    if opts.model is None:
        whose = "the deployment's" if target is not None else f"the default on {'a GPU' if on_gpu else 'a CPU'}"
        say(f"model: {model} ({whose}; --model to choose)")
    if slo is None:
        slo = parse_slo(default_slo(on_gpu))
        say(f"SLO: {default_slo(on_gpu)}, {slo.describe()} (the default on {'a GPU' if on_gpu else 'a CPU'}; "
            f"--slo to choose)")
    try:
        mc = load_model_config(model)
    except ConfigError as exc:
        if target is None or opts.model is not None:
            raise
        raise BadInput(f"cannot read {shorten(model)!r}, the deployment's model, here ({exc}); give --model, its "
                       "preset or local directory") from None
    limit = min(mc.max_position_embeddings, (target.max_model_len if target else None) or mc.max_position_embeddings)
    workload = workload.fit_to(limit)
    whose = "the deployment's max_model_len" if limit < mc.max_position_embeddings else \
        f"{mc.name}'s max_position_embeddings"
    workload.check_fits(limit, whose, opts.num_requests)  # before any token is drawn
    note = workload.clip_note(whose)
    if note is not None:
        say(note)
    tokenizer = given_tokenizer or (load_tokenizer(mc.path) if workload.trace is not None or server is not None
                                    else None)
    if server is not None and server.kind == "tgi" and tokenizer is None:
        raise BadInput("--server tgi takes text prompts: give --model a local model directory, or --tokenizer DIR")
    requests = workload.requests(opts.seed, mc.hf_config.vocab_size, tokenizer, opts.num_requests)
    # Every run draws more requests as users grow: max_model_len must hold any the workload can send.
    workload.check_fits(limit, whose, requests=requests)
    need = workload.longest_request(requests)
    full_space = default_space(model_lengths(need, mc.max_position_embeddings), tp_candidates(mc, on_gpu), on_gpu)
    if server is not None:
        full_space = for_server(full_space, server, named_knobs(opts.fix, opts.range))
    space = restrict(full_space, opts.fix, opts.range, mc.max_position_embeddings)
    check_fixed_consistent(space)
    device = "cuda" if on_gpu else "cpu"
    dtype = str(resolve_dtype(opts.dtype, torch.device(device), getattr(mc.hf_config, "dtype", None))
                ).removeprefix("torch.")
    base: dict[str, Any] = {"model": model, "dtype": opts.dtype, "seed": opts.seed}
    if opts.quantization is not None:
        base["quantization"] = opts.quantization
    gpu: GpuSpec | None = preset if preset is not None else (local_gpu_spec() if on_gpu else None)
    warmup = warmup_requests(len(requests))
    local_gpus = torch.cuda.device_count() if preset is None and on_gpu else 0
    task = SearchTask(workload, requests, slo, load, opts.seed, warmup, base, gpu, preset.key if preset else None,
                      local_gpus)
    gpu_name = (f"{preset.name} (simulated from the {preset.key} preset)" if preset else
                "the deployment's (not probed)" if target is not None else
                gpu.name if gpu else f"cpu ({torch.get_num_threads()} threads)")
    max_prompt = (max(len(r.prompt_token_ids) for r in requests) if workload.trace is not None
                  else workload.prompt_len.upper)
    spec = {"model": mc.name, "model_source": model_source(model, str(mc.path) if mc.path else None), "dtype": dtype,
            "gpu": gpu_name, "gpu_preset": gpu.key if gpu and gpu.key != "local" else None,
            "workload": workload.name, "num_requests": len(requests), "seed": opts.seed, "slo": slo.describe(),
            "slo_ms": {"ttft_p99": slo.ttft_p99_ms, "itl_p99": slo.itl_p99_ms},
            "load": load.describe() if load else None, "space": space.describe(), "simulate_only": simulate_only,
            "max_prompt_tokens": max_prompt,
            "workload_digest": workload.digest(), "workload_clipped_to": workload.max_total, "base": base,
            "quantization": opts.quantization,
            "server": None if server is None else server.to_json(),
            # what the capacity search counts (a fixed load is "load"): users, or x a trace's pace
            "capacity_unit": "x" if task.pace_rate is not None else "users", "trace_req_s_at_1x": task.pace_rate}
    named = {k: spec[k] for k in SPEC_KEYS if k not in SPEC_DEFAULTS or spec[k] != SPEC_DEFAULTS[k]}
    digest = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:8]
    name = opts.study or f"{mc.name}-{workload.name}-{digest}"
    needs_calibration = False
    if target is None and (not simulate_only or preset is None):
        needs_calibration = not _can_simulate(task, space)
        if needs_calibration and simulate_only:
            raise BadInput(f"there is no step-cost calibration for {mc.name} on this device to simulate with; run "
                           f"`tunekv calibrate --model {shorten(model)}` or search without --simulate")
    out = out_dir(opts.out)   # everything above is checked: only now is anything created
    url = opts.storage or default_url(out)
    storage = open_storage(url)
    study = open_study(storage, name, spec, url)
    runner: TrialRunner | None = None
    if server is not None:
        calibrator = None if target is not None else RealRunner(task, max(space.values("max_model_len")))
        runner = ServerRunner(task, server, out, str(spec["model_source"]), dtype, max_prompt,
                              mc.hf_config.vocab_size, tokenizer, startup_s, calibrator, target)
    elif not simulate_only:
        runner = RealRunner(task, max(space.values("max_model_len")))
    return PreparedSearch(opts, budget, started, study, name, url, out, task, space, full_space,
                          mc.max_position_embeddings, runner, needs_calibration, simulate_only, mc.name,
                          "local weights" if mc.path else "random weights", gpu_name, workload, slo, server)


def write_exports(best: Best, study: optuna.Study, out: Path, fleet: FleetPlan | None = None) -> list[Path]:
    """Every export format and the report (with ``fleet``, the target load's fleet) into ``out``
    (each file written whole, then renamed); a deployment's capacity has no config to export, only
    its report."""
    paths = []
    for fmt, exporter in EXPORTERS.items():
        if not best.has_config:
            break
        path = out / FILE_NAMES[fmt]
        write_atomic(path, exporter(best))
        paths.append(path)
    paths.append(write_report(best, study, out, plan_of(best), fleet))
    return paths


def plan_of(best: Best):
    """The memory plan behind the best config, for a GPU preset (None on a CPU or an unknown card)."""
    from tunekv.engine import EngineConfig
    from tunekv.predict.planner import plan_for_gpu

    key = best.spec.get("gpu_preset")
    if key is None or not best.has_config:
        return None
    return plan_for_gpu(EngineConfig(**best.config), gpu_preset(key))


def best_of(study: optuna.Study) -> Best | None:
    trial = best_trial(study)
    if trial is None:
        return None
    assert trial.point is not None and trial.outcome is not None, "a feasible trial ran a config"
    return Best(study.study_name, study.user_attrs["spec"], trial.number, trial.fidelity, trial.point,
                trial.outcome.to_attrs())


def out_dir(path: str) -> Path:
    out = check_output_path(path, "--out", directory=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out {shorten(path)}: cannot create the directory ({exc.strerror or exc})") from None
    if not out.is_dir():
        raise BadInput(f"--out {shorten(path)} is not a directory")
    return out


def open_study(storage, name: str, spec: dict, url: str) -> optuna.Study:
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
    elif differ := [k for k in SPEC_KEYS if stored.get(k, SPEC_DEFAULTS.get(k)) != spec[k]]:
        if differ == ["capacity_unit"]:   # a trace's study from before its pace was searched
            raise BadInput(f"study {name} searched closed-loop users on this trace, which is searched at its own "
                           "arrival times now (its pace): --study NEW_NAME starts that search, and `tunekv export "
                           f"--study {name}` still reads the old one")
        raise BadInput(f"study {name} was made with other settings ({', '.join(differ)} differ); use the same "
                       "settings to resume it or --study NEW_NAME for a new search")
    return study


def _can_simulate(task: SearchTask, space: SearchSpace) -> bool:
    """False when this device has no step-cost calibration for the model yet."""
    from tunekv.predict.simulate import simulated_engine

    point = next(iter(space.grid()))
    try:
        simulated_engine(dataclasses.replace(config_of(task, point), num_kv_blocks=64), task.simulate_gpu)
    except NoCalibration:
        return False
    except (BadInput, ConfigError):  # this point cannot be simulated, but the device is calibrated
        pass
    return True
