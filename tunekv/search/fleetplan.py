"""A fleet plan as data: each GPU type's cheapest fleet for a target load (``search.fleet`` makes
it; the CLI, the TUI and the reports show it) and its capacity table in Markdown."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tunekv.predict.fleet import FleetRow, ReplicaCapacity, TargetLoad

__all__ = ["Fidelity", "FleetPlan", "GpuFleet", "capacity_markdown"]

Fidelity = Literal["predicted", "measured"]


@dataclass(frozen=True)
class GpuFleet:
    """One GPU type's answer: of the configs its search found feasible (at its highest fidelity),
    the one whose fleet for the target costs least, one replica's capacity there and that fleet
    (None when no config met the SLO, with ``reason``)."""

    gpu: str
    gpu_name: str
    fidelity: Fidelity
    calibration: str                  # the step-cost model a prediction used
    price_per_hour_usd: float
    price_source: str
    price_date: str
    study: str
    config: dict[str, Any] | None
    replica: ReplicaCapacity | None
    fleet: FleetRow | None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["replica"] = None if self.replica is None else dataclasses.asdict(self.replica)
        out["fleet"] = None if self.fleet is None else self.fleet.to_json()
        return out


@dataclass(frozen=True)
class FleetPlan:
    """Every GPU type's fleet for one target, cheapest per hour first (those without one last).
    ``stopped``: the plan was stopped (Ctrl-C): the GPU searched then counts the trials finished by
    that time, and those in ``not_searched`` have no row."""

    target: TargetLoad
    model: str
    workload: str
    slo: str
    gpus: list[GpuFleet]
    stopped: bool = False
    not_searched: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"target": {"value": self.target.value, "unit": self.target.unit}, "model": self.model,
                "workload": self.workload, "slo": self.slo, "gpus": [g.to_json() for g in self.gpus],
                "stopped": self.stopped, "not_searched": list(self.not_searched)}

    def stop_note(self) -> str | None:
        """One line for a stopped plan (None otherwise): what its rows stand on, and what is missing."""
        if not self.stopped:
            return None
        missing = f"; not searched: {', '.join(self.not_searched)}" if self.not_searched else ""
        return f"the plan was stopped: the last GPU searched counts the trials finished by then{missing}"


def capacity_markdown(plan: FleetPlan) -> str:
    """The capacity table as Markdown (the plan's report, and a search's with --target-load)."""
    rows = ["| GPU | figures | capacity / replica | replicas x tp = GPUs | headroom | $/hour | $/M output tok | "
            "binds first |", "|---|---|---:|---|---:|---:|---:|---|"]
    for g in plan.gpus:
        f, r = g.fleet, g.replica
        if f is None or r is None:
            rows.append(f"| {g.gpu} | {g.fidelity} | - | - | - | - | - | {g.reason} |")
            continue
        cap = f"{f.capacity_per_replica:.3g} req/s" if f.unit == "req/s" else f"{f.capacity_per_replica:g} users"
        rows.append(f"| {g.gpu} | {g.fidelity} | {'at least ' if r.capacity_capped else ''}{cap} | "
                    f"{f.replicas} x {f.tp} = {f.gpus} | {f.headroom:.0%} | {f.cost_per_hour_usd:,.2f} | "
                    f"{f.usd_per_million_tokens:,.3f} | {f.binds} |")
    return "\n".join(rows)
