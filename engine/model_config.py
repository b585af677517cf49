from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunekv.engine.errors import ConfigError, shorten
from tunekv.engine.presets import preset_dir, preset_names
from tunekv.engine.sampling_params import SamplingParams

if TYPE_CHECKING:   # transformers takes a second to import: a model name is checked before it loads
    from transformers import PretrainedConfig

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass
class ModelConfig:
    """The model as the engine sees it: the HF config plus where its weights live (None: random)."""

    name: str
    hf_config: PretrainedConfig
    path: Path | None
    # generation_config.json (empty for a preset): as vLLM reads it, more EOS ids and the
    # sampling defaults of a request that leaves them out
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        architectures = self.hf_config.architectures
        assert architectures, f"{self.name}: config.json names no architecture (load_model_config checks it)"
        return architectures[0]

    @property
    def num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.hf_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.hf_config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.hf_config, "head_dim", None) or self.hf_config.hidden_size // self.num_heads

    @property
    def max_position_embeddings(self) -> int:
        return self.hf_config.max_position_embeddings

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """config.json's EOS ids and generation_config.json's (Qwen's chat models end a turn on an
        id only the latter lists)."""
        ids: set[int] = set()
        for eos in (self.hf_config.eos_token_id, self.generation_config.get("eos_token_id")):
            ids.update([] if eos is None else eos if isinstance(eos, list) else [eos])
        return frozenset(ids)

    @property
    def sampling_defaults(self) -> dict[str, float]:
        """The model's own temperature, top_p and top_k for requests that leave them out (vLLM's
        ``--generation-config auto``)."""
        return {k: self.generation_config[k] for k in SAMPLING_DEFAULTS if k in self.generation_config}

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of one decoder layer's matmuls (qkv, o, gate/up, down)."""
        hidden, inter = self.hf_config.hidden_size, self.hf_config.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter

    @property
    def num_params(self) -> int:
        """Every weight the engine holds (counted from the config, equal to the module's numel)."""
        hf = self.hf_config
        hidden, vocab = hf.hidden_size, hf.vocab_size
        per_layer = self.linear_params_per_layer + 2 * hidden
        if has_qkv_bias(hf):
            per_layer += (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        if has_qk_norm(hf):
            per_layer += 2 * self.head_dim
        lm_head = 0 if hf.tie_word_embeddings else vocab * hidden
        return vocab * hidden + lm_head + self.num_layers * per_layer + hidden

    def tp_problem(self, tp: int) -> str | None:
        """Why the model cannot be split over ``tp`` ranks (None: it can). Query heads and the
        MLP split evenly; KV heads split evenly, or, when there are fewer of them than ranks,
        each is replicated on the same number of ranks."""
        kv, inter = self.num_kv_heads, self.hf_config.intermediate_size
        if self.num_heads % tp:
            return f"tensor_parallel_size ({tp}) must divide the model's {self.num_heads} attention heads"
        if kv % tp and tp % kv:
            return (f"tensor_parallel_size ({tp}) must divide the model's {kv} KV heads or be a multiple "
                    "of them")
        if inter % tp:
            return f"tensor_parallel_size ({tp}) must divide the model's intermediate_size ({inter})"
        return None

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V for every layer: 2 × layers × (kv_heads / tp) × head_dim × dtype bytes."""
        kv_heads_per_rank = max(1, self.num_kv_heads // tp)
        return 2 * self.num_layers * kv_heads_per_rank * self.head_dim * dtype_bytes


def has_qkv_bias(hf_config: PretrainedConfig) -> bool:
    return hf_config.model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False))


def has_qk_norm(hf_config: PretrainedConfig) -> bool:
    return hf_config.model_type == "qwen3"


def model_preset_names() -> list[str]:
    return preset_names("models")


def load_model_config(model: str) -> ModelConfig:
    """Resolve ``model`` as a local HF model directory or a preset name; ConfigError otherwise."""
    path = Path(model).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError:  # a name too long for a path, say: not a directory
        is_dir = False
    if is_dir:
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"model directory {shorten(str(path))} has no config.json")
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"model directory {shorten(str(path))}: config.json is not valid JSON "
                              f"({shorten(str(exc))})") from None
        return ModelConfig(name=path.name, hf_config=_hf_config(raw, shorten(str(path))), path=path,
                           generation_config=_generation_config(path))
    if "/" in model or model.startswith("."):
        raise ConfigError(f"model directory {shorten(model)} does not exist")
    names = model_preset_names()
    if model not in names:
        close = difflib.get_close_matches(model, names, n=1) if len(model) <= 100 else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown model '{shorten(model)}'{hint}; use a preset ({', '.join(names)}) "
                         "or a local Hugging Face model directory")
    raw = yaml.safe_load((preset_dir() / "models" / f"{model}.yaml").read_text())
    return ModelConfig(name=model, hf_config=_hf_config(raw, model), path=None)


SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k")


def _generation_config(path: Path) -> dict[str, Any]:
    """The directory's generation_config.json, its EOS ids and sampling defaults checked; {}
    when it has none."""
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    where = f"model directory {shorten(str(path))}: generation_config.json"
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON ({shorten(str(exc))})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a mapping")
    eos = raw.get("eos_token_id")
    if eos is not None and not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                   for t in (eos if isinstance(eos, list) else [eos])):
        raise ConfigError(f"{where}: eos_token_id must be a token id or a list of them, got {shorten(repr(eos))}")
    for name in SAMPLING_DEFAULTS:
        value = raw.get(name)
        kinds = int if name == "top_k" else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise ConfigError(f"{where}: {name} must be a number, got {shorten(repr(value))}")
    defaults = {k: raw[k] for k in SAMPLING_DEFAULTS if raw.get(k) is not None}
    if defaults.get("top_k") == 0:   # transformers' "off", as vLLM reads it
        defaults["top_k"] = -1
    try:
        SamplingParams(**defaults)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return {**{k: v for k, v in raw.items() if v is not None}, **defaults}


POSITIVE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
                   "max_position_embeddings")


def _hf_config(raw: Any, where: str) -> PretrainedConfig:
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    if not isinstance(raw, dict):
        raise ConfigError(f"model config of {where} is not a mapping")
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"model {where}: architecture {shorten(repr(arch))} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    for name in POSITIVE_FIELDS:   # before transformers divides by them
        value = fields.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {where}: config field {name} must be a positive integer, got "
                              f"{shorten(repr(value))}")
    try:
        config = AutoConfig.for_model(SUPPORTED_ARCHITECTURES[arch], **fields)
    except (TypeError, ValueError, KeyError, ZeroDivisionError, StrictDataclassError) as exc:
        # transformers' own checks (a field of the wrong type, heads that do not divide the width)
        # put the reason on their last line, after the validator's name
        reason = re.sub(r"^\w+Error: ", "", (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip())
        raise ConfigError(f"model {where}: config.json cannot be read ({shorten(reason, 160)})") from None
    for name in POSITIVE_FIELDS:
        if not isinstance(getattr(config, name, None), int) or getattr(config, name) < 1:
            raise ConfigError(f"model {where}: config field {name} must be a positive integer")
    return config
