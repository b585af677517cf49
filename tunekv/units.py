"""Durations, sizes and loads as people write them."""

from __future__ import annotations

import math
import re
from typing import Literal

from tunekv.errors import BadInput, shorten

__all__ = ["GIB", "LOAD_TITLES", "MAX_DURATION_S", "CapacityUnit", "clock", "load_cell", "load_label",
           "load_words", "pace_words", "parse_duration", "rate_text"]

CapacityUnit = Literal["users", "req/s", "x"]   # what a load counts; x: times a trace's recorded pace
LOAD_TITLES: dict[CapacityUnit, str] = {"users": "users", "req/s": "req/s", "x": "pace"}   # a column of loads

GIB = 2**30
MAX_DURATION_S = 7 * 24 * 3600   # a week: the longest budget (longer ones are typos, and overflow clocks)

_NUMBER = r"(\d+(?:\.\d+)?)"


def parse_duration(text: str, flag: str = "--budget") -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` (or plain seconds), up to a week -> seconds; BadInput otherwise."""
    sign = re.fullmatch(r"\s*-(.*)", text or "")
    body = sign.group(1) if sign else (text or "")
    bare = re.fullmatch(rf"\s*{_NUMBER}\s*", body)
    match = bare or re.fullmatch(rf"\s*(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?\s*", body)
    if not body or match is None or not any(match.groups()):
        raise BadInput(f"{flag} takes a duration like 90s, 30m, 2h or 1h30m; got '{shorten(text or '')}'")
    hours, minutes, seconds = (0.0, 0.0, float(bare.group(1))) if bare else (
        float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if sign or total <= 0:
        raise BadInput(f"{flag} must be longer than zero; got '{shorten(text)}'")
    if not total <= MAX_DURATION_S:
        raise BadInput(f"{flag} is at most {MAX_DURATION_S // 3600}h (7 days); got '{shorten(text)}'")
    return total


def clock(seconds: float) -> str:
    """A time left as HH:MM:SS, the hours unbounded (a 25 h budget starts at 25:00:00); below zero
    (or not a number) it reads 00:00:00."""
    whole = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def load_label(unit: CapacityUnit, load: float) -> str:
    """One load in its unit: 1 user, 8 users, 2.5 req/s, 1.5x (a pace below 1x to three figures: 0.0156x)."""
    if unit == "x":
        return f"{load:.3g}x" if load < 1 else f"{load:g}x"
    return f"{load:g} {'user' if unit == 'users' and load == 1 else unit}"


def load_cell(unit: CapacityUnit, load: float, at_least: bool = False) -> str:
    """One load in a table's column, whose title names the unit: 16, >=16, 2.5x."""
    text = load_label(unit, load) if unit == "x" else f"{load:g}"
    return f">={text}" if at_least else text


def rate_text(per_s: float) -> str:
    """A rate for people: three significant figures (0.25, 33.4, 512), whole numbers with
    separators from 1,000 (10,600, not 1.06e+04)."""
    return f"{per_s:.3g}" if per_s < 1000 else f"{per_s:,.0f}"


def load_words(unit: CapacityUnit, load: float) -> str:
    """One load in a sentence: 8 users, 2.5 req/s, 1.5x the trace's pace."""
    pace = " the trace's pace" if unit == "x" else ""
    return load_label(unit, load) + pace


def pace_words(pace: float, rate_at_1x: float) -> str:
    """A trace's pace in a sentence, with the rate it brings: 2.5x the trace's pace (33.4 req/s on average)."""
    return f"{load_words('x', pace)} ({rate_text(pace * rate_at_1x)} req/s on average)"
