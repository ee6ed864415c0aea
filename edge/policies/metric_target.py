"""Metric targets: direction, valid range and a distortion scale for search models.

A target is "metric at the chosen rate point meets ``threshold``": ``>=`` for
metrics where higher is better, ``<=`` otherwise. Directions and ranges come
from the ``cfqa_core.metrics`` registry; a metric that is only a table column
(e.g. a learned CFQA score) needs ``higher_is_better`` (and optionally
``metric_range``) from the caller.

For model-based searches every metric is mapped to a *distortion* that grows
as quality falls and is roughly linear in the QP: ``log(hi - m)`` for a metric
bounded above (cosine, CKA: the log of the gap to a perfect score),
``log(m - lo)`` for one bounded below with lower-is-better (MSE), ``-m`` or
``m`` otherwise (PSNR is already logarithmic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from cfqa_core.errors import MetricError, PolicyError

_EPS = 1e-12


@dataclass(frozen=True)
class MetricTarget:
    """A threshold on one metric."""

    metric: str
    threshold: float
    higher_is_better: bool
    range: tuple[float, float] | None = None

    def meets(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def distortion(self, value: float) -> float:
        """Monotone map of a metric value to a distortion (larger = worse), ~linear in QP."""
        lo, hi = self.range or (-math.inf, math.inf)
        if self.higher_is_better:
            return math.log(max(hi - value, _EPS)) if math.isfinite(hi) else -value
        return math.log(max(value - lo, _EPS)) if math.isfinite(lo) else value

    @cached_property
    def max_distortion(self) -> float:
        """The distortion of the threshold itself: a rate point meets the target iff below it."""
        return self.distortion(self.threshold)

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.threshold:.6g}"


def metric_direction(metric: str, higher_is_better: bool | None = None,
                     metric_range: tuple[float, float] | None = None) -> tuple[bool, tuple[float, float] | None]:
    """(higher_is_better, range) of ``metric``: the caller's values, else the metrics registry."""
    if higher_is_better is not None:
        return bool(higher_is_better), metric_range
    from cfqa_core.metrics import get_metric

    try:
        spec = get_metric(metric)
    except MetricError as exc:
        raise PolicyError(f"{exc}; for a table-only metric give higher_is_better") from None
    return spec.higher_is_better, metric_range or spec.range


def make_target(metric: str, threshold: float, higher_is_better: bool | None = None,
                metric_range: tuple[float, float] | None = None) -> MetricTarget:
    """A validated :class:`MetricTarget` (PolicyError if the threshold is outside the metric's range)."""
    hib, rng = metric_direction(metric, higher_is_better, metric_range)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise PolicyError(f"threshold {threshold} of metric '{metric}' must be finite")
    if rng is not None and not rng[0] <= threshold <= rng[1]:
        raise PolicyError(f"threshold {threshold:g} is outside the range [{rng[0]:g}, {rng[1]:g}] of metric '{metric}'")
    return MetricTarget(metric, threshold, hib, tuple(rng) if rng is not None else None)
