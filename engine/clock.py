"""Time sources for the engine: the wall clock for real runs, a virtual clock for simulations.

Both executors and the load generator read time only through a clock, so a simulated run makes
the same scheduling decisions at the same (virtual) moments as a real one would."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on the engine's time line."""

    simulated: bool

    def now(self) -> float: ...

    def wait_until(self, t: float) -> None: ...


class WallClock:
    """``time.perf_counter`` seconds."""

    simulated = False

    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, t: float) -> None:
        """Sleep towards ``t``, at most 10 ms at a time so callers can keep checking deadlines."""
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(min(delay, 0.01))


class VirtualClock:
    """Simulated seconds: time moves only when the simulated executor charges a step's cost."""

    simulated = True

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"time cannot run backwards ({seconds} s)"
        self.t += seconds

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)
