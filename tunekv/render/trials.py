"""How a search trial's row reads in the CLI's live table, the TUI and the summaries (light: the
TUI's first paint loads this, and ``tunekv.search.records`` imports neither optuna nor torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tunekv.search.records import RANK
from tunekv.units import LOAD_TITLES, CapacityUnit, load_cell, load_words

if TYPE_CHECKING:
    from tunekv.search.records import TrialRow

TrialTable = Literal["cli", "tui"]


def capacity_cell(row: TrialRow) -> str:
    """A trial's capacity (or fixed load) in a table's column: ``16``, ``>=16``, ``2.5x``."""
    return "-" if row.capacity is None else load_cell(row.capacity_unit, row.capacity, bool(row.capacity_capped))


def capacity_words(row: TrialRow) -> str:
    """Where a trial's throughput was measured, in words: ``at 16 users``, ``at 2.5x the trace's
    pace or more`` (every probe held: the capacity is at least that)."""
    if row.capacity is None:
        return "with no load"
    more = " or more" if row.capacity_capped else ""
    return f"at {load_words(row.capacity_unit, row.capacity)}{more}"


def fidelity_label(row: TrialRow) -> str:
    """A trial's fidelity as the tables show it: ``predicted`` for a config that needs more GPUs
    than this machine has (simulated, and no real run can confirm it here)."""
    return "predicted" if row.predicted_only else row.fidelity


def throughput(row: TrialRow, on_gpu: bool = True) -> str:
    """A trial's objective in words: output tok/s per GPU (``on_gpu`` False, a CPU's: tok/s)."""
    gpus = row.gpus
    total = f" ({row.engine_tok_s:.0f} on {gpus} GPUs)" if gpus > 1 and row.engine_tok_s else ""
    return f"{row.value:.0f} tok/s{' per GPU' if on_gpu else ''}{total}"


def beyond_line(row: TrialRow, local_gpus: int) -> str:
    """The summary's line for a better config predicted for more GPUs than this machine has."""
    tp = row.gpus
    return (f"predicted, not measured: with {tp} GPUs, tensor_parallel_size={tp} (trial {row.number}) would carry "
            f"{throughput(row)} {capacity_words(row)}; this machine has {local_gpus} GPU(s)")


def rank(row: TrialRow) -> tuple[int, float]:
    """Orders rows by result: the higher fidelity first, then the higher throughput (the best so far)."""
    return (RANK[row.fidelity], row.value or 0.0)


def _ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0f}"


def trial_cells(row: TrialRow, table: TrialTable, memory_knob: bool = True) -> tuple[str, ...]:
    """A trial's cells. The CLI's: number, fidelity, the knobs, throughput, capacity, p99s and the
    verdict (the ``kv`` cell is the KV policy, with ``fp8`` after it for an fp8 cache). The TUI's
    table puts the result right after the fidelity (``TUI_COLUMNS``), so a narrow terminal
    still shows it, and is narrower (``contig``, thousands separators) and says why a trial failed.
    ``memory_knob``: gpu_memory_utilization means something (a GPU, real or a preset); on a CPU it shows ``-``."""
    p = row.point or {}
    value, kv = row.value, str(p.get("kv_policy", ""))
    if table == "tui":
        kv = {"contiguous": "contig"}.get(kv, kv)
        tok_s = "-" if value is None or row.state != "complete" else f"{value:,.0f}"
        verdict = "met" if row.feasible else (row.worst or row.reason or row.state)
    else:
        tok_s = "-" if value is None else f"{value:.0f}"
        verdict = "yes" if row.feasible else (row.worst or row.state)
    if p.get("kv_cache_dtype", "auto") != "auto":   # one column for how the KV cache is kept: "paged fp8"
        kv = f"{kv} {p['kv_cache_dtype']}"
    knob_names = ("tensor_parallel_size", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens")
    # A running deployment's trial has no knobs (nothing was set): its cells say so, not "off".
    mem = p.get("gpu_memory_utilization")
    knobs = (*(str(p.get(k, "-")) for k in knob_names),
             f"{mem:.2f}" if memory_knob and mem is not None else "-",
             *("-" if k not in p else "on" if p[k] else "off" for k in ("enable_chunked_prefill",
                                                                         "enable_prefix_caching")), kv or "-")
    result = (tok_s, capacity_cell(row), _ms(row.ttft_p99_ms), _ms(row.itl_p99_ms), verdict)
    if table == "tui":
        return (str(row.number), fidelity_label(row), *result, *knobs)
    return (str(row.number), fidelity_label(row), *knobs, *result)


TUI_COLUMNS = ("#", "fidelity", "tok/s/GPU", "users", "TTFT p99", "ITL p99", "SLO", "tp", "block", "max len", "seqs",
               "batch", "mem", "chunk", "prefix", "kv")
CLI_COLUMNS = ("#", "fidelity", "tp", "block", "max len", "seqs", "batch", "mem", "chunk", "prefix", "kv",
               "tok/s/GPU", "users", "p99 TTFT ms", "p99 ITL ms", "ok")
# The CLI's knob columns a narrow terminal leaves out, first to last; the results always show.
CLI_HIDDEN_FIRST = ("prefix", "chunk", "mem", "max len", "batch", "block", "seqs", "tp", "kv")


def table_columns(table: TrialTable, unit: CapacityUnit = "users") -> tuple[str, ...]:
    """The column titles of a trial table whose capacity column counts ``unit``."""
    columns = TUI_COLUMNS if table == "tui" else CLI_COLUMNS
    return tuple(LOAD_TITLES[unit] if c == "users" else c for c in columns)
