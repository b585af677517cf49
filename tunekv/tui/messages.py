"""Typed messages that the search workers post to the UI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message


class SearchStarted(Message):
    def __init__(self, search: Any, prepared: Any) -> None:
        super().__init__()
        self.search, self.prepared = search, prepared


class SearchProgress(Message):
    """One ``tunekv.search.Event`` (start, stage, trial, note, end)."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


@dataclass
class SearchOutcome:
    reason: str
    interrupted: bool
    counts: dict[str, int]
    best: Any | None                   # tunekv.export.Best
    written: list[Path]
    closest: str | None
    beyond: str | None = None          # a better config predicted for more GPUs than this machine has


class SearchFinished(Message):
    def __init__(self, outcome: SearchOutcome) -> None:
        super().__init__()
        self.outcome = outcome


class SearchFailed(Message):
    """The search could not start (bad settings) or failed while running: one sentence."""

    def __init__(self, message: str, bad_input: bool) -> None:
        super().__init__()
        self.message, self.bad_input = message, bad_input


class Gauges(Message):
    """Live KV pool and device memory use during a real trial (None: nothing to show)."""

    def __init__(self, kv_used: int | None, kv_total: int | None, mem_used: int | None, mem_total: int | None) -> None:
        super().__init__()
        self.kv_used, self.kv_total, self.mem_used, self.mem_total = kv_used, kv_total, mem_used, mem_total
