"""Durations and sizes as people write them."""

from __future__ import annotations

import re

from tunekv.errors import BadInput

__all__ = ["GIB", "parse_duration"]

GIB = 2**30


def parse_duration(text: str, flag: str = "--budget") -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` (or plain seconds) -> seconds; BadInput otherwise."""
    bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", text or "")
    match = bare or re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*",
                                 text or "")
    if not text or match is None or not any(match.groups()):
        raise BadInput(f"{flag} takes a duration like 90s, 30m, 2h or 1h30m; got '{text}'")
    hours, minutes, seconds = (0.0, 0.0, float(bare.group(1))) if bare else (
        float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise BadInput(f"{flag} must be longer than zero; got '{text}'")
    return total
