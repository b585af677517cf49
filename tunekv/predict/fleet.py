"""A fleet for a target load: from one replica's capacity under the SLO, how many replicas and GPUs
carry the load, the headroom at peak, the cost per hour and per million output tokens, and what
binds. Pure arithmetic on numbers the search measured or predicted (no torch, no engine).

Assumptions, stated where they are used:

- Users and req/s are converted by Little's law with the run's mean E2E latency: a closed-loop
  user with no think time sends its next request when the last one ends, so req/s = users / E2E.
- A replica's output tok/s scales with its load up to its capacity: at the target, spread evenly
  over the replicas, the fleet makes ``tok/s at capacity x target / capacity`` (the fleet's spare
  capacity makes no tokens and still costs its hours).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tunekv.errors import BadInput, shorten

__all__ = ["Binding", "FleetRow", "LoadUnit", "ReplicaCapacity", "TargetLoad", "binds_label", "fleet_for",
           "what_binds"]

LoadUnit = Literal["users", "req/s"]
Binding = Literal["KV memory", "the TTFT target", "the ITL target (decode step time)", "unknown"]

_TARGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(rps|req/s|users?)\s*$", re.IGNORECASE)
MAX_TARGET = 1e9   # users or req/s: far beyond any fleet, small enough to keep the arithmetic exact


@dataclass(frozen=True)
class TargetLoad:
    """The load at peak a deployment must carry: closed-loop users at once, or requests a second."""

    value: float
    unit: LoadUnit

    @classmethod
    def parse(cls, text: str) -> TargetLoad:
        """``40rps`` (or ``40req/s``), ``2000users``; BadInput for anything else."""
        found = _TARGET.match(text)
        value = float(found.group(1)) if found else math.nan
        if found is None or not 0 < value <= MAX_TARGET:
            raise BadInput("--target-load takes a number of req/s or users such as 40rps or 2000users, "
                           f"got {shorten(text)!r}")
        unit: LoadUnit = "users" if found.group(2).lower().startswith("user") else "req/s"
        if unit == "users" and value != int(value):
            raise BadInput(f"--target-load counts users in whole numbers, got {shorten(text)!r}")
        return cls(value, unit)

    def describe(self) -> str:
        return f"{self.value:g} users" if self.unit == "users" else f"{self.value:g} req/s"


@dataclass(frozen=True)
class ReplicaCapacity:
    """One replica (``tp`` GPUs) of the best config found for a GPU type, at its capacity under the SLO."""

    gpu: str                      # the GPU preset key, or "local"
    capacity: float               # users (or req/s) at once where every p99 held
    unit: LoadUnit
    output_tok_s: float           # the replica's output tok/s at that capacity
    e2e_mean_s: float             # the mean E2E latency there (for Little's law)
    tp: int                       # tensor-parallel size: GPUs per replica
    price_per_hour_usd: float     # per GPU
    binds: Binding
    capacity_capped: bool = False # every probe held: the capacity is at least this (the fleet at most this big)

    def in_unit(self, unit: LoadUnit) -> float:
        """The capacity in ``unit``: req/s = users / E2E (Little's law, closed loop, no think time)."""
        if unit == self.unit:
            return self.capacity
        if self.e2e_mean_s <= 0:
            raise ValueError("Little's law needs a positive mean E2E")
        return self.capacity / self.e2e_mean_s if unit == "req/s" else self.capacity * self.e2e_mean_s


@dataclass(frozen=True)
class FleetRow:
    """The fleet of one GPU type that carries the target."""

    gpu: str
    capacity_per_replica: float   # in the target's unit
    unit: LoadUnit
    tp: int
    replicas: int
    gpus: int
    headroom: float               # replicas x capacity / target - 1 (0.25: 25% spare at peak)
    cost_per_hour_usd: float
    output_tok_s: float           # the fleet's output tok/s at the target
    usd_per_million_tokens: float # output tokens
    binds: Binding

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fleet_for(target: TargetLoad, replica: ReplicaCapacity) -> FleetRow:
    """replicas = ceil(target / capacity); GPUs = replicas x tp; cost/h = GPUs x price; the fleet's
    output tok/s at the target = the replica's tok/s at capacity x target / capacity (each replica's
    throughput scales with its load up to capacity); $/M output tokens = cost/h / (tok/s x 3600 / 1e6)."""
    capacity = replica.in_unit(target.unit)
    if capacity <= 0:
        raise ValueError("a replica that carries no load has no fleet")
    replicas = math.ceil(target.value / capacity - 1e-9)
    gpus = replicas * replica.tp
    cost = gpus * replica.price_per_hour_usd
    tok_s = replica.output_tok_s * target.value / capacity
    per_million = cost / (tok_s * 3600 / 1e6) if tok_s > 0 else math.inf
    return FleetRow(replica.gpu, capacity, target.unit, replica.tp, replicas, gpus,
                    headroom=replicas * capacity / target.value - 1, cost_per_hour_usd=cost, output_tok_s=tok_s,
                    usd_per_million_tokens=per_million, binds=replica.binds)


def what_binds(preemptions: int, peak_used_blocks: int | None, num_blocks: int | None,
               margins: dict[str, float]) -> Binding:
    """What runs out first at capacity: the KV memory when the run there preempted a request or
    filled the pool; else the SLO target with the least slack there (the one the next load step
    breaks first; ``margins`` are p99 / target - 1, <= 0 holds). Compute is not named on its own:
    with the pool not full, a compute-bound step shows as the latency target it stretches."""
    if preemptions > 0 or (num_blocks and peak_used_blocks is not None and peak_used_blocks >= num_blocks):
        return "KV memory"
    slo = {k: v for k, v in margins.items() if k in ("ttft_p99", "itl_p99") and math.isfinite(v)}
    if not slo:
        return "unknown"
    return "the TTFT target" if max(slo, key=lambda k: slo[k]) == "ttft_p99" else "the ITL target (decode step time)"


def binds_label(replica: ReplicaCapacity) -> str:
    """What binds first, as the tables say it. At a capped capacity every load tried held, so
    nothing bound yet: the figure is the target nearest to binding."""
    return f"none yet; nearest: {replica.binds}" if replica.capacity_capped else replica.binds
