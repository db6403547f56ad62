"""Inter-annotator agreement: Krippendorff's alpha with the interval metric.

For units (images) u holding m_u >= 2 scores (units with fewer are not pairable and are left out),
n = sum of m_u, and squared differences d(a, b) = (a - b)^2:

  D_o = (1 / n) * sum_u [ sum over ordered pairs i != j within u of d(v_i, v_j) ] / (m_u - 1)
  D_e = [ sum over ordered pairs i != j of all n pooled scores of d(v_i, v_j) ] / (n (n - 1))
  alpha = 1 - D_o / D_e

alpha = 1 is perfect agreement, 0 agreement at chance level; it is NaN when no unit has two
scores or all scores are equal (D_e = 0).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def _pair_sum(values: Sequence[float]) -> float:
    """Sum of (a - b)^2 over ordered pairs of distinct positions: 2 (m sum v^2 - (sum v)^2)."""
    m = len(values)
    return 2.0 * (m * sum(v * v for v in values) - sum(values) ** 2)


def krippendorff_alpha_interval(units: Iterable[Sequence[float]]) -> float:
    """Alpha (interval) of `units`, each the scores different annotators gave one item."""
    pairable = [list(map(float, u)) for u in units if len(u) >= 2]
    n = sum(len(u) for u in pairable)
    if n < 2:
        return math.nan
    observed = sum(_pair_sum(u) / (len(u) - 1) for u in pairable) / n
    expected = _pair_sum([v for u in pairable for v in u]) / (n * (n - 1))
    if expected == 0:
        return math.nan
    return 1.0 - observed / expected
