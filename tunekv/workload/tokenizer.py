"""The tokenizer of a local model directory, for traces that give prompts as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer"]


def load_tokenizer(path: str | Path | None) -> Any:
    """The model directory's Hugging Face tokenizer; None for a preset (no directory) or a
    directory without a usable tokenizer (a trace of text then says it needs one)."""
    if path is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None
