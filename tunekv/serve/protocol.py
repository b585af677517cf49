"""The OpenAI request bodies `tunekv serve` accepts, checked field by field, and its error object.

A body is parsed into a :class:`CompletionRequest` or :class:`ChatRequest` (plain dataclasses);
anything wrong raises :class:`APIError`, which the app answers with OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) naming the field. Unknown fields are
ignored, as vLLM and OpenAI do; a known field of the wrong type is a 400."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["MAX_STOP_STRINGS", "APIError", "ChatRequest", "CompletionRequest", "GenerationParams", "Prompt",
           "error_body", "parse_chat", "parse_completion", "parse_json"]

MAX_STOP_STRINGS = 16          # OpenAI allows 4; vLLM more; a bound keeps the per-token check cheap
MAX_BATCH_PROMPTS = 1024       # prompts in one /v1/completions body
MAX_SEED = 2**63 - 1

Prompt = str | list[int]


class APIError(Exception):
    """A request the server will not run: its status, OpenAI's error type, the field and a code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "BadRequestError", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type = message, param, status, type
        self.code = code if code is not None else str(status)


def error_body(exc: APIError) -> dict:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


@dataclass(frozen=True)
class GenerationParams:
    """The sampling fields both endpoints share (vLLM's names)."""

    max_tokens: int | None          # as sent; None: the endpoint's default
    default_max_tokens: int | None  # completions 16, chat None (up to max_model_len); cut to what fits
    temperature: float | None       # None: left out, so the model's default (generation_config), else vLLM's
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    min_tokens: int
    stream: bool
    include_usage: bool
    return_token_ids: bool
    include_stop_str_in_output: bool = False
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage in every chunk


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: list[Prompt]           # one per choice: text, or token ids
    params: GenerationParams


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: GenerationParams | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None         # rendered by the template (tool_choice "none")
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat_template_kwargs


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise APIError("the request body nests too deeply") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}")
    if b"\\ud" in raw.lower():   # an escaped surrogate: a lone one parses to a string nothing can encode
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            message = "the request body has a lone UTF-16 surrogate (an escape such as \\ud800 without its pair)"
            raise APIError(message) from None
    return body


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _int(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():   # 5.0, as vLLM's pydantic fields take it
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"{name} must be an integer, got {_type_name(value)}", name)
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise APIError(f"{name} must be {bound}, got {value}", name)
    return value


def _float(body: dict, name: str, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(f"{name} must be a number, got {_type_name(value)}", name)
    if value != value or value in (float("inf"), float("-inf")):
        raise APIError(f"{name} must be a finite number", name)
    return float(value)


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(f"{name} must be true or false, got {_type_name(value)}", name)
    return value


def _token_ids(value: object, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise APIError(f"{name} must be a list of integer token ids", name)
    return value


def _params(body: dict, default_max_tokens: int | None) -> GenerationParams:
    for name in ("n", "best_of"):
        value = body.get(name, 1)
        if value is not None and value != 1:
            raise APIError(f"{name} must be 1: tunekv serve returns one choice per prompt", name)
    if body.get("echo") not in (None, False):
        raise APIError("echo must be false: tunekv serve does not echo the prompt", "echo")
    for name in ("logprobs", "top_logprobs", "prompt_logprobs"):
        value = body.get(name)   # completions' logprobs: 0 still asks for the sampled token's
        off = value is None or value is False or (name == "top_logprobs" and value == 0)
        if not off:
            raise APIError(f"{name} must be null: tunekv serve returns no log-probabilities", name)
    # Fields that would change the output, which tunekv's sampler does not apply: refused, not ignored.
    if body.get("logit_bias"):
        raise APIError("logit_bias must be empty: tunekv serve applies no logit bias", "logit_bias")
    if _float(body, "min_p", 0.0) != 0.0:
        raise APIError("min_p must be 0: tunekv serve samples with temperature, top_p and top_k", "min_p")
    if body.get("suffix"):
        raise APIError("suffix is not supported", "suffix")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError("response_format must be {\"type\": \"text\"}: tunekv serve has no guided decoding",
                       "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if _float(body, name, 0.0) != 0.0:
            raise APIError(f"{name} must be 0: tunekv serve applies no penalties", name)
    if _float(body, "repetition_penalty", 1.0) != 1.0:
        raise APIError("repetition_penalty must be 1: tunekv serve applies no penalties", "repetition_penalty")
    max_tokens = _int(body, "max_tokens", None, 1)
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        max_tokens = _int(body, "max_completion_tokens", None, 1)
    temperature = _float(body, "temperature", None)
    if temperature is not None and temperature < 0:
        raise APIError(f"temperature must be >= 0 (0 is greedy), got {temperature:g}", "temperature")
    top_p = _float(body, "top_p", None)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise APIError(f"top_p must be in (0, 1], got {top_p:g}", "top_p")
    top_k = _int(body, "top_k", None, -1)
    top_k = -1 if top_k == 0 else top_k   # 0 and -1 both mean off, as in vLLM
    seed = _int(body, "seed", None, -MAX_SEED - 1, MAX_SEED)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise APIError("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise APIError(f"stop takes 1 to {MAX_STOP_STRINGS} non-empty strings", "stop")
    stop_ids = [] if body.get("stop_token_ids") is None else _token_ids(body["stop_token_ids"], "stop_token_ids")
    min_tokens = _int(body, "min_tokens", 0, 0)
    assert min_tokens is not None
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict):
            raise APIError("stream_options must be an object", "stream_options")
        if not stream:
            raise APIError("stream_options is only allowed with stream: true", "stream_options")
        # vLLM's defaults: stream_options alone asks for the usage chunk
        include_usage = _bool(options, "include_usage", True)
        continuous = include_usage and _bool(options, "continuous_usage_stats", False)
    return GenerationParams(max_tokens, default_max_tokens, temperature, top_p, top_k, seed, stops, stop_ids,
                            _bool(body, "ignore_eos", False), min_tokens, stream, include_usage,
                            _bool(body, "return_token_ids", False), _bool(body, "include_stop_str_in_output", False),
                            continuous)


def _model(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(f"model must be a string, got {_type_name(model)}", "model")
    return model


def parse_completion(body: dict) -> CompletionRequest:
    """``prompt``: a string, a list of token ids, or a list of either (a batch: one choice each)."""
    if "prompt" not in body:
        raise APIError("prompt is required: a string, a list of token ids, or a list of those", "prompt")
    prompt = body["prompt"]
    prompts: list[Prompt]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompts = [_token_ids(p, "prompt") for p in prompt]
    else:
        raise APIError("prompt must be a non-empty string, a list of token ids, or a list of those", "prompt")
    if len(prompts) > MAX_BATCH_PROMPTS:
        raise APIError(f"prompt holds {len(prompts)} prompts; at most {MAX_BATCH_PROMPTS} in one request", "prompt")
    if any(len(p) == 0 for p in prompts):
        raise APIError("prompt must not be empty", "prompt")
    return CompletionRequest(_model(body), prompts, _params(body, 16))


ROLES: tuple[Literal["system", "user", "assistant", "developer", "tool"], ...] = (
    "system", "user", "assistant", "developer", "tool")


def parse_chat(body: dict) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of {role, content} objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(f"messages[{i}] must be an object whose role is one of {', '.join(ROLES)}", "messages")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(f"messages[{i}].content: only text parts are supported", "messages")
        elif not isinstance(content, str) and not (content is None and message["role"] == "assistant"):
            raise APIError(f"messages[{i}].content must be a string or a list of text parts", "messages")
    add_generation_prompt = _bool(body, "add_generation_prompt", True)
    continue_final_message = _bool(body, "continue_final_message", False)
    if add_generation_prompt and continue_final_message:
        raise APIError("continue_final_message needs add_generation_prompt: false (the reply continues the last "
                       "message instead of starting a new one)", "continue_final_message")
    for name in ("chat_template", "documents"):
        if body.get(name):
            raise APIError(f"{name} is not supported: tunekv serve renders the model's own chat template", name)
    if continue_final_message and messages[-1]["role"] != "assistant":
        raise APIError("continue_final_message continues the last message, which must be the assistant's",
                       "continue_final_message")
    return ChatRequest(_model(body), messages, _params(body, None), add_generation_prompt, continue_final_message,
                       _tools(body), _template_kwargs(body))


# apply_chat_template's own parameters: a request's chat_template_kwargs may not set them.
TEMPLATE_PARAMETERS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs"})


def _tools(body: dict) -> list[dict[str, Any]] | None:
    """Tools the template may render. tunekv serve parses no tool calls out of the output, so a
    tool_choice that expects one (``auto`` with tools, ``required``, a named function) is refused,
    as vLLM refuses ``auto`` without ``--enable-auto-tool-choice``."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise APIError("tools must be a list of tool objects", "tools")
    if choice not in (None, "none", "auto"):
        raise APIError("tool_choice must be \"none\" or \"auto\": tunekv serve parses no tool calls",
                       "tool_choice")
    if tools and choice != "none":
        raise APIError("tools need tool_choice \"none\": tunekv serve parses no tool calls out of the output",
                       "tool_choice")
    return tools or None


def _template_kwargs(body: dict) -> dict[str, Any]:
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise APIError("chat_template_kwargs must be an object", "chat_template_kwargs")
    reserved = sorted(TEMPLATE_PARAMETERS.intersection(kwargs))
    if reserved:
        raise APIError(f"chat_template_kwargs may not set {', '.join(reserved)}: give it as a request field",
                       "chat_template_kwargs")
    return kwargs
