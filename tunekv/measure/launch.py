"""A server started for one trial: its process group, its log, its health deadline and its stop.

The server runs in a session (and process group) of its own, so a stop reaches every process it
started (vLLM's engine core, SGLang's schedulers, TGI's shards): SIGTERM to the group, SIGKILL after
a grace period. On Linux a small exec shim sets the parent-death signal first, so a search that is
itself killed (SIGKILL, a crash) does not leave the server running. Start-up failures are classified
from the log (out of memory, a flag the server rejects, a port in use) and carry its last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunekv.hardware.probe import memory_used

__all__ = ["HOST", "LaunchCut", "LaunchFailed", "LaunchFailure", "RunningServer", "ServerCommand", "free_port",
           "launch", "log_tail", "server_version", "stop_group", "wait_memory_back"]

HOST = "127.0.0.1"
POLL_S = 0.25              # between health checks
HEALTH_TIMEOUT_S = 2.0     # one health request
PORT_TRIES = 3             # a port taken between choosing and binding: another one, this many times
TAIL_LINES = 8
TAIL_BYTES = 64 * 1024
MEMORY_SLACK_BYTES = 512 << 20   # a GPU's used memory this close to where it was before a launch is "back"
MEMORY_WAIT_S = 120.0
SERVER_KEY_ENV = ("VLLM_API_KEY", "TUNEKV_API_KEY")   # what vLLM and tunekv serve read an API key from
LaunchFailure = Literal["out of memory", "rejected a flag", "port in use", "health deadline", "exited"]

# What the servers print (vLLM, SGLang, TGI, tunekv serve, Python and PyTorch) for each failure.
_PATTERNS: tuple[tuple[LaunchFailure, re.Pattern[str]], ...] = (
    ("port in use", re.compile(r"address already in use|\[errno 98\]|is in use; pick another", re.I)),
    ("rejected a flag", re.compile(r"unrecognized arguments|error: argument --|invalid choice|"
                                   r"error: unexpected argument|invalid value '.*' for '--", re.I)),
    ("out of memory", re.compile(r"out of memory|outofmemoryerror|no available memory for the cache blocks|"
                                 r"not enough memory|insufficient memory|cannot hold one max_model_len", re.I)),
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Runs the server's argv with the parent-death signal set (Linux prctl PR_SET_PDEATHSIG = 1), and
# not at all when the parent is already gone; an exec keeps the setting, so the server has it.
_GUARD = ("import ctypes, os, signal, sys\n"
          "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
          "if os.getppid() != int(sys.argv[1]):\n"
          "    sys.exit(1)\n"
          "os.execvp(sys.argv[2], sys.argv[2:])\n")


@dataclass(frozen=True)
class ServerCommand:
    """How to start one server: its argv for a port (``argv(port)``), where it answers healthy,
    and the environment it adds."""

    name: str                                   # for messages: "vllm", "tunekv serve", the template's program
    argv: Callable[[int], list[str]]
    health: str = "/health"
    env: dict[str, str] = field(default_factory=dict)


class LaunchFailed(Exception):
    """The server did not become healthy: ``kind`` says how, ``tail`` is the last lines of its log."""

    def __init__(self, kind: LaunchFailure, message: str, tail: str, log: Path) -> None:
        super().__init__(message)
        self.kind, self.tail, self.log = kind, tail, log

    @property
    def reason(self) -> str:
        """One trial's reason: what happened, then the log's last lines (and where the log is)."""
        return f"{self}; log {self.log}" + (f", last lines:\n{self.tail}" if self.tail else " (empty)")


class LaunchCut(Exception):
    """The start-up was stopped (Ctrl-C, or the budget's deadline) before the server was healthy."""


@dataclass
class RunningServer:
    """A server that answered healthy: stop it with ``stop()`` (or leave the ``with`` block)."""

    command: ServerCommand
    process: subprocess.Popen
    port: int
    log: Path
    startup_s: float                            # from the launch to the first healthy answer

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left of it after ``grace_s``."""
        stop_group(self.process, grace_s)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a log, without terminal colour codes."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in _ANSI.sub("", text).replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def classify(path: Path, exit_code: int | None) -> LaunchFailure:
    """What a log says went wrong (its last 64 KiB): the first pattern that matches, else ``exited``."""
    text = log_tail(path, lines=10_000)
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            return kind
    return "exited" if exit_code is not None else "health deadline"


def launch(command: ServerCommand, log: Path, timeout_s: float, stop: Callable[[], bool],
           on_wait: Callable[[float], None] | None = None) -> RunningServer:
    """Start ``command`` on a free port of 127.0.0.1 (its output to ``log``) and wait until its
    health path answers 200: at most ``timeout_s``; ``stop()`` ends the wait (LaunchCut), and
    ``on_wait(seconds waited)`` is called about once a second. A server that exits, misses the
    deadline, runs out of memory or rejects a flag is stopped and raises LaunchFailed; a port
    taken meanwhile is retried on another."""
    for attempt in range(PORT_TRIES):
        try:
            return _start(command, log, free_port(), timeout_s, stop, on_wait)
        except LaunchFailed as exc:
            if exc.kind != "port in use" or attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable: the last attempt re-raises")


def _server_env(command: ServerCommand) -> dict[str, str]:
    """This process's environment and the command's, less the servers' own API-key variables: a
    key exported in the user's shell would lock the search, which sends none, out of the private
    server it launched on 127.0.0.1."""
    return {**{k: v for k, v in os.environ.items() if k not in SERVER_KEY_ENV}, **command.env}


def _start(command: ServerCommand, log: Path, port: int, timeout_s: float, stop: Callable[[], bool],
           on_wait: Callable[[float], None] | None) -> RunningServer:
    argv = command.argv(port)
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log.open("wb") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        if sys.platform == "linux":
            argv = [sys.executable, "-c", _GUARD, str(os.getpid()), *argv]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=_server_env(command), start_new_session=True)
        except OSError as exc:
            raise LaunchFailed("exited", f"{command.name} could not start ({exc.strerror or exc})", "", log) from None
    server = RunningServer(command, process, port, log, 0.0)
    url = f"http://{HOST}:{port}{command.health}"
    told = 0
    try:
        while True:
            waited = time.monotonic() - began
            if process.poll() is not None:
                kind = classify(log, process.returncode)
                raise LaunchFailed(kind, f"{command.name} {_words(kind)} during start-up (exit code "
                                         f"{process.returncode})", log_tail(log), log)
            if stop():
                raise LaunchCut(f"{command.name}'s start-up was stopped after {waited:.0f} s")
            if waited >= timeout_s:
                kind = classify(log, None)
                raise LaunchFailed(kind, f"{command.name} {_words(kind)}: not healthy at {url} after "
                                         f"{timeout_s:.0f} s", log_tail(log), log)
            if _healthy(url):
                server.startup_s = time.monotonic() - began
                return server
            if on_wait is not None and int(waited) > told:
                told = int(waited)
                on_wait(waited)
            time.sleep(POLL_S)
    except BaseException:
        server.stop()
        raise


def _words(kind: LaunchFailure) -> str:
    return {"out of memory": "ran out of memory", "rejected a flag": "rejected a flag",
            "port in use": "found its port in use", "health deadline": "missed its health deadline",
            "exited": "exited"}[kind]


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # 127.0.0.1 never goes through a proxy


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_version(url: str) -> str | None:
    """What a server says its version is: ``/version`` (vLLM, tunekv), ``/server_info`` (SGLang)
    or ``/info`` (TGI)."""
    for path in ("/version", "/server_info", "/info"):
        try:
            with _DIRECT.open(url + path, timeout=HEALTH_TIMEOUT_S) as response:
                version = json.loads(response.read()).get("version") if response.status == 200 else None
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            continue
        if isinstance(version, str) and version.strip():
            return version.strip()[:64]
    return None


def wait_memory_back(before: list[int] | None, on_note: Callable[[str], None],
                     read: Callable[[], list[int] | None] = memory_used, timeout_s: float = MEMORY_WAIT_S) -> bool:
    """Wait until each GPU's used memory (``read()``, NVML) is back within 512 MiB of ``before``
    (read before a launch), so one trial's leftovers never shrink the next one's pool. True when
    it is back or cannot be read (no NVML); after ``timeout_s`` a note and False."""
    if before is None:
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        now = read()
        if now is None or all(n <= b + MEMORY_SLACK_BYTES for n, b in zip(now, before)):
            return True
        if time.monotonic() >= deadline:
            held = max(n - b for n, b in zip(now, before)) / 2**30
            on_note(f"{held:.1f} GiB of GPU memory still in use {timeout_s:.0f} s after the server stopped (another "
                    "process?); the next trial starts anyway")
            return False
        time.sleep(0.5)


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to ``process``'s group (it leads one: ``start_new_session``), then SIGKILL to any
    member still there after ``grace_s``; returns once the leader is reaped and the group is empty."""
    pgid = process.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(0.0, grace_s))
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    process.wait()
    kill_deadline = time.monotonic() + 10.0
    while _group_alive(pgid) and time.monotonic() < kill_deadline:
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
