"""Typed messages that workers (NVML polling, planning, searches, comparisons) post to the UI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message


class HardwareUpdated(Message):
    """A fresh NVML reading (``tunekv.probe.ProbeResult``)."""

    def __init__(self, probe: Any) -> None:
        super().__init__()
        self.probe = probe


class GpuPresetChosen(Message):
    """The Hardware screen's preset picker (no local GPU): plan against this preset."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


class PlanReady(Message):
    """A plan for the inputs of ``generation`` (stale ones are dropped), or the field that is wrong."""

    def __init__(self, generation: int, plan: Any | None, error: str | None = None,
                 field: str | None = None) -> None:
        super().__init__()
        self.generation, self.plan, self.error, self.field = generation, plan, error, field


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


class ComparePointReady(Message):
    def __init__(self, point: Any) -> None:
        super().__init__()
        self.point = point


class CompareDone(Message):
    def __init__(self, error: str | None, stopped: bool) -> None:
        super().__init__()
        self.error, self.stopped = error, stopped


class BestLoaded(Message):
    """The best config of a study so far, for the Export screen (None: nothing feasible yet)."""

    def __init__(self, best: Any | None, study: Any) -> None:
        super().__init__()
        self.best, self.study = best, study
