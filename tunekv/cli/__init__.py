"""The `tunekv` command line: the parser and dispatch (`main`) and one module per command group.

Nothing imports this package; it may start the TUI."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143   # 128 + SIGTERM


def run() -> NoReturn:
    """The `tunekv` program: `main` and its exit code. It is imported here, so that Ctrl-C while
    torch and the command's modules load (the first second or so) exits 130 in one line, as it
    does later, instead of a traceback from the middle of an import."""
    try:
        from tunekv.cli.main import main

        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
