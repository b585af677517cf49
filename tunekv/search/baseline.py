"""The config a search measures itself against: vLLM's defaults (moved onto the space where it
excludes them), simulated first in a study given the time (search.ladder.DEFAULTS_MIN_BUDGET_S),
and compared with the best config at the one fidelity both have, the simulator's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunekv.search.records import TrialRecord, config_key
from tunekv.search.space import SearchSpace, make_valid

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULTS_ATTR", "VLLM_DEFAULTS", "VersusDefaults", "defaults_point", "versus_defaults"]

# vLLM's engine defaults for an online server (`vllm serve`, V1): what a deployment runs when nobody tunes it.
VLLM_DEFAULTS: dict[str, Any] = {
    "block_size": 16, "max_num_seqs": 256, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.90,
    "tensor_parallel_size": 1, "enable_chunked_prefill": True, "enable_prefix_caching": True, "kv_policy": "paged",
    "kv_cache_dtype": "auto"}
DEFAULTS_ATTR = "vllm_defaults"   # the study's user attribute: the defaults point this study simulated


def defaults_point(space: SearchSpace, longest: bool = True) -> dict[str, Any]:
    """vLLM's defaults in ``space``: a pinned knob keeps its pin, a value the space lacks moves to
    the nearest candidate, and max_model_len is the longest candidate (vLLM's default is the model's
    whole context; ``longest`` False: the shortest, which a calibration's probes prefer)."""
    point = dict(space.fixed)
    for name, values in space.choices.items():
        if name == "max_model_len":
            point[name] = max(values) if longest else min(values)
            continue
        want = VLLM_DEFAULTS.get(name, values[0])
        point[name] = want if want in values else (
            min(values, key=lambda v: abs(v - want)) if isinstance(want, (int, float)) else values[0])
    return make_valid(point)


@dataclass(frozen=True)
class VersusDefaults:
    """vLLM's defaults and the best config, both as simulated in one study."""

    defaults: TrialRecord
    best: TrialRecord | None           # the best config's simulated trial (None: it was never simulated)

    @property
    def gain(self) -> float | None:
        """The best config's throughput over the defaults', less 1, when both met the SLO."""
        d, b = self.defaults, self.best
        if b is None or not (d.feasible and b.feasible) or not d.value or b.value is None:
            return None
        return b.value / d.value - 1

    def describe(self, per: str = " per GPU") -> str:
        """One line: the defaults' figure and the best config's against it (``per``: the unit's tail)."""
        d = self.defaults
        if d.feasible:
            own = f"{d.value:.0f} output tok/s{per} under the SLO"
        elif d.worst == "does not fit":
            own = f"do not run here ({d.reason or 'they do not fit'})"
        else:
            own = f"miss the SLO ({d.worst or d.reason or 'infeasible'})"
        line = f"vLLM's defaults (trial {d.number}, simulated) {own}"
        if self.best is None or self.best.key == d.key:
            return line + ("; they are the best config found" if self.best is not None else "")
        gain = self.gain
        if gain is not None:
            return line + f"; the best config's simulation makes {self.best.value:.0f} ({gain:+.0%})"
        if self.best.feasible and not d.feasible:
            return line + f"; the best config meets it ({self.best.value:.0f} tok/s{per} simulated)"
        return line

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.defaults.number, "point": self.defaults.point, "feasible": self.defaults.feasible,
                "value": self.defaults.value, "worst": self.defaults.worst,
                "best_simulated_value": None if self.best is None else self.best.value, "gain": self.gain}


def versus_defaults(study: optuna.Study, best: TrialRecord | None) -> VersusDefaults | None:
    """The defaults this study simulated against ``best`` (None: it simulated no defaults)."""
    from optuna.trial import TrialState

    point = study.user_attrs.get(DEFAULTS_ATTR)
    if point is None:
        return None
    sims: dict[str, TrialRecord] = {}
    for t in (TrialRecord.of(f) for f in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
        if t.fidelity == "sim" and t.key is not None:
            sims.setdefault(t.key, t)   # the first simulation of a config; later ones repeat it (same_as)
    defaults = sims.get(config_key(point))
    if defaults is None:
        return None
    return VersusDefaults(defaults, None if best is None or best.key is None else sims.get(best.key))
