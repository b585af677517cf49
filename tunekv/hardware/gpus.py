"""GPU presets (presets/gpus/*.yaml): what the planner and the simulator assume about a card
that is not in this machine."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from tunekv.engine.presets import preset_dir
from tunekv.errors import BadInput, shorten
from tunekv.home import tunekv_home


@dataclass(frozen=True)
class GpuSpec:
    key: str                      # preset name, e.g. h100-80gb
    name: str                     # the name NVML reports
    memory_bytes: int
    bandwidth_bytes_s: float      # HBM / GDDR
    bf16_flops: float             # dense
    interconnect: str             # nvlink | pcie
    interconnect_bytes_s: float   # one direction, per GPU
    allreduce_latency_s: float    # a small all-reduce's fixed cost over that link
    match: tuple[str, ...]
    sources: tuple[str, ...]
    price_per_hour_usd: float | None = None   # on-demand USD a GPU-hour; None: no price known (a local card)
    price_source: str = ""                    # where the price comes from ("--price", a file, a public page)
    price_date: str = ""                      # when it was read (YYYY-MM-DD)


@cache
def gpu_presets() -> dict[str, GpuSpec]:
    out = {}
    for path in sorted((preset_dir() / "gpus").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        link = raw["interconnect"]
        out[path.stem] = GpuSpec(
            key=path.stem, name=raw["name"], memory_bytes=int(raw["memory_mib"]) * 2**20,
            bandwidth_bytes_s=float(raw["hbm_bandwidth_gbs"]) * 1e9, bf16_flops=float(raw["bf16_dense_tflops"]) * 1e12,
            interconnect=link["kind"], interconnect_bytes_s=float(link["bandwidth_gbs"]) * 1e9,
            allreduce_latency_s=float(link["latency_us"]) * 1e-6,
            match=tuple(raw["match"]), sources=tuple(raw["sources"]),
            price_per_hour_usd=float(raw["price_per_hour_usd"]), price_source=str(raw["price_source"]),
            price_date=str(raw["price_date"]))
    return out


def gpu_preset(key: str) -> GpuSpec:
    presets = gpu_presets()
    if key not in presets:
        close = difflib.get_close_matches(key, list(presets), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise BadInput(f"unknown GPU preset '{shorten(key)}'{hint}; valid presets: {', '.join(presets)}")
    return presets[key]


def match_gpu(device_name: str) -> GpuSpec | None:
    """The preset for a device name as NVML or torch reports it: patterns match whole words (an
    A100 is not an A10, an L40 not an L4) and the longest matching pattern wins; None for a card
    with no preset (an H100 PCIe is not the SXM part)."""
    best: tuple[int, GpuSpec] | None = None
    for spec in gpu_presets().values():
        for pattern in spec.match:
            found = re.search(rf"(?<![A-Z0-9]){re.escape(pattern.upper())}(?![A-Z0-9])", device_name.upper())
            if found and (best is None or len(pattern) > best[0]):
                best = (len(pattern), spec)
    return best[1] if best else None


def local_gpu_spec() -> GpuSpec:
    """This machine's CUDA device as a spec: its preset (with the memory the driver reports), or
    for a card without one its memory and placeholder speeds (only the memory is trusted)."""
    import torch

    return spec_for_device(torch.cuda.get_device_name(), torch.cuda.mem_get_info()[1])


def spec_for_device(name: str, memory_bytes: int) -> GpuSpec:
    """A card by the name and memory its driver reports (torch or NVML): its preset with that
    memory, or for a card without one, that memory and placeholder speeds."""
    known = match_gpu(name)
    if known is not None:
        return dataclasses.replace(known, memory_bytes=memory_bytes)
    return GpuSpec("local", name, memory_bytes, 1e12, 1e14, "pcie", 32e9, 30e-6, (), ())


def comm_cost(spec: GpuSpec):
    """What a collective costs between tensor-parallel ranks on this card's interconnect (a
    ``CommCost``; imported here, as this module stays light for the TUI's first paint)."""
    from tunekv.engine.step_cost import CommCost

    return CommCost(spec.allreduce_latency_s, spec.interconnect_bytes_s)


PRICES_FILE = "prices.yaml"    # in $TUNEKV_HOME: a mapping of GPU key -> USD per GPU-hour


def prices_path() -> Path:
    return tunekv_home() / PRICES_FILE


def check_price(key: str, value: object, where: str) -> float:
    """A price (USD per GPU-hour) for ``key`` as given in ``where``; BadInput for an unknown GPU
    key, a value that is not a number, or one below zero."""
    if key != "local" and key not in gpu_presets():
        gpu_preset(key)   # raises BadInput naming the valid presets
    price = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            price = float(value)
        except ValueError:
            price = math.nan
    if not math.isfinite(price) or price < 0:
        raise BadInput(f"{where}: the price of {shorten(key)} must be a number of USD per GPU-hour >= 0, "
                       f"got {shorten(str(value))!r}")
    return price


def parse_price_flags(flags: list[str]) -> dict[str, float]:
    """``--price KEY=USD`` (repeatable, or comma-joined) as a mapping of GPU key -> USD per GPU-hour."""
    out: dict[str, float] = {}
    for item in (part.strip() for flag in flags for part in flag.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise BadInput(f"--price takes KEY=USD such as h100-80gb=2.49, got {shorten(item)!r}")
        price = check_price(key.strip(), value.strip(), "--price")
        if out.get(key.strip(), price) != price:
            raise BadInput(f"--price gives {shorten(key.strip())} two prices ({out[key.strip()]:g} and {price:g}); "
                           "give it one")
        out[key.strip()] = price
    return out


def user_prices() -> dict[str, float]:
    """``$TUNEKV_HOME/prices.yaml`` (GPU key -> USD per GPU-hour), empty when there is none."""
    path = prices_path()
    if not path.exists():
        return {}
    if not path.is_file():
        raise BadInput(f"{path} is not a file; it must be a YAML file that maps GPU keys to USD per GPU-hour, such "
                       "as 'h100-80gb: 2.49'")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: cannot read it as YAML ({shorten(str(exc))})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput(f"{path} must map GPU keys to USD per GPU-hour, such as 'h100-80gb: 2.49'")
    return {str(k): check_price(str(k), v, str(path)) for k, v in raw.items()}


def with_price(spec: GpuSpec, overrides: dict[str, float]) -> GpuSpec:
    """``spec`` with the price the user gave for it (``--price`` first, then the prices file), else
    the preset's own."""
    if spec.key in overrides:
        return dataclasses.replace(spec, price_per_hour_usd=overrides[spec.key], price_source="--price", price_date="")
    from_file = user_prices()
    if spec.key in from_file:
        return dataclasses.replace(spec, price_per_hour_usd=from_file[spec.key], price_source=str(prices_path()),
                                   price_date="")
    return spec


def priced_local_device(overrides: dict[str, float], name: str | None = None) -> GpuSpec:
    """This machine's device for a fleet (its CUDA GPU, else the CPU), or the device a study ran on
    by the ``name`` it recorded, priced: ``--price local=``, then ``--price`` for its preset, then
    the same two in the prices file, then the preset's own price; BadInput when none prices it."""
    if name is not None:
        local = spec_for_device(name, 0)
    else:
        import torch

        local = local_gpu_spec() if torch.cuda.is_available() else spec_for_device("cpu", 0)
    for source, table in (("--price", overrides), (str(prices_path()), user_prices())):
        for key in ("local", local.key):
            if key in table:
                return dataclasses.replace(local, price_per_hour_usd=table[key], price_source=source, price_date="")
    if local.price_per_hour_usd is None:
        raise BadInput(f"--target-load prices the fleet, and this device ({shorten(local.name)}) has no preset price; "
                       "give --price local=USD")
    return local
