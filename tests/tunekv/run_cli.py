"""Run the `tunekv` command line in a subprocess, as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def tunekv(*args: str, cwd=None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tunekv", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)


def tree(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: path -> a hash of its content ('dir' for a folder)."""
    out = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            out[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def refused(*args: str, cwd: Path, message: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``tunekv *args`` in ``cwd`` with a fresh TUNEKV_HOME; the run must end within ``timeout``
    seconds with exit 2 and one line on stderr that contains ``message`` (no traceback), leaving
    every file under ``cwd`` and the home as it was."""
    home = cwd / ".tunekv-home"
    home.mkdir(exist_ok=True)
    before = tree(cwd)
    done = tunekv(*args, cwd=cwd, env={"TUNEKV_HOME": str(home)}, timeout=timeout)
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines[0]) <= 400, f"an overlong message ({len(lines[0])} characters)"
    assert tree(cwd) == before, "a refused command created or changed files"
    return done


def signalled_search(args: list[str], signum: int, timeout: float = 30) -> tuple[int, str, str, float]:
    """Start ``tunekv search *args`` (with --json-lines), send ``signum`` once its first trial
    event is out, and wait: (exit code, the rest of stdout, stderr, seconds from signal to exit)."""
    cmd = [sys.executable, "-m", "tunekv", "search", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "trial":
                break
        sent = time.monotonic()
        proc.send_signal(signum)
        rest, err = proc.communicate(timeout=timeout)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    return proc.returncode, rest, err, waited
