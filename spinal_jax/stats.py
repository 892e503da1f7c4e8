"""Small statistics for comparing two heads over seeds: mean, sample std, paired t-interval.

SciPy's Student-t quantile is used when SciPy is installed; otherwise a table of two-sided 95 %
quantiles for 1..30 degrees of freedom (beyond 30, the normal 1.96 is within 4 %: the table's last
value is used, which errs on the wide side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# t_{0.975, df} for df = 1..30 (two-sided 95 %), from the standard tables.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}.")
    try:
        from scipy.stats import t
    except ImportError:
        return T975[min(df, len(T975)) - 1]
    return float(t.ppf(0.975, df))


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; None for no values."""
    return sum(values) / len(values) if values else None


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with ddof=1; None for fewer than two values."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def paired_interval(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """The mean of ``b - a`` (paired element-wise) with its 95 % t-interval.

    Returns ``{'n', 'mean', 'std', 'half_width', 'low', 'high'}``; the interval fields are None for
    fewer than two pairs.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}.")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n, m, s = len(diffs), mean(diffs), sample_std(diffs)
    if s is None:
        return {"n": n, "mean": m, "std": None, "half_width": None, "low": None, "high": None}
    half = t_quantile_975(n - 1) * s / math.sqrt(n)
    return {"n": n, "mean": m, "std": s, "half_width": half, "low": m - half, "high": m + half}


def verdict(interval: dict[str, float | int | None]) -> str:
    """'better' / 'worse' when the interval excludes 0, else 'no difference within the interval'."""
    if not interval["n"]:
        return "no paired runs"
    if interval["low"] is None:
        return f"{interval['n']} seed: no interval"
    if interval["low"] > 0:
        return "better"
    if interval["high"] < 0:
        return "worse"
    return "no difference within the interval"
