"""Where tunekv keeps what it learns between runs (calibrations, converted weights, the TUI's
last search). A module of its own so that finding it imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path


def tunekv_home() -> Path:
    """``$TUNEKV_HOME``, else ``$XDG_CACHE_HOME/tunekv`` (``~/.cache/tunekv``)."""
    home = os.environ.get("TUNEKV_HOME")
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tunekv"
