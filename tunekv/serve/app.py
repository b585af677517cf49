"""The OpenAI-compatible routes of `tunekv serve` (Starlette).

``/v1/completions`` and ``/v1/chat/completions`` (streamed as server-sent events or not),
``/v1/models``, ``/health``, ``/version`` and ``/metrics``. A request is checked whole before any
of it reaches the engine (a 400 with OpenAI's error object otherwise); its choices run as engine
requests whose tokens come back through one asyncio queue; a client that goes away has them
aborted."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tunekv import __version__
from tunekv.engine import RequestRejected, SamplingParams
from tunekv.serve.async_engine import AsyncEngine, Delta, EngineDead, RequestStream
from tunekv.serve.auth import RequireApiKey
from tunekv.serve.detokenize import TextStream
from tunekv.serve.metrics import ServerMetrics
from tunekv.serve.protocol import (
    APIError,
    ChatRequest,
    GenerationParams,
    error_body,
    parse_chat,
    parse_completion,
    parse_json,
)

__all__ = ["MAX_BODY_BYTES", "ServedModel", "build_app"]

MAX_BODY_BYTES = 32 << 20


@dataclass(frozen=True)
class ServedModel:
    """What the routes need to know of the model before the engine runs it."""

    name: str                     # the name clients send as ``model``, and responses carry
    root: str                     # the preset or directory it was loaded from
    max_model_len: int
    vocab_size: int
    tokenizer: Any | None         # None: a preset with random weights (token-id prompts only)
    created: int = field(default_factory=lambda: int(time.time()))
    aliases: tuple[str, ...] = ()  # other names clients may send (vLLM's further --served-model-name)
    # temperature, top_p, top_k from generation_config.json, for requests that leave them out
    sampling_defaults: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass
class _Choice:
    index: int
    prompt_token_ids: list[int]
    text: TextStream | None
    stop_token_ids: list[int]
    include_stop: bool               # a stop string's or stop token's text stays in the output
    output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None   # the stop string or stop token id that ended it (vLLM's field)


@dataclass(frozen=True)
class _Event:
    """One step of one choice: the text it may send now and the token ids it got."""

    choice: _Choice
    text: str
    token_ids: list[int]


class _EventStream(StreamingResponse):
    """A streamed response that also listens for the client going away: the body generator is
    then cancelled (its ``finally`` aborts the engine requests), whatever ASGI version runs it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            async def body() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(body)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Routes:
    def __init__(self, model: ServedModel, engine: AsyncEngine, metrics: ServerMetrics) -> None:
        self.model, self.engine, self.metrics = model, engine, metrics

    # --- the small endpoints --------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.engine.failure is not None:
            return _error(APIError(f"the engine is not running: {self.engine.failure}", status=503,
                                   type="ServiceUnavailableError"))
        if not self.engine.ready.is_set():
            return _error(APIError("the engine is loading", status=503, type="ServiceUnavailableError"))
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def models(self, request: Request) -> Response:
        m = self.model
        return JSONResponse({"object": "list", "data": [{
            "id": name, "object": "model", "created": m.created, "owned_by": "tunekv", "root": m.root,
            "parent": None, "max_model_len": m.max_model_len} for name in m.names]})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # --- generation ---------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    async def _handle(self, request: Request, chat: bool) -> Response:
        try:
            body = parse_json(await _read_body(request))
            if chat:
                parsed = parse_chat(body)
                assert parsed.params is not None
                params = parsed.params
                self._check_model(parsed.model)
                prompts = [self._chat_prompt(parsed)]
            else:
                completion = parse_completion(body)
                params = completion.params
                self._check_model(completion.model)
                prompts = [self._token_ids(p) for p in completion.prompts]
            if params.stop and self.model.tokenizer is None:
                raise APIError("stop strings need a tokenizer, which this model has not: use stop_token_ids", "stop")
            sampling = [self._sampling(p, params, "messages" if chat else "prompt") for p in prompts]
            if not self.engine.ready.is_set() or self.engine.failure is not None:
                raise APIError("the engine is not ready: GET /health answers 200 once it is", status=503,
                               type="ServiceUnavailableError")
        except APIError as exc:
            return _error(exc)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        tokenizer = self.model.tokenizer
        choices = [_Choice(i, p, None if tokenizer is None else TextStream(tokenizer, p, params.stop, params.min_tokens,
                                                                         params.include_stop_str_in_output),
                           params.stop_token_ids, params.include_stop_str_in_output)
                   for i, p in enumerate(prompts)]
        events = self._run(request_id, choices, sampling)
        shape = _ChatShape(self.model.name, request_id) if chat else _CompletionShape(self.model.name, request_id)
        ids = params.return_token_ids or self.model.tokenizer is None
        if params.stream:
            return _EventStream(self._stream(events, shape, params, ids, choices),
                                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await self._unless_disconnected(request, lambda: self._collect(events, shape, ids, choices))

    def _check_model(self, name: str | None) -> None:
        if name is not None and name not in (*self.model.names, self.model.root):
            served = ", ".join(f"`{n}`" for n in self.model.names)
            raise APIError(f"The model `{name}` does not exist; this server serves {served}",
                           "model", status=404, type="NotFoundError", code="model_not_found")

    def _token_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.model.tokenizer is None:
            raise APIError("this model has no tokenizer: send token ids as the prompt", "prompt")
        return list(self.model.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _chat_prompt(self, chat: ChatRequest) -> list[int]:
        tokenizer = self.model.tokenizer
        if tokenizer is None:
            raise APIError("this model has no tokenizer: send token ids to /v1/completions", "messages")
        if getattr(tokenizer, "chat_template", None) is None:
            raise APIError("this model's tokenizer has no chat template: use /v1/completions", "messages")
        messages = [{"role": m["role"], "content": _text_of(m.get("content"))} for m in chat.messages]
        from jinja2 import TemplateError

        try:
            text = tokenizer.apply_chat_template(
                messages, tools=chat.tools, add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message, tokenize=False, **chat.template_kwargs)
        except (TemplateError, ValueError, TypeError) as exc:
            raise APIError(f"the chat template refused these messages: {exc}", "messages") from None
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, prompt: list[int], params: GenerationParams, field_name: str) -> SamplingParams:
        limit, n, vocab = self.model.max_model_len, len(prompt), self.model.vocab_size
        if n == 0:
            raise APIError("the prompt is empty", field_name)
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise APIError(f"prompt token ids must lie in [0, {vocab})", field_name)
        if params.stop_token_ids and (min(params.stop_token_ids) < 0 or max(params.stop_token_ids) >= vocab):
            raise APIError(f"stop_token_ids must lie in [0, {vocab})", "stop_token_ids")
        if n >= limit:
            raise APIError(f"the prompt is {n} tokens and this model's max_model_len is {limit}: no room is left "
                           "for output", field_name)
        room = limit - n
        if params.max_tokens is None:   # not sent: the endpoint's default, cut to what fits (as vLLM does)
            max_tokens = room if params.default_max_tokens is None else min(params.default_max_tokens, room)
        else:
            max_tokens = params.max_tokens
        if n + max_tokens > limit:
            raise APIError(f"this model's max_model_len is {limit} tokens, and the request asks for {n + max_tokens} "
                           f"({n} in the prompt, {max_tokens} in the completion)", "max_tokens")
        if params.min_tokens > max_tokens:
            raise APIError(f"min_tokens ({params.min_tokens}) must not exceed max_tokens ({max_tokens})", "min_tokens")
        model = self.model.sampling_defaults
        return SamplingParams(max_tokens=max_tokens,
                              temperature=model.get("temperature", 1.0) if params.temperature is None
                              else params.temperature,
                              top_p=model.get("top_p", 1.0) if params.top_p is None else params.top_p,
                              top_k=int(model.get("top_k", -1)) if params.top_k is None else params.top_k,
                              seed=params.seed, ignore_eos=params.ignore_eos,
                              stop_token_ids=params.stop_token_ids, min_tokens=params.min_tokens)

    async def _run(self, request_id: str, choices: list[_Choice],
                   sampling: list[SamplingParams]) -> AsyncIterator[_Event]:
        """Every choice's steps as they come; its engine requests are released however this ends."""
        sink: asyncio.Queue = asyncio.Queue()
        streams: list[RequestStream] = []
        arrival = time.perf_counter()
        try:
            for choice, sp in zip(choices, sampling):
                streams.append(self.engine.add(f"{request_id}-{choice.index}", choice.index, sink,
                                               choice.prompt_token_ids, sp, arrival))
            left = len(choices)
            while left:
                tag, item = await sink.get()
                choice = choices[tag]
                if choice.finish_reason is not None:
                    continue
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Delta)
                new = item.new_token_ids
                choice.output_tokens += len(new)
                reason = item.finish_reason
                if reason == "stop" and new and new[-1] in choice.stop_token_ids:
                    choice.stop_reason = new[-1]
                text = ""
                if choice.text is not None:
                    # A stop token's own text is left out (EOS is special anyway), as in vLLM.
                    ended_on_token = reason == "stop" and new and not choice.include_stop
                    text = choice.text.push(new[:-1] if ended_on_token else new)
                    if choice.text.stopped:   # a stop string, even in a step that also hit the length
                        if reason is None:
                            self.engine.release(streams[tag], stopped=True)
                        reason, choice.stop_reason = "stop", choice.text.stopped_by
                    if reason is not None:
                        text += choice.text.finish()
                if reason is not None:
                    choice.finish_reason = reason
                    left -= 1
                yield _Event(choice, text, new)
        finally:
            for stream in streams:
                self.engine.release(stream)

    async def _collect(self, events: AsyncIterator[_Event], shape: _Shape, ids: bool,
                       choices: list[_Choice]) -> Response:
        texts: list[list[str]] = [[] for _ in choices]
        tokens: list[list[int]] = [[] for _ in choices]
        try:
            async for event in events:
                texts[event.choice.index].append(event.text)
                tokens[event.choice.index].extend(event.token_ids)
        except (EngineDead, RequestRejected) as exc:
            return _error(_engine_error(exc))
        return JSONResponse(shape.whole(choices, ["".join(t) for t in texts], tokens if ids else None,
                                        _usage(choices)))

    async def _stream(self, events: AsyncIterator[_Event], shape: _Shape, params: GenerationParams, ids: bool,
                      choices: list[_Choice]) -> AsyncIterator[str]:
        try:
            opened = False
            async for event in events:
                if not opened:   # as vLLM: a chat's role chunks come with the first output, after the prefill
                    opened = True
                    for choice in choices:
                        first = shape.opening(choice.index)
                        if first is not None:
                            yield _sse(_with_usage(first, params, choice))
                if not event.text and not (ids and event.token_ids) and event.choice.finish_reason is None:
                    continue
                chunk = shape.chunk(event.choice, event.text, event.token_ids if ids else None)
                yield _sse(_with_usage(chunk, params, event.choice))
            if params.include_usage:
                yield _sse(shape.usage_chunk(_usage(choices)))
        except (EngineDead, RequestRejected) as exc:
            yield _sse(error_body(_engine_error(exc)))
        yield "data: [DONE]\n\n"

    async def _unless_disconnected(self, request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
        """``work``'s response, or, if the client goes away first, ``work`` cancelled (its engine
        requests aborted) and an empty 499 nobody reads."""
        task = asyncio.ensure_future(work())
        listener = asyncio.ensure_future(_disconnected(request.receive))
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            listener.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return Response(status_code=499)


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, RequestRejected):
        return APIError(str(exc), "prompt")
    return APIError(str(exc), status=503, type="ServiceUnavailableError")


def _with_usage(chunk: dict, params: GenerationParams, choice: _Choice) -> dict:
    """A content chunk's usage: null when usage was asked for, or with continuous_usage_stats
    its own choice's counts so far (as vLLM reports them)."""
    if params.include_usage:
        chunk["usage"] = _usage([choice]) if params.continuous_usage else None
    return chunk


def _usage(choices: list[_Choice]) -> dict:
    prompt = sum(len(c.prompt_token_ids) for c in choices)
    completion = sum(c.output_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text_of(content: object) -> str:
    if isinstance(content, list):   # text parts, one a line, as vLLM joins them
        return "\n".join(part["text"] for part in content)
    return "" if content is None else str(content)


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(f"the request body is over {MAX_BODY_BYTES >> 20} MiB", status=413,
                           type="RequestTooLargeError")
        chunks.append(chunk)
    return b"".join(chunks)


class _Shape(abc.ABC):
    """How one endpoint's responses look: the completions and chat shapes differ in their object
    names and in how a choice carries its text."""

    WHOLE = ""        # the object of a response that was not streamed
    CHUNK = ""        # the object of a streamed chunk

    def __init__(self, model: str, request_id: str) -> None:
        self.model, self.id, self.created = model, request_id, int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def opening(self, index: int) -> dict | None:
        return None

    def chunk(self, choice: _Choice, text: str, token_ids: list[int] | None) -> dict:
        """One streamed chunk: one choice's new text (and token ids), and its finish reason at the end."""
        return {**self._head(self.CHUNK), "choices": [_with_ids(self.streamed(choice, text), token_ids)]}

    def whole(self, choices: list[_Choice], texts: list[str], token_ids: list[list[int]] | None,
              usage: dict) -> dict:
        """The whole response of a request that was not streamed."""
        out = [_with_ids(self.complete(c, texts[c.index]), None if token_ids is None else token_ids[c.index])
               for c in choices]
        return {**self._head(self.WHOLE), "choices": out, "usage": usage}

    def usage_chunk(self, usage: dict) -> dict:
        """The last streamed chunk when usage was asked for: no choices, the token counts."""
        return {**self._head(self.CHUNK), "choices": [], "usage": usage}

    @abc.abstractmethod
    def streamed(self, choice: _Choice, text: str) -> dict:
        """One choice in a streamed chunk (its finish and stop reasons once it has ended)."""

    @abc.abstractmethod
    def complete(self, choice: _Choice, text: str) -> dict:
        """One choice in a whole response."""


def _with_ids(choice: dict[str, Any], token_ids: list[int] | None) -> dict[str, Any]:
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return choice


class _CompletionShape(_Shape):
    WHOLE = CHUNK = "text_completion"

    def streamed(self, choice: _Choice, text: str) -> dict:
        return {"index": choice.index, "text": text, "logprobs": None, "finish_reason": choice.finish_reason,
                "stop_reason": choice.stop_reason}

    complete = streamed


class _ChatShape(_Shape):
    WHOLE, CHUNK = "chat.completion", "chat.completion.chunk"

    def opening(self, index: int) -> dict | None:
        return {**self._head(self.CHUNK), "choices": [{
            "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}

    def streamed(self, choice: _Choice, text: str) -> dict:
        delta: dict[str, Any] = {"content": text} if text or choice.finish_reason is None else {}
        return {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": choice.finish_reason,
                "stop_reason": choice.stop_reason}

    def complete(self, choice: _Choice, text: str) -> dict:
        return {"index": choice.index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason}


def build_app(model: ServedModel, engine: AsyncEngine, metrics: ServerMetrics,
              api_keys: tuple[str, ...] = ()) -> Starlette:
    """The app; its lifespan starts the engine thread (not waiting for it: /health says when it
    is ready) and stops it. With ``api_keys``, the ``/v1`` routes need one of them as a bearer token."""
    routes = _Routes(model, engine, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop, 10.0)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(APIError(f"no route {request.method} {request.url.path}", status=404, type="NotFoundError"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(APIError(f"{request.url.path} does not take {request.method}", status=405,
                               type="MethodNotAllowedError"))

    return Starlette(routes=[
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/chat/completions", routes.chat, methods=["POST"]),
        Route("/v1/models", routes.models, methods=["GET"]),
        Route("/health", routes.health, methods=["GET"]),
        Route("/version", routes.version, methods=["GET"]),
        Route("/metrics", routes.prometheus, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed},
        middleware=[Middleware(RequireApiKey, keys=api_keys)] if api_keys else [])
