"""Ctrl-C and SIGTERM for the commands that search: the first stops the running work gently
(finished trials kept, the outputs of what is done written), the same signal again quits at once."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console

from tunekv.cli import EXIT_INTERRUPTED, EXIT_TERMINATED

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "StopSignals", "stop_on_signals"]


@dataclass
class StopSignals:
    """What arrived while the work ran: ``stopped`` after the first signal, ``terminated`` when it
    was SIGTERM (a scheduler, `kill`, a container stopping) rather than Ctrl-C."""

    stopped: bool = False
    terminated: bool = False

    def exit_code(self, code: int) -> int:
        """The command's exit code: an interruption ended by SIGTERM reports 143, as a shell would."""
        return EXIT_TERMINATED if self.terminated and code == EXIT_INTERRUPTED else code


@contextmanager
def stop_on_signals(request_stop: Callable[[], None], console: Console, what_stops: str) -> Iterator[StopSignals]:
    """While the block runs, the first SIGINT or SIGTERM calls ``request_stop`` and says so
    (``what_stops``: "stopping the running trial; completed trials are kept"); a second quits at
    once. The previous handlers come back after the block."""
    state = StopSignals()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame) -> None:
        if state.stopped:
            if signum == signal.SIGTERM:
                print("terminated", file=sys.stderr)
                raise SystemExit(EXIT_TERMINATED)
            raise KeyboardInterrupt
        state.stopped, state.terminated = True, signum == signal.SIGTERM
        request_stop()
        name = "SIGTERM" if state.terminated else "Ctrl-C"
        console.print(f"[yellow]{name}: {what_stops} ({name} again to quit at once)[/yellow]")

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
