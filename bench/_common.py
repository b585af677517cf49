"""Shared helpers for the benchmarks: atomic JSON results and a machine description."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write ``bench/results/<name>-<date>.json`` (or ``path``) atomically (temp file, then rename)."""
    path = path if path is not None else RESULTS / f"{name}-{date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
