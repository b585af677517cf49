"""A fleet plan as data: each GPU type's cheapest fleet for a target load (``search.fleet`` makes
it; the CLI, the TUI and the reports show it), its capacity table in Markdown, and the checks of
its inputs (``--gpus``, the budget's shares), light enough to refuse bad input before a search loads."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from tunekv.errors import BadInput, shorten
from tunekv.hardware.gpus import gpu_preset
from tunekv.predict.fleet import FleetRow, ReplicaCapacity, TargetLoad, binds_label
from tunekv.search.options import MIN_BUDGET_S
from tunekv.units import rate_text

__all__ = ["Fidelity", "FleetPlan", "GpuFleet", "budget_shares", "capacity_markdown", "check_gpus"]

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

    @property
    def figures(self) -> str:
        """The row's kind of figures as the tables show it: ``-`` when no config met the SLO (no
        fleet: nothing was measured or predicted for it)."""
        return self.fidelity if self.fleet is not None else "-"

    @property
    def unit_name(self) -> str:
        """What a replica's ``tp`` counts: GPUs, or CPUs for ``local`` on a machine without one."""
        return "CPU" if self.gpu_name == "cpu" else "GPU"

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
    trace_req_s_at_1x: float | None = None   # the searches counted a trace's pace: its mean req/s at 1x

    def to_json(self) -> dict[str, Any]:
        return {"target": {"value": self.target.value, "unit": self.target.unit}, "model": self.model,
                "workload": self.workload, "slo": self.slo, "gpus": [g.to_json() for g in self.gpus],
                "stopped": self.stopped, "not_searched": list(self.not_searched),
                "trace_req_s_at_1x": self.trace_req_s_at_1x}

    def assumptions(self) -> str:
        """The arithmetic behind the table, in one sentence."""
        pace = ("" if self.trace_req_s_at_1x is None else
                f"; a replica's capacity in req/s is the fastest pace of the trace it carries times the trace's "
                f"{rate_text(self.trace_req_s_at_1x)} req/s at 1x")
        return ("replicas = ceil(target / capacity per replica); GPUs = replicas x tp; cost/h = GPUs x price; a "
                "replica's output tok/s scales with its load up to its capacity; $/M = cost/h / (tok/s x 3600 / 1e6); "
                f"users and req/s convert by Little's law with the mean E2E (closed loop, no think time){pace}")

    def stop_note(self) -> str | None:
        """One line for a stopped plan (None otherwise): what its rows stand on, and what is missing."""
        if not self.stopped:
            return None
        missing = f"; not searched: {', '.join(self.not_searched)}" if self.not_searched else ""
        return f"the plan was stopped: the last GPU searched counts the trials finished by then{missing}"


def capacity_markdown(plan: FleetPlan) -> str:
    """The capacity table as Markdown (the plan's report, and a search's with --target-load)."""
    rows = ["| GPU | figures | capacity / replica | replicas x tp = devices | headroom | $/hour | $/M output tok | "
            "binds first |", "|---|---|---:|---|---:|---:|---:|---|"]
    for g in plan.gpus:
        f, r = g.fleet, g.replica
        if f is None or r is None:
            rows.append(f"| {g.gpu} | {g.figures} | - | - | - | - | - | {g.reason} |")
            continue
        cap = f"{rate_text(f.capacity_per_replica)} req/s" if f.unit == "req/s" else f"{f.capacity_per_replica:g} users"
        rows.append(f"| {g.gpu} | {g.fidelity} | {'at least ' if r.capacity_capped else ''}{cap} | "
                    f"{f.replicas} x {f.tp} = {f.gpus} {g.unit_name}{'s' if f.gpus != 1 else ''} | {f.headroom:.0%} | "
                    f"{f.cost_per_hour_usd:,.2f} | {f.usd_per_million_tokens:,.3f} | {binds_label(r)} |")
    return "\n".join(rows)


def check_gpus(text: str) -> list[str]:
    """``--gpus a,b``: GPU preset keys or ``local`` (this machine), each once; BadInput otherwise."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise BadInput("--gpus takes GPU presets or local, separated by commas, such as local,h100-80gb,l40s-48gb")
    for key in keys:
        if key != "local":
            gpu_preset(key)
    if len(set(keys)) < len(keys):
        raise BadInput(f"--gpus names a GPU twice: {shorten(text)}")
    return keys


def budget_shares(budget_s: float, keys: list[str]) -> dict[str, float]:
    """Each GPU's share of the wall clock: ``local`` (a measured search: real trials, certified)
    gets half when presets share the rest equally (a simulated search needs far less), and all of
    it alone. BadInput when a share is below what its kind of search needs."""
    presets = [k for k in keys if k != "local"]
    local_s = (budget_s / 2 if presets else budget_s) if "local" in keys else 0.0
    shares = {k: (budget_s - local_s) / len(presets) for k in presets}
    if "local" in keys:
        shares["local"] = local_s
    least = {k: MIN_BUDGET_S["real" if k == "local" else "simulate"] for k in keys}
    if any(shares[k] < least[k] for k in keys):
        need = max(least[k] * budget_s / shares[k] for k in keys)
        what = ("a measured search of local needs at least "
                f"{MIN_BUDGET_S['real']:g}s and a simulated one {MIN_BUDGET_S['simulate']:g}s each"
                if "local" in keys else f"a simulated search needs at least {MIN_BUDGET_S['simulate']:g}s each")
        raise BadInput(f"--budget {budget_s:g}s is too short for {len(keys)} GPUs: {what}; give at least "
                       f"--budget {math.ceil(need)}s")
    return shares
