"""The Textual TUI (``tunekv`` with no arguments)."""

from __future__ import annotations


def run_tui() -> int:
    from tunekv.tui.app import TuneKVApp

    app = TuneKVApp()
    app.run()
    return 0
