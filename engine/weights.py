"""Weights: read a local HF checkpoint tensor by tensor (safetensors only), or random init."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from tunekv.engine.errors import ConfigError
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.engine.parallel import ColumnParallelLinear, Sharded, ShardSpec

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f"model directory {path}: {index.name} is malformed ({exc})") from None
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"model directory {path} has no *.safetensors weights "
                         "(pickled .bin checkpoints are not loaded; convert them with save_pretrained)")
    return files


def load_weights(model: LlamaForCausalLM, path: Path) -> None:
    """Copy each checkpoint tensor into its parameter (or its part of a fused parameter); under
    tensor parallelism only this rank's slice is read from the file."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for file in safetensors_files(path):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ConfigError(f"cannot read weights file {file} ({exc})") from None
        with handle as f:
            for name in f.keys():
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                target, shard = _target(name, model)
                if target not in params:
                    raise ConfigError(f"weights file {file.name} has tensor {name} that this model does not have")
                _load(model, params[target], f.get_slice(name), target, shard)
                loaded.add(target if shard is None else f"{target}#{shard}")
    missing = [n for n in _expected(model, params) if n not in loaded]
    if missing:
        raise ConfigError(f"model directory {path} lacks weights for {len(missing)} tensors, e.g. {missing[0]}")


def _target(name: str, model: LlamaForCausalLM) -> tuple[str, int | None]:
    for part, (fused, shard) in model.stacked_params.items():
        key = f".{part}."
        if key in name:
            return name.replace(key, f".{fused}."), shard
    return name, None


def _spec(model: nn.Module, name: str, shard: int | None) -> ShardSpec | None:
    """How parameter ``name`` is split across ranks (None: every rank holds all of it)."""
    owner = model.get_submodule(name.rpartition(".")[0])
    return owner.shard_spec(shard) if isinstance(owner, Sharded) else None


def _load(model: LlamaForCausalLM, param: nn.Parameter, source, name: str, shard: int | None) -> None:
    """Read this rank's slice of a checkpoint tensor (``source``: a safetensors slice) into ``param``."""
    shape = tuple(source.get_shape())
    spec = _spec(model, name, shard)
    if spec is None:
        dst, wanted = param.data, tuple(param.shape)
        index: tuple = ()
    else:
        dst = param.data.narrow(spec.dim, spec.offset, spec.length)
        wanted = tuple(spec.full if d == spec.dim else n for d, n in enumerate(dst.shape))
        index = (slice(None),) * spec.dim + (slice(spec.start, spec.start + spec.length),)
    if shape != wanted:
        raise ConfigError(f"weight {name} has shape {shape}, the config implies {wanted}")
    dst.copy_(source[index] if index else source[:])


def _expected(model: LlamaForCausalLM, params: dict[str, nn.Parameter]) -> list[str]:
    out: list[str] = []
    for name in params:
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        fused = name.split(".")[-2]
        if fused in ("qkv_proj", "gate_up_proj"):
            fused_module = model.get_submodule(name.rpartition(".")[0])
            assert isinstance(fused_module, ColumnParallelLinear), f"{name} is a fused column-parallel weight"
            out.extend(f"{name}#{i}" for i in range(len(fused_module.parts)))
        else:
            out.append(name)
    return out


@torch.no_grad()
def init_random_weights(model: nn.Module, std: float, seed: int) -> None:
    """Normal(0, std) for matrices and embeddings, ones for norms, zero biases; seeded, on the
    model's own device (nothing is materialised on the CPU first). Each parameter is drawn at its
    full size and this rank keeps its slice, so every tensor-parallel size gets the same model."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            specs = _param_specs(model, name)
            full_shape = list(param.shape)
            if specs is not None:
                full_shape[specs[0].dim] = sum(s.full for s in specs)
            if specs is None or full_shape == list(param.shape):  # one device: draw in place
                param.normal_(0.0, std, generator=gen)
                continue
            full = torch.empty(full_shape, dtype=param.dtype, device=device).normal_(0.0, std, generator=gen)
            param.zero_()  # a vocabulary slice's padding rows
            base = 0
            for s in specs:
                param.narrow(s.dim, s.offset, s.length).copy_(full.narrow(s.dim, base + s.start, s.length))
                base += s.full


def _param_specs(model: nn.Module, name: str) -> list[ShardSpec] | None:
    """Every part's slice of parameter ``name`` (one part unless fused); None when not split."""
    owner = model.get_submodule(name.rpartition(".")[0])
    if not isinstance(owner, Sharded):
        return None
    parts = len(owner.parts) if isinstance(owner, ColumnParallelLinear) else 1
    return [owner.shard_spec(i) for i in range(parts)]
