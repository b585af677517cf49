"""Files the user keeps (results, exports, calibrations, reports): written whole or not at all."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path

import yaml

from tunekv.errors import BadInput, shorten

PATH_SHOWN = 160   # characters of a path a message echoes

__all__ = ["check_output_path", "json_safe", "read_config", "read_text", "write_atomic", "write_json"]


def check_output_path(path: str | Path, flag: str = "--json", directory: bool = False) -> Path:
    """Fail before a run, not after it: ``path`` (a file, or with ``directory`` a folder) must be
    creatable. The nearest folder that exists is probed by creating and removing a temporary file
    in it: os.access says yes to root where nothing can be written (/proc, a read-only mount)."""
    path = Path(path).expanduser()
    shown = shorten(str(path), PATH_SHOWN)
    try:
        if path.is_dir() and not directory:
            raise BadInput(f"{flag} {shown} is a directory; give a file name")
        if directory and path.exists() and not path.is_dir():
            raise BadInput(f"{flag} {shown} is a file, not a directory")
        folder = path if directory else path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise BadInput(f"{flag} {shown}: {shorten(str(folder), PATH_SHOWN)} is a file, not a directory")
    except OSError as exc:  # a name too long for the system, a folder that cannot be read
        raise BadInput(f"{flag} {shown}: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tunekv-probe-", suffix=".tmp")
    except OSError as exc:
        raise BadInput(f"{flag} {shown}: cannot create files in {shorten(str(folder), PATH_SHOWN)} "
                       f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
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
    The file gets the usual umask-based permissions. A symlink keeps pointing where it did (its
    target is replaced); a device, pipe or terminal is written to as it is. An OSError names ``path`` (its
    ``filename``), not the temporary file or a folder on the way."""
    path = Path(path)
    try:
        _write_whole(path, data)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # the same subclass (FileNotFoundError, ...)


def _write_whole(path: Path, data: str | bytes) -> None:
    # What the name already is stays what it is: a link gets its target replaced (not itself); a
    # device, a pipe or a terminal (/dev/null, /dev/stdout, a FIFO) is written to, never renamed over.
    if path.exists() and not path.is_file():
        if not path.is_dir():
            with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            return
    elif path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder on the way should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
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


STREAM_LIMIT_BYTES = 64 << 20   # what is read from a pipe or device (``<(command)``, /dev/stdin) at most


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text (a byte-order mark dropped) of a file the user named (``what``: "config
    file", "trace", ...), or of a pipe such as ``<(command)``; BadInput, naming the file, when it is
    missing, a directory, unreadable, not UTF-8 text, or a stream past STREAM_LIMIT_BYTES."""
    name = shorten(str(path))
    file = Path(path).expanduser()
    try:
        if file.is_dir():
            raise BadInput(f"{what} {name} is a directory, not a file")
        if not file.exists():
            raise BadInput(f"{what} {name} does not exist")
        if file.is_file():
            data = file.read_bytes()
        else:
            with file.open("rb") as stream:
                data = stream.read(STREAM_LIMIT_BYTES + 1)
            if len(data) > STREAM_LIMIT_BYTES:
                raise BadInput(f"{what} {name} is not a file and gives more than {STREAM_LIMIT_BYTES >> 20} MiB; "
                               "write it to a file")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{what} {name} is not UTF-8 text") from None
    except OSError as exc:
        raise BadInput(f"{what} {name} cannot be read ({exc.strerror or type(exc).__name__})") from None
