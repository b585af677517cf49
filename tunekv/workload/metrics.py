"""Serving metrics, with the definitions printed next to every result (ARCHITECTURE.md, "Contracts").

- TTFT = first token time - arrival time; E2E = finish - arrival.
- TPOT = (E2E - TTFT) / (output_tokens - 1), vLLM's definition (first token excluded).
- ITL = every gap between consecutive output tokens of a request, pooled over requests.
- Goodput = requests/s that met every SLO; attainment = share of requests that met every SLO.
- Percentiles are nearest-rank over the measured window; p99 carries a bootstrap 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunekv.engine.stats import percentile
from tunekv.errors import BadInput, shorten
from tunekv.fileio import read_text

DEFINITIONS = (
    "TTFT = first token - arrival (the send, for a request --max-concurrency held); "
    "TPOT = (E2E - TTFT)/(output tokens - 1); ITL = every gap between consecutive tokens, pooled; "
    "E2E = finish - arrival; percentiles nearest-rank, p99 with a bootstrap "
    "95% interval; goodput = requests/s meeting every SLO (each request's own TTFT and E2E, and its TPOT for "
    "the ITL and TPOT targets); throughput over the measured requests' span "
    "(first arrival to last finish), sent after the warm-up requests finished"
)


def bootstrap_ci(values: list[float], q: float = 99.0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the nearest-rank q-th percentile, computed exactly.

    In a bootstrap resample the percentile is at most the j-th smallest value x_(j) exactly when
    at least k = ceil(n q / 100) of the n draws land at or below it, each with probability j/n:
    P = P(Binomial(n, j/n) >= k). That is the bootstrap distribution with infinitely many
    resamples, so no sampling noise and O(n log n) instead of O(resamples x n)."""
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    x = sorted(values)
    k = max(1, math.ceil(n * q / 100.0))
    i = np.arange(n + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i[1:] + 1) - np.log(i[1:]))])

    def at_most(j: int) -> float:  # P(bootstrap percentile <= x_(j))
        if j >= n:
            return 1.0
        p = j / n
        log_pmf = log_comb[k:] + i[k:] * math.log(p) + (n - i[k:]) * math.log1p(-p)
        return float(np.exp(log_pmf).sum())

    def first(target: float) -> int:
        lo, hi = 1, n
        while lo < hi:
            mid = (lo + hi) // 2
            if at_most(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    tail = (1.0 - level) / 2
    return float(x[first(tail) - 1]), float(x[first(1.0 - tail) - 1])


LatencyMetric = Literal["ttft", "tpot", "itl", "e2e"]


def _number(value: float | None) -> float:
    """A stored figure: null (how a JSON file writes NaN) reads back as NaN."""
    return math.nan if value is None else value


@dataclass(frozen=True)
class LatencySummary:
    """One latency's figures in milliseconds: mean, p50, p90, p99 and the p99's bootstrap 95% interval
    (NaN when there were no samples)."""

    mean: float
    p50: float
    p90: float
    p99: float
    p99_ci95: tuple[float, float]

    @classmethod
    def of(cls, values: list[float]) -> LatencySummary:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan, (math.nan, math.nan))
        return cls(sum(values) / len(values), percentile(values, 50), percentile(values, 90),
                   percentile(values, 99), bootstrap_ci(values))

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99,
                "p99_ci95": list(self.p99_ci95)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencySummary:
        lo, hi = data["p99_ci95"]
        return cls(_number(data["mean"]), _number(data["p50"]), _number(data["p90"]), _number(data["p99"]),
                   (_number(lo), _number(hi)))


@dataclass(frozen=True)
class ServingMetrics:
    """The ``metrics`` block of the bench result JSON (``RunResult.to_json``); see ``compute_metrics``."""

    ttft_ms: LatencySummary
    tpot_ms: LatencySummary
    itl_ms: LatencySummary
    e2e_ms: LatencySummary
    request_throughput: float
    output_throughput_tok_s: float
    total_throughput_tok_s: float
    goodput_req_s: float
    attainment: float
    completed: int
    failed: int
    duration_s: float
    input_tokens: int = 0         # the completed requests' prompt tokens (vLLM's "Total input tokens")
    output_tokens: int = 0        # and their output tokens ("Total generated tokens")

    def latency(self, metric: LatencyMetric) -> LatencySummary:
        return {"ttft": self.ttft_ms, "tpot": self.tpot_ms, "itl": self.itl_ms, "e2e": self.e2e_ms}[metric]

    def to_json(self) -> dict[str, Any]:
        return {"ttft_ms": self.ttft_ms.to_json(), "tpot_ms": self.tpot_ms.to_json(), "itl_ms": self.itl_ms.to_json(),
                "e2e_ms": self.e2e_ms.to_json(), "request_throughput": self.request_throughput,
                "output_throughput_tok_s": self.output_throughput_tok_s,
                "total_throughput_tok_s": self.total_throughput_tok_s, "goodput_req_s": self.goodput_req_s,
                "attainment": self.attainment, "completed": self.completed, "failed": self.failed,
                "duration_s": self.duration_s, "total_input_tokens": self.input_tokens,
                "total_output_tokens": self.output_tokens}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServingMetrics:
        return cls(LatencySummary.from_json(data["ttft_ms"]), LatencySummary.from_json(data["tpot_ms"]),
                   LatencySummary.from_json(data["itl_ms"]), LatencySummary.from_json(data["e2e_ms"]),
                   request_throughput=_number(data["request_throughput"]),
                   output_throughput_tok_s=_number(data["output_throughput_tok_s"]),
                   total_throughput_tok_s=_number(data["total_throughput_tok_s"]),
                   goodput_req_s=_number(data["goodput_req_s"]), attainment=_number(data["attainment"]),
                   completed=data["completed"], failed=data["failed"], duration_s=_number(data["duration_s"]),
                   input_tokens=data.get("total_input_tokens", 0), output_tokens=data.get("total_output_tokens", 0))


@dataclass(frozen=True)
class RequestTiming:
    """One finished request's timestamps (seconds, one clock) and sizes."""

    arrival: float
    first_token: float
    token_times: tuple[float, ...]
    finished: float
    prompt_tokens: int
    output_tokens: int

    @property
    def ttft_ms(self) -> float:
        return (self.first_token - self.arrival) * 1e3

    @property
    def e2e_ms(self) -> float:
        return (self.finished - self.arrival) * 1e3

    @property
    def tpot_ms(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)

    def itl_ms(self) -> list[float]:
        t = self.token_times
        return [(t[i] - t[i - 1]) * 1e3 for i in range(1, len(t))]


@dataclass(frozen=True)
class SLO:
    """Latency targets in milliseconds; None means no target on that metric."""

    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    e2e_p99_ms: float | None = None

    def met_by(self, r: RequestTiming) -> bool:
        """Per request, for goodput and attainment: its own TTFT and E2E within their targets, and
        its decode speed (TPOT, its mean gap between tokens) within the ITL and TPOT targets, as
        vLLM's and DistServe's goodput judge a request. Not its worst gap: a request of a few
        dozen tokens with one 60 ms gap would miss a 50 ms ITL p99 the run as a whole holds."""
        if self.ttft_p99_ms is not None and r.ttft_ms > self.ttft_p99_ms:
            return False
        if self.e2e_p99_ms is not None and r.e2e_ms > self.e2e_p99_ms:
            return False
        tpot = r.tpot_ms or 0.0
        return all(target is None or tpot <= target for target in (self.tpot_p99_ms, self.itl_p99_ms))

    def held_by(self, metrics: ServingMetrics) -> bool:
        """A run within the SLO: something completed, nothing failed, and every p99 within its target."""
        if metrics.completed == 0 or metrics.failed:
            return False
        return all(v <= 0 for v in self.violations(metrics).values())

    def targets(self) -> list[tuple[LatencyMetric, float]]:
        """(metric, p99 target in ms) for each metric that has a target, in the order ttft, itl, tpot, e2e."""
        pairs: list[tuple[LatencyMetric, float | None]] = [
            ("ttft", self.ttft_p99_ms), ("itl", self.itl_p99_ms), ("tpot", self.tpot_p99_ms), ("e2e", self.e2e_p99_ms)]
        return [(name, target) for name, target in pairs if target is not None]

    def violations(self, metrics: ServingMetrics) -> dict[str, float]:
        """Measured p99 minus target per metric (<= 0 is within target)."""
        out = {}
        for name, target in self.targets():
            p99 = metrics.latency(name).p99
            out[f"{name}_p99"] = 0.0 if math.isnan(p99) else p99 - target
        return out

    def describe(self) -> str:
        parts = [f"{n}_p99<={v:g}ms" for n, v in (("ttft", self.ttft_p99_ms), ("itl", self.itl_p99_ms),
                                                    ("tpot", self.tpot_p99_ms), ("e2e", self.e2e_p99_ms))
                 if v is not None]
        return ",".join(parts) or "none"


def compute_metrics(timings: list[RequestTiming], failed: int, window: tuple[float, float],
                    slo: SLO | None) -> ServingMetrics:
    """The ``metrics`` block of the bench result JSON (``RunResult.to_json``).

    Latencies cover the measured requests; throughputs count what happened inside the measured
    window (tokens produced, prompts prefilled, requests finished), so warm-up work done by the
    engine before the window does not inflate or dilute them."""
    start, end = window
    duration = max(end - start, 1e-9)
    out_tokens = sum(sum(1 for t in r.token_times if t >= start) for r in timings)
    in_tokens = sum(r.prompt_tokens for r in timings if r.first_token >= start)
    finished = [r for r in timings if r.finished >= start]
    good = [r for r in finished if slo is None or slo.met_by(r)]
    attempted = len(timings) + failed
    return ServingMetrics(
        ttft_ms=LatencySummary.of([r.ttft_ms for r in timings]),
        tpot_ms=LatencySummary.of([t for r in timings if (t := r.tpot_ms) is not None]),
        itl_ms=LatencySummary.of([g for r in timings for g in r.itl_ms()]),
        e2e_ms=LatencySummary.of([r.e2e_ms for r in timings]),
        request_throughput=len(finished) / duration,
        output_throughput_tok_s=out_tokens / duration,
        total_throughput_tok_s=(in_tokens + out_tokens) / duration,
        goodput_req_s=len(good) / duration,
        attainment=sum(1 for r in timings if slo is None or slo.met_by(r)) / attempted if attempted else 0.0,
        completed=len(timings),
        failed=failed,
        duration_s=end - start,
        input_tokens=sum(r.prompt_tokens for r in timings),
        output_tokens=sum(r.output_tokens for r in timings),
    )


_SLO_KEYS = {"ttft_p99": "ttft_p99_ms", "itl_p99": "itl_p99_ms", "tpot_p99": "tpot_p99_ms", "e2e_p99": "e2e_p99_ms"}


def _duration_ms(key: str, raw: object) -> float:
    text = str(raw).strip().lower()
    for suffix, factor in (("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            try:
                value = float(text[: -len(suffix)]) * factor
            except ValueError:
                break
            if math.isfinite(value) and value > 0:
                return value
            break
    raise BadInput(f"SLO target {shorten(f'{key}={raw}')} must be a positive duration such as 500ms or 2s")


SLO_EXAMPLE = "targets like ttft_p99=500ms,itl_p99=50ms"


def parse_slo(spec: str) -> SLO:
    """``ttft_p99=500ms,itl_p99=50ms``, a profile name (``interactive``, ``relaxed``, ``batch``) or
    a YAML file of targets (``ttft_p99: 500ms`` a line, as the profiles are written)."""
    import yaml

    from tunekv.engine.presets import preset_dir

    spec = spec.strip()
    names = sorted(p.stem for p in (preset_dir() / "slo").glob("*.yaml"))
    if not spec:
        raise BadInput(f"the SLO is empty; give {SLO_EXAMPLE}, a profile ({', '.join(names)}) or a YAML file of "
                       "targets")
    if "=" in spec:
        pairs = []
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise BadInput(f"SLO part '{shorten(part)}' must look like ttft_p99=500ms")
            pairs.append((key.strip(), value.strip()))
    elif spec in names:
        pairs = list(yaml.safe_load((preset_dir() / "slo" / f"{spec}.yaml").read_text()).items())
    elif _names_a_file(spec):
        pairs = _slo_file(spec)
    else:
        raise BadInput(f"unknown SLO profile '{shorten(spec)}'; use one of {', '.join(names)}, {SLO_EXAMPLE} "
                       "or a YAML file of targets")
    fields: dict[str, float] = {}
    for key, value in pairs:
        if key not in _SLO_KEYS:
            raise BadInput(f"unknown SLO metric '{shorten(str(key))}'; use {', '.join(_SLO_KEYS)}")
        if _SLO_KEYS[key] in fields:
            raise BadInput(f"the SLO sets {key} twice; give each target once")
        fields[_SLO_KEYS[key]] = _duration_ms(key, value)
    return SLO(**fields)


def looser_profiles(slo: SLO) -> list[str]:
    """The SLO profiles that ask less than ``slo`` of every metric: none sets a target ``slo``
    leaves open, and each target is at least ``slo``'s (what a search that met nothing can try)."""
    from tunekv.engine.presets import preset_dir

    looser = []
    for name in sorted(p.stem for p in (preset_dir() / "slo").glob("*.yaml")):
        profile = parse_slo(name)
        mine, theirs = dict(slo.targets()), dict(profile.targets())
        if profile != slo and all(m in mine and v >= mine[m] for m, v in theirs.items()):
            looser.append(name)
    return looser


def _names_a_file(spec: str) -> bool:
    """Whether an --slo value that is neither targets nor a profile names a file: it exists (a
    directory too, to say so), or it is written like a path."""
    try:
        exists = Path(spec).expanduser().exists()
    except OSError:  # a name too long for a path
        exists = False
    return exists or spec.endswith((".yaml", ".yml")) or "/" in spec


def _slo_file(spec: str) -> list[tuple[Any, Any]]:
    """The (metric, target) pairs of an SLO YAML file; BadInput naming the file otherwise."""
    import yaml

    text = read_text(spec, "SLO file")
    hint = f"it must hold a YAML mapping of targets such as ttft_p99: 500ms (keys: {', '.join(_SLO_KEYS)})"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BadInput(f"SLO file {shorten(spec)} is not valid YAML; {hint}") from None
    if not isinstance(raw, dict) or not any(str(key) in _SLO_KEYS for key in raw):
        raise BadInput(f"SLO file {shorten(spec)} holds no SLO targets; {hint}")
    return list(raw.items())
