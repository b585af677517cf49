"""`python -m tunekv.engine.bench` (the README's `make demo`) through a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def demo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tunekv.engine.bench", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_demo_prints_real_throughput():
    done = demo("--model", "tiny-llama", "--requests", "6", "--prompt-len", "4-16", "--output-len", "2-8")
    assert done.returncode == 0, done.stderr
    assert "output throughput" in done.stdout and "tok/s" in done.stdout
    assert "peak running seqs            6" in done.stdout


def test_demo_bad_input_is_one_sentence():
    done = demo("--prompt-len", "16-4")
    assert done.returncode == 2 and "take a range lo-hi" in done.stderr and "Traceback" not in done.stderr
    done = demo("--model", "gpt-5")
    assert done.returncode == 2 and "unknown model 'gpt-5'" in done.stderr
