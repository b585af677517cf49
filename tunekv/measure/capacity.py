"""Capacity under an SLO: the highest load whose p99s stay within the targets (doubling or
halving from a start, then bisection). A load is users, Poisson req/s, or a trace's pace (its
arrival times sped up x times)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tunekv.measure.run import RunResult, within_slo
from tunekv.units import CapacityUnit, load_label, pace_words
from tunekv.workload.metrics import SLO

__all__ = ["Capacity", "find_capacity"]


@dataclass
class Capacity:
    """The highest load (users or req/s) at which every p99 held, and the run measured there."""

    unit: CapacityUnit
    load: float | None        # None: not even the lowest load met the SLO
    result: RunResult | None
    probes: list[tuple[float, bool]]
    runs: list[RunResult] = field(default_factory=list)   # each probe's run, in the order of ``probes``
    rate_at_1x: float | None = None   # unit "x": the trace's mean req/s at its recorded pace

    @property
    def capped(self) -> bool:
        """True when every probe passed: the capacity is at least the highest load probed."""
        return all(ok for _, ok in self.probes)

    def describe(self) -> str:
        if self.load is None:
            lowest = min(p[0] for p in self.probes)
            return f"the SLO is not met even at the lowest load ({load_label(self.unit, lowest)})"
        assert self.result is not None
        tput = self.result.metrics.output_throughput_tok_s
        at_least = "at least " if self.capped else ""
        note = " (the highest load probed; the SLO still held)" if self.capped else ""
        if self.unit == "users":
            users = int(self.load)
            return f"{at_least}{users} user{'s' if users != 1 else ''} at once, {tput:.1f} output tok/s there{note}"
        if self.unit == "x":
            assert self.rate_at_1x is not None, "a capacity in a trace's pace knows the trace's rate"
            return f"{at_least}{pace_words(self.load, self.rate_at_1x)}, {tput:.1f} output tok/s there{note}"
        return f"{at_least}{self.load:g} req/s, {tput:.1f} output tok/s there{note}"


def find_capacity(measure: Callable[[float], RunResult], slo: SLO, start: float, unit: CapacityUnit,
                  max_load: float, bisections: int = 4, min_load: float = 1.0,
                  rate_at_1x: float | None = None) -> Capacity:
    """Doubling from ``start`` until the SLO breaks (or ``max_load``), or halving from it until the
    SLO holds (or ``min_load``), then bisection between the last passing and first failing load.
    Users are whole numbers. A search that starts near the answer (a simulator's prediction)
    needs few probes."""
    assert (unit == "x") == (rate_at_1x is not None), "a trace's pace, and only that, comes with the trace's rate"
    probes: list[tuple[float, bool]] = []
    runs: list[RunResult] = []

    def probe(load: float) -> tuple[bool, RunResult]:
        result = measure(load)
        ok = within_slo(result, slo)
        probes.append((load, ok))
        runs.append(result)
        return ok, result

    best: tuple[float, RunResult] | None = None
    fail: float | None = None
    load = start
    ok, result = probe(load)
    if ok:
        best = (load, result)
        while load < max_load:
            load = min(load * 2, max_load)
            ok, result = probe(load)
            if not ok:
                fail = load
                break
            best = (load, result)
    else:
        fail = load
        while load > min_load:
            load = max(min_load, math.floor(load / 2) if unit == "users" else load / 2)
            ok, result = probe(load)
            if ok:
                best = (load, result)
                break
            fail = load
    if best is None:
        return Capacity(unit, None, None, probes, runs, rate_at_1x)
    lo, hi = best[0], fail
    for _ in range(bisections):
        if hi is None:   # every load up to max_load held: nothing to bisect
            break
        mid = (lo + hi) / 2
        if unit == "users":
            mid = math.floor(mid)
            if mid <= lo:
                break
        ok, result = probe(mid)
        if ok:
            lo, best = mid, (mid, result)
        else:
            hi = mid
    return Capacity(unit, best[0], best[1], probes, runs, rate_at_1x)
