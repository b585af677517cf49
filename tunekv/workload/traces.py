"""Request traces, read as they are published, into one row form.

- tunekv's JSONL: ``{"prompt_len" | "prompt", "output_len", "arrival_s"?, "prefix_group"?, "hash_ids"?}``
  a line (``hash_ids`` as Mooncake's).
- Mooncake's JSONL (Kimi, FAST '25; also AIPerf's and Dynamo's trace format):
  ``{"timestamp" (ms), "input_length", "output_length", "hash_ids"?}``. Requests that share a hash id
  at a position share that 512-token block of their prompt, and so a prefix: a prefix cache meets the
  reuse the trace recorded.
- Azure's LLM inference traces (2023 Splitwise, 2024 DynamoLLM) as CSV:
  ``TIMESTAMP,ContextTokens,GeneratedTokens``.
- BurstGPT's CSV: ``Timestamp`` (s), ``Request tokens``, ``Response tokens`` (other columns ignored).
- ShareGPT's JSON (``vllm bench serve --dataset-name sharegpt``): a list of ``{"conversations":
  [{"from", "value"}, ...]}``. Not requests but conversations to draw them from: a row is
  ``{"prompt", "completion"}`` (the first two turns), which the model's tokenizer turns into a prompt
  and an output length (``workloads``).

A request row becomes ``{"prompt_len" | "prompt", "output_len", "arrival_s"?, "prefix_group"?,
"hash_ids"?}``, arrivals in seconds from the trace's first. A published trace's requests that
produced no output (BurstGPT's failures) or had no prompt are left out and counted, as are ShareGPT's
conversations of fewer than two turns; in tunekv's own JSONL they are errors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, TypeGuard

from tunekv.errors import BadInput, shorten

# Generous bounds, checked where a trace is read: past them a run would exhaust memory or never end.
MAX_TOKENS = 1 << 24            # tokens in one prompt, answer or shared prefix
MAX_REQUESTS = 1_000_000        # requests in one run
MAX_ARRIVAL_S = 24 * 3600       # seconds over which a run's requests arrive
MOONCAKE_BLOCK_TOKENS = 512     # the tokens one Mooncake hash id stands for

TraceFormat = Literal["tunekv", "mooncake", "azure", "burstgpt", "sharegpt"]
# tunekv's own is "trace": a workload's description is part of a search's digest, and it was so named.
FORMAT_NAMES: dict[TraceFormat, str] = {"tunekv": "trace", "mooncake": "Mooncake trace",
                                        "azure": "Azure LLM inference trace", "burstgpt": "BurstGPT trace",
                                        "sharegpt": "ShareGPT dataset"}
CSV_COLUMNS: dict[TraceFormat, tuple[str, str, str]] = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
}
# A TIMESTAMP as Azure writes it: "2023-11-16 18:15:46.6805900", "2024-05-10 00:00:00.009930+00:00".
AZURE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                        r"(Z|[+-]\d{2}:?\d{2})?")


@dataclass(frozen=True)
class Trace:
    """A trace's rows in tunekv's form, which format they were read from, and how many of the
    file's requests were left out (no output tokens, or no prompt)."""

    rows: list[dict]
    format: TraceFormat
    left_out: int = 0

    @property
    def dataset(self) -> bool:
        """Rows to draw requests from (ShareGPT's conversations), not requests to send in order."""
        return self.format == "sharegpt"

    def describe(self, file_name: str) -> str:
        out = f"{FORMAT_NAMES[self.format]} {file_name}"
        if self.left_out and self.dataset:
            out += (f"; {self.left_out:,} of its {len(self.rows) + self.left_out:,} entries are not conversations "
                    "of two turns or more")
        elif self.left_out:
            out += (f"; {self.left_out:,} of its {len(self.rows) + self.left_out:,} requests left out "
                    "(no output tokens or no prompt: requests that failed)")
        return out


def is_whole(value: object) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_trace(file_name: str, text: str) -> Trace:
    """The rows of a trace file: CSV (Azure, BurstGPT) when ``file_name`` ends in .csv, ShareGPT's
    JSON when in .json, else JSONL (tunekv's or Mooncake's, told by the first row). BadInput names
    the file, the line and the field."""
    if file_name.endswith(".csv"):
        trace = _read_csv(file_name, text)
    elif file_name.endswith(".json"):
        trace = _read_sharegpt(file_name, text)
    else:
        trace = _read_jsonl(file_name, text)
    if not trace.rows:
        raise BadInput(f"trace {shorten(file_name)} has no requests")
    return trace


def _too_many(name: str) -> BadInput:
    return BadInput(f"trace {name} has more than {MAX_REQUESTS:,} requests; replay a part of it (head -n "
                    f"{MAX_REQUESTS // 10 + 1} keeps a CSV's header and its first {MAX_REQUESTS // 10:,} requests)")


def _check_span(name: str, arrivals: list[float]) -> None:
    """BadInput when the arrivals (seconds from the first, in file order) span more than
    MAX_ARRIVAL_S, saying how many of the first requests arrive within it."""
    if max(arrivals, default=0.0) <= MAX_ARRIVAL_S:
        return
    within = next(i for i, t in enumerate(arrivals) if t > MAX_ARRIVAL_S)
    raise BadInput(f"trace {name}: its requests arrive over {max(arrivals) / 3600:,.1f} hours, more than 24; replay "
                   f"a part of it (its first {within:,} requests arrive within 24 hours)")


def _read_jsonl(file_name: str, text: str) -> Trace:
    name = shorten(file_name)
    rows: list[dict] = []
    form: TraceFormat | None = None
    left_out = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"trace {name} line {number}"
        if len(rows) == MAX_REQUESTS:
            raise _too_many(name)
        try:
            row = json.loads(line, parse_constant=_reject_constant, parse_float=_finite)
        except _NotFinite as exc:
            raise BadInput(f"{where}: {shorten(str(exc))} is not a finite number") from None
        except (ValueError, RecursionError):  # JSONDecodeError, NaN/Infinity (not JSON), nesting too deep
            raise BadInput(f"{where}: not valid JSON") from None
        if not isinstance(row, dict):
            raise BadInput(f"{where}: expected a JSON object")
        form = form or ("mooncake" if "input_length" in row else "tunekv")
        if form == "mooncake":
            converted = _mooncake_row(row, where)
            if converted is None:
                left_out += 1
            else:
                rows.append(converted)
        else:
            rows.append(_tunekv_row(row, where))
    if form == "mooncake":   # its times count from its first request, as a CSV trace's
        first = min((row["arrival_s"] for row in rows if "arrival_s" in row), default=0.0)
        for row in rows:
            if "arrival_s" in row:
                row["arrival_s"] -= first
        _check_span(name, [row.get("arrival_s", 0.0) for row in rows])
    return Trace(rows, form or "tunekv", left_out)


def _tunekv_row(row: dict, where: str) -> dict:
    prompt_len, prompt = row.get("prompt_len"), row.get("prompt")
    if prompt_len is not None:
        if not is_whole(prompt_len) or not 1 <= prompt_len <= MAX_TOKENS:
            raise BadInput(f"{where}: prompt_len must be an integer from 1 to {MAX_TOKENS}, "
                           f"got {shorten(repr(prompt_len))}")
    elif not (isinstance(prompt, str) and prompt):
        raise BadInput(f"{where}: needs prompt_len (integer > 0) or prompt (text)")
    elif len(prompt) > MAX_TOKENS:
        raise BadInput(f"{where}: prompt must be at most {MAX_TOKENS} characters, got {len(prompt)}")
    output_len = row.get("output_len")
    if not is_whole(output_len) or not 1 <= output_len <= MAX_TOKENS:
        raise BadInput(f"{where}: needs output_len (an integer from 1 to {MAX_TOKENS}), "
                       f"got {shorten(repr(output_len))}")
    arrival = row.get("arrival_s")
    if arrival is not None and (isinstance(arrival, bool) or not isinstance(arrival, (int, float))
                                or not 0 <= arrival <= MAX_ARRIVAL_S):
        raise BadInput(f"{where}: arrival_s must be a number of seconds from 0 to {MAX_ARRIVAL_S} (24 hours), "
                       f"got {shorten(repr(arrival))}")
    group = row.get("prefix_group")
    if group is not None and (not is_whole(group) or group < 0):
        raise BadInput(f"{where}: prefix_group must be an integer >= 0")
    _check_hash_ids(row.get("hash_ids", []), where)
    return row


def _check_hash_ids(hash_ids: object, where: str) -> None:
    if not isinstance(hash_ids, list) or not all(is_whole(h) and h >= 0 for h in hash_ids):
        raise BadInput(f"{where}: hash_ids must be a list of integers >= 0")


def _mooncake_row(row: dict, where: str) -> dict | None:
    """A Mooncake row in tunekv's form, or None for a request with no prompt or no output."""
    lengths = []
    for key in ("input_length", "output_length"):
        value = row.get(key)
        if not is_whole(value) or not 0 <= value <= MAX_TOKENS:
            raise BadInput(f"{where}: {key} must be an integer from 0 to {MAX_TOKENS}, got {shorten(repr(value))}")
        lengths.append(value)
    stamp = row.get("timestamp")
    if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or stamp < 0):
        raise BadInput(f"{where}: timestamp must be a number of milliseconds >= 0, got {shorten(repr(stamp))}")
    hash_ids = row.get("hash_ids", [])
    _check_hash_ids(hash_ids, where)
    if not all(lengths):
        return None
    out: dict = {"prompt_len": lengths[0], "output_len": lengths[1], "hash_ids": hash_ids}
    if stamp is not None:
        out["arrival_s"] = stamp / 1000
    return out


def _read_sharegpt(file_name: str, text: str) -> Trace:
    name = shorten(file_name)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadInput(f"{name} is not valid JSON") from None
    if not isinstance(data, list):
        raise BadInput(f"{name}: a ShareGPT dataset is a JSON list of conversations; this holds a "
                       f"{type(data).__name__}")
    if len(data) > MAX_REQUESTS:
        raise BadInput(f"{name} has more than {MAX_REQUESTS:,} conversations")
    rows: list[dict] = []
    left_out = 0
    for number, entry in enumerate(data):
        # As vLLM's benchmark: a conversation of fewer than two turns is dropped before the shuffle
        # (the seed then orders the same list); the rest, empty turns too, meet its length filter.
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            left_out += 1
            continue
        if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
            raise BadInput(f"{name} conversation {number}: its first two turns need \"value\": text")
        if len(turns[0]["value"]) > MAX_TOKENS:
            raise BadInput(f"{name} conversation {number}: its first turn is longer than {MAX_TOKENS} characters")
        rows.append({"prompt": turns[0]["value"], "completion": turns[1]["value"]})
    if data and not rows:
        raise BadInput(f"{name}: no entry is a conversation of two turns or more "
                       "({\"conversations\": [{\"from\", \"value\"}, ...]}, as ShareGPT's)")
    return Trace(rows, "sharegpt", left_out)


def _read_csv(file_name: str, text: str) -> Trace:
    name = shorten(file_name)
    # newline="": a line may end in \r\n, \n or a lone \r (an old spreadsheet's export)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(name, reader)
    except csv.Error as exc:   # a field past the csv module's limit, a stray quote or NUL
        raise BadInput(f"trace {name} line {reader.line_num}: not a CSV row ({exc})") from None


def _csv_rows(name: str, reader: Iterator[list[str]]) -> Trace:
    header = [column.strip() for column in next(reader, [])]
    form = next((f for f, columns in CSV_COLUMNS.items() if set(columns) <= set(header)), None)
    if form is None:
        expected = " or ".join(f"{FORMAT_NAMES[f]}'s ({', '.join(c)})" for f, c in CSV_COLUMNS.items())
        raise BadInput(f"trace {name}: a CSV trace needs the columns of the {expected}; its header is "
                       f"{shorten(','.join(header))!r}")
    at = [header.index(column) for column in CSV_COLUMNS[form]]
    rows: list[dict] = []
    stamps: list[tuple[int, float]] = []   # (whole seconds, fraction): an epoch time as a float keeps ~0.2 us
    left_out = 0
    for number, fields in enumerate(reader, start=2):
        if not fields or not "".join(fields).strip():
            continue
        where = f"trace {name} line {number}"
        if len(rows) == MAX_REQUESTS:
            raise _too_many(name)
        if len(fields) != len(header):
            raise BadInput(f"{where}: has {len(fields)} fields, its header {len(header)}")
        stamp, prompt, output = (fields[i].strip() for i in at)
        lengths = [_count(value, column, where) for value, column in zip((prompt, output), CSV_COLUMNS[form][1:])]
        seconds = _azure_time(stamp, where) if form == "azure" else (0, _seconds(stamp, where))
        if not all(lengths):
            left_out += 1
            continue
        rows.append({"prompt_len": lengths[0], "output_len": lengths[1]})
        stamps.append(seconds)
    first = min(stamps, default=(0, 0.0))
    for row, (whole, fraction) in zip(rows, stamps):
        row["arrival_s"] = (whole - first[0]) + (fraction - first[1])
    _check_span(name, [row["arrival_s"] for row in rows])
    return Trace(rows, form, left_out)


def _float(value: str) -> float:
    """A CSV field as a number; NaN when it is none."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _count(value: str, column: str, where: str) -> int:
    """A token count from a CSV field: a whole number from 0 to MAX_TOKENS (``12`` or ``12.0``)."""
    number = _float(value)
    if not (math.isfinite(number) and number.is_integer() and 0 <= number <= MAX_TOKENS):
        raise BadInput(f"{where}: {column} must be a whole number of tokens from 0 to {MAX_TOKENS}, "
                       f"got {shorten(repr(value))}")
    return int(number)


def _seconds(value: str, where: str) -> float:
    seconds = _float(value)
    if not math.isfinite(seconds):
        raise BadInput(f"{where}: Timestamp must be a number of seconds, got {shorten(repr(value))}")
    return seconds


def _azure_time(value: str, where: str) -> tuple[int, float]:
    """Whole seconds since the epoch and the fraction of an Azure TIMESTAMP (no zone: UTC). Digits
    past the microsecond are kept: Azure writes seven."""
    match = AZURE_TIME.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        fraction, zone = match.group(7), match.group(8)
        offset = timedelta(0)
        if zone and zone != "Z":
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            offset = -offset if zone[0] == "-" else offset
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        raise BadInput(f"{where}: TIMESTAMP must be a date and time like 2023-11-16 18:15:46.6805900, "
                       f"got {shorten(repr(value))}") from None
    return int(moment.timestamp()), float(f"0.{fraction}") if fraction else 0.0


def _reject_constant(name: str) -> float:
    raise BadInput(name)


class _NotFinite(ValueError):
    """A JSON number too large for a float (``1e400``), which Python's json reads as infinity."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value
