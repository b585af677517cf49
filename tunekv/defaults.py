"""What tunekv uses when the user names nothing: the model, the warm-up, the requests a user sends.

Each default has this one home; the CLI's help, the TUI's fields and the search read it here."""

from __future__ import annotations

__all__ = ["CPU_MODEL", "CPU_SLO", "ENDPOINT_REQUEST_TIMEOUT_S", "FLEET_BUDGET", "FLEET_GPUS", "FLEET_OUT", "GPU_MODEL",
           "GPU_SLO", "REQUESTS_PER_USER_COMPARE",
           "REQUESTS_PER_USER_SEARCH", "default_model", "default_slo", "warmup_requests"]

GPU_MODEL = "qwen3-0.6b"
# One CPU default for every command. On a CPU tunekv demonstrates its method rather than tuning a
# deployment, and only the smallest preset lets a search under the default SLO (interactive: p99
# TTFT 500 ms) measure anything in a short budget: a 135M model's prefill alone takes seconds on
# two cores. Random weights measure speed as real ones do.
CPU_MODEL = "tiny-llama"

# The SLO a search targets when none is given. On a CPU, relaxed (p99 TTFT 2 s, ITL 100 ms): on a
# loaded 2-core machine tiny-llama's best config lands within a few percent of interactive's 500 ms
# TTFT, so a demonstration under it would pass or fail by the machine's other load.
GPU_SLO = "interactive"
CPU_SLO = "relaxed"

# `tunekv plan --target-load`: the GPU presets it compares, and where its searches' study and report go.
FLEET_GPUS = ("h100-80gb", "h200-141gb", "a100-80gb", "l40s-48gb")
FLEET_OUT = "tunekv-plan"
FLEET_BUDGET = "2m"        # `tunekv plan --target-load`: all the searches' wall clock

# Closed-loop requests per user. A search runs a capacity search per trial inside its budget, and
# compares configs under the same ramp and drain; the Compare screen shows absolute throughput per
# scheduler, where at 3 requests a user a run is mostly ramp and drain (2-4x low).
REQUESTS_PER_USER_SEARCH = 3
REQUESTS_PER_USER_COMPARE = 10

# A request to a server over HTTP (`tunekv bench --endpoint`) that has not ended after this long
# is a failed request: a stuck server must not hang the run.
ENDPOINT_REQUEST_TIMEOUT_S = 600.0


def warmup_requests(num_requests: int) -> int:
    """Requests run before the measured ones of an online run: a tenth, at most 20."""
    return min(num_requests // 10, 20)


def default_model(on_gpu: bool) -> str:
    """The model `tunekv bench`, `calibrate` and `search` run when none is given."""
    return GPU_MODEL if on_gpu else CPU_MODEL


def default_slo(on_gpu: bool) -> str:
    """The SLO profile `tunekv search` targets when none is given."""
    return GPU_SLO if on_gpu else CPU_SLO
