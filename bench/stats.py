"""The statistics every bench module uses: percentile, median, ratio and spread.

One implementation each, so a figure means the same wherever it appears. Missing values
(``None``) are skipped by ``median`` and ``spread`` and make a ``ratio`` ``None``: a measure
that failed leaves a gap in the results, never a zero.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import TypedDict


class Spread(TypedDict):
    median: float | None
    min: float | None
    max: float | None
    n: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): always one of ``values``, no interpolation.

    The smallest value with at least q% of the values at or below it; ``None`` if there
    are none.
    """
    if not values:
        return None
    s = sorted(values)
    # Written as the harness always computed it (q / 100 * n, then ceil): q * n / 100
    # rounds differently for some q and n (p7 of 100 values), and results came from this.
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not ``None`` (the mean of the middle two for an
    even count); ``None`` if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``; ``None`` when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def present(runs: Iterable[dict], key: str) -> list:
    """``run[key]`` of every run that has it (not missing, not ``None``), in order."""
    return [r[key] for r in runs if r.get(key) is not None]


def spread(values: Iterable[float | None]) -> Spread:
    """Median, min, max and count of the values that are not ``None``."""
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt(v: float | None) -> str:
    """A figure for a table: thousands separated, about three significant digits."""
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"
