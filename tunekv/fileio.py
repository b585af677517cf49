"""Files the user keeps (results, exports, calibrations, reports): written whole or not at all."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import yaml

from tunekv.errors import BadInput, shorten

__all__ = ["check_output_path", "json_safe", "read_config", "read_text", "write_atomic", "write_json"]


def check_output_path(path: str | Path) -> Path:
    """Fail before a run, not after it: the result file must be creatable."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"--json {path} is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadInput(f"--json {path}: cannot create files under {parent}")
    return path


def json_safe(value: object) -> object:
    """NaN and infinities (empty series) become null: the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict) -> None:
    """Atomic and durable JSON (NaN becomes null)."""
    write_atomic(path, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """A temp file in the same folder, fsync, then rename: a crash never leaves half a file.
    The file gets the usual umask-based permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(path: str) -> dict:
    """A tunekv config YAML: a flat mapping of EngineConfig fields (+ optional tuned_for)."""
    text = read_text(path, "config file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BadInput(f"config file {shorten(path)} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise BadInput(f"config file {shorten(path)} must be a mapping of engine settings")
    return raw


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user named (``what``: "config file", "trace", ...); BadInput,
    naming the file, when it is missing, a directory, unreadable or not UTF-8 text."""
    name = shorten(str(path))
    file = Path(path).expanduser()
    try:
        if file.is_dir():
            raise BadInput(f"{what} {name} is a directory, not a file")
        if not file.is_file():
            raise BadInput(f"{what} {name} does not exist")
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{what} {name} is not UTF-8 text") from None
    except OSError as exc:
        raise BadInput(f"{what} {name} cannot be read ({exc.strerror or type(exc).__name__})") from None
