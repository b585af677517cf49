"""Weights: read a local HF checkpoint tensor by tensor (safetensors only), or random init."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from tunekv.engine.models.llama import LlamaForCausalLM

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"model directory {path}: {index.name} is malformed ({exc})") from None
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model directory {path} has no *.safetensors weights "
                         "(pickled .bin checkpoints are not loaded; convert them with save_pretrained)")
    return files


def load_weights(model: LlamaForCausalLM, path: Path) -> None:
    """Copy each checkpoint tensor into its parameter (or its shard of a fused parameter)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for file in safetensors_files(path):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read weights file {file} ({exc})") from None
        with handle as f:
            for name in f.keys():
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                target, shard = _target(name, model)
                if target not in params:
                    raise ValueError(f"weights file {file.name} has tensor {name} that this model does not have")
                _copy(model, params[target], f.get_tensor(name), target, shard)
                loaded.add(target if shard is None else f"{target}#{shard}")
    missing = [n for n in _expected(model, params) if n not in loaded]
    if missing:
        raise ValueError(f"model directory {path} lacks weights for {len(missing)} tensors, e.g. {missing[0]}")


def _target(name: str, model: LlamaForCausalLM) -> tuple[str, int | None]:
    for part, (fused, shard) in model.stacked_params.items():
        key = f".{part}."
        if key in name:
            return name.replace(key, f".{fused}."), shard
    return name, None


def _copy(model: LlamaForCausalLM, param: nn.Parameter, tensor: torch.Tensor, name: str, shard: int | None) -> None:
    if shard is None:
        dst = param.data
    else:
        fused = name.split(".")[-2]
        sizes = model.shard_sizes(fused)
        offset = sum(sizes[:shard])
        dst = param.data.narrow(0, offset, sizes[shard])
    if dst.shape != tensor.shape:
        raise ValueError(f"weight {name} has shape {tuple(tensor.shape)}, the config implies {tuple(dst.shape)}")
    dst.copy_(tensor)


def _expected(model: LlamaForCausalLM, params: dict[str, nn.Parameter]) -> list[str]:
    out = []
    for name in params:
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        fused = name.split(".")[-2]
        if fused in ("qkv_proj", "gate_up_proj"):
            out.extend(f"{name}#{i}" for i in range(len(model.shard_sizes(fused))))
        else:
            out.append(name)
    return out


@torch.no_grad()
def init_random_weights(model: nn.Module, std: float, seed: int) -> None:
    """Normal(0, std) for matrices and embeddings, ones for norms, zero biases; seeded, on the
    model's own device (nothing is materialised on the CPU first)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, std, generator=gen)
