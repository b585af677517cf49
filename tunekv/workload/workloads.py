"""Workloads: request length distributions, shared prefixes and arrival patterns (presets or a
JSONL trace), turned into a deterministic request list for a seed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunekv.engine.presets import preset_dir
from tunekv.errors import BadInput

DISTS = ("fixed", "uniform", "lognormal", "empirical")


@dataclass(frozen=True)
class LengthDist:
    """Token-length distribution. lognormal is clipped to [min, max]; empirical draws from values."""

    dist: str
    value: int = 0
    min: int = 1
    max: int = 1
    median: float = 0.0
    sigma: float = 0.0
    values: tuple[int, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str) -> LengthDist:
        if isinstance(raw, int) and raw > 0:
            return cls("fixed", value=raw)
        if not isinstance(raw, dict) or raw.get("dist") not in DISTS:
            raise BadInput(f"{where} must be a positive integer or a mapping with dist: {', '.join(DISTS)}")
        d = raw["dist"]
        try:
            if d == "fixed":
                out = cls(d, value=int(raw["value"]))
                ok = out.value > 0
            elif d == "uniform":
                out = cls(d, min=int(raw["min"]), max=int(raw["max"]))
                ok = 0 < out.min <= out.max
            elif d == "lognormal":
                out = cls(d, median=float(raw["median"]), sigma=float(raw["sigma"]), min=int(raw.get("min", 1)),
                          max=int(raw["max"]))
                ok = out.median > 0 and out.sigma >= 0 and 0 < out.min <= out.max
            else:
                out = cls(d, values=tuple(int(v) for v in raw["values"]))
                ok = bool(out.values) and min(out.values) > 0
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{where}: {d} distribution is missing or has a bad field ({exc})") from None
        if not ok:
            raise BadInput(f"{where}: {d} distribution needs positive lengths with min <= max")
        return out

    @property
    def lower(self) -> int:
        """The shortest length this distribution can draw."""
        if self.dist == "fixed":
            return self.value
        return min(self.values) if self.dist == "empirical" else self.min

    @property
    def upper(self) -> int:
        """The longest length this distribution can draw."""
        if self.dist == "fixed":
            return self.value
        return max(self.values) if self.dist == "empirical" else self.max

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            return self.value
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        if self.dist == "lognormal":
            x = round(math.exp(math.log(self.median) + self.sigma * rng.gauss(0.0, 1.0)))
            return min(self.max, max(self.min, x))
        return rng.choice(self.values)


@dataclass(frozen=True)
class WorkloadRequest:
    prompt_token_ids: tuple[int, ...]
    output_len: int
    arrival_s: float | None = None   # from the trace; None: the load pattern decides
    prefix_group: int | None = None


@dataclass
class Workload:
    name: str
    description: str = ""
    num_requests: int = 100
    prompt_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", value=128))
    output_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", value=128))
    prefix_groups: int = 0
    prefix_len: int = 0
    prefix_share: float = 0.0
    rate: float | None = None
    offline: bool = False
    trace: list[dict] | None = None
    # Set by ``fit_to``: no request is longer (prompt + output tokens). Out of the repr, which
    # identifies a workload's definition (a search's digest); ``digest`` adds it.
    max_total: int | None = field(default=None, repr=False)

    @property
    def unclipped_longest(self) -> int:
        """Prompt + output tokens of the longest request the definition allows (before any clip)."""
        return self.prompt_len.upper + self.output_len.upper

    @property
    def shortest(self) -> int:
        """Prompt + output tokens of the shortest request a preset can send (a clip keeps this much)."""
        return self.prompt_len.lower + self.output_len.lower

    def longest_request(self, requests: list[WorkloadRequest]) -> int:
        """Prompt + output tokens of the longest request the workload can send: the distributions'
        bounds (any seed, any count) within any clip, or for a trace its longest row in ``requests``."""
        if self.trace is not None:
            return max(len(r.prompt_token_ids) + r.output_len for r in requests)
        longest = self.unclipped_longest
        return longest if self.max_total is None else min(longest, self.max_total)

    def fit_to(self, max_len: int) -> Workload:
        """This preset with every request clipped to ``max_len`` tokens when its lengths can exceed
        them (a distribution is not a promise: a server serves the rest). A trace is returned as it
        is: its rows are the user's requests, and the caller refuses those that do not fit."""
        if self.trace is not None or self.unclipped_longest <= max_len:
            return self
        if max_len < self.shortest:
            raise BadInput(f"workload {self.name}: its shortest request ({self.shortest} tokens) is longer than "
                           f"{max_len} tokens")
        return dataclasses.replace(self, max_total=max_len)

    def clip_note(self, whose: str) -> str | None:
        """One line on the clip, for the output (None when there is none)."""
        if self.max_total is None:
            return None
        return (f"workload {self.name}: requests clipped to {self.max_total} tokens ({whose}); the preset allows "
                f"{self.unclipped_longest}")

    def digest(self) -> str:
        """A short hash of the definition, clip included: what a search's study is tied to."""
        text = repr(self) + ("" if self.max_total is None else f"|max_total={self.max_total}")
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def requests(self, seed: int, vocab_size: int, tokenizer: Any = None,
                 num_requests: int | None = None) -> list[WorkloadRequest]:
        """The request list for ``seed``: same seed, same requests, token for token."""
        if self.trace is not None:
            return _trace_requests(self.trace, seed, vocab_size, tokenizer, num_requests)
        n = num_requests or self.num_requests
        rng = random.Random(seed)
        prefixes = [[rng.randrange(vocab_size) for _ in range(self.prefix_len)] for _ in range(self.prefix_groups)]
        out = []
        for _ in range(n):
            prompt_len = self.prompt_len.sample(rng)
            output_len = self.output_len.sample(rng)
            if self.max_total is not None and prompt_len + output_len > self.max_total:
                # The answer keeps at least the preset's shortest; the prompt gives up the rest.
                prompt_len = min(prompt_len, self.max_total - min(output_len, self.output_len.lower))
                output_len = min(output_len, self.max_total - prompt_len)
            group = None
            prompt: list[int] = []
            if prefixes and rng.random() < self.prefix_share:
                group = rng.randrange(len(prefixes))
                prompt = prefixes[group][:max(0, prompt_len - 1)]
            # A request's own tokens come from its own stream, so a clip changes no other request.
            tokens = random.Random(rng.getrandbits(64))
            prompt += [tokens.randrange(vocab_size) for _ in range(prompt_len - len(prompt))]
            out.append(WorkloadRequest(tuple(prompt), output_len, None, group))
        return out


def workload_names() -> list[str]:
    return sorted(p.stem for p in (preset_dir() / "workloads").glob("*.yaml"))


def load_workload(spec: str) -> Workload:
    """A preset name, a workload YAML file or a JSONL trace; ValueError with one sentence otherwise."""
    path = Path(spec).expanduser()
    if spec.endswith(".jsonl"):
        if not path.is_file():
            raise BadInput(f"trace file {spec} does not exist")
        return Workload(name=path.stem, description=f"trace {path.name}", trace=_read_trace(path))
    if spec.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise BadInput(f"workload file {spec} does not exist")
        return _parse(path.stem, _yaml(path))
    names = workload_names()
    if spec not in names:
        raise BadInput(f"unknown workload '{spec}'; use a preset ({', '.join(names)}), a .yaml file or a .jsonl trace")
    return _parse(spec, _yaml(preset_dir() / "workloads" / f"{spec}.yaml"))


def mean_tokens(spec: str, vocab_size: int, max_len: int) -> float:
    """Mean prompt + output tokens of a workload's requests (seed 0), clipped to ``max_len``."""
    requests = load_workload(spec).fit_to(max_len).requests(0, vocab_size, None, None)
    return statistics.fmean(len(r.prompt_token_ids) + r.output_len for r in requests)


def _yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"workload file {path} is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"workload file {path} must hold a mapping")
    return raw


_KEYS = {"description", "num_requests", "prompt_len", "output_len", "shared_prefix", "arrival"}


def _parse(name: str, raw: dict) -> Workload:
    unknown = set(raw) - _KEYS
    if unknown:
        raise BadInput(f"workload {name}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(_KEYS))})")
    n = raw.get("num_requests", 100)
    if not _is_int(n) or n < 1:
        raise BadInput(f"workload {name}: num_requests must be an integer >= 1")
    w = Workload(name=name, description=str(raw.get("description", "")), num_requests=n,
                 prompt_len=LengthDist.parse(raw.get("prompt_len", 128), f"workload {name}: prompt_len"),
                 output_len=LengthDist.parse(raw.get("output_len", 128), f"workload {name}: output_len"))
    prefix = raw.get("shared_prefix") or {}
    if prefix:
        try:
            w.prefix_groups, w.prefix_len = int(prefix["groups"]), int(prefix["length"])
            w.prefix_share = float(prefix.get("share", 1.0))
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"workload {name}: shared_prefix needs groups, length and share") from None
        if w.prefix_groups < 1 or w.prefix_len < 1 or not 0 <= w.prefix_share <= 1:
            raise BadInput(f"workload {name}: shared_prefix needs groups >= 1, length >= 1, share in [0, 1]")
    arrival = raw.get("arrival") or {}
    if not isinstance(arrival, dict):
        raise BadInput(f"workload {name}: arrival must be a mapping such as {{rate: 4.0}} or {{offline: true}}")
    w.offline = bool(arrival.get("offline", False))
    if "rate" in arrival:
        rate = arrival["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise BadInput(f"workload {name}: arrival rate must be a number > 0 (requests/s), got {rate!r}")
        w.rate = float(rate)
    return w


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> float:
    raise BadInput(name)


def _read_trace(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"trace {path.name} is not UTF-8 text") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except ValueError:  # JSONDecodeError, or NaN/Infinity, which JSON does not allow
            raise BadInput(f"trace {path.name} line {number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise BadInput(f"trace {path.name} line {number}: expected a JSON object")
        has_len = _is_int(row.get("prompt_len")) and row["prompt_len"] > 0
        has_text = isinstance(row.get("prompt"), str) and row["prompt"]
        if not (has_len or has_text):
            raise BadInput(f"trace {path.name} line {number}: needs prompt_len (integer > 0) or prompt (text)")
        if not _is_int(row.get("output_len")) or row["output_len"] < 1:
            raise BadInput(f"trace {path.name} line {number}: needs output_len (integer > 0)")
        arrival = row.get("arrival_s")
        if arrival is not None and (isinstance(arrival, bool) or not isinstance(arrival, (int, float))
                                    or arrival < 0):
            raise BadInput(f"trace {path.name} line {number}: arrival_s must be a number >= 0")
        group = row.get("prefix_group")
        if group is not None and (not _is_int(group) or group < 0):
            raise BadInput(f"trace {path.name} line {number}: prefix_group must be an integer >= 0")
        rows.append(row)
    if not rows:
        raise BadInput(f"trace {path.name} has no requests")
    return rows


def _trace_requests(rows: list[dict], seed: int, vocab: int, tokenizer, limit: int | None) -> list[WorkloadRequest]:
    rng = random.Random(seed)
    prefixes: dict[int, list[int]] = {}
    out = []
    for row in rows[:limit] if limit else rows:
        if "prompt" in row and row.get("prompt_len") is None:
            if tokenizer is None:
                raise BadInput("a trace with prompt text needs a model directory with a tokenizer")
            prompt = list(tokenizer.encode(row["prompt"]))
        else:
            n = row["prompt_len"]
            group = row.get("prefix_group")
            prompt = []
            if group is not None:
                shared = prefixes.setdefault(group, [rng.randrange(vocab) for _ in range(4096)])
                prompt = shared[:max(0, n // 2)]
            prompt += [rng.randrange(vocab) for _ in range(n - len(prompt))]
        out.append(WorkloadRequest(tuple(prompt), row["output_len"], row.get("arrival_s"), row.get("prefix_group")))
    return out
