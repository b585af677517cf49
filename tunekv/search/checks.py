"""The checks of a search's settings that need no model, engine or study: the budget, the names,
the SLO, the workload and its load, the GPU preset, the server to measure (its flags, its program on
PATH) and quantization against it. `tunekv search` runs them before torch and
optuna load, so a typo is answered at once; ``prepare_search`` runs them first."""

from __future__ import annotations

from dataclasses import dataclass

from tunekv.errors import BadInput, shorten
from tunekv.hardware.gpus import GpuSpec, gpu_preset
from tunekv.measure.endpoint import api_base
from tunekv.search.options import MIN_BUDGET_S, SERVERS, STARTUP_TIMEOUT, SearchOptions
from tunekv.search.server_spec import ServerSpec, check_server, server_knobs
from tunekv.units import parse_duration
from tunekv.workload.loadgen import Load, check_arrival_span
from tunekv.workload.metrics import SLO, parse_slo
from tunekv.workload.traces import MAX_REQUESTS
from tunekv.workload.workloads import Workload, load_workload

__all__ = ["MAX_STORAGE_URL", "MAX_STUDY_NAME", "CheckedOptions", "check_options"]

MAX_STUDY_NAME = 128      # characters: a study name is a key in the storage and appears in every hint
MAX_STORAGE_URL = 2048    # characters of a --storage URL


@dataclass(frozen=True)
class CheckedOptions:
    """What the settings say, read and checked: the budget in seconds, whether the search only
    simulates, the SLO (None: the device's default), the workload, a fixed load (None: the
    capacity search picks it), the simulated GPU preset (None: this machine) and the server."""

    budget_s: float
    simulate_only: bool
    slo: SLO | None
    workload: Workload
    load: Load | None
    preset: GpuSpec | None
    server: ServerSpec | None   # the server measured (None: tunekv's engine in this process)
    startup_s: float            # a launched server's start-up limit


def check_options(opts: SearchOptions) -> CheckedOptions:
    """BadInput, one sentence, for the first setting that is wrong."""
    budget = parse_duration(opts.budget)
    simulate_only = opts.simulate or opts.gpu is not None
    least = MIN_BUDGET_S["simulate" if simulate_only else "real"]
    if budget < least:
        kind = "simulated" if simulate_only else "real"
        raise BadInput(f"--budget {shorten(opts.budget.strip())} is too short to "
                       f"{'rank' if simulate_only else 'measure'} anything; a {kind} search needs at least {least:g}s")
    if opts.study is not None and not 1 <= len(opts.study) <= MAX_STUDY_NAME:
        raise BadInput(f"--study takes a name of 1 to {MAX_STUDY_NAME} characters, got {len(opts.study)}")
    if opts.storage is not None and len(opts.storage) > MAX_STORAGE_URL:
        raise BadInput(f"--storage takes a URL of at most {MAX_STORAGE_URL} characters, got {len(opts.storage)}")
    slo = None if opts.slo is None else parse_slo(opts.slo)
    workload = load_workload(opts.workload)
    given = opts.fixed_load_flags()
    if len(given) > 1:
        raise BadInput(f"{given[0]} and {given[1]} exclude each other; give one")
    load = Load(rate=opts.rate) if opts.rate is not None else (
        Load(concurrency=opts.concurrency) if opts.concurrency is not None else None)
    if opts.num_requests is not None and not 1 <= opts.num_requests <= MAX_REQUESTS:
        raise BadInput(f"--num-requests must be an integer from 1 to {MAX_REQUESTS}, got {opts.num_requests}")
    count = workload.count(opts.num_requests)
    span = 0.0
    if opts.trace_speedup is not None:
        times = [row["arrival_s"] for row in (workload.trace or [])[:count] if row.get("arrival_s") is not None]
        if not times:
            raise BadInput(f"--trace-speedup scales a trace's arrival times: workload {workload.name} has none")
        load, span = Load(trace=True, speedup=opts.trace_speedup), max(times)
    if load is not None:
        check_arrival_span(load, count, span)
    preset = gpu_preset(opts.gpu) if opts.gpu not in (None, "local") else None
    server, startup_s = _server_spec(opts, simulate_only)
    _check_quantization(opts.quantization, server, simulate_only)
    return CheckedOptions(budget, simulate_only, slo, workload, load, preset, server, startup_s)


def _server_spec(opts: SearchOptions, simulate_only: bool) -> tuple[ServerSpec | None, float]:
    """The server a search measures (None: tunekv's engine in this process) and its start-up
    timeout in seconds; BadInput for flags that contradict each other."""
    given = [flag for flag, value in (("--server", opts.server), ("--server-cmd", opts.server_cmd),
                                      ("--endpoint", opts.endpoint)) if value is not None]
    if len(given) > 1:
        raise BadInput(f"{given[0]} and {given[1]} exclude each other: give one server to measure")
    if given and simulate_only:
        raise BadInput(f"{given[0]} measures a server; --simulate and --gpu only simulate: give one or the other")
    if opts.health is not None and opts.server_cmd is None:
        raise BadInput("--health goes with --server-cmd (the health paths of vllm, sglang, tgi and tunekv are known)")
    if opts.health is not None and not (opts.health.startswith("/") and len(opts.health) <= 256
                                        and opts.health.isprintable() and " " not in opts.health):
        raise BadInput(f"--health takes a URL path such as /health, got {shorten(opts.health)!r}")
    if opts.served_model is not None and opts.endpoint is None:
        raise BadInput("--served-model goes with --endpoint (a launched server serves the one --model)")
    startup_s = parse_duration(opts.startup_timeout or STARTUP_TIMEOUT, "--startup-timeout")
    server: ServerSpec | None = None
    if opts.server is not None:
        if opts.server not in SERVERS:
            raise BadInput(f"--server takes {', '.join(SERVERS)}, got {shorten(opts.server)!r}")
        server = ServerSpec(next(kind for kind in SERVERS if kind == opts.server))
    elif opts.server_cmd is not None:
        server = ServerSpec("command", command=opts.server_cmd, health=opts.health or "/health")
        server_knobs(server)   # the template's placeholders, checked
    elif opts.endpoint is not None:
        api_base(opts.endpoint)   # an http(s) URL, checked before anything loads
        server = ServerSpec("endpoint", endpoint=opts.endpoint)
    if server is not None:
        check_server(server)
    return server, startup_s


def _check_quantization(method: str | None, server: ServerSpec | None, simulate_only: bool) -> None:
    """Quantized weights are sized and simulated, and measured on a server that loads them; tunekv's
    engine runs unquantized weights, so a search that would run it on them is bad input."""
    if method is None or simulate_only or (server is not None and server.kind not in ("tunekv", "endpoint")):
        return
    if server is not None and server.kind == "endpoint":
        raise BadInput(f"--quantization {method} sizes the configs a search launches; --endpoint measures a "
                       "deployment as it runs: leave --quantization out")
    raise BadInput(f"--quantization {method}: tunekv's engine runs unquantized weights; simulate them (--gpu PRESET "
                   "or --simulate) or measure a server that loads them (--server vllm, sglang or tgi)")
