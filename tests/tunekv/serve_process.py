"""A `tunekv serve` subprocess on 127.0.0.1 and a free port, and plain HTTP calls to it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 180.0


class ServeProcess:
    """``with ServeProcess("--model", "tiny-llama") as server:`` starts `tunekv serve --port 0`,
    waits (bounded) until /health answers 200, and on exit stops it by its PID (SIGTERM, then
    SIGKILL if it does not end)."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.args = args
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="tunekv-serve-"))
        self.stdout_path, self.stderr_path = self.dir / "stdout", self.dir / "stderr"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> ServeProcess:
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tunekv", "serve", "--host", "127.0.0.1", "--port", "0",
                                          *self.args], stdout=out, stderr=err, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.url:
            assert self.proc.poll() is None, f"tunekv serve exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no URL printed: {self.stdout()} {self.stderr()}"
            found = re.search(r"http://127\.0\.0\.1:\d+", self.stdout())
            self.url = found.group(0) if found else ""
            time.sleep(0.05)
        while get(self.url + "/health")[0] != 200:
            assert self.proc.poll() is None, f"tunekv serve exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"never healthy: {self.stderr()}"
            time.sleep(0.1)
        return self

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def post(url: str, body: bytes | dict, timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metrics(url: str) -> dict[str, float]:
    """/metrics parsed by prometheus_client: sample name (with its labels but model_name) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(url + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name")
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def wait_for(condition, timeout: float = 30, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(interval)
