"""A server launched per trial (tunekv.measure.launch): healthy or a classified failure with its
log's last lines, and never a process left behind, whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tunekv.processes import alive, gone
from tunekv.measure.launch import LaunchCut, LaunchFailed, ServerCommand, launch, server_version, wait_memory_back

FAKE = str(Path(__file__).with_name("fake_server.py"))


def fake(*extra: str) -> ServerCommand:
    return ServerCommand("fake", lambda port: [sys.executable, FAKE, "--port", str(port), *extra])


def test_a_healthy_server_is_measured_then_stopped_with_its_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    waits: list[float] = []
    server = launch(fake("--ready-after", "1.5", "--child-pid-file", str(pid_file)), tmp_path / "s.log", 30,
                    lambda: False, waits.append)
    try:
        assert server.alive() and server.startup_s >= 1.5 and waits, (server.startup_s, waits)
        assert server_version(server.url) == "9.8.7"
        child = int(pid_file.read_text())
        assert alive(child)
    finally:
        server.stop(grace_s=5)
    assert gone(server.pid) and gone(child), "the stop must reach every process the server started"
    assert (tmp_path / "s.log").read_text().startswith("$ "), "the log starts with the command line"


@pytest.mark.parametrize("fail, kind", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
    ("vllm serve: error: unrecognized arguments: --block-size-typo 16", "rejected a flag"),
    ("RuntimeError: something else broke", "exited"),
])
def test_a_server_that_exits_at_start_up_is_a_failure_with_its_last_lines(tmp_path, fail, kind):
    with pytest.raises(LaunchFailed) as caught:
        launch(fake("--fail", fail, "--exit-code", "3"), tmp_path / "s.log", 30, lambda: False)
    assert caught.value.kind == kind
    reason = caught.value.reason
    assert "exit code 3" in reason and fail in reason and str(tmp_path / "s.log") in reason, reason


def test_a_server_that_never_answers_healthy_misses_its_deadline_and_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    began = time.monotonic()
    with pytest.raises(LaunchFailed) as caught:
        launch(fake("--never-ready", "--pid-file", str(pid_file)), tmp_path / "s.log", 2.0, lambda: False)
    assert caught.value.kind == "health deadline" and "not healthy" in str(caught.value)
    assert 2.0 <= time.monotonic() - began < 20 and gone(int(pid_file.read_text()))


def test_a_port_taken_between_choosing_and_binding_is_retried_on_another(tmp_path):
    marker = tmp_path / "taken"
    server = launch(fake("--port-taken-once", str(marker)), tmp_path / "s.log", 30, lambda: False)
    try:
        assert marker.exists() and server.alive()
    finally:
        server.stop(grace_s=5)


def test_a_stop_during_start_up_ends_the_wait_and_the_server(tmp_path):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 4

    pid_file = tmp_path / "pid"
    with pytest.raises(LaunchCut):
        launch(fake("--never-ready", "--pid-file", str(pid_file)), tmp_path / "s.log", 60, stop)
    assert gone(int(pid_file.read_text()))


def test_a_sigterm_ignoring_server_is_killed_after_the_grace_period(tmp_path):
    server = launch(fake("--ignore-term"), tmp_path / "s.log", 30, lambda: False)
    began = time.monotonic()
    server.stop(grace_s=1.0)
    assert gone(server.pid, 0.5) and 1.0 <= time.monotonic() - began < 10


def test_a_killed_search_takes_its_server_with_it(tmp_path):
    """A search process killed outright (SIGKILL: nothing of it runs any more) leaves no server."""
    script = ("import sys\n"
              "from pathlib import Path\n"
              "from tunekv.measure.launch import ServerCommand, launch\n"
              f"s = launch(ServerCommand('fake', lambda p: [sys.executable, {FAKE!r}, '--port', str(p)]), "
              f"Path({str(tmp_path / 's.log')!r}), 30, lambda: False)\n"
              "print(s.pid, flush=True)\n"
              "import time; time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert alive(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert gone(server_pid), "the parent-death signal must stop the server"
    finally:
        parent.kill()
        parent.wait()


def test_the_next_trial_waits_until_the_gpu_memory_the_server_held_is_back():
    gib = 1 << 30
    readings = iter([[30 * gib, 2 * gib], [12 * gib, 2 * gib], [int(10.3 * gib), 2 * gib]])
    notes: list[str] = []
    assert wait_memory_back([10 * gib, 2 * gib], notes.append, lambda: next(readings), timeout_s=30)
    assert next(readings, None) is None and not notes, "it waited for the third reading (within 512 MiB)"
    stuck: list[str] = []
    assert not wait_memory_back([0], stuck.append, lambda: [3 * gib], timeout_s=0.6)
    assert stuck == ["3.0 GiB of GPU memory still in use 1 s after the server stopped (another process?); the next "
                     "trial starts anyway"]
    assert wait_memory_back(None, stuck.append, lambda: [3 * gib]), "no NVML: nothing to wait for"
    assert wait_memory_back([0], stuck.append, lambda: None), "NVML gone: nothing to wait for"
