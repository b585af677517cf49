"""The search: an Optuna study over engine configs, climbed along a fidelity ladder within a
wall-clock budget.

1. plan     - instant; a config whose KV pool cannot hold the workload is infeasible before it runs.
2. simulate - the real scheduler on a virtual clock with the calibrated step costs: many configs
              ranked in seconds (TPE, constraints through ``trial.set_constraint``).
3. real     - the best simulated configs run on this device, starting their capacity search at the
              simulator's answer; each records the prediction beside the measurement and refits
              the step-cost model.
4. certify  - the best three real configs again with fresh seeds and request orders.

Before them, on a device with no step-cost model for the model yet, a brief calibration (a share
of the budget) lets the simulator rank from the first trial.

Rounds of 2-4 repeat over the time left while they still add real or certified trials. A first
real run that would not fit the time left is sized to it (fewer requests a probe), and when no
config meets the SLO in simulation the closest is measured at the lowest load (one user, or a
trace's slowest pace). Every stage
reads the study, not process memory, so a re-run resumes where the last one stopped and several
processes (journal file, PostgreSQL) share one search. A trial's data in the study is read and
written through ``tunekv.search.records``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from tunekv.errors import NoCalibration
from tunekv.fileio import json_safe
from tunekv.search.baseline import DEFAULTS_ATTR, VersusDefaults, defaults_point, versus_defaults
from tunekv.search.records import (
    FIDELITIES,
    RANK,
    Fidelity,
    Prediction,
    TrialRecord,
    TrialRow,
    TrialWriter,
    config_key,
    num_gpus,
    queued_attrs,
)
from tunekv.search.space import KNOBS, SearchSpace, point_key
from tunekv.search.storage import orphaned, owner
from tunekv.search.trials import CERTIFY_SEEDS, Outcome, SearchTask, TrialRunner, infeasible, simulate
from tunekv.units import load_words

SIM_SHARE = 0.40          # of the time left, for simulated trials when real runs follow
REAL_SHARE = 0.85         # the real stage ends here; certification gets the rest
REAL_CANDIDATES = 5
CALIBRATE_SHARE = 0.20    # of the budget, for a step-cost calibration when the device has none
CALIBRATE_SECONDS = (8.0, 120.0)   # its least and most
SIZE_MARGIN = 0.7         # a run sized to the time left aims at this share of it (estimates are rough)
MIN_REAL_REQUESTS = 20    # a real run sized smaller than this measures nothing worth keeping
MIN_CLOSEST_REQUESTS = 5  # the closest config's run at the lowest load: its p99s are a few requests' worst
END_SECONDS = 3.0         # kept free at the end for the summary and the exports
CERTIFY_TOP = 3
DEFAULTS_MIN_BUDGET_S = 90.0   # a search this long simulates vLLM's defaults first, to compare the best with
PATIENCE = 40             # simulated trials without a 0.5% better config before the stage ends
DUPLICATE_STREAK = 25     # proposals in a row that were all seen before: the space is covered
EventKind = Literal["start", "stage", "trial", "note", "end"]


@dataclass
class Event:
    """One thing that happened: ``start``, ``stage``, ``trial`` (its row in ``trial``), ``note`` or
    ``end`` (the best and beyond rows among ``data``)."""

    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)
    trial: TrialRow | None = None

    def to_json(self) -> str:
        """One line of `tunekv search --json-lines` (an interface): a trial's row is flattened in."""
        fields = {k: v.to_json() if isinstance(v, TrialRow) else v for k, v in self.data.items()}
        row = {} if self.trial is None else self.trial.to_json()
        return json.dumps(json_safe({"event": self.kind, "time": time.time(), **row, **fields}), default=str,
                          allow_nan=False)


@dataclass
class SearchSummary:
    best: TrialRecord | None
    counts: dict[Fidelity, int]
    reason: str                      # why it ended: budget, converged, interrupted, ...
    interrupted: bool
    closest: str | None              # when nothing is feasible: the constraint that came closest
    elapsed_s: float
    beyond: TrialRecord | None = None  # a better config predicted for more GPUs than this machine has
    defaults: VersusDefaults | None = None   # vLLM's defaults against the best, as simulated
    time_left_s: float = 0.0          # budget left at the end: too little for another trial when it ran out
    broken: bool = False              # trials were measured and none completed a request: a failure, not slowness


def records(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
    """The study's trials (those in ``states``), typed."""
    return [TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=states)]


def per_gpu(tok_s: float, point: dict) -> float:
    """The objective: output tok/s per GPU, so tp=2 has to beat two tp=1 replicas to win."""
    return tok_s / num_gpus(point)


def feasible_trials(study: optuna.Study) -> list[TrialRecord]:
    """The feasible trials whose config no higher-fidelity run failed (a config is out once a
    higher-fidelity run of it missed the SLO or did not fit)."""
    trials = records(study, (TrialState.COMPLETE,))
    failed_at: dict[str | None, int] = {}
    for t in trials:
        if not t.feasible:
            failed_at[t.key] = max(failed_at.get(t.key, -1), RANK[t.fidelity])
    return [t for t in trials if t.feasible and failed_at.get(t.key, -1) <= RANK[t.fidelity]]


def best_trial(study: optuna.Study) -> TrialRecord | None:
    """The feasible trial at the highest fidelity, then the highest throughput; a config that
    failed its certification is out."""
    ok = feasible_trials(study)
    if not ok:
        return None
    return max(ok, key=lambda t: (RANK[t.fidelity], t.value or 0.0))


def best_beyond(study: optuna.Study, best: TrialRecord | None) -> TrialRecord | None:
    """The best feasible prediction for more GPUs than this machine has, when it beats ``best``
    per GPU (a search on this machine cannot confirm it; the summary reports it as predicted)."""
    trials = [t for t in records(study, (TrialState.COMPLETE,)) if t.beyond_local and t.feasible]
    top = max(trials, key=lambda t: t.value or 0.0, default=None)
    if top is None or (best is not None and (top.value or 0.0) <= (best.value or 0.0)):
        return None
    return top


def nothing_completed(study: optuna.Study) -> bool:
    """Whether trials were measured and not one of their requests completed (a server that answers
    every request with an error, prompts it refuses): a failure to report, not an SLO to loosen."""
    outcomes = [t.outcome for t in records(study, (TrialState.COMPLETE,)) if t.fidelity != "sim" and t.outcome]
    measured = [o.metrics for o in outcomes if o.metrics is not None]
    return bool(measured) and all(m.completed == 0 for m in measured)


def closest_miss(study: optuna.Study) -> str | None:
    """For a search where nothing met the SLO: what the closest measured config achieved (at the
    lowest load it ran) and which target binds, else the closest prediction."""
    done = records(study, (TrialState.COMPLETE,))
    ran = [t for t in done if t.constraints.get("fits", 0) <= 0 and t.constraints]
    measured = [t for t in ran if t.fidelity != "sim" and not t.feasible and t.outcome is not None
                and t.outcome.metrics is not None]
    if measured:
        best = min(measured, key=lambda t: max(t.constraints.values()))
        assert best.outcome is not None and best.outcome.metrics is not None
        metrics, lowest = best.outcome.metrics, min((p[0] for p in best.outcome.probes), default=None)
        if metrics.completed == 0:   # nothing came back: the reason has the first error, not p99s
            return f"trial {best.number} completed no request: {best.outcome.reason}"
        name, margin = max(best.constraints.items(), key=lambda kv: kv[1])
        where = f" at {load_words(best.outcome.unit, lowest)}" if lowest is not None else ""
        return (f"the closest config (trial {best.number}) measured{where}: p99 TTFT {metrics.ttft_ms.p99:.0f} ms, "
                f"p99 ITL {metrics.itl_ms.p99:.0f} ms; {name} binds, {margin:.0%} over its target")
    if any(t.feasible for t in done):
        return "the configs that met it in simulation missed it when measured"
    if not ran:
        return None
    worst = min(ran, key=lambda t: max(t.constraints.values()))
    name, margin = max(worst.constraints.items(), key=lambda kv: kv[1])
    return f"trial {worst.number} came closest in simulation: {name} over its target by {margin:.0%}"


class Search:
    """Runs the ladder on ``study``; ``on_event`` gets every Event (a live table, JSON lines, a TUI)."""

    def __init__(self, study: optuna.Study, task: SearchTask, space: SearchSpace, budget_s: float,
                 simulate_only: bool, runner: TrialRunner | None,
                 on_event: Callable[[Event], None] = lambda e: None, patience: int = PATIENCE,
                 started: float | None = None) -> None:
        """``started`` (``time.monotonic()``) is when the budget began: the command's start."""
        assert simulate_only or runner is not None, "real trials need a runner"
        self.study, self.task, self.space = study, task, space
        self.budget_s, self.simulate_only, self.runner = budget_s, simulate_only, runner
        self.on_event, self.patience = on_event, patience
        self.started = time.monotonic() if started is None else started
        self.deadline = self.started + budget_s
        self.interrupted = False
        self._sim_seconds: list[float] = []
        self._real_ratio = 1.5            # real wall seconds per simulated second, until measured
        # engine build, warm-up, graph capture, a server's start-up and stop (s), until measured
        self._real_overhead = 5.0 if runner is None else runner.overhead_s
        if runner is not None:
            runner.on_note = lambda message: self.emit("note", message=message)
        self._sim_cache: dict[tuple, TrialRecord] = {}
        self._skipped_for_time = False
        self._noted: set[tuple[str, int]] = set()   # (what, trial number): a round repeats none
        self._defaults_queued = False

    # --- control -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ctrl-C: the running trial is abandoned at its next engine step; nothing done is lost."""
        self.interrupted = True

    def set_space(self, space: SearchSpace) -> None:
        """Pin or release knobs while the search runs: trials that start from now on sample
        ``space``, and only configs it admits are confirmed or certified."""
        before, self.space = self.space, space
        both = {*before.choices, *before.fixed} & {*space.choices, *space.fixed}
        changes = [f"{k}={space.fixed[k]} pinned" if k in space.fixed else f"{k} released"
                   for k in KNOBS if k in both and before.values(k) != space.values(k)]
        self.emit("note", message=f"search space changed: {', '.join(changes) or 'nothing'}")

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def _stop_at(self, until: float) -> Callable[[], bool]:
        return lambda: self.interrupted or time.monotonic() >= until

    def emit(self, kind: EventKind, **data: Any) -> None:
        self.on_event(Event(kind, data))

    def _note_once(self, what: str, trial: int, message: str) -> None:
        """A note about ``trial`` that later rounds of the ladder would repeat word for word."""
        if (what, trial) not in self._noted:
            self._noted.add((what, trial))
            self.emit("note", message=message)

    # --- the ladder ----------------------------------------------------------------------
    def run(self, needs_calibration: bool = False) -> SearchSummary:
        """The whole search. ``needs_calibration``: this device has no step-cost model for the
        model yet, so a brief calibration (a share of the budget) comes first."""
        self._fail_orphans()
        for t in records(self.study, (TrialState.COMPLETE,)):
            if t.fidelity == "sim" and t.point is not None:
                self._sim_cache[point_key(t.point)] = t
        self.emit("start", budget_s=self.budget_s, trials_before=len(self.study.trials),
                  space=self.space.describe(), simulate_only=self.simulate_only, capacity_unit=self.task.unit,
                  trace_req_s_at_1x=self.task.pace_rate)
        reason = "budget spent"
        if needs_calibration and not self.simulate_only:
            self._calibrate()
        if not self.interrupted:
            reason = self._ladder()
        if self.interrupted:
            reason = "interrupted"
        counts = {f: 0 for f in FIDELITIES}
        for t in records(self.study, (TrialState.COMPLETE,)):
            counts[t.fidelity] += 1
        best = best_trial(self.study)
        beyond = None if self.simulate_only else best_beyond(self.study, best)
        versus = versus_defaults(self.study, best)
        summary = SearchSummary(best, counts, reason, self.interrupted, None if best else closest_miss(self.study),
                                time.monotonic() - self.started, beyond, versus, max(0.0, self.time_left()),
                                best is None and nothing_completed(self.study))
        self.emit("end", reason=reason, counts=counts, elapsed_s=summary.elapsed_s,
                  best=None if best is None else best.row(), closest=summary.closest,
                  beyond=None if beyond is None else beyond.row(),
                  defaults=None if versus is None else versus.to_json())
        return summary

    def _calibrate(self) -> None:
        """A share of the budget for a first step-cost fit; when that measured nothing (a loaded
        machine, a slow model load), another try with half the time left, while one fits."""
        assert self.runner is not None
        least, most = CALIBRATE_SECONDS
        seconds = min(most, max(least, CALIBRATE_SHARE * self.budget_s))
        while not self.interrupted and self.time_left() - END_SECONDS >= least:
            self.emit("stage", name="calibrate", detail=f"no step-cost model for this device yet: timing the "
                                                        f"engine's steps for {seconds:.0f} s")
            fitted, note = self.runner.calibrate(defaults_point(self.space, longest=False), seconds,
                                                 self._stop_at(self.deadline))
            self.emit("note", message=note)
            if fitted:
                return
            seconds = min(most, max(least, (self.time_left() - END_SECONDS) / 2))

    def _ladder(self) -> str:
        """Rounds of simulate -> real -> certify over the time left (40% / 45% / the rest), until a
        round adds no real or certified trial or the budget ends. A simulate-only search is one
        simulation stage."""
        if self.simulate_only:
            return self._sim_stage(self.deadline)
        if self.runner is not None and self.runner.fixed_deployment:
            return self._deployment()
        while True:
            now, left = time.monotonic(), self.time_left()
            self._skipped_for_time = False
            reason = self._sim_stage(now + SIM_SHARE * left)
            ran = 0 if self.interrupted else self._real_stage(now + REAL_SHARE * left)
            ran += 0 if self.interrupted else self._certify_stage()
            if self.interrupted:
                return "interrupted"
            if self.time_left() <= 0:
                return "budget spent"
            if ran == 0 and not self._skipped_for_time and reason != "no calibration":
                ran = self._measure_closest()
            if ran == 0:
                if reason == "no calibration":
                    return reason
                return "no real run fits the time left" if self._skipped_for_time else "ladder finished"

    def _deployment(self) -> str:
        """A running deployment (no knobs): its capacity under the SLO, then certified with fresh
        seeds; where those miss at the capacity, at the next lower load that held, so the search
        ends on the highest load the deployment carries with fresh seeds too."""
        if not self._taken(config_key({}), "real"):
            self.emit("stage", name="real", detail="the deployment's capacity under the SLO")
            self._real_trial({}, None, "real", self.deadline, params={})
        done = records(self.study, (TrialState.COMPLETE,))
        real = next((t for t in done if t.fidelity == "real" and t.feasible and t.outcome is not None), None)
        certified = [t for t in done if t.fidelity == "certified" and t.outcome is not None]
        if self.interrupted or real is None or any(t.feasible for t in certified):
            return "interrupted" if self.interrupted else "ladder finished"
        assert real.outcome is not None
        tried = {t.outcome.capacity for t in certified if t.outcome is not None}
        loads = sorted({load for load, ok in real.outcome.probes if ok} - tried, reverse=True)
        estimate = CERTIFY_SEEDS * real.outcome.seconds / max(1, len(real.outcome.probes)) + self._real_overhead
        self.emit("stage", name="certify", detail="re-running the deployment at its capacity with fresh seeds")
        unit = self.task.unit
        for i, load in enumerate(loads):
            if self.interrupted or time.monotonic() + estimate > self.deadline:
                if not self.interrupted:
                    self.emit("note", message=f"no time left to certify the deployment at {load_words(unit, load)}")
                break
            if i > 0:
                self.emit("note", message=f"fresh seeds missed the SLO at {load_words(unit, loads[i - 1])}; "
                                          f"certifying {load_words(unit, load)}, the next lower load that held")
            outcome = self._real_trial({}, load, "certified", self.deadline, params={})
            if outcome is not None and outcome.feasible:
                break
        return "interrupted" if self.interrupted else "ladder finished"

    def _queue_defaults(self) -> None:
        """vLLM's defaults go first to the simulator, once a study, so the summary compares the best
        config with them; a search shorter than DEFAULTS_MIN_BUDGET_S keeps its time for the search
        (their capacity search, up to 256 users, is one of the costlier simulations)."""
        if self._defaults_queued or self.budget_s < DEFAULTS_MIN_BUDGET_S:
            return
        self._defaults_queued = True
        # A resumed study keeps the defaults it began with (queued again if they were cut).
        point = self.study.user_attrs.get(DEFAULTS_ATTR) or defaults_point(self.space)
        if not self.space.admits(point):
            return
        self.study.set_user_attr(DEFAULTS_ATTR, point)
        if point_key(point) not in self._sim_cache:
            self.study.enqueue_trial(self.space.params_of(point), user_attrs=queued_attrs("sim", None, point))

    def _sim_stage(self, until: float) -> str:
        self.emit("stage", name="simulate", detail="ranking configs on the simulator")
        self._queue_defaults()
        best, since_best, duplicates, trials = None, 0, 0, 0
        while True:
            estimate = 2 * statistics.median(self._sim_seconds) if self._sim_seconds else 3.0
            if self.interrupted:
                return "interrupted"
            if time.monotonic() + estimate > min(until, self.deadline):
                return "budget spent"
            try:
                outcome, cached, value = self._trial(until)
            except NoCalibration as exc:
                self.emit("note", message=f"cannot simulate: {exc}")
                return "no calibration"
            trials += 1
            duplicates = duplicates + 1 if cached else 0
            if duplicates >= DUPLICATE_STREAK:
                self.emit("note", message="the sampler keeps proposing configs already simulated: the space is covered")
                return "space covered"
            if outcome is not None and outcome.feasible and (best is None or value > best * 1.005):
                best, since_best = value, 0
            else:
                since_best += 1
            if since_best >= self.patience and trials >= self.patience:
                self.emit("note", message=f"no better simulated config in {self.patience} trials: converged")
                return "converged"

    def _real_stage(self, until: float) -> int:
        """Real runs of the best simulated configs not run yet; returns how many ran."""
        candidates = self._candidates("sim", "real", REAL_CANDIDATES)
        if not candidates:
            return 0
        self.emit("stage", name="real",
                  detail=f"confirming the best {len(candidates)} simulated configs on this device")
        ran = 0
        # Until something has been measured, one confirmation may use the whole budget; after
        # that, the real stage leaves the rest of the round to certification.
        measured = bool(self._taken_keys("real") - {None})
        for i, sim_trial in enumerate(candidates):
            if self.interrupted:
                break
            if self._taken(sim_trial.key, "real"):   # another process got to it
                continue
            sim = sim_trial.outcome
            assert sim is not None and sim_trial.point is not None, "a candidate is a feasible trial"
            # The real capacity search starts at the simulator's answer: about 4 probes, not all of
            # them; a sized run caps its users at its requests, so from an answer above that cap it
            # holds at once or steps down: about 2.
            size = None if self.runner is None else self.runner.max_requests
            capped = size is not None and sim.unit == "users" and (sim.capacity or 0) >= size
            probes = 2 if capped else min(4, len(sim.probes))
            full = sim.run_seconds / max(1, len(sim.probes)) * max(1, probes) * self._real_ratio
            typical = statistics.fmean([self.task.probe_requests(users) for users, _ in sim.probes]
                                       or [self.task.probe_requests(None)])
            room = (self.deadline if i == 0 and not measured else until) - time.monotonic() - END_SECONDS
            if not self._sized_runs(full, typical, room, first=i == 0 and not measured):
                estimate = self._run_seconds(full, typical) + self._real_overhead
                self._note_once("skipped", sim_trial.number, f"skipped trial {sim_trial.number}'s config: a real run "
                                f"needs about {estimate:.0f} s, more than the time left for real runs")
                self._skipped_for_time = True
                continue
            self._real_trial(sim_trial.point, sim.capacity, "real", self.deadline, params=sim_trial.params)
            ran += 1
        return ran

    def _run_seconds(self, full: float, typical: float) -> float:
        """A real run's seconds (overhead aside) at this search's run size, from ``full``: its
        estimate at the workload's full size of ``typical`` requests a probe."""
        assert self.runner is not None
        size = self.runner.max_requests
        return full if size is None else full * min(1.0, size / typical)

    def _sized_runs(self, full: float, typical: float, room: float, first: bool) -> bool:
        """Whether a real run fits ``room`` seconds. The first one of a search that does not is
        sized to fit: fewer requests a probe, kept for every real run after it."""
        assert self.runner is not None
        if self._run_seconds(full, typical) + self._real_overhead <= room:
            return True
        if not first or self.runner.max_requests is not None or full <= 0:
            return False
        size = int(typical * SIZE_MARGIN * (room - self._real_overhead) / full)
        if size < MIN_REAL_REQUESTS:
            return False
        self.runner.max_requests = size
        self.emit("note", message=f"real runs sized to the time left: at most {size} requests a probe (the "
                                  f"workload's full run sends about {typical:.0f})")
        return True

    def _measure_closest(self) -> int:
        """When nothing met the SLO in simulation and nothing was measured: measure the config
        that came closest, from the lowest load (one user, or the slowest pace the simulator
        tried), so the search ends on a measurement (a real capacity if the simulator was
        pessimistic, else the figures at that load). Returns 1 if it ran."""
        done = records(self.study, (TrialState.COMPLETE,))
        if any(t.feasible for t in done) or any(t.fidelity != "sim" for t in done):
            return 0
        fitting = [t for t in done if t.fidelity == "sim" and t.point is not None and t.outcome is not None
                   and t.constraints.get("fits", 1.0) <= 0 and self.space.admits(t.point)
                   and num_gpus(t.point) <= self.task.max_real_tp]
        closest = min(fitting, key=lambda t: max(t.constraints.values()), default=None)
        if closest is None or self._taken(closest.key, "real") or self.runner is None:
            return 0
        assert closest.point is not None and closest.outcome is not None
        metrics = closest.outcome.metrics
        pace = self.task.unit == "x"
        lowest = min((p[0] for p in closest.outcome.probes), default=1.0) if pace else 1.0
        if self.runner.max_requests is None and metrics is not None and metrics.e2e_ms.mean > 0:
            room = self.deadline - time.monotonic() - END_SECONDS - self._real_overhead
            e2e_s = metrics.e2e_ms.mean / 1e3 * self._real_ratio
            if pace:   # the trace at that pace: the requests that arrive in time to end by the deadline
                fits = sum(1 for r in self.task.requests if (r.arrival_s or 0.0) / lowest + e2e_s <= SIZE_MARGIN * room)
            else:      # at one user the requests run one after another: a predicted E2E each
                fits = int(SIZE_MARGIN * room / e2e_s)
            if fits < len(self.task.requests):
                if room <= 0:
                    self.emit("note", message="no time left to measure the closest config")
                    return 0
                # Too few requests by the prediction: run the fewest that give p99s anyway. The
                # simulator that found nothing feasible may be as wrong about the time a request
                # takes (a fit from a loaded machine), the deadline cuts the run if not, and the
                # time left would go unused otherwise.
                self.runner.max_requests = max(fits, MIN_CLOSEST_REQUESTS)
        where = "at the slowest pace the simulator tried" if pace else "from one user"
        self.emit("stage", name="real", detail=f"no config met the SLO in simulation: measuring trial "
                                               f"{closest.number}'s, the closest, {where}")
        self._real_trial(closest.point, lowest, "real", self.deadline, params=closest.params)
        return 1

    def _certify_stage(self) -> int:
        """Certification of the best real configs not certified yet; returns how many ran."""
        candidates = self._candidates("real", "certified", CERTIFY_TOP)
        ran = 0
        for real_trial in candidates:
            if self._taken(real_trial.key, "certified"):
                continue
            real = real_trial.outcome
            assert real is not None and real_trial.point is not None, "a candidate is a feasible trial"
            # Certification runs the capacity load once per fresh seed: a probe's time each.
            estimate = CERTIFY_SEEDS * real.seconds / max(1, len(real.probes)) + self._real_overhead
            if self.interrupted or time.monotonic() + estimate > self.deadline:
                if not self.interrupted:
                    self._note_once("certify", real_trial.number,
                                    f"no time left to certify trial {real_trial.number}'s config")
                break
            if ran == 0:
                self.emit("stage", name="certify",
                          detail=f"re-running the best {len(candidates)} real configs with fresh seeds")
            self._real_trial(real_trial.point, real.capacity, "certified", self.deadline, params=real_trial.params)
            ran += 1
        return ran

    def _taken_keys(self, target: Fidelity) -> set[str | None]:
        """Configs with a ``target``-fidelity trial done, running or queued (by any process)."""
        return {t.key for t in records(self.study) if t.fidelity == target
                and t.state in ("complete", "running", "waiting")}

    def _taken(self, key: str | None, target: Fidelity) -> bool:
        return key in self._taken_keys(target)

    def _candidates(self, source: Fidelity, target: Fidelity, n: int) -> list[TrialRecord]:
        trials = records(self.study)
        taken = self._taken_keys(target)
        ranked = sorted((t for t in trials if t.fidelity == source and t.feasible and t.point is not None
                         and self.space.admits(t.point) and num_gpus(t.point) <= self.task.max_real_tp),
                        key=lambda t: -(t.value or 0))
        out, seen = [], set(taken)
        for t in ranked:
            if t.key not in seen:
                seen.add(t.key)
                out.append(t)
        return out[:n]

    def _real_trial(self, point: dict, start_load: float | None, level: Fidelity, until: float,
                    params: dict | None = None) -> Outcome | None:
        """Enqueue ``point`` at ``level`` and run it (in a shared study, whichever process asks
        first runs it); its outcome (None when it was cut)."""
        self.study.enqueue_trial(params if params is not None else self.space.params_of(point),
                                 user_attrs=queued_attrs(level, start_load, point))
        return self._trial(until)[0]

    # --- one trial ----------------------------------------------------------------------
    def _trial(self, until: float) -> tuple[Outcome | None, bool, float]:
        """Ask the study for a trial and run it at the fidelity it carries: a queued real or
        certified trial (ours, or another process's), else a fresh simulated one (so when
        another process took what this one queued, this one simulates instead). Returns the
        outcome, whether it was a repeat of a simulated config, and the objective told to the
        study (output tok/s per GPU). NoCalibration propagates once the trial is recorded as
        infeasible with its reason."""
        trial = self.study.ask()
        writer = TrialWriter(trial)
        no_calibration: NoCalibration | None = None
        try:
            writer.set_owner(owner())
            level, start_load = writer.queued_fidelity, writer.queued_start_load
            point = self.space.suggest(trial.suggest_categorical)
            # A simulated preset (no local GPU counted) stands for a card, not this machine: no GPU count to exceed.
            beyond = self.task.local_gpus > 0 and num_gpus(point) > self.task.max_real_tp
            writer.set_config(level, point, beyond_local=beyond)
            cached = level == "sim" and point_key(point) in self._sim_cache
            stop = self._stop_at(until)
            if cached:
                previous = self._sim_cache[point_key(point)]
                assert previous.outcome is not None, "a completed trial stored its outcome"
                outcome = dataclasses.replace(previous.outcome, seconds=0.0)
                writer.set_same_as(previous.number)
            elif level == "sim":
                try:
                    outcome = simulate(self.task, point, stop)
                except NoCalibration as exc:
                    no_calibration, outcome = exc, infeasible(str(exc))
            else:
                assert self.runner is not None
                if not self.runner.fixed_deployment:
                    writer.set_predicted(self._prediction(point))
                outcome = self.runner.run(point, stop, start_load, certify=level == "certified",
                                          label=f"trial-{trial.number}")
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        if outcome.cut and level != "sim" and not self.interrupted:
            outcome = outcome.settled() or outcome   # the probes the deadline let finish still count
        if outcome.cut:
            writer.set_reason("interrupted" if self.interrupted else "cut at the budget's deadline")
            self.on_event(Event("trial", trial=TrialRecord.of(self.study.tell(trial, state=TrialState.FAIL)).row()))
            return None, cached, 0.0
        for name, value in outcome.constraints.items():
            trial.set_constraint(name, value)
        writer.set_outcome(outcome)
        value = per_gpu(outcome.value, point)
        record = TrialRecord.of(self.study.tell(trial, value))
        if level == "sim" and not cached:
            self._sim_seconds.append(outcome.seconds)
            self._sim_cache[point_key(point)] = record
        if level != "sim" and self.runner is not None:
            self._learn_real_cost(record, outcome)
        self.on_event(Event("trial", trial=record.row()))
        if no_calibration is not None:
            raise no_calibration
        return outcome, cached, value

    def _prediction(self, point: dict) -> Prediction | None:
        """The simulator's figures for ``point`` with the current calibration (None if there is none)."""
        try:
            predicted = simulate(self.task, point, self._stop_at(self.deadline),
                                 None if self.runner is None else self.runner.max_requests)
        except NoCalibration:
            return None
        if predicted.cut:
            return None
        metrics = predicted.metrics
        return Prediction(per_gpu(predicted.value, point), predicted.capacity, predicted.feasible,
                          predicted.run_seconds, None if metrics is None else metrics.ttft_ms.p99,
                          None if metrics is None else metrics.itl_ms.p99)

    def _learn_real_cost(self, trial: TrialRecord, outcome: Outcome) -> None:
        """Real runs take ``run_seconds x ratio`` of their simulation plus a fixed overhead (engine
        build, warm-up, graph capture): both learnt from the last real trial."""
        predicted = trial.predicted
        if outcome.run_seconds:
            self._real_overhead = max(1.0, outcome.seconds - outcome.run_seconds)
        if predicted is not None and predicted.run_seconds and outcome.run_seconds:
            self._real_ratio = max(1.0, outcome.run_seconds / predicted.run_seconds)
        if self.runner is not None and self.runner.calibration_note:
            self.emit("note", message=self.runner.calibration_note)

    def _fail_orphans(self) -> None:
        """Trials a killed run on this host left RUNNING are marked failed, so they block nothing."""
        for t in records(self.study, (TrialState.RUNNING,)):
            if t.owner and orphaned(t.owner):
                self.study.tell(t.number, state=TrialState.FAIL)


