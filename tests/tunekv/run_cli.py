"""Run the `tunekv` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def tunekv(*args: str, cwd=None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tunekv", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)
