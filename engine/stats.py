"""The project's one percentile: nearest rank, as vLLM's and GuideLLM's reports use it.

It lives in the engine so the engine's own demo (``python -m tunekv.engine.bench``, which runs on a
bare GPU box) and tunekv's serving metrics compute the same figure."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it
    (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q / 100.0))
    return ordered[rank - 1]
