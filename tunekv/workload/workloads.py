"""Workloads: request length distributions, shared prefixes and arrival patterns (presets, or a trace
read by ``traces``), turned into a deterministic request list for a seed."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunekv.engine.presets import preset_dir
from tunekv.errors import BadInput, shorten
from tunekv.fileio import read_text
from tunekv.workload.traces import MAX_REQUESTS, MAX_TOKENS, MOONCAKE_BLOCK_TOKENS, is_whole, read_trace

DISTS = ("fixed", "uniform", "lognormal", "empirical")
MAX_SIGMA = 10.0                # a lognormal's sigma (e^10 is already a factor of 22,000)
# ShareGPT as vLLM's benchmark draws it: 1,000 requests by default (--num-prompts), prompts up to
# 1,024 tokens and prompt + answer up to 2,048.
SHAREGPT_REQUESTS = 1000
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048


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
        """A length (``128``) or a mapping with ``dist``; BadInput naming the field when a length is
        not a whole number from 1 to MAX_TOKENS, a lognormal's median is not in (0, MAX_TOKENS] or
        its sigma not in [0, MAX_SIGMA]."""
        if is_whole(raw):
            return cls("fixed", value=_length(raw, where))
        if not isinstance(raw, dict) or raw.get("dist") not in DISTS:
            raise BadInput(f"{where} must be a positive integer or a mapping with dist: {', '.join(DISTS)}")
        d = raw["dist"]
        try:
            if d == "fixed":
                out = cls(d, value=_length(raw["value"], f"{where} value"))
            elif d == "uniform":
                out = cls(d, min=_length(raw["min"], f"{where} min"), max=_length(raw["max"], f"{where} max"))
            elif d == "lognormal":
                out = cls(d, median=_number(raw["median"], f"{where} median", "a number of tokens", MAX_TOKENS, False),
                          sigma=_number(raw["sigma"], f"{where} sigma", "a number", MAX_SIGMA, True),
                          min=_length(raw.get("min", 1), f"{where} min"), max=_length(raw["max"], f"{where} max"))
            else:
                values = raw["values"]
                if not isinstance(values, list) or not values:
                    raise BadInput(f"{where} values must be a non-empty list of lengths")
                out = cls(d, values=tuple(_length(v, f"{where} values") for v in values))
        except KeyError as exc:
            raise BadInput(f"{where}: the {d} distribution needs {exc}") from None
        if out.min > out.max:
            raise BadInput(f"{where}: the {d} distribution needs min <= max, got {out.min} > {out.max}")
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
    # A dataset (ShareGPT's): ``trace`` holds conversations, of which ``requests`` draws
    # ``num_requests`` (seeded, vLLM's length filter). Out of the repr as ``max_total`` is.
    dataset: bool = field(default=False, repr=False)

    @property
    def needs_tokenizer(self) -> bool:
        """Its lengths come from a tokenizer: a dataset, or a trace with text prompts."""
        return self.dataset or (self.trace is not None and any(row.get("prompt_len") is None for row in self.trace))

    @property
    def unclipped_longest(self) -> int:
        """Prompt + output tokens of the longest request the definition allows (before any clip)."""
        return self.prompt_len.upper + self.output_len.upper

    @property
    def shortest(self) -> int:
        """Prompt + output tokens of the shortest request a preset can send (a clip keeps this much)."""
        return self.prompt_len.lower + self.output_len.lower

    def count(self, num_requests: int | None = None) -> int:
        """How many requests ``requests(..., num_requests)`` returns, without building them."""
        if self.trace is not None and not self.dataset:   # a dataset is drawn from, again once it runs out
            return min(len(self.trace), num_requests) if num_requests else len(self.trace)
        return num_requests or self.num_requests

    def check_fits(self, max_len: int, whose: str, num_requests: int | None = None,
                   requests: list[WorkloadRequest] | None = None) -> None:
        """BadInput when a trace's longest request is longer than ``max_len`` tokens (``whose``
        names that limit). Before ``requests`` are built it reads the rows' prompt_len and
        output_len (no token is drawn for a trace that cannot run); with them it also counts the
        tokenised text prompts. A preset passes: ``fit_to`` clips it."""
        if self.trace is None:
            return
        if requests is None:
            rows = self.trace[:num_requests] if num_requests else self.trace
            longest = max((r["prompt_len"] + r["output_len"] for r in rows if r.get("prompt_len") is not None),
                          default=0)
        else:
            longest = self.longest_request(requests)
        if longest > max_len:
            raise BadInput(f"the trace's longest request ({longest} tokens) exceeds {whose} ({max_len})")

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
            raise BadInput(f"workload {shorten(self.name)}: its shortest request ({self.shortest} tokens) is longer "
                           f"than {max_len} tokens")
        return dataclasses.replace(self, max_total=max_len)

    def clip_note(self, whose: str) -> str | None:
        """One line on the clip, for the output (None when there is none)."""
        if self.max_total is None:
            return None
        return (f"workload {self.name}: requests clipped to {self.max_total} tokens ({whose}); the preset allows "
                f"{self.unclipped_longest}")

    def digest(self) -> str:
        """A short hash of the definition, clip included: what a search's study is tied to."""
        text = (repr(self) + ("" if self.max_total is None else f"|max_total={self.max_total}")
                + ("|dataset" if self.dataset else ""))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def requests(self, seed: int, vocab_size: int, tokenizer: Any = None,
                 num_requests: int | None = None) -> list[WorkloadRequest]:
        """The request list for ``seed``: same seed, same requests, token for token."""
        if self.dataset:
            assert self.trace is not None, "a dataset's conversations are its trace rows"
            count = self.count(num_requests)
            check_memory(count * SHAREGPT_MAX_PROMPT)
            return _sharegpt_requests(self.trace, seed, tokenizer, count)
        if self.trace is not None:
            rows = self.trace[:num_requests] if num_requests else self.trace
            check_memory(sum(row.get("prompt_len") or len(row.get("prompt", "")) for row in rows))
            return _trace_requests(self.trace, seed, vocab_size, tokenizer, num_requests)
        prefixes, draws = self._draws(seed, vocab_size, num_requests, with_prefixes=True)
        check_memory(sum(prompt_len for prompt_len, _, _, _ in draws))
        out = []
        for prompt_len, output_len, group, token_seed in draws:
            prompt: list[int] = [] if group is None else prefixes[group][:max(0, prompt_len - 1)]
            # A request's own tokens come from its own stream, so a clip changes no other request.
            tokens = random.Random(token_seed)
            prompt += [tokens.randrange(vocab_size) for _ in range(prompt_len - len(prompt))]
            out.append(WorkloadRequest(tuple(prompt), output_len, None, group))
        return out

    def lengths(self, seed: int, vocab_size: int, num_requests: int | None = None) -> list[tuple[int, int]]:
        """(prompt tokens, output tokens) of each request ``requests`` returns for the same
        arguments, without drawing their tokens (a trace's text prompts need the tokenizer)."""
        if self.trace is not None:
            rows = self.trace[:num_requests] if num_requests else self.trace
            if any(row.get("prompt_len") is None for row in rows):
                raise BadInput("a trace with prompt text needs a model directory with a tokenizer "
                               "(--model DIR; against a server, --tokenizer DIR)")
            return [(row["prompt_len"], row["output_len"]) for row in rows]
        _, draws = self._draws(seed, vocab_size, num_requests, with_prefixes=False)
        return [(prompt_len, output_len) for prompt_len, output_len, _, _ in draws]

    def _draws(self, seed: int, vocab_size: int, num_requests: int | None,
               with_prefixes: bool) -> tuple[list[list[int]], list[tuple[int, int, int | None, int]]]:
        """A preset's random choices for ``seed``: the shared prefixes (drawn either way, so the
        stream is the same; kept ``with_prefixes``) and per request (prompt length, output length,
        prefix group or None, seed of its own tokens)."""
        rng = random.Random(seed)
        prefixes = []
        for _ in range(self.prefix_groups):
            prefix = [rng.randrange(vocab_size) for _ in range(self.prefix_len)]
            if with_prefixes:
                prefixes.append(prefix)
        draws = []
        for _ in range(num_requests or self.num_requests):
            prompt_len = self.prompt_len.sample(rng)
            output_len = self.output_len.sample(rng)
            if self.max_total is not None and prompt_len + output_len > self.max_total:
                # The answer keeps at least the preset's shortest; the prompt gives up the rest.
                prompt_len = min(prompt_len, self.max_total - min(output_len, self.output_len.lower))
                output_len = min(output_len, self.max_total - prompt_len)
            group = None
            if self.prefix_groups and rng.random() < self.prefix_share:
                group = rng.randrange(self.prefix_groups)
            draws.append((prompt_len, output_len, group, rng.getrandbits(64)))
        return prefixes, draws


# What one prompt token costs in the request list: a tuple slot and, above 256, its own int.
BYTES_PER_TOKEN = 36


def check_memory(prompt_tokens: int) -> None:
    """BadInput when the request list would take more than half the memory available now: every
    length is bounded, but a million long requests together still are not (a text prompt is
    counted by its characters, at least its tokens)."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    needed = prompt_tokens * BYTES_PER_TOKEN
    if needed > available / 2:
        raise BadInput(f"the requests hold {prompt_tokens:,} prompt tokens, about {needed / 2**30:,.1f} GiB in memory, "
                       f"more than half of the {available / 2**30:,.1f} GiB available; send fewer or shorter requests")


def workload_names() -> list[str]:
    return sorted(p.stem for p in (preset_dir() / "workloads").glob("*.yaml"))


def load_workload(spec: str) -> Workload:
    """A preset name, a workload YAML file or a trace (.jsonl: tunekv's or Mooncake's; .csv: Azure's
    or BurstGPT's; .json: a ShareGPT dataset); ValueError with one sentence otherwise."""
    path = Path(spec).expanduser()
    if spec.endswith((".jsonl", ".csv", ".json")):
        trace = read_trace(path.name, read_text(spec, "trace file"))
        workload = Workload(name=path.stem, description=trace.describe(path.name), trace=trace.rows)
        return dataclasses.replace(workload, num_requests=SHAREGPT_REQUESTS, dataset=True) if trace.dataset \
            else workload
    if spec.endswith((".yaml", ".yml")):
        return _parse(path.stem, _yaml(path, spec))
    names = workload_names()
    if spec not in names:
        raise BadInput(f"unknown workload '{shorten(spec)}'; use a preset ({', '.join(names)}), a .yaml file or a "
                       "trace (.jsonl, .csv, .json)")
    return _parse(spec, _yaml(preset_dir() / "workloads" / f"{spec}.yaml", spec))


def mean_tokens(workload: Workload, vocab_size: int, max_len: int, model_path: str | Path | None = None) -> float:
    """Mean prompt + output tokens of a workload's requests (seed 0), clipped to ``max_len``; a
    trace of text or a dataset counts with the tokenizer of ``model_path``."""
    if workload.needs_tokenizer:
        from tunekv.workload.tokenizer import load_tokenizer

        requests = workload.requests(0, vocab_size, load_tokenizer(model_path))
        return statistics.fmean(len(r.prompt_token_ids) + r.output_len for r in requests)
    lengths = workload.fit_to(max_len).lengths(0, vocab_size)
    return statistics.fmean(prompt + output for prompt, output in lengths)


def _yaml(path: Path, spec: str) -> dict:
    """The mapping in a workload YAML (``spec``: the file as the user named it)."""
    text = read_text(path, "workload file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"workload file {shorten(spec)} is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"workload file {shorten(spec)} must hold a mapping")
    return raw


_KEYS = {"description", "num_requests", "prompt_len", "output_len", "shared_prefix", "arrival"}


def _parse(name: str, raw: dict) -> Workload:
    where = f"workload {shorten(name)}"
    unknown = {str(key) for key in raw} - _KEYS
    if unknown:
        raise BadInput(f"{where}: unknown key '{shorten(sorted(unknown)[0])}' "
                       f"(known: {', '.join(sorted(_KEYS))})")
    n = raw.get("num_requests", 100)
    if not is_whole(n) or not 1 <= n <= MAX_REQUESTS:
        raise BadInput(f"{where}: num_requests must be an integer from 1 to {MAX_REQUESTS}, "
                       f"got {shorten(repr(n))}")
    w = Workload(name=name, description=str(raw.get("description", "")), num_requests=n,
                 prompt_len=LengthDist.parse(raw.get("prompt_len", 128), f"{where}: prompt_len"),
                 output_len=LengthDist.parse(raw.get("output_len", 128), f"{where}: output_len"))
    prefix = raw.get("shared_prefix") or {}
    if prefix:
        if not isinstance(prefix, dict) or "groups" not in prefix or "length" not in prefix:
            raise BadInput(f"{where}: shared_prefix needs groups, length and share")
        w.prefix_groups = _length(prefix["groups"], f"{where}: shared_prefix groups", "a whole number")
        w.prefix_len = _length(prefix["length"], f"{where}: shared_prefix length")
        if w.prefix_groups * w.prefix_len > MAX_TOKENS:
            raise BadInput(f"{where}: shared_prefix holds groups x length tokens, at most {MAX_TOKENS}; "
                           f"got {w.prefix_groups} x {w.prefix_len}")
        w.prefix_share = _number(prefix.get("share", 1.0), f"{where}: shared_prefix share", "a number", 1.0,
                                 True)
    arrival = raw.get("arrival") or {}
    if not isinstance(arrival, dict):
        raise BadInput(f"{where}: arrival must be a mapping such as {{rate: 4.0}} or {{offline: true}}")
    w.offline = bool(arrival.get("offline", False))
    if "rate" in arrival:
        rate = arrival["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise BadInput(f"{where}: arrival rate must be a number > 0 (requests/s), "
                           f"got {shorten(repr(rate))}")
        w.rate = float(rate)
    return w


def _length(raw: object, where: str, what: str = "a whole number of tokens") -> int:
    """A token count (or another count, ``what``) from a workload file: a whole number from 1 to
    MAX_TOKENS (``128``, ``128.0`` or YAML's text ``"128"``)."""
    value: object = raw
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str):
        try:
            value = int(raw)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise BadInput(f"{where} must be {what} from 1 to {MAX_TOKENS}, got {shorten(repr(raw))}")
    return value


def _number(raw: object, where: str, what: str, high: float, zero_ok: bool) -> float:
    """A finite number up to ``high``, above zero (or from zero when ``zero_ok``); YAML's text
    ``"1e3"`` (PyYAML reads a float without a dot as text) counts as the number."""
    value: object = raw
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (0 <= value if zero_ok else 0 < value) or value > high:
        span = f"from 0 to {high:g}" if zero_ok else f"above 0 and at most {high:g}"
        raise BadInput(f"{where} must be {what} {span}, got {shorten(repr(raw))}")
    return float(value)


def _sharegpt_requests(rows: list[dict], seed: int, tokenizer: Any, count: int) -> list[WorkloadRequest]:
    """``count`` requests drawn as `vllm bench serve --dataset-name sharegpt` draws them: the
    conversations in an order shuffled by ``seed``, each a prompt (the first turn's tokens) and an
    output length (the second turn's), skipping those shorter than 4 tokens on either side, or with
    a prompt over 1,024 tokens or more than 2,048 in all; when fewer than ``count`` are kept, the
    rest drawn from them again with replacement (``random.seed(seed)``, ``random.choices``), as its
    ``maybe_oversample_requests`` does."""
    if tokenizer is None:
        raise BadInput("a ShareGPT dataset needs the model's tokenizer: a model directory with one, or --tokenizer")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out: list[WorkloadRequest] = []
    for i in order:
        prompt = list(tokenizer.encode(rows[i]["prompt"]))
        output_len = len(tokenizer.encode(rows[i]["completion"]))
        if len(prompt) < 4 or output_len < 4 or len(prompt) > SHAREGPT_MAX_PROMPT \
                or len(prompt) + output_len > SHAREGPT_MAX_TOTAL:
            continue
        out.append(WorkloadRequest(tuple(prompt), output_len))
        if len(out) == count:
            break
    if not out:
        raise BadInput("no conversation of the ShareGPT dataset has a prompt and an answer of 4 to 1,024 tokens "
                       "(2,048 together), the lengths vLLM's benchmark keeps")
    return out + random.Random(seed).choices(out, k=count - len(out))


def _trace_requests(rows: list[dict], seed: int, vocab: int, tokenizer, limit: int | None) -> list[WorkloadRequest]:
    """A trace's requests for ``seed``. A prefix group shares its first half; Mooncake's hash ids
    each stand for one block of MOONCAKE_BLOCK_TOKENS tokens, the same block wherever the id is."""
    rng = random.Random(seed)
    prefixes: dict[int, list[int]] = {}
    blocks: dict[int, list[int]] = {}
    out = []
    for row in rows[:limit] if limit else rows:
        if "prompt" in row and row.get("prompt_len") is None:
            if tokenizer is None:
                raise BadInput("a trace with prompt text needs a model directory with a tokenizer "
                               "(--model DIR; against a server, --tokenizer DIR)")
            prompt = list(tokenizer.encode(row["prompt"]))
        elif row.get("hash_ids"):
            n = row["prompt_len"]
            prompt = []
            for block in row["hash_ids"][:math.ceil(n / MOONCAKE_BLOCK_TOKENS)]:
                if block not in blocks:
                    blocks[block] = [rng.randrange(vocab) for _ in range(MOONCAKE_BLOCK_TOKENS)]
                prompt += blocks[block]
            prompt = prompt[:n] + [rng.randrange(vocab) for _ in range(n - len(prompt))]
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
