"""Summary statistics for seeds: mean and a Student-t confidence interval."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as _stats

__all__ = ["Interval", "mean_ci"]


class Interval(NamedTuple):
    """Mean with a two-sided confidence interval (``lo = hi = mean`` is never implied for n < 2)."""

    mean: float
    lo: float  # -inf when n < 2 (no interval can be formed)
    hi: float  # +inf when n < 2
    n: int

    @property
    def half_width(self) -> float:
        return 0.5 * (self.hi - self.lo)


def mean_ci(values, level: float = 0.95) -> Interval:
    r"""Mean and ``level`` t-interval :math:`\bar x \pm t_{n-1, (1+level)/2}\, s / \sqrt{n}`.

    Args:
      values: ``(n,)`` samples (e.g. one per seed); NaNs are rejected.
      level: confidence level in (0, 1).

    Returns:
      :class:`Interval`; with ``n == 1`` the interval is ``(-inf, inf)`` (nothing can be concluded).

    Raises:
      ValueError: on empty input, NaN, or a level outside (0, 1).
    """
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError("values: need at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values: must be finite, got {x}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, -np.inf, np.inf, n)
    sem = float(x.std(ddof=1)) / np.sqrt(n)
    half = float(_stats.t.ppf(0.5 + level / 2.0, df=n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n)
