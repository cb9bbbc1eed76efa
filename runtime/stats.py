"""Small statistics on plain values, one definition for every report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float, *, empty: float | None = None) -> float:
    """Linear-interpolated percentile of ``values``, ``q`` in [0, 100].

    No values: ``empty`` if given, else ``ValueError``.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    if not values:
        if empty is None:
            raise ValueError("no values")
        return empty
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(num: float, den: float) -> float:
    """``num / den``, 0.0 when ``den`` is 0 (a rate over nothing observed yet)."""
    return num / den if den else 0.0
