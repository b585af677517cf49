"""The best trial of a search as configs for tunekv, vLLM, SGLang and TGI.

Every file starts with a comment block saying what it was tuned for: GPU, model, workload, SLO,
the figures measured (or predicted), tunekv version and date.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tunekv import __version__
from tunekv.engine.presets import preset_dir
from tunekv.units import pace_words, rate_text

FORMATS = ("tunekv", "vllm", "sglang", "tgi", "report")
# tunekv's kv_cache_dtype and quantization as each server spells them, checked against the servers'
# own sources: vLLM 0.34 (CacheDType in vllm/config/cache.py, QuantizationMethods in
# vllm/model_executor/layers/quantization/__init__.py), SGLang 0.5.23 (kv_cache_dtype's choices in
# sglang/srt/arg_groups/fields/model.py, QUANTIZATION_CHOICES in sglang/srt/arg_groups/choices.py),
# TGI's launcher (launcher/src/main.rs: KVCacheDtype, Quantization). vLLM and SGLang take int8
# weights from a W8A8 checkpoint (llm-compressor's compressed-tensors format); TGI's EETQ
# quantizes a 16-bit checkpoint to int8 as it loads it.
VLLM_KV_CACHE_DTYPES = {"auto": "auto", "fp8": "fp8"}
VLLM_QUANTIZATIONS = {"fp8": "fp8", "int8": "compressed-tensors", "awq": "awq", "gptq": "gptq"}
SGLANG_KV_CACHE_DTYPES = {"auto": "auto", "fp8": "fp8_e4m3"}
SGLANG_QUANTIZATIONS = {"fp8": "fp8", "int8": "w8a8_int8", "awq": "awq", "gptq": "gptq"}
TGI_KV_CACHE_DTYPES = {"fp8": "fp8_e4m3fn"}           # TGI has no "auto": without the flag, the model's dtype
TGI_QUANTIZATIONS = {"fp8": "fp8", "int8": "eetq", "awq": "awq", "gptq": "gptq"}
# Formats that need a checkpoint quantized that way; fp8 (all three) and TGI's eetq quantize a
# 16-bit checkpoint as they load it.
PREQUANTIZED = {"vllm": ("int8", "awq", "gptq"), "sglang": ("int8", "awq", "gptq"), "tgi": ("awq", "gptq")}
FILE_NAMES = {"tunekv": "tunekv.yaml", "vllm": "vllm.yaml", "sglang": "sglang.yaml", "tgi": "tgi.env"}
TGI_DTYPES = ("float16", "bfloat16")
SERVER_TITLES = {"tunekv": "tunekv", "vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI"}
ENGINE = "tunekv's engine"


@dataclass
class Best:
    """What the exports need of a study: its spec (set when the search created it) and best trial."""

    study: str
    spec: dict[str, Any]
    number: int
    fidelity: str
    point: dict[str, Any]
    outcome: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """The tunekv config: the search's fixed engine settings plus the tuned knobs."""
        return engine_config(self.spec["base"], self.point)

    def p99(self, metric: str) -> float | None:
        value = ((self.outcome.get("metrics") or {}).get(f"{metric}_ms") or {}).get("p99")
        return None if value is None or value != value else value

    @property
    def server_kind(self) -> str:
        """The server the search measured: tunekv, vllm, sglang, tgi, command (a --server-cmd
        template) or endpoint (a running deployment)."""
        return (self.spec.get("server") or {}).get("kind", "tunekv")

    @property
    def has_config(self) -> bool:
        """False for a running deployment's capacity: it measured the load, not a config."""
        return self.server_kind != "endpoint"

    @property
    def measured_on(self) -> str:
        """What the figures were measured on, e.g. ``vllm 0.34.0`` or ``tunekv's engine``."""
        return self.outcome.get("server") or ((self.spec.get("server") or {}).get("kind") or ENGINE)

    def fidelity_words(self) -> str:
        if self.fidelity == "sim":
            return "predicted by the simulator (a model of tunekv's engine), not measured"
        where = f"measured on {self.measured_on} on this device" if self.server_kind != "endpoint" else \
            f"measured on the deployment at {self.spec['server']['endpoint']} ({self.measured_on})"
        return where + (" and certified with fresh seeds" if self.fidelity == "certified" else "")

    @property
    def users(self) -> int:
        """The closed-loop users the figures were measured at (0: an open loop, a rate or a trace's pace)."""
        return int(self.outcome.get("capacity") or 0) if self.outcome.get("unit", "users") == "users" else 0

    @property
    def pool_tokens(self) -> int | None:
        kv = self.outcome.get("kv") or {}
        return kv["num_blocks"] * kv["block_size"] if kv.get("num_blocks") else None


def engine_config(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A tunekv config (flat EngineConfig fields): a search's fixed settings (less the device,
    which the machine that loads it picks) and a point's knobs."""
    return {**{k: v for k, v in base.items() if k != "device"}, **point}


def figures(best: Best) -> str:
    out = best.outcome
    level = out.get("capacity")
    load = best.spec["load"]
    capped = bool(out.get("capacity_capped"))
    if load is not None:
        at = load
    elif not level:
        at = "no load"
    elif out.get("unit") == "x":
        at = f"{'at least ' if capped else ''}{pace_words(level, best.spec['trace_req_s_at_1x'])}"
    else:
        at = f"{level:g}{'+' if capped else ''} users"
    ttft, itl = best.p99("ttft"), best.p99("itl")
    lat = ", ".join(f"p99 {name} {v:.0f} ms" for name, v in (("TTFT", ttft), ("ITL", itl)) if v is not None)
    gpus = int(best.point.get("tensor_parallel_size", 1))
    per = f" ({best.outcome['value'] / gpus:.1f} per GPU on {gpus} GPUs)" if gpus > 1 else ""
    return f"{best.outcome['value']:.1f} output tok/s{per} at {at}; {lat}"


def capacity_words(spec: dict[str, Any]) -> str:
    """What a study's capacity search varied: closed-loop users, or a trace's pace."""
    if spec.get("capacity_unit") == "x":
        return (f"capacity under the SLO (the trace's arrival times, sped up or slowed; "
                f"{rate_text(spec['trace_req_s_at_1x'])} req/s on average at 1x)")
    return "capacity under the SLO (closed-loop users)"


def header(best: Best, fmt: str | None = None) -> list[str]:
    """The comment block of an export in ``fmt`` (a key of FILE_NAMES; None: the report). A file
    for another server than the one measured says so: it carries the knobs, not its figures."""
    spec = best.spec
    today = datetime.date.today().isoformat()
    other = fmt is not None and fmt != best.server_kind and best.fidelity != "sim"
    elsewhere = [f"these {SERVER_TITLES[fmt]} settings carry the knobs measured on {best.measured_on}; they "
                 f"were not measured on {SERVER_TITLES[fmt]}"] if other and fmt is not None else []
    return [
        f"tunekv {__version__}, {today}: best config of study {best.study} (trial {best.number})",
        f"GPU: {spec['gpu']}",
        f"model: {spec['model']} ({spec['model_source']}), {spec['dtype']}",
        f"workload: {spec['workload']} ({spec['num_requests']} requests, seed {spec['seed']}); "
        f"load: {spec['load'] or capacity_words(spec)}",
        f"SLO: {spec['slo']}",
        f"{best.fidelity_words()}: {figures(best)}",
        *elsewhere,
    ]


def quantization_notes(best: Best, fmt: str) -> list[str]:
    """What an export in ``fmt`` must say about quantized weights: that tunekv's engine does not
    run them, and which checkpoint the server needs."""
    method = best.config.get("quantization")
    if not method:
        return []
    if fmt == "tunekv":
        return [f"quantization {method}: tunekv's engine runs unquantized weights; this config plans and simulates "
                "(tunekv plan, tunekv bench --simulate) but does not run"]
    if method in PREQUANTIZED[fmt]:
        return [f"quantization {method}: {SERVER_TITLES[fmt]} loads it from a checkpoint quantized that way; point "
                f"the model at one ({best.spec['model_source']} is what was sized)"]
    return [f"quantization {method}: {SERVER_TITLES[fmt]} quantizes the 16-bit checkpoint as it loads it"]


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)


def _yaml(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False)


def to_tunekv(best: Best) -> str:
    """A flat EngineConfig mapping (loads back with ``tunekv bench --config``) plus ``tuned_for``."""
    spec = best.spec
    tuned_for = {"gpu": spec["gpu"], "model": spec["model"], "workload": spec["workload"], "slo": spec["slo"],
                 "fidelity": best.fidelity, "measured": figures(best),
                 "measured_on": None if best.fidelity == "sim" else best.measured_on,
                 "study": best.study, "trial": best.number, "tunekv": __version__}
    return _comment(header(best, "tunekv") + quantization_notes(best, "tunekv")) + _yaml(
        {**best.config, "tuned_for": tuned_for})


def vllm_block_size(block_size: int) -> int:
    """vLLM's CUDA attention backends take multiples of 16."""
    return max(16, block_size - block_size % 16)


def vllm_args(config: dict[str, Any], model: str, dtype: str) -> dict[str, Any]:
    """vLLM's options for a config (``vllm serve``'s long flags without the dashes, as its
    ``--config`` YAML takes them): the one table both the export and a launched vLLM use. A switch
    that is off is written ``no-KEY: true``: vLLM reads a YAML ``KEY: false`` with its top-level
    parser, which has no ``--no-KEY``, and drops it (vllm/utils/argparse_utils.py, 0.34)."""
    chunked, prefix = bool(config["enable_chunked_prefill"]), bool(config["enable_prefix_caching"])
    check_vllm(config, chunked)
    quantization = config.get("quantization")
    return {
        "model": model,
        "dtype": dtype,
        "block-size": vllm_block_size(config["block_size"]),
        "max-model-len": config["max_model_len"],
        "max-num-seqs": config["max_num_seqs"],
        "max-num-batched-tokens": config["max_num_batched_tokens"],
        "gpu-memory-utilization": config["gpu_memory_utilization"],
        "tensor-parallel-size": config["tensor_parallel_size"],
        ("enable-prefix-caching" if prefix else "no-enable-prefix-caching"): True,
        ("enable-chunked-prefill" if chunked else "no-enable-chunked-prefill"): True,
        "kv-cache-dtype": VLLM_KV_CACHE_DTYPES[config.get("kv_cache_dtype", "auto")],
        **({"quantization": VLLM_QUANTIZATIONS[quantization]} if quantization else {}),
        "seed": config.get("seed", 0),
    }


def sglang_args(config: dict[str, Any], model: str, dtype: str) -> dict[str, Any]:
    """SGLang's options for a config (``launch_server``'s long flags without the dashes)."""
    chunked = bool(config["enable_chunked_prefill"])
    quantization = config.get("quantization")
    return {
        "model-path": model,
        "dtype": dtype,
        "page-size": config["block_size"],
        "context-length": config["max_model_len"],
        "max-running-requests": config["max_num_seqs"],
        "chunked-prefill-size": config["max_num_batched_tokens"] if chunked else -1,
        "max-prefill-tokens": config["max_num_batched_tokens"],
        "tp-size": config["tensor_parallel_size"],
        "mem-fraction-static": config["gpu_memory_utilization"],
        "disable-radix-cache": not config["enable_prefix_caching"],
        "kv-cache-dtype": SGLANG_KV_CACHE_DTYPES[config.get("kv_cache_dtype", "auto")],
        **({"quantization": SGLANG_QUANTIZATIONS[quantization]} if quantization else {}),
        "random-seed": config.get("seed", 0),
    }


def cli_flags(args: dict[str, Any]) -> list[str]:
    """``{"block-size": 16, "enable-prefix-caching": True}`` as ``--block-size 16
    --enable-prefix-caching``: a switch that is on is its flag alone, one that is off is left out
    (vLLM's off switches are ``no-KEY: true`` already; SGLang's are store_true flags)."""
    argv: list[str] = []
    for key, value in args.items():
        if isinstance(value, bool):
            argv += [f"--{key}"] if value else []
        else:
            argv += [f"--{key}", str(value)]
    return argv


def to_vllm(best: Best) -> str:
    """``vllm serve --config vllm.yaml``: EngineArgs keys, values that pass vLLM's checks."""
    c, notes = best.config, []
    args = vllm_args(c, best.spec["model_source"], best.spec["dtype"])
    if args["block-size"] != c["block_size"]:
        notes.append(f"block-size {c['block_size']} was tuned here; vLLM's CUDA backends need a multiple of 16")
    if c["kv_policy"] == "contiguous":
        notes.append("kv_policy contiguous won here; vLLM always pages its KV cache")
    notes += quantization_notes(best, "vllm")
    return _comment(header(best, "vllm") + notes + [f"vllm serve --config {FILE_NAMES['vllm']}"]) + _yaml(args)


def check_vllm(config: dict[str, Any], chunked: bool) -> None:
    """vLLM's scheduler checks (vllm/config/scheduler.py), as assertions on what we write."""
    assert config["max_num_batched_tokens"] >= config["max_num_seqs"], \
        "vLLM: max_num_batched_tokens >= max_num_seqs"
    if not chunked:
        assert config["max_num_batched_tokens"] >= config["max_model_len"], \
            "vLLM: without chunked prefill max_num_batched_tokens >= max_model_len"


def to_sglang(best: Best) -> str:
    """``python -m sglang.launch_server --config sglang.yaml``."""
    args = sglang_args(best.config, best.spec["model_source"], best.spec["dtype"])
    return _comment(header(best, "sglang") + quantization_notes(best, "sglang")
                    + [f"python -m sglang.launch_server --config {FILE_NAMES['sglang']}"]) + _yaml(args)


def tgi_settings(config: dict[str, Any], model: str, dtype: str, max_prompt_tokens: int,
                 pool_tokens: int | None, users: int) -> dict[str, Any]:
    """TGI's launcher settings (its environment variables) for a config, obeying its rules:
    max_input_tokens < max_total_tokens <= max_batch_total_tokens and
    max_input_tokens <= max_batch_prefill_tokens <= max_batch_total_tokens. ``pool_tokens`` is
    the KV pool a run measured (None: room for max_num_seqs requests of max_model_len); ``users``
    the most requests at once the router must admit (it refuses more with 429)."""
    c = config
    quantization, kv_cache_dtype = c.get("quantization"), c.get("kv_cache_dtype", "auto")
    pool = pool_tokens or c["max_model_len"] * c["max_num_seqs"]
    total = min(c["max_model_len"], pool)
    max_input = min(max_prompt_tokens, total - 1)
    batch_total = max(pool, total)
    prefill = min(max(c["max_num_batched_tokens"], max_input), batch_total)
    settings = {
        "MODEL_ID": model,
        # the launcher refuses --dtype with --quantize (launcher/src/main.rs, Args.dtype)
        **({"DTYPE": dtype} if dtype in TGI_DTYPES and not quantization else {}),
        **({"QUANTIZE": TGI_QUANTIZATIONS[quantization]} if quantization else {}),
        **({"KV_CACHE_DTYPE": TGI_KV_CACHE_DTYPES[kv_cache_dtype]} if kv_cache_dtype != "auto" else {}),
        "MAX_INPUT_TOKENS": max_input,
        "MAX_TOTAL_TOKENS": total,
        "MAX_BATCH_PREFILL_TOKENS": prefill,
        "MAX_BATCH_TOTAL_TOKENS": batch_total,
        # Room for twice the batch (a capacity search sends a config at most that many users), and
        # for every user the capacity was measured at.
        "MAX_CONCURRENT_REQUESTS": max(2 * c["max_num_seqs"], users),
        "MAX_BATCH_SIZE": c["max_num_seqs"],
        "NUM_SHARD": c["tensor_parallel_size"],
        "CUDA_MEMORY_FRACTION": c["gpu_memory_utilization"],
        "PREFIX_CACHING": "1" if c["enable_prefix_caching"] else "0",
    }
    assert 0 < max_input < total <= batch_total, "TGI: max_input_tokens < max_total_tokens <= max_batch_total_tokens"
    assert max_input <= prefill <= batch_total, \
        "TGI: max_input_tokens <= max_batch_prefill_tokens <= max_batch_total_tokens"
    return settings


TGI_ENV_ONLY = ("PREFIX_CACHING",)   # settings the launcher reads from its environment, not a flag


def tgi_flags(settings: dict[str, Any]) -> list[str]:
    """The launcher's flags for ``settings`` (each variable's lower-case, dashed name)."""
    return [part for k, v in settings.items() if k not in TGI_ENV_ONLY
            for part in (f"--{k.lower().replace('_', '-')}", str(v))]


def to_tgi(best: Best) -> str:
    """An env file for ``docker run --env-file tgi.env``, with the launcher command line."""
    settings = tgi_settings(best.config, best.spec["model_source"], best.spec["dtype"],
                            best.spec["max_prompt_tokens"], best.pool_tokens, best.users)
    env = " ".join(f"{k}={settings[k]}" for k in TGI_ENV_ONLY)
    dtype_note = [] if "DTYPE" in settings or "QUANTIZE" in settings else [
        f"tuned in {best.spec['dtype']}, which TGI's --dtype does not take; TGI picks the model's own dtype"]
    lines = header(best, "tgi") + dtype_note + quantization_notes(best, "tgi") + [
        "TGI sizes its KV cache itself; MAX_BATCH_TOTAL_TOKENS is the pool tunekv "
        f"{'predicted for this GPU' if best.fidelity == 'sim' else 'measured'} ({best.pool_tokens or 'unknown'} "
        "tokens).",
        f"{env} text-generation-launcher {' '.join(tgi_flags(settings))}",
    ]
    return _comment(lines) + "".join(f"{k}={v}\n" for k, v in settings.items())


EXPORTERS = {"tunekv": to_tunekv, "vllm": to_vllm, "sglang": to_sglang, "tgi": to_tgi}


def model_source(model: str, path: str | None) -> str:
    """What production engines load: the preset's Hugging Face repository, or the local directory."""
    if path is not None:
        return path
    preset = preset_dir() / "models" / f"{model}.yaml"
    match = re.search(r"^# Source: (\S+?)/config\.json", preset.read_text(), re.MULTILINE) if preset.is_file() else None
    return match.group(1) if match else model

