"""The engine on its own thread, fed by the event loop.

One thread builds the ``LLMEngine``, warms it up and then owns it: it steps while requests are
unfinished and blocks on its inbox (a thread-safe queue of add / abort / stop commands) while
none are. After each step the new tokens of every request cross back to the event loop in one
``loop.call_soon_threadsafe`` call, which puts them on each request's asyncio queue, so the event
loop never waits on a step and the engine never waits on a client."""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunekv.engine import RequestRejected, RequestStatus, SamplingParams
from tunekv.serve.metrics import ServerMetrics

if TYPE_CHECKING:   # built by the caller's factory: the package loads without torch, for fast refusals
    from tunekv.engine import LLMEngine

__all__ = ["AsyncEngine", "Delta", "EngineDead", "RequestStream"]

WARMUP_TOKENS = 20     # prompt and output of the request that warms the engine up (fewer if max_model_len is)


class EngineDead(Exception):
    """The engine failed (or stopped) and will run no more requests."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What one engine step gave one request: its new tokens, and why it ended if it did
    (``stop``, ``length`` or ``abort``)."""

    new_token_ids: list[int]
    finish_reason: str | None


@dataclass(eq=False)
class RequestStream:
    """The event loop's side of one engine request: its deltas land on ``sink`` as
    ``(tag, Delta)`` (several requests of one HTTP call share a sink), or ``(tag, exception)``."""

    request_id: str
    tag: int
    sink: asyncio.Queue
    finished: bool = False


@dataclass(frozen=True)
class _Add:
    stream: RequestStream
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float


@dataclass(frozen=True)
class _Abort:
    request_id: str | None     # None: every request
    status: RequestStatus = RequestStatus.FINISHED_ABORTED   # FINISHED_STOPPED: a stop string ended it


class _Stop:
    pass


class AsyncEngine:
    """``start`` (on the event loop) spawns the engine thread; ``ready`` is set once the engine
    has loaded and warmed up; ``add`` / ``release`` from the event loop; ``stop`` aborts what
    is left and joins the thread. ``failure`` holds why the engine could not start or died, and
    ``on_fatal`` is called (on the event loop) when it does; ``on_ready`` (on the engine thread)
    once it is ready."""

    def __init__(self, build: Callable[[], LLMEngine], metrics: ServerMetrics,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.build = build
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.on_ready = on_ready
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.streams: dict[str, RequestStream] = {}
        self.inbox: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    # --- the event loop's side ----------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name="tunekv-engine", daemon=True)
        self.thread.start()

    def add(self, request_id: str, tag: int, sink: asyncio.Queue, prompt_token_ids: list[int],
            params: SamplingParams, arrival_time: float) -> RequestStream:
        if self.failure is not None or not self.ready.is_set():
            raise EngineDead("the engine is not running")
        assert request_id not in self.streams, f"request id {request_id} is in use"
        stream = RequestStream(request_id, tag, sink)
        self.streams[request_id] = stream
        self.inbox.put(_Add(stream, prompt_token_ids, params, arrival_time))
        return stream

    def release(self, stream: RequestStream, stopped: bool = False) -> None:
        """The caller is done with ``stream``: an unfinished request is ended (its blocks freed),
        counted as aborted, or with ``stopped`` as stopped (the text reached a stop string)."""
        if self.streams.pop(stream.request_id, None) is not None and not stream.finished:
            status = RequestStatus.FINISHED_STOPPED if stopped else RequestStatus.FINISHED_ABORTED
            self.inbox.put(_Abort(stream.request_id, status))

    def abort_all(self) -> None:
        """Abort every request the engine holds; their streams end with finish_reason ``abort``."""
        self.inbox.put(_Abort(None))

    def stop(self, timeout: float) -> None:
        """Abort every request left, stop stepping and join the thread (at most ``timeout`` s)."""
        self.inbox.put(_Stop())
        if self.thread is not None:
            self.thread.join(timeout)

    def _deliver(self, batch: list[tuple[str, Delta]]) -> None:
        for request_id, delta in batch:
            stream = self.streams.get(request_id)
            if stream is None:
                continue
            if delta.finish_reason is not None:
                stream.finished = True
            stream.sink.put_nowait((stream.tag, delta))

    def _fail_all(self, exc: BaseException) -> None:
        for stream in list(self.streams.values()):
            stream.finished = True
            stream.sink.put_nowait((stream.tag, exc))
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _refuse(self, request_id: str, exc: BaseException) -> None:
        stream = self.streams.get(request_id)
        if stream is not None:
            stream.finished = True
            stream.sink.put_nowait((stream.tag, exc))

    # --- the engine thread ----------------------------------------------------------------
    def _call(self, fn: Callable, *args: object) -> None:
        assert self.loop is not None, "start() sets the loop"
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed: nobody is waiting any more
            pass

    def _run(self) -> None:
        try:
            engine = self.build()
        except BaseException as exc:
            self.failure = exc
            self._call(self._fail_all, exc)
            return
        try:
            assert engine.config.max_model_len is not None, "the engine resolves max_model_len"
            length = min(WARMUP_TOKENS, engine.config.max_model_len)
            if length >= 2:  # a prompt and an output token: the first step's allocations and compiles
                prompt = list(range(1, length // 2 + 1))
                engine.generate([prompt], SamplingParams(max_tokens=length - len(prompt), temperature=0.0,
                                                         ignore_eos=True))
            engine.reset_prefix_cache()
            engine.reset_peak_stats()
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            self._loop(engine)
        except BaseException as exc:
            traceback.print_exc(file=sys.stderr)
            self.failure = EngineDead(f"the engine failed: {type(exc).__name__}: {exc}")
            self._call(self._fail_all, self.failure)
        finally:
            engine.shutdown()

    def _loop(self, engine: LLMEngine) -> None:
        metrics = self.metrics
        while True:
            if not self._take_commands(engine, block=not engine.has_unfinished_requests()):
                return
            if not engine.has_unfinished_requests():
                continue
            outputs = engine.step()
            batch: list[tuple[str, Delta]] = []
            new_tokens = 0
            for out in outputs:
                new = list(out.new_token_ids)
                if new:
                    new_tokens += len(new)
                    if len(out.output_token_ids) == len(new):
                        metrics.first_token(len(out.prompt_token_ids), out.metrics)
                if out.finished:
                    assert out.finish_reason is not None
                    metrics.finished(out.finish_reason, len(out.output_token_ids), out.metrics)
                batch.append((out.request_id, Delta(new, out.finish_reason)))
            metrics.observe_step(engine.occupancy(), engine.counters().num_preemptions, new_tokens)
            if batch:
                self._call(self._deliver, batch)

    def _take_commands(self, engine: LLMEngine, block: bool) -> bool:
        """Apply what the event loop sent; False on stop (after aborting every request)."""
        try:
            command = self.inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            if isinstance(command, _Stop):
                for request_id in list(engine.scheduler.requests):
                    engine.abort_request(request_id)
                while engine.has_unfinished_requests():
                    ended = [(o.request_id, Delta([], o.finish_reason)) for o in engine.step() if o.finished]
                    self._call(self._deliver, ended)
                return False
            if isinstance(command, _Add):
                try:
                    engine.add_request(command.stream.request_id, command.prompt_token_ids, command.params,
                                       command.arrival_time)
                except RequestRejected as exc:
                    self._call(self._refuse, command.stream.request_id, exc)
            elif command.request_id is None:
                for request_id in list(engine.scheduler.requests):
                    engine.abort_request(request_id)
            else:
                engine.abort_request(command.request_id, command.status)
            try:
                command = self.inbox.get_nowait()
            except queue.Empty:
                break
        self.metrics.observe_step(engine.occupancy(), engine.counters().num_preemptions, 0)
        return True
