"""`tunekv serve`: the engine behind an OpenAI-compatible API on HTTP."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from tunekv.cli.bench import base_settings
from tunekv.engine import ConfigError, EngineConfig
from tunekv.engine.resolve import resolve_config
from tunekv.errors import BadInput, RunFailure
from tunekv.units import MAX_DURATION_S

MAX_SERVED_NAME = 256


def serve_command(args: argparse.Namespace) -> int:
    """Check everything, bind the port, then load the engine behind the running server."""
    if not 0 <= args.shutdown_timeout <= MAX_DURATION_S:
        raise BadInput(f"--shutdown-timeout must be from 0 to {MAX_DURATION_S:g} seconds, "
                       f"got {args.shutdown_timeout}")
    names = list(dict.fromkeys(args.served_model_name or []))   # in order, each once
    if any(not 1 <= len(n) <= MAX_SERVED_NAME for n in names):
        raise BadInput(f"--served-model-name takes names of 1 to {MAX_SERVED_NAME} characters")
    from tunekv.serve.auth import API_KEY_ENV, check_api_keys

    from_env = os.environ.get(API_KEY_ENV)
    api_keys = (check_api_keys(args.api_key) if args.api_key
                else check_api_keys([from_env], f"${API_KEY_ENV}") if from_env else ())
    from tunekv.serve import AsyncEngine, ServedModel, ServerMetrics, bind, build_app, serve

    sock = bind(args.host, args.port)   # a bad or busy port is said before transformers and torch load
    config, mc = resolve_config(EngineConfig.from_dict(base_settings(args)))
    assert config.max_model_len is not None
    from tunekv.engine.llm_engine import LLMEngine
    from tunekv.workload.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(mc.path)
    name = names[0] if names else config.model
    also = f" (also as {', '.join(names[1:])})" if len(names) > 1 else ""
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    metrics = ServerMetrics(name, config.enable_prefix_caching)
    stopping: list = []

    def fatal(exc: BaseException) -> None:
        for server in stopping:
            server.should_exit = True

    def ready() -> None:
        print(f"ready: {url}/v1 serves {name}{also}", flush=True)

    engine = AsyncEngine(lambda: LLMEngine(config), metrics, on_fatal=fatal, on_ready=ready)
    served = ServedModel(name, config.model, config.max_model_len, mc.hf_config.vocab_size, tokenizer,
                         aliases=tuple(names[1:]), sampling_defaults=mc.sampling_defaults)
    print(f"tunekv serve: {url} (OpenAI API under /v1, /health, /metrics), model {name}{also}"
          f"{'' if tokenizer is not None else ' (no tokenizer: prompts as token ids)'}"
          f"{'; /v1 needs an API key (Authorization: Bearer)' if api_keys else ''}", flush=True)
    if mc.sampling_defaults:   # as vLLM says it: requests that leave these out get the model's
        print("sampling defaults from the model's generation_config.json: "
              + ", ".join(f"{k}={v}" for k, v in mc.sampling_defaults.items()), flush=True)
    neutral = {"repetition_penalty": 1.0, "min_p": 0.0}
    unapplied = {k: v for k, v in mc.generation_config.items() if k in neutral and v != neutral[k]}
    if unapplied:
        print("the model's generation_config.json also sets "
              + ", ".join(f"{k}={v}" for k, v in unapplied.items())
              + ", which vLLM applies by default and tunekv serve does not", flush=True)
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    print("config: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None), flush=True)
    print("loading the engine; GET /health answers 200 once it is ready", flush=True)
    serve(build_app(served, engine, metrics, api_keys), sock, args.shutdown_timeout, on_started=stopping.append,
          on_deadline=engine.abort_all)
    if engine.failure is not None:
        if isinstance(engine.failure, ConfigError):
            raise engine.failure
        raise RunFailure(f"the engine stopped: {engine.failure}")
    print("tunekv serve: stopped", file=sys.stderr, flush=True)
    return 0
