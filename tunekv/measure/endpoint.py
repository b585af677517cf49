"""A workload against any OpenAI-compatible server (vLLM, SGLang, TGI, `tunekv serve`) over HTTP.

The same requests, load modes, warm-up and metric definitions as an engine run, timed on this
process's monotonic clock: one aiohttp session, one event loop, a connection pool as large as the
load needs, no thread per request. Prompts go as token ids where the server takes them (vLLM's,
SGLang's and tunekv's /v1/completions do), else as text from a tokenizer; each request asks for
exactly its output length (``max_tokens`` with ``ignore_eos`` and ``min_tokens``), and the count
the server reports in ``usage`` is what is measured."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from tunekv import __version__
from tunekv.defaults import ENDPOINT_REQUEST_TIMEOUT_S
from tunekv.errors import BadInput, RunFailure, shorten
from tunekv.measure.run import BenchPlan, RunResult, RunWorkload
from tunekv.workload.loadgen import Load, Progress, arrival_times
from tunekv.workload.metrics import RequestTiming, compute_metrics
from tunekv.workload.workloads import WorkloadRequest

__all__ = ["LAG_WARN_MS", "ApiKind", "ClientReport", "RequestRecord", "Target",
           "api_base", "open_target", "run_endpoint"]

ApiKind = Literal["completions", "chat"]
CONNECT_TIMEOUT_S = 10.0
LAG_WARN_MS = 10.0             # open loop: sends later than their schedule by more than this (p99) are reported
MAX_ERRORS_KEPT = 5
MAX_LINE_BYTES = 1 << 20       # an event-stream line longer than this is a malformed stream
DRAIN_S = 0.1                  # after [DONE], how long the rest of the body (the chunked end) is waited for


@dataclass(frozen=True)
class Target:
    """A server to load: its API base (``.../v1``, without credentials), model, API and how
    prompts reach it."""

    url: str
    model: str
    api: ApiKind
    token_ids: bool                       # prompts as token ids (else text from ``tokenizer``)
    server: str | None                    # the server's name and version, when it says
    max_model_len: int | None             # as /v1/models says (vLLM and tunekv do), else None
    api_key: str | None = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)
    base: str = field(default="", repr=False, compare=False)   # where requests go: ``url`` with the URL's credentials
    root: str | None = None               # what /v1/models says the model was loaded from (vLLM, tunekv)
    prompt_overhead: int = 0              # tokens the server adds around each prompt: the chat template's

    def secret_free(self, text: str) -> str:
        """``text`` (a server's message, a client error) without the API key or the URL's credentials."""
        return _secret_free(text, self.api_key, self.base)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "api": self.api,
                "prompts": "token ids" if self.token_ids else "text", "server": self.server,
                "max_model_len": self.max_model_len}


@dataclass(frozen=True)
class ClientReport:
    """What the client measured of itself and of the answers, beside the metrics."""

    shorter: int                  # requests that came back with fewer output tokens than asked
    prompt_mismatch: int          # text prompts the server counted differently from the workload
    lag_p99_ms: float | None      # open loop: how late sends left against their schedule (p99); None: closed loop
    behind: bool                  # that lag is past LAG_WARN_MS: the client, not only the server, was slow
    errors: tuple[str, ...]       # the first distinct failure messages (HTTP status and the server's words)
    ended_early: str | None       # why the run stopped before every request was sent, if it did

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ROUTES = ("/chat/completions", "/completions", "/models")   # what a pasted request URL ends in (longest first)


def api_base(url: str) -> tuple[str, str]:
    """(the API base ending in /v1, the same without credentials for display)."""
    shown = shorten(_secret_free(url, None, url.strip()))
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:   # a port that is not a number from 0 to 65535, an unclosed [IPv6 address]
        raise BadInput(f"--endpoint {shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--endpoint takes an http(s) URL such as http://127.0.0.1:8000, got {shown!r}")
    path = parts.path.rstrip("/")
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host = name + (f":{port}" if port else "")
    route = next((r for r in ROUTES if path.endswith(r)), None)
    if route is not None:
        root = urlunsplit((parts.scheme, host, path.removesuffix(route), "", ""))
        raise BadInput(f"--endpoint names a server, not one of its routes: give {root!r} (its root or /v1); "
                       "--api picks completions or chat")
    if not path.endswith("/v1"):
        path += "/v1"
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return base, urlunsplit((parts.scheme, host, path, "", ""))


def _secret_free(text: str, api_key: str | None, url: str) -> str:
    """``text`` with the API key and the user and password of ``url`` (if it has them) as ``***``."""
    userinfo = url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]
    for secret in (api_key, userinfo, userinfo.partition(":")[2]):
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": f"tunekv/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def open_target(url: str, model: str | None, api: ApiKind, api_key: str | None, tokenizer: Any) -> Target:
    """Reach the server before any load: its model (from /v1/models when not given), its name
    and version, and whether it takes token-id prompts. RunFailure naming the URL when nothing
    answers there."""
    return asyncio.run(_open_target(url, model, api, api_key, tokenizer))


async def _open_target(url: str, model: str | None, api: ApiKind, api_key: str | None, tokenizer: Any) -> Target:
    import aiohttp

    base, shown = api_base(url)
    if api_key and urlsplit(base).username is not None:
        raise BadInput(f"--endpoint {shown} carries a user and password and an API key is given (--api-key or "
                       "OPENAI_API_KEY): both would be the Authorization header; give one")
    timeout = aiohttp.ClientTimeout(total=60, connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=_headers(api_key)) as session:
        try:
            async with session.get(base + "/models") as response:
                server = _server_name(response.headers.get("Server"))
                if response.status in (401, 403):
                    raise RunFailure(f"{shown} refused the API key (HTTP {response.status}); give --api-key or "
                                     "OPENAI_API_KEY")
                if response.status != 200:
                    raise RunFailure(f"{shown}/models answered HTTP {response.status}: not an OpenAI-compatible "
                                     "server, or not this URL")
                listing = await response.json(content_type=None)
            try:
                root = base[:-len("/v1")]
                async with session.get(root + "/version") as response:
                    if response.status == 200:
                        version = (await response.json(content_type=None)).get("version")
                        if version and str(version) not in (server or ""):
                            server = f"{server}, version {version}" if server else f"version {version}"
            except (aiohttp.ClientError, ValueError, AttributeError):
                pass
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise RunFailure(f"nothing answers at {shown} ({_secret_free(_reason(exc), api_key, base)})") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise RunFailure(f"{shown}/models did not answer as an OpenAI-compatible server "
                             f"({_secret_free(_reason(exc), api_key, base)})") from None
        data = listing.get("data") if isinstance(listing, dict) else None
        entries = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        served = [str(m.get("id")) for m in entries]
        if model is None:
            if not served:
                raise RunFailure(f"{shown}/models lists no model; name one with --served-model")
            model = served[0]
        elif served and model not in served:
            raise BadInput(f"{shown} serves {', '.join(served)}, not {model!r}")
        entry = next((m for m in entries if str(m.get("id")) == model), {})
        max_len = entry.get("max_model_len") if isinstance(entry.get("max_model_len"), int) else None
        max_len = max_len if max_len is not None and max_len > 0 else None
        loaded_from = entry.get("root") if isinstance(entry.get("root"), str) else None
        token_ids = False
        if api == "completions":
            probe = {"model": model, "prompt": [1, 2, 3], "max_tokens": 1, "temperature": 0}
            try:
                async with session.post(base + "/completions", json=probe) as response:
                    if response.status in (401, 403):
                        raise RunFailure(f"{shown}/completions refused the API key (HTTP {response.status}); give "
                                         "--api-key or OPENAI_API_KEY")
                    # 200: token ids are taken; 4xx: they are not; 5xx says nothing of the prompt's form, and
                    # the run's failures will carry the server's message
                    token_ids = response.status == 200 or (response.status >= 500 and tokenizer is None)
                    await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise RunFailure(f"{shown}/completions did not answer a one-token request "
                                 f"({_secret_free(_reason(exc), api_key, base)})") from None
        if not token_ids and tokenizer is None:
            why = "chat sends text" if api == "chat" else "the server does not take token-id prompts"
            raise BadInput(f"{why}: give --tokenizer DIR (the served model's Hugging Face directory) so prompts "
                           "have the workload's exact lengths")
    overhead = _chat_overhead(tokenizer) if api == "chat" else 0
    return Target(shown, model, api, token_ids, server, max_len, api_key, tokenizer, base, loaded_from, overhead)


def _chat_overhead(tokenizer: Any) -> int:
    """The tokens a chat template adds around one user message (the generation prompt included):
    what a chat request's prompt costs beyond its text. 0 without a template."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        return 0
    from jinja2 import TemplateError

    try:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True,
                                            tokenize=True)
    except (TemplateError, ValueError):
        return 0
    return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)   # transformers 5 returns a BatchEncoding


def _server_name(header: str | None) -> str | None:
    return header.strip() or None if header else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if text.endswith("]") and " [" in text:  # "Cannot connect to host h:p ssl:default [the OS's reason]"
        text = text[text.index(" [") + 2:-1]
    return shorten(re.sub(r"^\[Errno -?\d+\] ", "", text), 120)


@dataclass
class _Outcome:
    """One request as the client saw it."""

    sent: float
    arrival: float                      # what TTFT counts from: the schedule (open loop) or the send
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    finished: float = 0.0
    usage_prompt: int | None = None
    usage_output: int | None = None
    error: str | None = None
    refused: bool = False               # the connection could not be made: the server is not there


class _Client:
    """Sends one workload's requests to a target and times every streamed chunk."""

    def __init__(self, target: Target, requests: list[WorkloadRequest], session: Any,
                 request_timeout: float) -> None:
        self.target, self.requests, self.session = target, requests, session
        self.request_timeout = request_timeout
        # Every body before the first send: tokenising a text prompt (12 ms for 2,000 tokens) or
        # serialising a long one inside a request's timed window would count in its TTFT and hold
        # up the other requests' timestamps.
        self.bodies = [json.dumps(self.body(i)).encode() for i in range(len(requests))]

    def body(self, i: int) -> dict[str, Any]:
        req = self.requests[i]
        body: dict[str, Any] = {"model": self.target.model, "max_tokens": req.output_len,
                                "min_tokens": req.output_len, "ignore_eos": True, "temperature": 0.0,
                                "stream": True, "stream_options": {"include_usage": True}}
        if self.target.api == "chat":
            body["messages"] = [{"role": "user", "content": self.text(i)}]
        elif self.target.token_ids:
            body["prompt"] = list(req.prompt_token_ids)
        else:
            body["prompt"] = self.text(i)
        return body

    def text(self, i: int) -> str:
        """The prompt as text whose token count is the workload's (re-tokenised and trimmed)."""
        tok = self.target.tokenizer
        ids = list(self.requests[i].prompt_token_ids)
        text = tok.decode(ids, skip_special_tokens=True)
        for _ in range(4):
            again = tok(text, add_special_tokens=False)["input_ids"]
            if len(again) <= len(ids):
                break
            text = tok.decode(again[:len(ids)], skip_special_tokens=True)
        return text

    async def send(self, i: int, arrival: float) -> _Outcome:
        import aiohttp

        out = _Outcome(sent=time.perf_counter(), arrival=arrival)
        path = "chat/completions" if self.target.api == "chat" else "completions"
        try:
            async with self.session.post(f"{self.target.base or self.target.url}/{path}", data=self.bodies[i],
                                         timeout=aiohttp.ClientTimeout(total=self.request_timeout,
                                                                       connect=CONNECT_TIMEOUT_S)) as response:
                if response.status != 200:
                    out.error = f"HTTP {response.status}: {_server_message(await response.read())}"
                else:
                    await self._read_stream(response, out)
                    out.finished = time.perf_counter()
                    if out.error is None:
                        await _drain(response)
        except aiohttp.ConnectionTimeoutError:
            out.error = f"cannot connect within {CONNECT_TIMEOUT_S:g} s"
        except asyncio.TimeoutError:
            out.error = (f"not finished within {self.request_timeout:g} s (--request-timeout), though streaming"
                         if out.chunk_times else f"no answer within {self.request_timeout:g} s (--request-timeout)")
        except aiohttp.ClientConnectorError as exc:
            out.error, out.refused = f"cannot connect: {_reason(exc)}", True
        except (aiohttp.ClientError, ConnectionError) as exc:
            out.error = f"the connection broke: {_reason(exc)}"
        except ValueError as exc:  # a chunk that is not JSON, or not shaped as the API's
            out.error = f"a malformed stream: {shorten(str(exc), 160)}"
        out.finished = out.finished or time.perf_counter()
        if out.error is None and not out.chunk_times:
            out.error = "the stream ended without any token"
        if out.error is not None:
            out.error = self.target.secret_free(out.error)
        return out

    async def _read_stream(self, response: Any, out: _Outcome) -> None:
        """Reads what has arrived, as it arrives: one wake-up for all the lines a read brings
        (iterating lines costs two awaits per event, its data line and the blank one), each
        chunk timed by the read that brought its bytes."""
        rest = b""
        async for data in response.content.iter_any():
            now = time.perf_counter()
            *lines, rest = (rest + data if rest else data).split(b"\n")
            if len(rest) > MAX_LINE_BYTES:
                raise ValueError(f"a line of the stream is longer than {MAX_LINE_BYTES >> 20} MiB: {_snippet(rest)}")
            for raw in lines:
                if self._line(raw, out, now):
                    return
        if not self._line(rest, out, time.perf_counter()):  # a last line without its newline
            out.error = "the stream ended before data: [DONE]"

    def _line(self, raw: bytes, out: _Outcome, now: float) -> bool:
        """One line of the event stream; True when the stream is over (``[DONE]``, or an error)."""
        line = raw.strip()
        if not line.startswith(b"data:"):
            return False
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ValueError(f"a data: line is not JSON: {_snippet(data)}") from None
        if not isinstance(chunk, dict):
            raise ValueError(f"a chunk is {type(chunk).__name__}, not an object: {_snippet(data)}")
        if "error" in chunk:
            out.error = f"the server reported: {_server_message(data)}"
            return True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            out.usage_prompt = usage.get("prompt_tokens")
            out.usage_output = usage.get("completion_tokens")
        tokens = 0
        choices = chunk.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise ValueError(f"a chunk's choices are not a list of objects: {_snippet(data)}")
        for choice in choices:
            ids = choice.get("token_ids")
            if isinstance(ids, list):
                tokens += len(ids)
            else:
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    raise ValueError(f"a chunk's delta is not an object: {_snippet(data)}")
                # a reasoning model's thinking (vLLM's reasoning, SGLang's reasoning_content) and tool
                # calls are output tokens too: TTFT is the first of any of them, not of the answer
                streamed = (choice.get("text"), delta.get("content"), delta.get("reasoning"),
                            delta.get("reasoning_content"), delta.get("tool_calls"))
                tokens += 1 if any(streamed) else 0
        if tokens:
            out.chunk_times.append(now)
            out.chunk_tokens.append(tokens)
        return False

    def timing(self, i: int, out: _Outcome) -> RequestTiming:
        """A chunk of k tokens gives k - 1 zero gaps and one real one (as `vllm bench serve` counts);
        the output count is the server's ``usage`` when it gives one."""
        times: list[float] = []
        for t, k in zip(out.chunk_times, out.chunk_tokens):
            times.extend([t] * k)
        counted = len(times)
        output = out.usage_output if isinstance(out.usage_output, int) and out.usage_output > 0 else counted
        if output > counted:  # tokens the chunks did not show one by one arrived with the last
            times.extend([times[-1]] * (output - counted))
        prompt = out.usage_prompt if isinstance(out.usage_prompt, int) else len(self.requests[i].prompt_token_ids)
        return RequestTiming(out.arrival, times[0], tuple(times[:output]), out.finished, prompt, output)


async def _drain(response: Any) -> None:
    """Reads what follows ``[DONE]``: a chunked body's last bytes often come in a read of their own,
    and a response left before them makes aiohttp close its connection instead of pooling it, so
    the next request pays a new connection (a TCP or TLS handshake) in its TTFT. Waits DRAIN_S at
    most; a server that keeps the stream open longer gets its connection closed, as before."""
    import aiohttp

    if response.content.at_eof():
        return
    with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
        await asyncio.wait_for(response.content.read(), DRAIN_S)


def _snippet(data: bytes) -> str:
    return repr(shorten(data.decode(errors="replace"), 60))


def _server_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        if isinstance(body, dict):
            error = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
            return shorten(str(message or body), 200)
    except ValueError:
        pass
    return shorten(raw.decode(errors="replace").strip() or "no body", 200)


@dataclass(frozen=True)
class RequestRecord:
    """One measured request as the client saw it (time.perf_counter seconds), for a caller that
    studies the client itself (bench/http_loadgen_overhead.py)."""

    index: int                    # in the plan's requests
    arrival: float                # the schedule (open loop) or the send
    sent: float
    chunk_times: tuple[float, ...]
    error: str | None


def run_endpoint(target: Target, plan: BenchPlan, load: Load, request_timeout: float = ENDPOINT_REQUEST_TIMEOUT_S,
                 deadline: float | None = None, stop: Callable[[], bool] | None = None,
                 on_request: Callable[[RequestRecord], None] | None = None,
                 progress: Progress | None = None) -> tuple[RunResult, ClientReport]:
    """One run of ``plan`` against ``target`` under ``load``: the warm-up requests to completion,
    then the measured ones; the window is the measured requests' span, as for an engine run.
    ``deadline`` (time.perf_counter seconds) or ``stop()`` ends it early, marked ``cut``;
    ``on_request`` gets every measured request's record once the run is over; ``progress`` gets
    (measured requests ended, measured requests) as they end."""
    # A full pass of the garbage collector over a process that has loaded torch and transformers
    # stopped the event loop for 150-600 ms at 512 streams (bench/http_loadgen_overhead.py), and
    # every stream's chunks waited for it, counted as the server's latency; as run_load does,
    # collect once and keep the survivors out of the collector during the run. A heap the caller
    # froze (the TUI's) stays frozen.
    frozen = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_run(target, plan, load, request_timeout, deadline, stop, on_request, progress))
    finally:
        if not frozen:
            gc.unfreeze()


async def _run(target: Target, plan: BenchPlan, load: Load, request_timeout: float, deadline: float | None,
               stop: Callable[[], bool] | None, on_request: Callable[[RequestRecord], None] | None,
               progress: Progress | None) -> tuple[RunResult, ClientReport]:
    import aiohttp

    requests = plan.requests
    arrivals = arrival_times(load, requests, plan.seed)
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    warm, measured_ids = order[:plan.warmup], order[plan.warmup:]
    width = load.concurrency or load.max_concurrency or len(requests)
    connector = aiohttp.TCPConnector(limit=max(1, width), force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=_headers(target.api_key)) as session:
        client = _Client(target, requests, session, request_timeout)
        phase = _Phase(client, arrivals, load, deadline, stop)
        await phase.drive(warm)
        results = {} if phase.ended else await phase.drive(measured_ids, progress)
    measured = [(i, out) for i, out in results.items() if out.error is None]
    timings = [client.timing(i, out) for i, out in measured]
    if on_request is not None:
        for i, out in results.items():
            on_request(RequestRecord(i, out.arrival, out.sent, tuple(out.chunk_times), out.error))
    failed = len(measured_ids) - len(timings)
    now = time.perf_counter()
    # The measured requests' span, failures included: a run where most requests fail took as long
    # as they did, not as long as the few that came back (its throughput would read high).
    window = ((min(out.arrival for out in results.values()), max(out.finished for out in results.values()))
              if results else (now, now))
    metrics = compute_metrics(timings, failed, window, plan.slo)
    errors = tuple(dict.fromkeys(out.error for out in results.values() if out.error is not None))[:MAX_ERRORS_KEPT]
    shorter = sum(1 for (i, _), t in zip(measured, timings) if t.output_tokens < requests[i].output_len)
    mismatch = 0 if target.token_ids else sum(
        1 for (i, _), t in zip(measured, timings)
        if t.prompt_tokens != len(requests[i].prompt_token_ids) + target.prompt_overhead)
    lag = None   # closed loop: a user sends when its last answer ends; there is no schedule to be late on
    if load.concurrency is None:
        lags = sorted(max(0.0, out.sent - out.arrival) * 1e3 for out in results.values())
        lag = lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0
    report = ClientReport(shorter, mismatch, lag, lag is not None and lag > LAG_WARN_MS, errors, phase.ended)
    workload = RunWorkload(plan.workload.name, len(requests), plan.seed, plan.warmup, load, plan.workload.max_total)
    device = {"type": "endpoint", "name": target.server or "unknown server", "tunekv": __version__}
    result = RunResult(None, workload, device, metrics, None, plan.slo, False, phase.ended is not None, None,
                       target=target.to_json(), client=report.to_json())
    return result, report


class _Phase:
    """Sends requests at their times (open loop; under a cap, once a slot is free) or as users free
    up (closed loop), and ends early, cancelling what is in flight, at the deadline, on ``stop()``,
    or when the server stops taking connections."""

    def __init__(self, client: _Client, arrivals: list[float], load: Load, deadline: float | None,
                 stop: Callable[[], bool] | None) -> None:
        self.client, self.arrivals, self.load = client, arrivals, load
        self.deadline, self.stop = deadline, stop
        self.ended: str | None = None

    def _should_end(self) -> bool:
        if self.ended is None and self.deadline is not None and time.perf_counter() >= self.deadline:
            self.ended = "the deadline"
        if self.ended is None and self.stop is not None and self.stop():
            self.ended = "a stop"
        return self.ended is not None

    async def drive(self, indices: list[int], progress: Progress | None = None) -> dict[int, _Outcome]:
        results: dict[int, _Outcome] = {}
        if not indices or self._should_end():
            return results
        running: set[asyncio.Task] = set()
        if progress is not None:
            progress(0, len(indices))

        async def one(i: int, arrival: float) -> None:
            out = await self.client.send(i, arrival)
            results[i] = out
            if progress is not None:
                progress(len(results), len(indices))
            if out.refused and self.ended is None:
                self.ended = f"the server stopped taking connections ({out.error})"

        if self.load.concurrency is not None:
            pending = list(reversed(indices))

            async def user() -> None:
                while pending and not self._should_end():
                    await one(pending.pop(), time.perf_counter())

            running.update(asyncio.create_task(user()) for _ in range(min(self.load.concurrency, len(indices))))
        else:
            start, offset = time.perf_counter(), self.arrivals[indices[0]]
            slots = asyncio.Semaphore(self.load.max_concurrency) if self.load.max_concurrency else None

            async def capped(i: int, due: float) -> None:
                """Sent once a slot is free; one that waited for it counts from then (vLLM's
                --max-concurrency), one that did not from its time in the schedule."""
                assert slots is not None, "only a capped load waits for slots"
                waited = slots.locked()
                async with slots:
                    await one(i, time.perf_counter() if waited else due)

            async def schedule() -> None:
                for i in indices:
                    due = start + self.arrivals[i] - offset
                    while (wait := due - time.perf_counter()) > 0:
                        await asyncio.sleep(min(wait, 0.25))
                    if self._should_end():
                        return
                    running.add(asyncio.create_task(one(i, due) if slots is None else capped(i, due)))

            running.add(asyncio.create_task(schedule()))
        try:
            while alive := {t for t in running if not t.done()}:
                await asyncio.wait(alive, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                if self._should_end():
                    break
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return results
