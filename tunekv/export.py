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

FORMATS = ("tunekv", "vllm", "sglang", "tgi", "report")
FILE_NAMES = {"tunekv": "tunekv.yaml", "vllm": "vllm.yaml", "sglang": "sglang.yaml", "tgi": "tgi.env"}
TGI_DTYPES = ("float16", "bfloat16")
FIDELITY_WORDS = {"certified": "measured on this device and certified with fresh seeds",
                  "real": "measured on this device", "sim": "predicted by the simulator, not measured"}


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
        base = {k: v for k, v in self.spec["base"].items() if k not in ("device",)}
        return {**base, **self.point}

    def p99(self, metric: str) -> float | None:
        value = ((self.outcome.get("metrics") or {}).get(f"{metric}_ms") or {}).get("p99")
        return None if value is None or value != value else value

    @property
    def pool_tokens(self) -> int | None:
        kv = self.outcome.get("kv") or {}
        return kv["num_blocks"] * kv["block_size"] if kv.get("num_blocks") else None


def figures(best: Best) -> str:
    out = best.outcome
    level = out.get("capacity")
    load = best.spec["load"]
    if load is None:
        at = f"{level:g}{'+' if out.get('capacity_capped') else ''} users" if level else "no load"
    else:
        at = load
    ttft, itl = best.p99("ttft"), best.p99("itl")
    lat = ", ".join(f"p99 {name} {v:.0f} ms" for name, v in (("TTFT", ttft), ("ITL", itl)) if v is not None)
    gpus = int(best.point.get("tensor_parallel_size", 1))
    per = f" ({best.outcome['value'] / gpus:.1f} per GPU on {gpus} GPUs)" if gpus > 1 else ""
    return f"{best.outcome['value']:.1f} output tok/s{per} at {at}; {lat}"


def header(best: Best) -> list[str]:
    spec = best.spec
    today = datetime.date.today().isoformat()
    return [
        f"tunekv {__version__}, {today}: best config of study {best.study} (trial {best.number})",
        f"GPU: {spec['gpu']}",
        f"model: {spec['model']} ({spec['model_source']}), {spec['dtype']}",
        f"workload: {spec['workload']} ({spec['num_requests']} requests, seed {spec['seed']}); "
        f"load: {spec['load'] or 'capacity under the SLO (closed-loop users)'}",
        f"SLO: {spec['slo']}",
        f"{FIDELITY_WORDS[best.fidelity]}: {figures(best)}",
    ]


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)


def _yaml(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False)


def to_tunekv(best: Best) -> str:
    """A flat EngineConfig mapping (loads back with ``tunekv bench --config``) plus ``tuned_for``."""
    spec = best.spec
    tuned_for = {"gpu": spec["gpu"], "model": spec["model"], "workload": spec["workload"], "slo": spec["slo"],
                 "fidelity": best.fidelity, "measured": figures(best), "study": best.study, "trial": best.number,
                 "tunekv": __version__}
    return _comment(header(best)) + _yaml({**best.config, "tuned_for": tuned_for})


def vllm_block_size(block_size: int) -> int:
    """vLLM's CUDA attention backends take multiples of 16."""
    return max(16, block_size - block_size % 16)


def to_vllm(best: Best) -> str:
    """``vllm serve --config vllm.yaml``: EngineArgs keys, values that pass vLLM's checks."""
    c, notes = best.config, []
    block = vllm_block_size(c["block_size"])
    if block != c["block_size"]:
        notes.append(f"block-size {c['block_size']} was tuned here; vLLM's CUDA backends need a multiple of 16")
    args = {
        "model": best.spec["model_source"],
        "dtype": best.spec["dtype"],
        "block-size": block,
        "max-model-len": c["max_model_len"],
        "max-num-seqs": c["max_num_seqs"],
        "max-num-batched-tokens": c["max_num_batched_tokens"],
        "gpu-memory-utilization": c["gpu_memory_utilization"],
        "tensor-parallel-size": c["tensor_parallel_size"],
        "enable-prefix-caching": bool(c["enable_prefix_caching"]),
        "enable-chunked-prefill": bool(c["enable_chunked_prefill"]),
        "seed": c.get("seed", 0),
    }
    check_vllm(args)
    if c["kv_policy"] == "contiguous":
        notes.append("kv_policy contiguous won here; vLLM always pages its KV cache")
    return _comment(header(best) + notes + [f"vllm serve --config {FILE_NAMES['vllm']}"]) + _yaml(args)


def check_vllm(args: dict[str, Any]) -> None:
    """vLLM's scheduler checks (vllm/config/scheduler.py), as assertions on what we write."""
    assert args["max-num-batched-tokens"] >= args["max-num-seqs"], "vLLM: max_num_batched_tokens >= max_num_seqs"
    if not args["enable-chunked-prefill"]:
        assert args["max-num-batched-tokens"] >= args["max-model-len"], \
            "vLLM: without chunked prefill max_num_batched_tokens >= max_model_len"
    assert args["block-size"] % 16 == 0, "vLLM's CUDA backends: block size a multiple of 16"


def to_sglang(best: Best) -> str:
    """``python -m sglang.launch_server --config sglang.yaml``."""
    c = best.config
    chunked = bool(c["enable_chunked_prefill"])
    args = {
        "model-path": best.spec["model_source"],
        "dtype": best.spec["dtype"],
        "page-size": c["block_size"],
        "context-length": c["max_model_len"],
        "max-running-requests": c["max_num_seqs"],
        "chunked-prefill-size": c["max_num_batched_tokens"] if chunked else -1,
        "max-prefill-tokens": c["max_num_batched_tokens"],
        "tp-size": c["tensor_parallel_size"],
        "mem-fraction-static": c["gpu_memory_utilization"],
        "disable-radix-cache": not c["enable_prefix_caching"],
        "random-seed": c.get("seed", 0),
    }
    return _comment(header(best) + [f"python -m sglang.launch_server --config {FILE_NAMES['sglang']}"]) + _yaml(args)


def tgi_settings(best: Best) -> dict[str, Any]:
    """TGI's token limits from the config, obeying its rules:
    max_input_tokens < max_total_tokens <= max_batch_total_tokens and
    max_input_tokens <= max_batch_prefill_tokens <= max_batch_total_tokens."""
    c = best.config
    pool = best.pool_tokens or c["max_model_len"] * c["max_num_seqs"]
    total = min(c["max_model_len"], pool)
    max_input = min(best.spec["max_prompt_tokens"], total - 1)
    batch_total = max(pool, total)
    prefill = min(max(c["max_num_batched_tokens"], max_input), batch_total)
    settings = {
        "MODEL_ID": best.spec["model_source"],
        **({"DTYPE": best.spec["dtype"]} if best.spec["dtype"] in TGI_DTYPES else {}),
        "MAX_INPUT_TOKENS": max_input,
        "MAX_TOTAL_TOKENS": total,
        "MAX_BATCH_PREFILL_TOKENS": prefill,
        "MAX_BATCH_TOTAL_TOKENS": batch_total,
        # The router refuses (429) beyond this: room for every user the capacity was measured at.
        "MAX_CONCURRENT_REQUESTS": max(c["max_num_seqs"], int(best.outcome.get("capacity") or 0)),
        "MAX_BATCH_SIZE": c["max_num_seqs"],
        "NUM_SHARD": c["tensor_parallel_size"],
        "CUDA_MEMORY_FRACTION": c["gpu_memory_utilization"],
        "PREFIX_CACHING": "1" if c["enable_prefix_caching"] else "0",
    }
    assert 0 < max_input < total <= batch_total, "TGI: max_input_tokens < max_total_tokens <= max_batch_total_tokens"
    assert max_input <= prefill <= batch_total, \
        "TGI: max_input_tokens <= max_batch_prefill_tokens <= max_batch_total_tokens"
    return settings


def to_tgi(best: Best) -> str:
    """An env file for ``docker run --env-file tgi.env``, with the launcher command line."""
    settings = tgi_settings(best)
    flags = " ".join(f"--{k.lower().replace('_', '-')} {v}" for k, v in settings.items()
                     if k not in ("PREFIX_CACHING",))
    dtype_note = [] if "DTYPE" in settings else [
        f"tuned in {best.spec['dtype']}, which TGI's --dtype does not take; TGI picks the model's own dtype"]
    lines = header(best) + dtype_note + [
        "TGI sizes its KV cache itself; MAX_BATCH_TOTAL_TOKENS is the pool tunekv measured "
        f"({best.pool_tokens or 'unknown'} tokens).",
        f"PREFIX_CACHING={settings['PREFIX_CACHING']} text-generation-launcher {flags}",
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

