"""The settings of one search, as `tunekv search` takes them and the TUI fills them in.

A module of its own, with no heavy imports, so the TUI can build one on its UI thread."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_OUT = "tunekv-search"
ServerName = Literal["vllm", "sglang", "tgi", "tunekv"]
SERVERS: tuple[ServerName, ...] = ("vllm", "sglang", "tgi", "tunekv")   # what --server launches
STARTUP_TIMEOUT = "10m"   # how long a launched server may take to answer healthy, unless told
# The shortest budgets that produce a result: a real search calibrates (when the device has no
# step-cost model yet), simulates, and measures at least one config; a simulated one ranks a few.
MIN_BUDGET_S = {"real": 60.0, "simulate": 5.0}


@dataclass
class SearchOptions:
    """The settings of one search: `tunekv search`'s flags, or the TUI's fields."""

    budget: str = "30m"
    model: str | None = None
    workload: str = "chat"
    slo: str | None = None                         # None: defaults.default_slo for the device
    rate: float | None = None
    concurrency: int | None = None
    trace_speedup: float | None = None             # a fixed load: the trace's own arrival times, x times faster
    fix: list[str] = field(default_factory=list)
    range: list[str] = field(default_factory=list)
    storage: str | None = None
    study: str | None = None
    out: str = DEFAULT_OUT
    num_requests: int | None = None
    seed: int = 0
    dtype: str = "auto"
    quantization: str | None = None                # the weights' format (fp8, int8, awq, gptq): simulated or a server's
    simulate: bool = False
    gpu: str | None = None
    server: str | None = None                      # vllm, sglang, tgi or tunekv: launched per config
    server_cmd: str | None = None                  # a command template with {port} and {knob} placeholders
    health: str | None = None                      # the --server-cmd server's health path (default /health)
    endpoint: str | None = None                    # a running deployment: only the load varies
    served_model: str | None = None                # the deployment's model, when it serves several
    tokenizer: str | None = None                   # for servers that take text prompts
    startup_timeout: str | None = None             # a launched server's start-up limit (None: STARTUP_TIMEOUT)

    def fixed_load_flags(self) -> list[str]:
        """The flags given that fix the load instead of searching the capacity, in this order."""
        return [flag for flag, value in (("--rate", self.rate), ("--concurrency", self.concurrency),
                                         ("--trace-speedup", self.trace_speedup)) if value is not None]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SearchOptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
