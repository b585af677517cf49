"""`tunekv plan --target-load`: one short search per GPU type, and from its feasible
configs the cheapest fleet that carries the target (``predict.fleet``), ranked by cost per hour; `tunekv search
--target-load`: the same for the one GPU it searched (``search_fleet``). A replica's capacity is the
best trial's: closed-loop users under the SLO, or a trace's pace as the req/s it brings.

A GPU preset's search is simulated: its figures are predicted, with the step-cost calibration the
simulator used for that preset (its own fit, one transferred from a calibrated GPU, or labelled
defaults). ``local`` is this machine's device, searched with real trials: its figures are
measured (certified where the budget allowed), with the same model, workload and SLO."""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekv.fileio import write_atomic
from tunekv.hardware.gpus import GpuSpec, gpu_preset, priced_local_device, with_price
from tunekv.predict.fleet import FleetRow, LoadUnit, ReplicaCapacity, TargetLoad, fleet_for, what_binds
from tunekv.search.fleetplan import FleetPlan, GpuFleet, budget_shares, capacity_markdown
from tunekv.search.ladder import Event, Search, feasible_trials
from tunekv.search.options import SearchOptions
from tunekv.search.records import RANK, TrialRecord
from tunekv.search.session import prepare_search
from tunekv.units import parse_duration

if TYPE_CHECKING:
    import optuna

__all__ = ["FleetStop", "plan_fleet", "search_fleet", "write_fleet_report"]

NO_CONFIG = "no config met the SLO in the search's budget"


class FleetStop:
    """Stops a running ``plan_fleet`` from a signal handler or another thread: the GPU being
    searched stops as Ctrl-C stops a search (at the running trial's next engine step, its finished
    trials kept and counted), and no further GPU's search starts."""

    def __init__(self) -> None:
        self.requested = False
        self.search: Search | None = None   # the GPU's search running now

    def request(self) -> None:
        self.requested = True
        if self.search is not None:
            self.search.request_stop()

    def watch(self, search: Search) -> None:
        """``search`` runs now: a stop requested before, or from now on, reaches it."""
        self.search = search
        if self.requested:
            search.request_stop()


def plan_fleet(target: TargetLoad, keys: list[str], base: SearchOptions, prices: dict[str, float],
               say: Callable[[str], None], stop: FleetStop | None = None) -> FleetPlan:
    """For each GPU in ``keys`` a search of ``base``'s settings inside its share of ``base.budget``
    (``budget_shares``), and the fleet its best config needs for ``target``: simulated on a preset,
    measured on ``local`` (this machine's device; run first, so its calibration is fresh for the
    predictions that follow). ``stop`` ends it early with the GPUs searched so far."""
    shares = budget_shares(parse_duration(base.budget), keys)
    stop = stop or FleetStop()
    local = priced_local_device(prices) if "local" in keys else None
    specs = [with_price(gpu_preset(k), prices) for k in keys if k != "local"]
    order = ([dataclasses.replace(local, key="local")] if local is not None else []) + specs
    answers: list[GpuFleet] = []
    model = workload = slo = ""
    pace_rate: float | None = None
    for row in order:
        if stop.requested and answers:
            break
        measured = row.key == "local"
        opts = dataclasses.replace(base, gpu=None if measured else row.key, simulate=not measured,
                                   budget=f"{math.floor(shares[row.key] * 10) / 10:g}s")  # 6.6s, not 6.667s
        prepared = prepare_search(opts, say, time.monotonic())
        say(f"{row.key}{f' ({row.name})' if measured else ''}: {prepared.headline()}")
        search = prepared.make_search(_stage_lines(row.key, say) if measured else (lambda event: None))
        stop.watch(search)
        search.run(prepared.needs_calibration)
        model, workload, slo = prepared.model_name, prepared.workload.name, prepared.slo.describe()
        pace_rate = prepared.task.pace_rate
        unmet = "stopped before a config met the SLO" if stop.requested else NO_CONFIG
        answers.append(_cheapest(target, row, prepared.study, unmet))
    answers.sort(key=lambda a: (a.fleet is None, a.fleet.cost_per_hour_usd if a.fleet else 0.0,
                                a.fleet.usd_per_million_tokens if a.fleet else 0.0))
    not_searched = tuple(row.key for row in order[len(answers):])
    return FleetPlan(target, model, workload, slo, answers, stop.requested, not_searched, pace_rate)


def _stage_lines(key: str, say: Callable[[str], None]) -> Callable[[Event], None]:
    """A measured search's stages (calibrate, real, certify) as lines: it runs for minutes."""
    def on_event(event: Event) -> None:
        if event.kind == "stage":
            say(f"{key}: {event.data['name']}: {event.data.get('detail', '')}")
    return on_event


def search_fleet(target: TargetLoad, device: GpuSpec, study: optuna.Study) -> FleetPlan:
    """The fleet of ``device`` (priced) that the best config of a finished search needs for ``target``."""
    spec = study.user_attrs["spec"]
    return FleetPlan(target, spec["model"], spec["workload"], spec["slo"],
                     [_cheapest(target, device, study, NO_CONFIG)],
                     trace_req_s_at_1x=spec.get("trace_req_s_at_1x"))


def _cheapest(target: TargetLoad, spec: GpuSpec, study: optuna.Study, unmet: str) -> GpuFleet:
    """Of the search's feasible configs at its highest fidelity, the one whose fleet for ``target``
    costs least per hour (then per million tokens): the search ranks by output tok/s per GPU at
    capacity, which is not the same as the fewest GPUs for a load. ``unmet``: the row's reason when
    no config met the SLO."""
    ok = feasible_trials(study)
    top = max((RANK[t.fidelity] for t in ok), default=0)
    answers = [_answer(target, spec, study.study_name, study.user_attrs["spec"], t, unmet)
               for t in ok if RANK[t.fidelity] == top] or [_answer(target, spec, study.study_name,
                                                                     study.user_attrs["spec"], None, unmet)]
    return min(answers, key=lambda a: (a.fleet is None, a.fleet.cost_per_hour_usd if a.fleet else 0.0,
                                       a.fleet.usd_per_million_tokens if a.fleet else 0.0))


def _answer(target: TargetLoad, spec: GpuSpec, study: str, study_spec: dict[str, Any],
            best: TrialRecord | None, unmet: str) -> GpuFleet:
    price = spec.price_per_hour_usd
    assert price is not None, "a fleet's GPU has a price (checked before the search)"
    on_device = not study_spec.get("simulate_only", True)   # a search with real trials on this machine
    measured = best.fidelity != "sim" if best is not None else on_device

    def answer(calibration: str = "", config: dict[str, Any] | None = None, replica: ReplicaCapacity | None = None,
               fleet: FleetRow | None = None, reason: str = "") -> GpuFleet:
        return GpuFleet(spec.key, spec.name, "measured" if measured else "predicted", calibration, price,
                        spec.price_source, spec.price_date, study, config, replica, fleet, reason)

    out = best.outcome if best is not None else None
    if best is None or out is None or out.capacity is None or out.metrics is None or best.point is None:
        return answer(reason=unmet)
    from tunekv.engine import EngineConfig
    from tunekv.export import engine_config

    config = engine_config(study_spec["base"], best.point)
    if measured:
        calibration = f"measured on {study_spec['gpu']} ({best.fidelity} trials)"
    elif study_spec.get("gpu_preset") == spec.key:
        calibration = _calibration(spec, EngineConfig(**config), study_spec["dtype"])
    elif on_device:
        calibration = "this device's step-cost calibration: no real trial met the SLO in the budget"
    else:
        calibration = "this device's step-cost calibration"
    e2e_s = out.metrics.e2e_ms.mean / 1000
    kv = out.kv
    binds = what_binds(kv.preemptions if kv else 0, kv.peak_used_blocks if kv else None,
                       kv.num_blocks if kv else None, out.constraints)
    # A trace's pace is its mean req/s at 1x times the pace: a replica takes its share of the arrivals.
    assert study_spec["load"] is None, "a fleet is sized from a capacity, not from a fixed load"
    unit: LoadUnit = "req/s" if out.unit == "x" else "users"
    level = out.capacity * study_spec["trace_req_s_at_1x"] if out.unit == "x" else out.capacity
    replica = ReplicaCapacity(spec.key, level, unit, out.value, e2e_s,
                              int(config.get("tensor_parallel_size", 1)), price, binds, out.capacity_capped)
    if target.unit != replica.unit and not (math.isfinite(e2e_s) and e2e_s > 0):
        return answer(calibration, config, replica,
                      reason=f"the run at capacity has no E2E latency to convert {replica.unit} to {target.unit}")
    return answer(calibration, config, replica, fleet_for(target, replica))


def _calibration(spec: GpuSpec, config: Any, dtype: str) -> str:
    """The step-cost model the simulator used for this preset and config, in one line."""
    from tunekv.predict.costmodel import Variant, calibration_for_gpu

    cal = calibration_for_gpu(spec, Variant.of(config, "cuda", dtype))
    what = {"calibrated": f"fitted on {cal.device}", "transferred": f"transferred from {cal.device}",
            "defaults": "no calibration: default efficiencies"}.get(cal.source, cal.source)
    return f"{what}{': ' + cal.note if cal.note else ''}"


def _cost_curve_png(plan: FleetPlan) -> bytes | None:
    """$/M output tokens against the load (0 to twice the target) for each GPU type: a sawtooth,
    as each added replica first runs part-empty."""
    curves = [g for g in plan.gpus if g.replica is not None and g.fleet is not None]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = plan.target.unit
    top = 2 * plan.target.value
    loads = ([float(u) for u in range(1, int(top) + 1, max(1, int(top) // 400))] if unit == "users"
             else [top * i / 400 for i in range(1, 401)])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for g in curves:
        assert g.replica is not None
        ax.plot(loads, [fleet_for(TargetLoad(x, unit), g.replica).usd_per_million_tokens for x in loads],
                label=f"{g.gpu} ({g.fidelity})", linewidth=1)
    ax.axvline(plan.target.value, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(unit + " at peak")
    ax.set_ylabel("$ per million output tokens")
    ax.set_yscale("log")
    ax.set_title(f"cost per million output tokens: {plan.model}, {plan.workload}")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_fleet_report(plan: FleetPlan, out: Path) -> list[Path]:
    """``report.md`` (the capacity table, prices, calibrations, assumptions) and
    ``cost_per_million.png`` into ``out``, each written whole and then renamed."""
    written: list[Path] = []
    png = _cost_curve_png(plan)
    if png is not None:
        write_atomic(out / "cost_per_million.png", png)
        written.append(out / "cost_per_million.png")
    lines = [f"# Fleets for {plan.target.describe()} at peak", "",
             f"{plan.model}, workload {plan.workload}, SLO {plan.slo}. Cheapest per hour first.", "",
             capacity_markdown(plan), ""]
    stopped = plan.stop_note()
    if stopped is not None:
        lines += [f"**{stopped[0].upper()}{stopped[1:]}.**", ""]
    for g in plan.gpus:
        config = ", ".join(f"{k}={v}" for k, v in (g.config or {}).items()) or "none"
        lines += [f"- **{g.gpu}** ({g.gpu_name}): ${g.price_per_hour_usd:,.2f}/GPU-hour ({g.price_source}); "
                  f"{g.fidelity}: {g.calibration or 'no result'}; study {g.study}; config {config}"]
    lines += ["", f"{plan.assumptions()}.", ""]
    if png is not None:
        lines += ["![cost per million output tokens](cost_per_million.png)", ""]
    write_atomic(out / "report.md", "\n".join(lines))
    written.append(out / "report.md")
    return written
