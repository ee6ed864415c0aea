"""Full-reference quality metrics of a compressed feature f^ against its original f.

numpy only (the edge imports this). Every metric is registered in ``REGISTRY``
(a :class:`~cfqa_core.registry.Registry`; ``METRICS`` is its live ``{name: spec}``)
as a :class:`MetricSpec` with its direction (``higher_is_better``) and range;
further metrics (e.g. a learned one) add themselves with :func:`register_metric`.

    >>> compute_metrics(["mse", "cosine", "cka"], f, fhat)
    >>> compute_metric("psnr", f, fhat, value_range=(lo, hi))

Features are ``(..., tokens, channels)``; the leading dimensions are slices.
Mismatched shapes, NaN/Inf values and unknown names raise ``MetricError``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from cfqa_core.errors import MetricError
from cfqa_core.metrics.base import MetricFn, MetricSpec, check_pair
from cfqa_core.metrics.cka import cka, cka_seed
from cfqa_core.metrics.cosine import cosine, cosine_flat
from cfqa_core.metrics.learned import learned
from cfqa_core.metrics.proxy import proxy, proxy_risk
from cfqa_core.metrics.signal import mse, psnr
from cfqa_core.registry import Registry

__all__ = [
    "METRICS", "REGISTRY", "MetricSpec", "MetricError", "register_metric", "get_metric", "metric_names",
    "compute_metric", "compute_metrics",
]

REGISTRY: Registry[MetricSpec] = Registry("metric", MetricError)
METRICS: dict[str, MetricSpec] = REGISTRY.entries  # the live {name: spec} of the registry


def register_metric(spec: MetricSpec | str, fn: MetricFn | None = None, **options: Any) -> MetricSpec:
    """Register a metric: a ready ``MetricSpec``, or a name, its function and keyword arguments.

    ``register_metric("l1", l1, higher_is_better=False, range=(0.0, inf))``; the
    options are those of :meth:`MetricSpec.of`. ValueError if the name is taken.
    """
    if not isinstance(spec, MetricSpec):
        if fn is None:
            raise TypeError(f"register_metric('{spec}', ...) needs the metric function")
        spec = MetricSpec.of(spec, fn, **options)
    return REGISTRY.register(spec.name)(spec)


register_metric("mse", mse, higher_is_better=False, range=(0.0, float("inf")))
register_metric("psnr", psnr, higher_is_better=True, kwargs=("value_range",))
register_metric("cosine", cosine, higher_is_better=True, range=(-1.0, 1.0), min_ndim=2)
register_metric("cosine_flat", cosine_flat, higher_is_better=True, range=(-1.0, 1.0))
register_metric("cka", cka, higher_is_better=True, range=(0.0, 1.0), min_ndim=2)
register_metric("cka_seed", cka_seed, higher_is_better=True, range=(0.0, 1.0), min_ndim=2)
register_metric("learned", learned, higher_is_better=False, kwargs=("task",), min_ndim=2)
register_metric("proxy", proxy, higher_is_better=False, kwargs=("task", "split"), min_ndim=2)
register_metric("proxy_risk", proxy_risk, higher_is_better=False, kwargs=("task", "split"), min_ndim=2)


def metric_names(filter: str | None = None) -> list[str]:
    """Sorted metric names, optionally those matching an fnmatch pattern (``"cka*"``)."""
    return REGISTRY.names(filter)


def get_metric(name: str) -> MetricSpec:
    """The spec registered as ``name`` (MetricError listing the known names otherwise)."""
    return REGISTRY.get(name)


def _call(spec: MetricSpec, f: np.ndarray, fhat: np.ndarray, kw: dict[str, Any], item: str | None) -> float:
    value = spec.fn(f, fhat, **{k: kw[k] for k in spec.kwargs if k in kw})
    if np.isnan(value):
        where = f" for {item}" if item else ""
        raise MetricError(f"metric '{spec.name}'{where}: result is NaN")
    return float(value)


def compute_metric(name: str, f: np.ndarray, fhat: np.ndarray, *, item: str | None = None, **kw: Any) -> float:
    """Score f^ against f with metric ``name``; ``item`` names the pair in error messages.

    Keyword arguments a metric does not take are ignored, so one set (e.g.
    ``value_range``) can be passed to every metric.
    """
    spec = get_metric(name)
    f, fhat = check_pair(name, f, fhat, min_ndim=spec.min_ndim, item=item)
    return _call(spec, f, fhat, kw, item)


def compute_metrics(names: Iterable[str], f: np.ndarray, fhat: np.ndarray, *,
                    item: str | None = None, **kw: Any) -> dict[str, float]:
    """``{name: score}`` for every metric in ``names``; the inputs are checked once."""
    specs = [get_metric(n) for n in names]
    if not specs:
        return {}
    f, fhat = check_pair(",".join(s.name for s in specs), f, fhat, item=item)
    for s in specs:
        if f.ndim < s.min_ndim:
            check_pair(s.name, f, fhat, min_ndim=s.min_ndim, item=item, finite=False)  # raises, naming s
    return {s.name: _call(s, f, fhat, kw, item) for s in specs}
