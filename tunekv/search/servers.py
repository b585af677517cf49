"""Tuning a real server: the servers a search can launch, the knobs each one has, its command line
for a config, and the runner that starts it for every real or certified trial and measures it over
HTTP (or measures a running deployment, where only the load varies).

The command line comes from the same tables as the exports (``tunekv.export``): what was measured
is what is exported. A server that cannot start (it exits, runs out of memory, rejects a flag or
misses its health deadline) is an infeasible trial whose reason is its log's last lines; the
server is always stopped (SIGTERM to its process group, SIGKILL after a grace period), and the next
one starts only once the GPU memory it held is back.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tunekv.defaults import ENDPOINT_REQUEST_TIMEOUT_S
from tunekv.engine.config import BLOCK_SIZES
from tunekv.errors import BadInput, RunFailure
from tunekv.export import cli_flags, engine_config, sglang_args, tgi_flags, tgi_settings, vllm_args
from tunekv.fileio import write_atomic
from tunekv.hardware.probe import memory_used
from tunekv.measure.endpoint import Target, open_target, run_endpoint
from tunekv.measure.launch import (
    HOST,
    LaunchCut,
    LaunchFailed,
    RunningServer,
    ServerCommand,
    launch,
    log_tail,
    server_version,
    wait_memory_back,
)
from tunekv.measure.run import BenchPlan, RunResult
from tunekv.search.server_spec import ServerSpec, server_knobs
from tunekv.search.space import KNOBS, SearchSpace
from tunekv.search.trials import (
    MAX_USERS,
    Outcome,
    RealRunner,
    SearchTask,
    certify_outcome,
    config_of,
    infeasible,
    measure,
    pool_check,
)
from tunekv.workload.loadgen import Load

__all__ = ["ServerRunner", "for_server", "server_command"]

# A knob a server does not have is held at vLLM's default (the simulator still needs a value).
HELD = {"block_size": 16, "max_num_seqs": 256, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.90,
        "tensor_parallel_size": 1, "enable_chunked_prefill": True, "enable_prefix_caching": True, "kv_policy": "paged",
        "kv_cache_dtype": "auto"}
VLLM_BLOCK_SIZES = tuple(b for b in BLOCK_SIZES if b % 16 == 0)   # its CUDA attention backends
STARTUP_GUESS_S = {"tunekv": 20.0, "vllm": 150.0, "sglang": 150.0, "tgi": 180.0, "command": 150.0, "endpoint": 0.0}
STOP_GRACE_S = 30.0
WAIT_NOTE_EVERY_S = 15


def for_server(space: SearchSpace, spec: ServerSpec, pinned: set[str]) -> SearchSpace:
    """``space`` for ``spec``'s server: the knobs it lacks held (at vLLM's defaults, or the
    workload's max_model_len), vLLM's block sizes only; BadInput when the user pinned or bounded
    (``pinned``) a knob it lacks. A deployment has no knobs at all."""
    knobs = server_knobs(spec)
    lacking = sorted(pinned - set(knobs))
    if lacking:
        has = ", ".join(knobs) or "none, only the load varies"
        raise BadInput(f"{spec.name} has no {' or '.join(lacking)} to tune (knobs it takes: {has})")
    if spec.kind == "endpoint":
        return SearchSpace({}, {})
    choices = {k: v for k, v in space.choices.items() if k in knobs}
    fixed = {k: v for k, v in space.fixed.items() if k in knobs}
    for name in KNOBS:
        if name not in knobs:
            fixed[name] = HELD[name] if name in HELD else min(space.values(name))
    if spec.kind == "vllm" and "block_size" in choices:
        choices["block_size"] = tuple(b for b in choices["block_size"] if b in VLLM_BLOCK_SIZES)
    return SearchSpace(choices, fixed)


def server_command(spec: ServerSpec, config: dict[str, Any], model: str, dtype: str, max_prompt_tokens: int,
                   users: int, config_file: Path) -> ServerCommand:
    """How to start ``spec``'s server with ``config`` (EngineConfig fields): the export's tables
    as flags, the port left to the launch, 127.0.0.1 only. ``model`` is what production servers
    load (a Hugging Face name or a directory), ``users`` the most requests at once it must admit;
    tunekv serve reads ``config_file``, written here."""
    kind = spec.kind
    if kind == "tunekv":
        write_atomic(config_file, yaml.safe_dump(config, sort_keys=False))
        return ServerCommand("tunekv serve", lambda port: [
            sys.executable, "-m", "tunekv", "serve", "--config", str(config_file), "--host", HOST,
            "--port", str(port), "--shutdown-timeout", "5"])
    if kind == "vllm":
        args = vllm_args(config, model, dtype)
        flags = cli_flags({k: v for k, v in args.items() if k != "model"})
        return ServerCommand("vllm", lambda port: ["vllm", "serve", args["model"], *flags, "--host", HOST,
                                                   "--port", str(port)])
    if kind == "sglang":
        flags = cli_flags(sglang_args(config, model, dtype))
        return ServerCommand("sglang", lambda port: [sys.executable, "-m", "sglang.launch_server", *flags,
                                                     "--host", HOST, "--port", str(port)])
    if kind == "tgi":
        settings = tgi_settings(config, model, dtype, max_prompt_tokens, None, users)
        env = {"PREFIX_CACHING": str(settings["PREFIX_CACHING"])}
        return ServerCommand("tgi", lambda port: ["text-generation-launcher", *tgi_flags(settings),
                                                  "--hostname", HOST, "--port", str(port)], env=env)
    assert kind == "command" and spec.command is not None, f"no command line for a {kind} server"
    template = spec.command
    values = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in config.items() if k in KNOBS}

    def argv(port: int) -> list[str]:
        return shlex.split(template.format(port=port, host=HOST, model=model, **values))

    return ServerCommand(spec.name, argv, spec.health)


class ServerDied(Exception):
    """The server stopped during the load: the trial is infeasible, with this reason."""


class ServerRunner:
    """Real and certified trials on a server: launched per config (``--server``, ``--server-cmd``)
    or running already (``--endpoint``, ``target``: only the load varies). Calibration (for the
    simulator that ranks what to launch) runs tunekv's engine in this process, then frees it."""

    def __init__(self, task: SearchTask, spec: ServerSpec, out: Path, model: str, dtype: str,
                 max_prompt_tokens: int, vocab: int, tokenizer: Any, startup_timeout_s: float,
                 calibrator: RealRunner | None = None, target: Target | None = None) -> None:
        assert (target is not None) == (spec.kind == "endpoint"), "a target is the endpoint's, and only it"
        self.task, self.spec, self.out = task, spec, out
        self.model, self.dtype, self.max_prompt_tokens = model, dtype, max_prompt_tokens
        self.vocab, self.tokenizer, self.startup_timeout_s = vocab, tokenizer, startup_timeout_s
        self.calibrator, self.target = calibrator, target
        self.max_requests: int | None = None
        self.calibration_note = ""
        # until a start is measured: a typical start-up (never more than the timeout allows) and a stop
        self.overhead_s = min(STARTUP_GUESS_S[spec.kind], startup_timeout_s) + (5.0 if spec.kind != "endpoint" else 1.0)
        self.fixed_deployment = spec.kind == "endpoint"
        self.on_note: Callable[[str], None] = lambda message: None
        self.current: RunningServer | None = None      # the server of the running trial (live gauges read it)

    @property
    def logs(self) -> Path:
        return self.out / "servers"

    def calibrate(self, point: dict[str, Any], seconds: float, stop: Callable[[], bool]) -> tuple[bool, str]:
        if self.calibrator is None:
            return False, "no step-cost calibration: this search measures a deployment, it does not simulate"
        try:
            return self.calibrator.calibrate(point, seconds, stop)
        finally:
            self.calibrator.release()   # the servers need the device's memory

    def run(self, point: dict[str, Any], stop: Callable[[], bool], start_load: float | None = None,
            certify: bool = False, label: str = "") -> Outcome:
        began = time.perf_counter()
        if self.target is not None:
            outcome = self._measure(self.target, None, MAX_USERS // 2, stop, start_load, certify)
            return self._done(outcome, began, self.target.server or self.spec.name)
        config = config_of(self.task, point)
        if self.spec.kind == "tunekv" and self.task.gpu is None:   # the engine's own CPU pool rule, before a launch
            blocks, why = pool_check(self.task, config)
            if blocks is None:
                return infeasible(why, time.perf_counter() - began)
        users = self.task.load.concurrency if self.task.load and self.task.load.concurrency else 0
        settings = engine_config(self.task.base, point)
        log = self.logs / f"{label or 'trial'}.log"
        command = server_command(self.spec, settings, self.model, self.dtype, self.max_prompt_tokens,
                                 max(users, 2 * config.max_num_seqs), log.with_suffix(".yaml"))
        before = memory_used()
        try:
            server = launch(command, log, self.startup_timeout_s, stop, self._waiting(command.name))
        except LaunchFailed as exc:
            wait_memory_back(before, self.on_note)
            return infeasible(exc.reason, time.perf_counter() - began)
        except LaunchCut:
            return Outcome(0.0, {}, reason="cut short", cut=True, seconds=time.perf_counter() - began)
        self.on_note(f"{command.name} answered healthy after {server.startup_s:.0f} s (pid {server.pid}, "
                     f"port {server.port}, log {log})")
        self.current = server
        try:
            version = server_version(server.url)
            measured_on = f"{self.spec.name} {version}" if version else f"{self.spec.name} (version unknown)"
            target = open_target(server.url, None, "completions", None, self.tokenizer)
            outcome = self._measure(target, server, config.max_num_seqs, stop, start_load, certify)
        except ServerDied as exc:
            outcome = infeasible(f"{exc}; log {log}, last lines:\n{log_tail(log)}")
        except (RunFailure, BadInput) as exc:
            outcome = infeasible(f"{command.name} is healthy but its API did not serve the load: {exc}; log {log}")
        finally:
            self.current = None
            server.stop(STOP_GRACE_S)
            wait_memory_back(before, self.on_note)
        return self._done(outcome, began, measured_on)

    def _done(self, outcome: Outcome, began: float, measured_on: str) -> Outcome:
        outcome.constraints = {"fits": 0.0, **outcome.constraints} if not outcome.cut else outcome.constraints
        outcome.seconds = time.perf_counter() - began
        outcome.server = measured_on
        return outcome

    def _measure(self, target: Target, server: RunningServer | None, max_num_seqs: int, stop: Callable[[], bool],
                 start_load: float | None, certify: bool) -> Outcome:
        def probe(plan: BenchPlan, load: Load) -> RunResult:
            result = run_endpoint(target, plan, load, ENDPOINT_REQUEST_TIMEOUT_S, stop=stop)[0]
            if server is not None and not server.alive():
                raise ServerDied(f"{server.command.name} exited during the load (exit code "
                                 f"{server.process.returncode})")
            if result.cut and not stop():
                why = (result.client or {}).get("ended_early") or "it stopped answering"
                raise ServerDied(f"{self.spec.name} stopped answering during the load: {why}")
            return result

        if certify:
            return certify_outcome(self.task, probe, self.vocab, start_load, self.max_requests)
        return measure(self.task, probe, self.vocab, max_num_seqs, start_load, bisections=2,
                       max_requests=self.max_requests)

    def _waiting(self, name: str) -> Callable[[float], None]:
        def on_wait(waited: float) -> None:
            if int(waited) % WAIT_NOTE_EVERY_S == 0:
                self.on_note(f"waiting for {name} to answer {self.spec.health}: {waited:.0f} s of "
                             f"{self.startup_timeout_s:.0f} s")
        return on_wait
