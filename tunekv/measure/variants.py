"""`--compare FIELD=V1,V2` and `--sweep KIND=L1,L2`: the variants and load levels of a comparison."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from tunekv.engine import EngineConfig
from tunekv.errors import BadInput, shorten
from tunekv.workload.loadgen import Load

__all__ = ["load_at", "parse_levels", "variants"]

FIELD_TYPES = typing.get_type_hints(EngineConfig)


def variants(base: EngineConfig, spec: str) -> list[tuple[str, EngineConfig]]:
    """``kv_policy=paged,contiguous`` -> one config per value (ValueError on a bad field or value)."""
    field, _, values = spec.partition("=")
    names = {f.name: f for f in dataclasses.fields(EngineConfig)}
    if field not in names or not values:
        raise BadInput(f"--compare takes FIELD=V1,V2 with an EngineConfig field, e.g. kv_policy=paged,contiguous; "
                         f"got '{shorten(spec)}'")
    raw_values = [v.strip() for v in values.split(",")]
    if len(raw_values) < 2:
        raise BadInput(f"--compare takes two or more values to compare, e.g. kv_policy=paged,contiguous; got "
                       f"'{shorten(spec)}' (a plain run needs no --compare)")
    out: list[tuple[str, EngineConfig]] = []
    for raw in raw_values:
        value = _coerce(field, raw, getattr(base, field))
        same = [name for name, config in out if getattr(config, field) == value]
        if same:
            raise BadInput(f"--compare values must differ; {same[0]} and {field}={shorten(raw)} are the same")
        out.append((f"{field}={raw}", dataclasses.replace(base, **{field: value})))
    return out


def _coerce(field: str, raw: str, current: object) -> Any:
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise BadInput(f"{field} takes true or false, got '{shorten(raw)}'")
        return raw.lower() in ("true", "on", "1")
    if isinstance(current, int) or int in typing.get_args(FIELD_TYPES[field]):   # int, or int | None
        try:
            return int(raw)
        except ValueError:
            raise BadInput(f"{field} takes an integer, got '{shorten(raw)}'") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise BadInput(f"{field} takes a number, got '{shorten(raw)}'") from None
    return raw


def parse_levels(spec: str) -> tuple[str, list[float]]:
    """``concurrency=1,8,32``, ``rate=0.5,1,2`` or ``trace-speedup=1,2,4`` -> (kind, levels)."""
    kind, _, values = spec.partition("=")
    if kind not in ("concurrency", "rate", "trace-speedup") or not values:
        raise BadInput(f"--sweep takes concurrency=N1,N2,..., rate=R1,R2,... or trace-speedup=X1,X2,...; "
                       f"got '{shorten(spec)}'")
    try:
        levels = [float(v) for v in values.split(",")]
    except ValueError:
        raise BadInput(f"--sweep levels must be numbers; got '{shorten(values)}'") from None
    positive = all(math.isfinite(v) and v > 0 for v in levels)
    if not positive or (kind == "concurrency" and any(v != int(v) for v in levels)):
        raise BadInput("--sweep levels must be > 0 (whole numbers for concurrency)")
    return kind, levels


def load_at(kind: str, level: float, burst: int = 1, max_concurrency: int | None = None,
            burstiness: float = 1.0) -> Load:
    """One level of a sweep or capacity search: ``level`` users; ``level`` req/s arriving in
    bursts of ``burst`` (``--burst``), Poisson or gamma of ``burstiness`` (``--burstiness``); or a
    trace's arrival times ``level`` times faster; an open loop at most ``max_concurrency`` in flight."""
    if kind == "concurrency":
        return Load(concurrency=int(level))
    if kind == "trace-speedup":
        return Load(trace=True, speedup=level, max_concurrency=max_concurrency)
    return Load(rate=level, burst=burst, max_concurrency=max_concurrency, burstiness=burstiness)
