"""Element-wise signal metrics: MSE and PSNR on the original feature scale.

Callers pass the de-quantised reconstruction f^ (truncated to the codec's
quantisation range and mapped back), so truncation error counts as distortion.
"""
from __future__ import annotations

import math

import numpy as np

from cfqa_core.errors import MetricError

# Elements per float64 chunk: bounds the temporary memory (8 MB) for the
# paper's 20-million-element dpt features.
_CHUNK = 1 << 20


def sum_squared_error(f: np.ndarray, fhat: np.ndarray) -> float:
    """sum((f - f^)^2), accumulated in float64 chunk by chunk."""
    a = f.reshape(-1)
    b = fhat.reshape(-1)
    total = 0.0
    for start in range(0, a.size, _CHUNK):
        d = a[start:start + _CHUNK].astype(np.float64) - b[start:start + _CHUNK]
        total += float(np.dot(d, d))
    return total


def mse(f: np.ndarray, fhat: np.ndarray) -> float:
    """Mean squared error, MSE = mean((f - f^)^2). Lower is better; 0 for identical features."""
    return sum_squared_error(f, fhat) / f.size


def psnr(f: np.ndarray, fhat: np.ndarray, *, value_range: tuple[float, float] | None = None) -> float:
    """PSNR over the quantisation range [lo, hi]: 10 log10((hi - lo)^2 / MSE) dB. Higher is better.

    ``inf`` for identical features. ``value_range`` is the
    range the codec quantised over (the same for every rate point of a feature),
    so for a given feature PSNR is a decreasing function of MSE.
    """
    if value_range is None:
        raise MetricError("metric 'psnr' needs value_range=(lo, hi), the quantisation range")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise MetricError(f"metric 'psnr': value_range must be (lo, hi), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise MetricError(f"metric 'psnr': value_range must be finite with hi > lo, got ({lo}, {hi})")
    err = mse(f, fhat)
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10((hi - lo) ** 2 / err)
