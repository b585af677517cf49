"""The heavy libraries, imported by one worker thread at a time.

The TUI's workers start together (the first plan while the search screen loads its last study, a
plan recomputed while a search runs), and two threads importing transformers at the same moment can
get it half-initialized: ``cannot import name 'AutoConfig' from 'transformers'``. Every worker that
may load the engine, a model config or a tokenizer calls ``import_heavy`` first; once they are in
``sys.modules`` the call costs a lock."""

from __future__ import annotations

import threading

__all__ = ["import_heavy"]

_LOCK = threading.Lock()


def import_heavy() -> None:
    with _LOCK:
        import torch  # noqa: F401
        import transformers  # noqa: F401
