"""Tensor parallelism across processes, one rank a process.

Rank 0 is the engine's own process: it schedules, prepares each step's inputs, and samples.
Every other rank holds its slice of the model and a KV cache of its heads, receives each
step's inputs by a broadcast from rank 0 (pickled host arrays over a gloo group), and runs the
same forward; the forwards meet in the layers' all-reduces and the LM head's gather.

On one host the engine starts the other ranks itself (``spawn``); across hosts ``torchrun``
starts every rank, rank 0 builds the ``LLMEngine`` and the others call ``run_tp_worker``.

Two process groups: ``control`` (gloo, no practical timeout: workers wait on it between steps
however long the engine idles) carries commands; ``compute`` (NCCL on GPUs, gloo on the CPU)
carries the forward's collectives. On rank 0 a watchdog thread watches the spawned workers: one
that exits, or a command that takes longer than ``distributed_timeout_s``, stops every worker,
so a pending collective fails at once and the engine raises ``WorkerError`` instead of hanging.
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tunekv.engine.config import EngineConfig
from tunekv.engine.errors import ConfigError
from tunekv.engine.memory import resolve_device
from tunekv.engine.model_config import ModelConfig
from tunekv.engine.model_runner import ModelRunner, check_unquantized
from tunekv.engine.parallel import TPContext
from tunekv.engine.scheduler import SchedulerOutput

CONTROL_TIMEOUT = datetime.timedelta(days=30)
STARTUP_TIMEOUT_S = 600.0      # for the workers to start and join (imports, CUDA context)
SHUTDOWN_GRACE_S = 5.0


class WorkerError(RuntimeError):
    """A tensor-parallel worker died, failed, or did not answer within the timeout."""


class _Channel:
    """Rank 0's commands to every rank over the control group (``broadcast_object_list``).

    A gloo worker thread drops a finished collective's tensors a moment after the caller has its
    result, and dropping a tensor Python made takes the GIL. A process that reaches interpreter
    shutdown before that thread got the GIL aborts ("terminate called without an active
    exception"), and the shutdown command is the last collective before a rank exits. So the
    group is destroyed, and its threads joined, when the executor shuts down (``release``)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def release(self) -> None:
        """Drop the group, destroyed already: with its last reference gone its threads end here,
        while Python runs, not at interpreter shutdown (see the class docstring)."""
        self.group = None

    def send(self, message: Any) -> None:
        dist.broadcast_object_list([message], src=0, group=self.group)

    def receive(self) -> Any:
        box: list = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


class _Rank:
    """What every rank does for each command, rank 0 included (the worker loop dispatches here)."""

    def __init__(self, runner: ModelRunner, channel: _Channel) -> None:
        self.runner, self.channel = runner, channel

    def num_blocks(self) -> int:
        """The KV pool every rank can hold: the smallest of the ranks' own measurements."""
        blocks = torch.tensor([self.runner.determine_num_blocks()], dtype=torch.int64)
        dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=self.channel.group)
        return int(blocks.item())

    def initialize_cache(self, num_blocks: int) -> None:
        self.runner.initialize_cache(num_blocks)

    def run_step(self, host) -> torch.Tensor | None:
        return self.runner.run_step(host)


def _groups(backend: str, timeout_s: float) -> tuple[Any, Any]:
    """(control, compute) groups over every rank; all ranks create them in the same order."""
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    # The compute group's own timeout comes after the watchdog's, so the watchdog names the rank.
    compute = dist.new_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s + 30))
    return control, compute


def _backend(config: EngineConfig) -> str:
    return "nccl" if resolve_device(config.device).type == "cuda" else "gloo"


def _serve(rank: _Rank) -> None:
    """A worker's loop: run rank 0's commands until it says ``shutdown`` (or its process is gone,
    which fails the broadcast)."""
    while True:
        method, args = rank.channel.receive()
        if method == "shutdown":
            return
        getattr(rank, method)(*args)


def _cpu_threads(size: int) -> None:
    """Share the host's cores between the ranks of a CPU group."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))


def _worker_main(rank: int, size: int, port: int, config: EngineConfig, mc: ModelConfig, backend: str) -> None:
    """A spawned worker: join the group, build this rank's slice of the model, serve."""
    store = dist.TCPStore("127.0.0.1", port, size, False, timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        else:
            _cpu_threads(size)
        store.set(f"joined/{rank}", "1")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=CONTROL_TIMEOUT)
        control, compute = _groups(backend, config.distributed_timeout_s)
        runner = ModelRunner(config, mc, tp=TPContext(rank, size, compute))
        _serve(_Rank(runner, _Channel(control)))
    except BaseException as exc:
        try:
            store.set(f"error/{rank}", "".join(traceback.format_exception_only(type(exc), exc)).strip())
        finally:
            os._exit(1)
    dist.destroy_process_group()


def run_tp_worker(config: EngineConfig) -> None:
    """Under ``torchrun``: what ranks other than 0 run while rank 0 builds the ``LLMEngine``
    (same config); returns when rank 0's engine shuts down. The default process group must be
    initialised (``torch.distributed.init_process_group``) with one rank per tensor-parallel rank."""
    from tunekv.engine.resolve import resolve_config

    config, mc = resolve_config(config)
    if not dist.is_initialized() or dist.get_world_size() != config.tensor_parallel_size:
        raise ConfigError("run_tp_worker needs torch.distributed initialised with world size = tensor_parallel_size")
    backend = _backend(config)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    control, compute = _groups(backend, config.distributed_timeout_s)
    runner = ModelRunner(config, mc, tp=TPContext(dist.get_rank(), config.tensor_parallel_size, compute))
    _serve(_Rank(runner, _Channel(control)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(SHUTDOWN_GRACE_S)


class TensorParallelExecutor:
    """Rank 0 of a tensor-parallel group, with the executor interface the engine drives
    (``determine_num_blocks``, ``initialize_cache``, ``execute_model``, ``release``)."""

    _world_owner: TensorParallelExecutor | None = None   # the executor whose group is the default one

    def __init__(self, config: EngineConfig, model_config: ModelConfig) -> None:
        check_unquantized(config)  # before any rank starts
        self.config = config
        self.size = size = config.tensor_parallel_size
        self.timeout_s = config.distributed_timeout_s
        self._backend = backend = _backend(config)
        if backend == "nccl" and torch.cuda.device_count() < size:
            raise ConfigError(f"tensor_parallel_size={size} needs {size} GPUs; torch sees "
                             f"{torch.cuda.device_count()}")
        self._procs: list = []
        self._store: Any = None
        self._failure: str | None = None
        self._busy_since: float | None = None
        self._closed = False
        self._threads = torch.get_num_threads()  # a CPU group shares the cores; restored at shutdown
        owner = TensorParallelExecutor._world_owner
        if owner is not None:  # an engine dropped without shutdown() still holds the default group
            owner.shutdown()
        self._owns_world = not dist.is_initialized()
        try:
            if self._owns_world:
                self._spawn(model_config, backend)
            elif dist.get_world_size() != size or dist.get_rank() != 0:
                raise ConfigError(f"torch.distributed is initialised with {dist.get_world_size()} ranks (this is rank "
                                 f"{dist.get_rank()}): tensor_parallel_size={size} needs one rank per GPU, rank 0 "
                                 "building the engine and the others calling run_tp_worker")
            elif backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            control, self.compute = _groups(backend, self.timeout_s)
            self._channel = _Channel(control)
            if backend == "gloo":
                _cpu_threads(size)
            self.runner = ModelRunner(config, model_config, tp=TPContext(0, size, self.compute))
        except BaseException:
            self.shutdown()
            raise
        self._rank = _Rank(self.runner, self._channel)
        self.clock = self.runner.clock
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs)

    # --- start-up -------------------------------------------------------------------------
    def _spawn(self, model_config: ModelConfig, backend: str) -> None:
        port = _free_port()
        self._store = dist.TCPStore("127.0.0.1", port, self.size, True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S))
        ctx = mp.get_context("spawn")
        for rank in range(1, self.size):
            proc = ctx.Process(target=_worker_main, name=f"tunekv-tp{rank}", daemon=True,
                               args=(rank, self.size, port, self.config, model_config, backend))
            proc.start()
            self._procs.append(proc)
        threading.Thread(target=self._watch, name="tunekv-tp-watchdog", daemon=True).start()
        began = time.monotonic()
        for rank in range(1, self.size):
            while not self._store.check([f"joined/{rank}"]):
                self._raise_if_failed()
                if time.monotonic() - began > STARTUP_TIMEOUT_S:
                    raise WorkerError(f"tensor-parallel worker rank {rank} did not start within "
                                      f"{STARTUP_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
        if backend == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group("gloo", store=self._store, rank=0, world_size=self.size, timeout=CONTROL_TIMEOUT)
        TensorParallelExecutor._world_owner = self

    def _watch(self) -> None:
        """Watchdog: a worker that exits, or a command past the timeout, stops every worker."""
        while not self._closed:
            time.sleep(0.1)
            if self._closed or self._failure is not None:
                return
            dead = next((p for p in self._procs if p.exitcode is not None), None)
            busy = self._busy_since
            if dead is not None:
                self._failure = self._describe_exit(dead)
            elif busy is not None and time.monotonic() - busy > self.timeout_s:
                self._failure = (f"a tensor-parallel step did not finish within {self.timeout_s:g} s "
                                 f"(distributed_timeout_s): a worker hangs")
            else:
                continue
            _stop_processes(self._procs)
            if self._backend == "nccl":  # NCCL does not notice a dead peer: free the stream waiting on it
                _quietly(lambda: dist.distributed_c10d._abort_process_group(self.compute))
            return

    def _describe_exit(self, proc) -> str:
        rank = self._procs.index(proc) + 1
        code = proc.exitcode
        why = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        error = self._worker_error(rank)
        return f"tensor-parallel worker rank {rank} (pid {proc.pid}) {why}" + (f": {error}" if error else "")

    def _worker_error(self, rank: int) -> str:
        try:
            if self._store is not None and self._store.check([f"error/{rank}"]):
                return self._store.get(f"error/{rank}").decode(errors="replace")
        except Exception:  # the store dies with the workers' connections; the exit code still says enough
            return ""
        return ""

    def _raise_if_failed(self) -> None:
        if self._failure is None:
            dead = next((p for p in self._procs if p.exitcode is not None), None)
            if dead is not None:
                self._failure = self._describe_exit(dead)
        if self._failure is not None:
            failure = self._failure
            self.shutdown()
            raise WorkerError(failure)

    # --- commands -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, then: Callable[[Any], Any] | None = None) -> Any:
        """Run ``method`` on every rank (rank 0 here, the workers by broadcast), then ``then`` on
        its result here (inside the watched window: on a GPU that is where rank 0 waits for the
        collectives). A failed worker or a step past the timeout raises ``WorkerError``, and the
        group is shut down either way (after a failure its ranks are out of step)."""
        if self._closed:
            raise WorkerError(self._failure or "the tensor-parallel group is shut down")
        self._raise_if_failed()
        self._busy_since = time.monotonic()
        try:
            self._channel.send((method, args))
            result = getattr(self._rank, method)(*args)
            if then is not None:
                result = then(result)
            if self._failure is not None:  # an aborted NCCL group returns garbage, not an error
                raise WorkerError(self._failure)
            return result
        except BaseException as exc:
            deadline = time.monotonic() + 2.0   # let the watchdog see a worker's exit
            while self._failure is None and self._procs and time.monotonic() < deadline:
                if any(p.exitcode is not None for p in self._procs):
                    self._raise_if_failed()
                time.sleep(0.05)
            failure = self._failure
            self.shutdown()
            if failure is not None:
                raise WorkerError(failure) from exc
            raise
        finally:
            self._busy_since = None

    def determine_num_blocks(self) -> int:
        return self._call("num_blocks")

    def initialize_cache(self, num_blocks: int) -> None:
        self._call("initialize_cache", num_blocks)

    def execute_model(self, sched: SchedulerOutput) -> list[int | None]:
        host = self.runner.prepare_host(sched)
        return self._call("run_step", host, then=lambda logits: self.runner.sample(sched, host, logits))

    def release(self, request_ids: list[str]) -> None:
        self.runner.release(request_ids)

    # --- what the engine and its callers read -----------------------------------------------
    @property
    def model(self):
        return self.runner.model

    def device_description(self) -> dict[str, Any]:
        return {**self.runner.device_description(), "tensor_parallel_size": self.config.tensor_parallel_size}

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def kv_bytes_per_token(self) -> int:
        return self.runner.kv_bytes_per_token

    @property
    def decode_graphs(self):
        return self.runner.decode_graphs

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def worker_exitcodes(self) -> list[int | None]:
        """Each worker's exit code (None while it runs); 0 after a clean shutdown."""
        return [p.exitcode for p in self._procs]

    @property
    def closed(self) -> bool:
        """Shut down: the workers are stopped and the groups destroyed."""
        return self._closed

    @staticmethod
    def default_group_held() -> bool:
        """Whether an executor holds torch.distributed's default process group."""
        return TensorParallelExecutor._world_owner is not None

    # --- shutdown -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Tell the workers to stop, then make sure they have (idempotent)."""
        if self._closed:
            return
        self._closed = True
        alive = self._failure is None and all(p.exitcode is None for p in self._procs)
        if alive and hasattr(self, "_channel"):
            self._send_shutdown()
        for p in self._procs:
            p.join(SHUTDOWN_GRACE_S if alive else 0.1)
        _stop_processes(self._procs)
        channel = getattr(self, "_channel", None)
        if self._owns_world and dist.is_initialized():
            _quietly(dist.destroy_process_group)
        elif channel is not None:
            for group in (channel.group, self.compute):
                _quietly(functools.partial(dist.destroy_process_group, group))
        if channel is not None:
            channel.release()
        if TensorParallelExecutor._world_owner is self:
            TensorParallelExecutor._world_owner = None
        torch.set_num_threads(self._threads)

    def _send_shutdown(self) -> None:
        done = threading.Event()

        def send() -> None:
            _quietly(lambda: self._channel.send(("shutdown", ())))
            done.set()

        threading.Thread(target=send, daemon=True).start()
        done.wait(SHUTDOWN_GRACE_S)


def _quietly(action: Callable[[], Any]) -> None:
    """Best-effort teardown: a group whose peers are gone may fail to close; nothing is left to do."""
    try:
        action()
    except Exception:  # noqa: BLE001 - see the docstring
        pass
