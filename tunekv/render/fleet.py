"""A fleet plan (`tunekv plan --target-load`) as a table and notes, for the CLI and the report."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from tunekv.predict.fleet import binds_label
from tunekv.render.tables import Column, FittedTable
from tunekv.search.fleetplan import FleetPlan, GpuFleet
from tunekv.units import rate_text

__all__ = ["fleet_cards", "fleet_notes", "fleet_table", "layout"]

KNOBS = ("tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_dtype")


def layout(g: GpuFleet) -> str:
    """``21 x tp1 = 21 GPUs`` (CPUs for ``local`` on a machine without a GPU)."""
    if g.fleet is None:
        return "-"
    return f"{g.fleet.replicas} x tp{g.fleet.tp} = {g.fleet.gpus} {g.unit_name}{'s' if g.fleet.gpus != 1 else ''}"


def _capacity(g: GpuFleet) -> str:
    if g.fleet is None or g.replica is None:
        return "-"
    at_least = "at least " if g.replica.capacity_capped else ""
    return at_least + (f"{rate_text(g.fleet.capacity_per_replica)} req/s" if g.fleet.unit == "req/s"
                       else f"{g.fleet.capacity_per_replica:g} users")


def fleet_table(plan: FleetPlan) -> FittedTable:
    """One row per GPU type, cheapest per hour first (headroom, then the figures' kind, left out
    where the terminal is too narrow for all of them)."""
    columns = [Column("#"), Column("GPU", "left"), Column("figures", "left", hide=2),
               Column("capacity / replica", "left", wrap=False), Column("layout", "left", wrap=False),
               Column("headroom", hide=1),
               Column("$/hour"), Column("$/M output tok"), Column("binds first", "left")]
    rows = []
    for i, g in enumerate(plan.gpus, 1):
        f = g.fleet
        rows.append([str(i) if f else "-", g.gpu, g.figures, _capacity(g), layout(g),
                     f"{f.headroom:.0%}" if f else "-", f"{f.cost_per_hour_usd:,.2f}" if f else "-",
                     f"{f.usd_per_million_tokens:,.3f}" if f else "-",
                     binds_label(g.replica) if f and g.replica else g.reason])
    return FittedTable(f"fleets for {plan.target.describe()} at peak: {plan.model}, {plan.workload}, SLO {plan.slo}",
                       columns, [rows])


def fleet_cards(plan: FleetPlan) -> Group:
    """The table's rows as two lines a GPU, cheapest per hour first: the same figures in about 80
    columns (the TUI's result pane), where the nine-column table is about 135 wide."""
    lines = [Text(f"fleets for {plan.target.describe()} at peak: {plan.model}, {plan.workload}, SLO {plan.slo}",
                  style="bold"), Text("")]
    for i, g in enumerate(plan.gpus, 1):
        f = g.fleet
        if f is None:
            lines += [Text.assemble(("-  ", "dim"), (g.gpu, "bold"), ": ", (g.reason, "yellow")),
                      Text("")]
            continue
        cost = f", ${f.cost_per_hour_usd:,.2f}/hour, ${f.usd_per_million_tokens:,.3f}/M output tok"
        lines.append(Text.assemble(f"{i}. ", (g.gpu, "bold"), f" ({g.fidelity}): ", (layout(g), "bold"), cost))
        binds = binds_label(g.replica) if g.replica else f.binds
        lines.append(Text(f"   {_capacity(g)} a replica, headroom {f.headroom:.0%}; binds first: {binds}",
                          style="dim"))
        lines.append(Text(""))
    return Group(*lines)


def fleet_notes(plan: FleetPlan) -> list[str]:
    """The prices and calibrations behind the table, and the assumptions of its arithmetic."""
    lines = []
    for g in plan.gpus:
        config = ", ".join(f"{k}={g.config[k]}" for k in KNOBS if k in g.config) if g.config else "none"
        lines.append(f"{g.gpu}: config {config}; ${g.price_per_hour_usd:,.2f}/GPU-hour ({g.price_source}); "
                     + (f"{g.fidelity}: {g.calibration or 'no result'}" if g.fleet is not None else "no result"))
    stopped = plan.stop_note()
    if stopped is not None:
        lines.append(stopped)
    lines.append(plan.assumptions())
    return lines
