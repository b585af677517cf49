"""How a search trial's row reads in the CLI's live table, the TUI and the summaries (no
imports: the TUI's first paint loads this)."""

from __future__ import annotations


def users(row: dict) -> str:
    cap = row.get("capacity")
    return "-" if cap is None else (f">={cap:g}" if row.get("capacity_capped") else f"{cap:g}")


def fidelity_label(row: dict) -> str:
    """A trial's fidelity as the tables show it: ``predicted`` for a config that needs more GPUs
    than this machine has (simulated, and no real run can confirm it here)."""
    return "predicted" if row.get("predicted_only") else row["fidelity"]


def throughput(row: dict) -> str:
    gpus = row.get("gpus") or 1
    total = f" ({row['engine_tok_s']:.0f} on {gpus} GPUs)" if gpus > 1 and row.get("engine_tok_s") else ""
    return f"{row['value']:.0f} tok/s per GPU{total}"


def beyond_line(row: dict, local_gpus: int) -> str:
    """The summary's line for a better config predicted for more GPUs than this machine has."""
    tp = row.get("gpus") or 1
    return (f"predicted, not measured: with {tp} GPUs, tensor_parallel_size={tp} (trial {row['number']}) would carry "
            f"{throughput(row)} at {users(row)} users; this machine has {local_gpus} GPU(s)")
