"""The TUI's memory of its last search, so that reopening it can offer to resume that study.

One small JSON file in ``$TUNEKV_HOME/tui/``, written whole and renamed, readable only by its
owner (a PostgreSQL storage URL may hold a password)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunekv.home import tunekv_home

STATES = ("running", "interrupted", "finished")


@dataclass
class LastSearch:
    options: dict            # tunekv.search_session.SearchOptions as JSON
    study: str
    storage_url: str
    state: str               # running (the TUI quit or died mid-search), interrupted, finished

    @property
    def resumable(self) -> bool:
        return self.state != "finished"


def path() -> Path:
    return tunekv_home() / "tui" / "last-search.json"


def save(last: LastSearch) -> None:
    assert last.state in STATES, f"unknown state {last.state}"
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(last.__dict__, f, indent=2)
    os.replace(tmp, target)


def load() -> LastSearch | None:
    """The last search, or None when there is none or the file is unreadable (never an error)."""
    try:
        raw = json.loads(path().read_text())
        last = LastSearch(dict(raw["options"]), str(raw["study"]), str(raw["storage_url"]), str(raw["state"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return last if last.state in STATES else None
