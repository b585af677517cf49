"""How long `tunekv` takes to refuse bad input (a typo in a flag): each command run as a user
runs it, against the cost of importing torch and transformers, which a refusal no longer pays.
Rounds alternate the commands, so a slow phase of the machine hits all of them.

Run: python bench/refusal_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_result  # noqa: E402

REFUSALS = {
    "bench --slo ttft_p99=fast": ["bench", "--slo", "ttft_p99=fast"],
    "bench --model llama-9b": ["bench", "--model", "llama-9b"],
    "bench --block-size 0": ["bench", "--model", "tiny-llama", "--block-size", "0"],
    "search --budget soon": ["search", "--budget", "soon"],
    "search --workload chatty": ["search", "--gpu", "h100-80gb", "--workload", "chatty"],
    "search --endpoint ftp://host": ["search", "--endpoint", "ftp://host"],
    "search --server-cmd '... {gpu}'": ["search", "--server-cmd", "serve --port {port} --gpu {gpu}"],
    "serve --port 70000": ["serve", "--port", "70000"],
    "plan --tp 3": ["plan", "--tp", "3"],
    "plan --target-load fast": ["plan", "--target-load", "fast"],
    "calibrate --device tpu": ["calibrate", "--device", "tpu"],
    "export --target-load (no report)": ["export", "--study", "s", "--format", "vllm", "--target-load", "4rps"],
}
REFERENCE = {"import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
             "tunekv --help": [sys.executable, "-m", "tunekv", "--help"]}


def timed(cmd: list[str], refusal: bool) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == (2 if refusal else 0), (cmd, done.returncode, done.stderr[-500:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    commands = {**{name: ([sys.executable, "-m", "tunekv", *argv], True) for name, argv in REFUSALS.items()},
                **{name: (cmd, False) for name, cmd in REFERENCE.items()}}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, (cmd, refusal) in commands.items():
            times[name].append(timed(cmd, refusal))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    heavy = medians["import torch, transformers"]
    print(f"median of {args.rounds} alternating rounds, each a fresh process (s); ratio to importing torch and "
          "transformers")
    for name, seconds in medians.items():
        print(f"  {name:34s} {seconds:6.2f} s  {seconds / heavy:5.2f}x")
    path = write_result("refusal-latency-cpu", {"machine": machine(), "args": vars(args), "seconds": times,
                                                "median_s": medians})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
