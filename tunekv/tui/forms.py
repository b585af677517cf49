"""The TUI's input fields: each raw string checked into a value, or one sentence saying why not.

Pure functions and no heavy imports (no torch, optuna or transformers): they run on every key
press, on the UI thread."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from tunekv.defaults import FLEET_BUDGET, FLEET_GPUS, GPU_MODEL
from tunekv.engine.config import BLOCK_SIZES, DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, TP_SIZES
from tunekv.engine.presets import preset_names
from tunekv.errors import BadInput, shorten
from tunekv.hardware.gpus import parse_price_flags
from tunekv.predict.fleet import TargetLoad
from tunekv.units import parse_duration

NO_QUANTIZATION = "none"   # the Weights field's choice for weights in the model's dtype


@dataclass
class PlanInputs:
    """What the Plan screen plans, and the Search screen searches for."""

    model: str = GPU_MODEL
    gpu: str = "h100-80gb"              # a GPU preset, or "local"
    dtype: str = "auto"
    workload: str = "chat"
    slo: str = "interactive"
    tp: int = 1
    block_size: int = 16
    max_model_len: int | None = None    # None: the model's maximum
    gpu_memory_utilization: float = 0.90
    kv_cache_dtype: str = "auto"
    quantization: str | None = None     # None: the matmul weights in the model's dtype


@dataclass
class Checked:
    """Parsed inputs, and for each field that is wrong, why."""

    inputs: PlanInputs
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _did_you_mean(value: str, names: list[str]) -> str:
    close = difflib.get_close_matches(value, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_model(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return "give a preset name or a local model directory"
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            return None if (path / "config.json").is_file() else f"{shorten(value)} has no config.json"
    except OSError as exc:   # a name too long for the system
        return f"{shorten(value)}: {exc.strerror or exc}"
    if "/" in value or value.startswith((".", "~")):
        return f"directory {shorten(value)} does not exist"
    names = preset_names("models")
    if value not in names:
        return f"unknown model{_did_you_mean(value, names)}; presets: {', '.join(names)}"
    return None


def check_workload(raw: str) -> str | None:
    value = raw.strip()
    if value.endswith((".yaml", ".yml", ".jsonl", ".csv", ".json")):
        try:
            return None if Path(value).expanduser().is_file() else f"file {shorten(value)} does not exist"
        except OSError as exc:   # a name too long for the system
            return f"{shorten(value)}: {exc.strerror or exc}"
    names = preset_names("workloads")
    if value not in names:
        return (f"unknown workload{_did_you_mean(value, names)}; presets: {', '.join(names)}, "
                "or a .yaml/.jsonl/.csv/.json file")
    return None


def check_slo(raw: str) -> str | None:
    from tunekv.workload.metrics import parse_slo

    try:
        parse_slo(raw)
    except ValueError as exc:
        return str(exc)
    return None


def check_gpu(raw: str, have_local: bool) -> str | None:
    value = raw.strip()
    if value == "local":
        return None if have_local else "there is no local GPU here; pick a preset"
    names = preset_names("gpus")
    if value not in names:
        return f"unknown GPU preset{_did_you_mean(value, names)}; presets: {', '.join(names)}"
    return None


def parse_int(raw: str, lo: int, hi: int | None = None, blank_ok: bool = False) -> tuple[int | None, str | None]:
    value = raw.strip()
    if not value and blank_ok:
        return None, None
    try:
        number = int(value)
    except ValueError:
        return None, f"'{value}' is not a whole number"
    if number < lo or (hi is not None and number > hi):
        return None, f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}"
    return number, None


def parse_fraction(raw: str) -> tuple[float | None, str | None]:
    try:
        value = float(raw.strip())
    except ValueError:
        return None, f"'{raw.strip()}' is not a number"
    if not 0.05 <= value <= 1.0:
        return None, "must be between 0.05 and 1.0"
    return value, None


def check_plan_inputs(raw: dict[str, str], have_local_gpu: bool) -> Checked:
    """``raw`` maps field names (PlanInputs') to the text in each field."""
    inputs = PlanInputs()
    errors: dict[str, str] = {}
    for name, check in (("model", check_model), ("workload", check_workload), ("slo", check_slo)):
        error = check(raw[name])
        if error:
            errors[name] = error
        else:
            setattr(inputs, name, raw[name].strip())
    error = check_gpu(raw["gpu"], have_local_gpu)
    if error:
        errors["gpu"] = error
    else:
        inputs.gpu = raw["gpu"].strip()
    if raw["dtype"] not in DTYPES:
        errors["dtype"] = f"one of {', '.join(DTYPES)}"
    else:
        inputs.dtype = raw["dtype"]
    tp, error = parse_int(raw["tp"], 1, 8)
    if error or tp not in TP_SIZES:
        errors["tp"] = error or f"one of {', '.join(map(str, TP_SIZES))}"
    else:
        inputs.tp = tp
    block, error = parse_int(raw["block_size"], 1)
    if error or block not in BLOCK_SIZES:
        errors["block_size"] = error or f"one of {', '.join(map(str, BLOCK_SIZES))}"
    else:
        inputs.block_size = block
    length, error = parse_int(raw["max_model_len"], 16, blank_ok=True)
    if error:
        errors["max_model_len"] = error
    else:
        inputs.max_model_len = length
    fraction, error = parse_fraction(raw["gpu_memory_utilization"])
    if fraction is None:
        errors["gpu_memory_utilization"] = error or "must be a number"
    else:
        inputs.gpu_memory_utilization = fraction
    if raw["kv_cache_dtype"] not in KV_CACHE_DTYPES:
        errors["kv_cache_dtype"] = f"one of {', '.join(KV_CACHE_DTYPES)}"
    else:
        inputs.kv_cache_dtype = raw["kv_cache_dtype"]
    if raw["quantization"] not in (NO_QUANTIZATION, *QUANTIZATIONS):
        errors["quantization"] = f"one of {', '.join((NO_QUANTIZATION, *QUANTIZATIONS))}"
    else:
        inputs.quantization = None if raw["quantization"] == NO_QUANTIZATION else raw["quantization"]
    return Checked(inputs, errors)


@dataclass
class FleetInputs:
    """What the Plan screen's "Fleet for a target load" section asks for, as `tunekv plan
    --target-load` takes it. ``gpus`` stays text: ``search.fleet.check_gpus`` checks it off the UI
    thread (it imports the search)."""

    target: TargetLoad | None = None
    gpus: str = ",".join(FLEET_GPUS)
    prices: dict[str, float] = field(default_factory=dict)
    budget: str = FLEET_BUDGET


@dataclass
class CheckedFleet:
    """Parsed fleet inputs, and for each field that is wrong, why."""

    inputs: FleetInputs
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def without_flag(exc: BadInput, flag: str) -> str:
    """A CLI check's sentence for the field beside it: the leading ``--flag`` (and a colon after it) dropped."""
    text = str(exc)
    return text.removeprefix(flag).lstrip(": ") if text.startswith(flag) else text


def check_fleet_inputs(raw: dict[str, str]) -> CheckedFleet:
    """``raw`` maps ``target``, ``gpus``, ``prices`` and ``budget`` to the text in each field."""
    inputs = FleetInputs(gpus=raw["gpus"].strip(), budget=raw["budget"].strip())
    errors: dict[str, str] = {}
    try:
        inputs.target = TargetLoad.parse(raw["target"])
    except BadInput as exc:
        errors["target"] = without_flag(exc, "--target-load")
    if not inputs.gpus.replace(",", "").strip():
        errors["gpus"] = "give GPU presets separated by commas, such as h100-80gb,l40s-48gb"
    try:
        inputs.prices = parse_price_flags([raw["prices"]])
    except BadInput as exc:
        errors["prices"] = without_flag(exc, "--price")
    try:
        parse_duration(raw["budget"], "the budget")
    except BadInput as exc:
        errors["budget"] = str(exc)
    return CheckedFleet(inputs, errors)
