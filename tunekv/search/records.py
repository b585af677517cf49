"""A search trial as typed data. ``TrialRecord`` reads a trial's Optuna user attributes and
``TrialWriter`` writes them: no other code touches those keys, which are a stored format (a resumed
search and other processes sharing the study read them). ``TrialRow`` is a trial as the live
table, the TUI and the JSON lines show it.

Light on purpose: the TUI's first paint imports this module (through ``tunekv.render.trials``), so
optuna, torch and the heavier search modules are imported only inside the functions that need them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from tunekv.units import CapacityUnit

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tunekv.search.trials import Outcome

Fidelity = Literal["sim", "real", "certified"]
FIDELITIES: tuple[Fidelity, ...] = ("sim", "real", "certified")
RANK: dict[str, int] = {f: i for i, f in enumerate(FIDELITIES)}
TrialStateName = Literal["running", "waiting", "complete", "pruned", "fail"]   # Optuna's TrialState, lower case
STATE_NAMES: dict[str, TrialStateName] = {"RUNNING": "running", "WAITING": "waiting", "COMPLETE": "complete",
                                          "PRUNED": "pruned", "FAIL": "fail"}
RowMetric = Literal["ttft", "itl"]


def num_gpus(point: dict[str, Any]) -> int:
    return int(point.get("tensor_parallel_size", 1))


def config_key(point: dict[str, Any]) -> str:
    """The stored ``key`` of a config: the same config at every fidelity has the same key."""
    from tunekv.search.space import point_key

    return json.dumps(point_key(point))


@dataclass(frozen=True)
class Prediction:
    """The simulator's figures for a config a real or certified trial measured, kept beside the measurement."""

    value: float                    # output tok/s per GPU
    capacity: float | None
    feasible: bool
    run_seconds: float              # virtual seconds of the simulated runs
    ttft_p99_ms: float | None
    itl_p99_ms: float | None

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Prediction:
        return cls(**attrs)


@dataclass(frozen=True)
class TrialRow:
    """A trial as the tables show it; ``to_json`` is its part of a ``trial`` event of
    `tunekv search --json-lines` (an interface: these fields, in this order)."""

    number: int
    fidelity: Fidelity
    state: TrialStateName
    point: dict[str, Any] | None
    value: float | None             # the objective: output tok/s per GPU
    engine_tok_s: float | None      # the engine's output tok/s, on all its GPUs
    gpus: int
    predicted_only: bool            # needs more GPUs than this machine has: simulated, never measured here
    capacity: float | None          # the load (in ``capacity_unit``) where the throughput was measured
    capacity_capped: bool | None    # every probe held: the capacity is at least this
    ttft_p99_ms: float | None
    itl_p99_ms: float | None
    feasible: bool
    reason: str
    worst: str | None               # the most violated constraint, e.g. "ttft_p99 +35%"
    seconds: float | None
    same_as: int | None             # a repeat of this trial's simulation
    predicted: Prediction | None
    capacity_unit: CapacityUnit = "users"   # users, req/s (a fixed rate), or x (a trace's pace)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study: Optuna's own fields, and the user attributes the search stores, typed."""

    number: int
    state: TrialStateName
    value: float | None             # the objective told to the study (output tok/s per GPU)
    params: dict[str, Any]
    constraints: dict[str, float]   # <= 0 holds
    started: datetime | None
    completed: datetime | None
    fidelity: Fidelity = "sim"
    point: dict[str, Any] | None = None
    key: str | None = None          # config_key(point)
    owner: str | None = None        # the process running it (storage.owner)
    start_load: float | None = None # where a real trial's capacity search starts (the simulator's answer)
    beyond_local: bool = False      # needs more GPUs than this machine has
    same_as: int | None = None      # the trial whose simulation this one repeats
    predicted: Prediction | None = None
    reason: str = ""                # why it is infeasible, failed or was cut
    outcome: Outcome | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        from tunekv.search.trials import Outcome

        attrs = trial.user_attrs
        predicted, outcome = attrs.get("predicted"), attrs.get("outcome")
        return cls(trial.number, STATE_NAMES[trial.state.name], trial.value, trial.params, trial.constraints,
                   trial.datetime_start, trial.datetime_complete,
                   fidelity=attrs.get("fidelity", "sim"), point=attrs.get("point"), key=attrs.get("key"),
                   owner=attrs.get("owner"), start_load=attrs.get("start_load"),
                   beyond_local=bool(attrs.get("beyond_local")), same_as=attrs.get("same_as"),
                   predicted=None if predicted is None else Prediction.from_attrs(predicted),
                   reason=attrs.get("reason", ""), outcome=None if outcome is None else Outcome.from_attrs(outcome))

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned", "fail")

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.constraints.values())

    @property
    def gpus(self) -> int:
        return num_gpus(self.point or {})

    @property
    def worst(self) -> str | None:
        """The most violated constraint, e.g. ``ttft_p99 +35%`` (``does not fit`` when it cannot run);
        None if all hold."""
        if not self.constraints:
            return None
        name, margin = max(self.constraints.items(), key=lambda kv: kv[1])
        if margin <= 0:
            return None
        return "does not fit" if name == "fits" else f"{name} +{margin:.0%}"

    def p99_ms(self, metric: RowMetric) -> float | None:
        """The measured (or predicted) p99; None when nothing ran, NaN when it had no samples."""
        if self.outcome is None or self.outcome.metrics is None:
            return None
        return self.outcome.metrics.latency(metric).p99

    def row(self) -> TrialRow:
        out = self.outcome
        return TrialRow(self.number, self.fidelity, self.state, self.point, self.value,
                        engine_tok_s=None if out is None else out.value, gpus=self.gpus,
                        predicted_only=self.beyond_local, capacity=None if out is None else out.capacity,
                        capacity_capped=None if out is None else out.capacity_capped,
                        ttft_p99_ms=self.p99_ms("ttft"), itl_p99_ms=self.p99_ms("itl"), feasible=self.feasible,
                        reason=self.reason, worst=self.worst, seconds=None if out is None else out.seconds,
                        same_as=self.same_as, predicted=self.predicted,
                        capacity_unit="users" if out is None else out.unit)


def queued_attrs(fidelity: Fidelity, start_load: float | None, point: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a trial enqueued at ``fidelity`` (``study.enqueue_trial``): the process
    that asks for it reads them through ``TrialWriter``."""
    return {"fidelity": fidelity, "start_load": start_load, "key": config_key(point)}


class TrialWriter:
    """Writes a running trial's user attributes as the ladder learns them: who runs it and which
    config as soon as it starts (other processes skip a config taken), the outcome at the end."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    @property
    def queued_fidelity(self) -> Fidelity:
        """The fidelity the trial was enqueued at; ``sim`` for a fresh trial."""
        return self.trial.user_attrs.get("fidelity", "sim")

    @property
    def queued_start_load(self) -> float | None:
        return self.trial.user_attrs.get("start_load")

    def set_owner(self, owner: str) -> None:
        self.trial.set_user_attr("owner", owner)

    def set_config(self, fidelity: Fidelity, point: dict[str, Any], beyond_local: bool) -> None:
        for name, value in (("fidelity", fidelity), ("point", point), ("key", config_key(point))):
            self.trial.set_user_attr(name, value)
        if beyond_local:
            self.trial.set_user_attr("beyond_local", True)

    def set_same_as(self, number: int) -> None:
        self.trial.set_user_attr("same_as", number)

    def set_predicted(self, predicted: Prediction | None) -> None:
        self.trial.set_user_attr("predicted", None if predicted is None else predicted.to_attrs())

    def set_reason(self, reason: str) -> None:
        self.trial.set_user_attr("reason", reason)

    def set_outcome(self, outcome: Outcome) -> None:
        self.trial.set_user_attr("outcome", outcome.to_attrs())
        if outcome.reason:
            self.set_reason(outcome.reason)
