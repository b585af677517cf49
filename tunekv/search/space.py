"""The knobs a search turns, their candidate values, and the user's pins (--fix) and bounds (--range).

Every knob is a short ordered list of values (powers of two for sizes), so a space can also be
enumerated as a grid. A sampled point is made valid the way vLLM would insist on it:
``max_num_batched_tokens >= max_num_seqs``, and without chunked prefill
``max_num_batched_tokens >= max_model_len`` (the budget is raised, never the other way round).
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tunekv.engine.config import BLOCK_SIZES, KV_CACHE_DTYPES, KV_POLICIES
from tunekv.errors import BadInput, shorten

KNOBS = ("block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
         "tensor_parallel_size", "enable_chunked_prefill", "enable_prefix_caching", "kv_policy", "kv_cache_dtype")
MAX_NUM_SEQS = (8, 16, 32, 64, 128, 256, 512, 1024)
BATCHED_TOKENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
MEMORY_UTILIZATIONS = (0.80, 0.85, 0.90, 0.95)
BOOLS = (True, False)
_INT_KNOBS = ("block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size")


@dataclass
class SearchSpace:
    """Candidate values per searched knob, and the knobs held at one value."""

    choices: dict[str, tuple] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values in self.choices.items():
            assert values, f"knob {name} has no candidate values"
            assert name not in self.fixed, f"knob {name} is both searched and fixed"

    @property
    def searched(self) -> list[str]:
        return [k for k in KNOBS if k in self.choices and len(self.choices[k]) > 1]

    def values(self, name: str) -> tuple:
        return (self.fixed[name],) if name in self.fixed else self.choices[name]

    def suggest(self, suggest_categorical: Callable[[str, tuple], Any]) -> dict[str, Any]:
        """One point: each searched knob from ``suggest_categorical(name, choices)`` (an Optuna
        trial's), the fixed ones as pinned; made valid."""
        point = {}
        for name in KNOBS:
            if name in self.choices:
                values = self.choices[name]
                point[name] = values[0] if len(values) == 1 else suggest_categorical(name, values)
            elif name in self.fixed:
                point[name] = self.fixed[name]
        return make_valid(point)

    def params_of(self, point: dict[str, Any]) -> dict[str, Any]:
        """The Optuna params (searched knobs only) that reproduce ``point``."""
        return {k: point[k] for k in self.searched}

    def admits(self, point: dict[str, Any]) -> bool:
        """Whether ``point`` keeps the pins: holding the fixed knobs and repairing changes nothing."""
        return make_valid({**point, **self.fixed}) == point

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every distinct valid point (the repair can map several raw points to one)."""
        names = [k for k in KNOBS if k in self.choices]
        seen: set[tuple] = set()
        for combo in itertools.product(*(self.choices[k] for k in names)):
            raw = {**self.fixed, **dict(zip(names, combo))}
            point = make_valid({k: raw[k] for k in KNOBS if k in raw})
            key = point_key(point)
            if key not in seen:
                seen.add(key)
                yield point

    def grid_size(self) -> int:
        return sum(1 for _ in self.grid())

    def describe(self) -> dict[str, list]:
        return {k: list(self.values(k)) for k in KNOBS if k in self.choices or k in self.fixed}


def point_key(point: dict[str, Any]) -> tuple:
    return tuple((k, point.get(k)) for k in KNOBS)


def make_valid(point: dict[str, Any]) -> dict[str, Any]:
    point = dict(point)
    budget = point.get("max_num_batched_tokens")
    if budget is not None:
        floor = point.get("max_num_seqs", 1)
        if not point.get("enable_chunked_prefill", True):
            floor = max(floor, point.get("max_model_len") or 0)
        point["max_num_batched_tokens"] = max(budget, floor)
    if point.get("kv_policy") == "contiguous":
        point["enable_prefix_caching"] = False  # a contiguous reservation cannot share blocks
    return point


def default_space(max_model_lens: tuple[int, ...], tp_sizes: tuple[int, ...], on_gpu: bool) -> SearchSpace:
    """The full space; on a CPU ``gpu_memory_utilization`` has no effect and is held at 0.90, and
    the KV cache keeps the model's dtype (an fp8 cache is a GPU feature: vLLM's, and on a CPU
    there is no fp8 arithmetic to gain from; ``--fix kv_cache_dtype=fp8`` still asks for it)."""
    choices: dict[str, tuple] = {
        "block_size": BLOCK_SIZES, "max_model_len": max_model_lens, "max_num_seqs": MAX_NUM_SEQS,
        "max_num_batched_tokens": BATCHED_TOKENS, "tensor_parallel_size": tp_sizes,
        "enable_chunked_prefill": BOOLS, "enable_prefix_caching": BOOLS, "kv_policy": KV_POLICIES,
    }
    fixed: dict[str, Any] = {}
    if on_gpu:
        choices["gpu_memory_utilization"] = MEMORY_UTILIZATIONS
        choices["kv_cache_dtype"] = KV_CACHE_DTYPES
    else:
        fixed["gpu_memory_utilization"] = 0.90
        fixed["kv_cache_dtype"] = "auto"
    return SearchSpace(choices, fixed)


def model_lengths(needed: int, model_max: int) -> tuple[int, ...]:
    """max_model_len candidates: what the workload needs, and the powers of two up to 4x that
    (never above the model's limit)."""
    assert needed <= model_max, "the workload's longest request must fit the model"
    pow2 = 1 << (needed - 1).bit_length()
    return tuple(sorted({needed} | {v for v in (pow2, 2 * pow2, 4 * pow2) if needed <= v <= model_max}))


def _knob(name: str, flag: str) -> str:
    if name not in KNOBS:
        close = difflib.get_close_matches(name, KNOBS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BadInput(f"{flag}: unknown knob '{shorten(name)}'{hint}; knobs are {', '.join(KNOBS)}")
    return name


def _value(name: str, raw: str, flag: str) -> Any:
    raw = raw.strip()
    if name in ("enable_chunked_prefill", "enable_prefix_caching"):
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise BadInput(f"{flag}: {name} takes true or false, got '{shorten(raw)}'")
        return raw.lower() in ("true", "on", "1")
    if name in ("kv_policy", "kv_cache_dtype"):
        accepted = KV_POLICIES if name == "kv_policy" else KV_CACHE_DTYPES
        if raw not in accepted:
            raise BadInput(f"{flag}: {name} takes {' or '.join(accepted)}, got '{shorten(raw)}'")
        return raw
    if name == "gpu_memory_utilization":
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 < value <= 1.0:
            raise BadInput(f"{flag}: gpu_memory_utilization takes a number in (0, 1], got '{shorten(raw)}'")
        return value
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInput(f"{flag}: {name} takes an integer >= 1, got '{shorten(raw)}'")
    return value


def _pairs(specs: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        for part in spec.split(","):
            name, sep, raw = part.partition("=")
            if not sep or not raw.strip():
                raise BadInput(f"{flag} takes KNOB=VALUE like {example}, got '{shorten(part)}'")
            out.append((_knob(name.strip(), flag), raw.strip()))
    return out


def named_knobs(fixes: list[str], ranges: list[str]) -> set[str]:
    """The knobs ``--fix`` and ``--range`` name (BadInput for one that is not a knob)."""
    return {name for name, _ in _pairs(fixes, "--fix", "block_size=16") + _pairs(ranges, "--range",
                                                                                 "max_num_seqs=32:512")}


def restrict(space: SearchSpace, fixes: list[str], ranges: list[str], model_max_len: int | None = None) -> SearchSpace:
    """Apply ``--fix block_size=16`` and ``--range max_num_seqs=32:512`` (several, or comma-joined);
    ValueError on an unknown knob, a bad value, an empty or contradictory range, or a
    max_model_len beyond the model's ``model_max_len``."""
    choices = dict(space.choices)
    fixed = dict(space.fixed)
    pinned = set()
    for name, raw in _pairs(fixes, "--fix", "block_size=16"):
        choices.pop(name, None)
        value = _value(name, raw, "--fix")
        if name in pinned and fixed[name] != value:
            raise BadInput(f"--fix gives {name} two values ({fixed[name]} and {value}); give it one")
        fixed[name] = value
        pinned.add(name)
    ranged = set()
    for name, raw in _pairs(ranges, "--range", "max_num_seqs=32:512"):
        given = shorten(f"{name}={raw}")
        if name in ranged:
            raise BadInput(f"--range gives {name} two ranges; give it one")
        ranged.add(name)
        lo_raw, sep, hi_raw = raw.partition(":")
        if not sep or name not in _INT_KNOBS + ("gpu_memory_utilization",):
            raise BadInput(f"--range takes LOW:HIGH on a numeric knob ({', '.join(_INT_KNOBS)}, "
                             f"gpu_memory_utilization), got '{given}'")
        if not all(_finite_or_empty(bound) for bound in (lo_raw, hi_raw)):
            raise BadInput(f"--range {given}: the bounds must be finite numbers (or empty for no bound)")
        if name in pinned:
            raise BadInput(f"--range {name} contradicts --fix {name}={fixed[name]}")
        if name in fixed:
            raise BadInput(f"--range {name}: this search holds {name} at {fixed[name]} (it has no effect on this "
                           "device), so it takes no range")
        lo = _value(name, lo_raw, "--range") if lo_raw.strip() else None
        hi = _value(name, hi_raw, "--range") if hi_raw.strip() else None
        if lo is not None and hi is not None and lo > hi:
            raise BadInput(f"--range {given} is empty: {lo} > {hi}")
        current = choices.get(name, ())
        inside = [v for v in current if (lo is None or v >= lo) and (hi is None or v <= hi)]
        # The ends are candidates too (32:500 searches 500), where the knob allows them.
        ends = [v for v in (lo, hi) if v is not None and v not in inside and _allowed(name, v, current)
                and not (name == "max_model_len" and model_max_len is not None and v > model_max_len)]
        values = tuple(sorted(set(inside) | set(ends)))
        if not values:
            raise BadInput(f"--range {given} leaves no candidate value (candidates: "
                             f"{', '.join(map(str, current))})")
        choices[name] = values
    for name, value in fixed.items():
        _check_allowed(name, value, space)
    if model_max_len is not None and fixed.get("max_model_len", 0) > model_max_len:
        raise BadInput(f"--fix max_model_len={fixed['max_model_len']} exceeds the model's "
                         f"max_position_embeddings ({model_max_len})")
    return SearchSpace({k: v for k, v in choices.items() if k not in fixed}, fixed)


def _finite_or_empty(text: str) -> bool:
    """A --range bound: empty (no bound) or a finite number (``nan`` and ``inf`` are not bounds)."""
    if not text.strip():
        return True
    try:
        return math.isfinite(float(text))
    except ValueError:
        return True   # not a number at all: _value says what the knob takes


def _allowed(name: str, value: Any, current: tuple) -> bool:
    if name in ("tensor_parallel_size", "block_size"):
        return value in current
    if name == "max_model_len" and current:
        return value >= min(current)   # shorter than the workload's longest request cannot serve it
    return True


def _check_allowed(name: str, value: Any, space: SearchSpace) -> None:
    current = space.choices.get(name, ())
    if name == "block_size" and current and value not in current:
        raise BadInput(f"--fix block_size={value}: block sizes are {', '.join(map(str, current))} (the paged "
                         "kernels tile a block in powers of two)")
    if name == "tensor_parallel_size" and current and value not in current:
        raise BadInput(f"--fix tensor_parallel_size={value}: possible here are {', '.join(map(str, current))} "
                         "(sizes up to 8 that split the model's heads and MLP, on a GPU; 1 on the CPU)")
    if name == "max_model_len" and current and value < min(current):
        raise BadInput(f"--fix max_model_len={value} is shorter than the workload's longest request "
                         f"({min(current)} tokens)")


def check_fixed_consistent(space: SearchSpace) -> None:
    """Pins that contradict vLLM's rules are bad input, not something to repair silently."""
    f = space.fixed
    if "max_num_batched_tokens" in f and "max_num_seqs" in f and f["max_num_batched_tokens"] < f["max_num_seqs"]:
        raise BadInput(f"--fix max_num_batched_tokens={f['max_num_batched_tokens']} is below "
                         f"max_num_seqs={f['max_num_seqs']}; vLLM requires max_num_batched_tokens >= max_num_seqs")
    if (f.get("enable_chunked_prefill") is False and "max_num_batched_tokens" in f and "max_model_len" in f
            and f["max_num_batched_tokens"] < f["max_model_len"]):
        raise BadInput(f"--fix max_num_batched_tokens={f['max_num_batched_tokens']} is below "
                         f"max_model_len={f['max_model_len']} with chunked prefill off; vLLM rejects that")


def engine_settings(point: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """EngineConfig keyword arguments for a point on top of the search's fixed settings."""
    return {**base, **{k: v for k, v in point.items() if k in KNOBS}}
