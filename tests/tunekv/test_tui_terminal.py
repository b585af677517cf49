"""`tunekv` with no arguments, as a person starts it: in a real pseudo-terminal it opens the app and
`q` quits it cleanly; without a terminal it prints the help instead of drawing into a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

from tests.tunekv.run_cli import tunekv


def test_without_a_terminal_it_prints_help():
    done = tunekv()
    assert done.returncode == 0
    assert "search" in done.stdout and "needs a terminal" in done.stdout


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on the screen; last output: {seen[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:   # the child closed the terminal
                break
    return seen


def test_in_a_terminal_it_opens_and_q_quits(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "TUNEKV_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "tunekv"], stdin=follower, stdout=follower, stderr=follower,
                             cwd=tmp_path, env=env, close_fds=True)
    os.close(follower)
    try:
        _read_until(leader, b"Hardware", timeout=60)
        os.write(leader, b"q")
        # Keep reading: a terminal nobody reads fills up and blocks the app's writes.
        deadline = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                try:
                    os.read(leader, 65536)
                except OSError:
                    break
        assert child.wait(timeout=5) == 0
    finally:
        if child.poll() is None:
            child.kill()
        os.close(leader)
