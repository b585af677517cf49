"""What the engine needs from whatever runs its steps.

Three executors serve it: ``ModelRunner`` (real forwards on one device), ``TensorParallelExecutor``
(rank 0 of a group of processes, each a ``ModelRunner`` over its slice) and ``SimulatedExecutor``
(no tensors: each step is charged its predicted cost on a virtual clock). The scheduler and the KV
cache manager are the same for all three."""

from __future__ import annotations

from typing import Any, Protocol

from tunekv.engine.clock import Clock
from tunekv.engine.scheduler import SchedulerOutput

__all__ = ["Executor"]


class Executor(Protocol):
    @property
    def clock(self) -> Clock: ...

    def determine_num_blocks(self) -> int:
        """How many KV blocks fit (a profiling run on a device; the configured budget otherwise)."""
        ...

    def initialize_cache(self, num_blocks: int) -> None: ...

    def execute_model(self, sched: SchedulerOutput) -> list[int | None]:
        """Run one scheduled step; the sampled token of each scheduled request (None: mid-prefill)."""
        ...

    def release(self, request_ids: list[str]) -> None:
        """Forget per-request state of requests that left the batch."""
        ...

    def device_description(self) -> dict[str, Any]:
        """What runs the steps, for result files: device type and name, dtype, and for a
        simulation what is simulated and with which cost model."""
        ...

    def shutdown(self) -> None:
        """Release processes or devices held (idempotent)."""
        ...
