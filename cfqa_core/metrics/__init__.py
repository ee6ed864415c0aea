"""Full-reference quality metrics of a compressed feature f^ against its original f.

numpy only (the edge imports this). Every metric is registered in ``METRICS``
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
from cfqa_core.metrics.proxy import proxy
from cfqa_core.metrics.signal import mse, psnr

__all__ = [
    "METRICS", "MetricSpec", "MetricError", "register_metric", "get_metric", "metric_names",
    "compute_metric", "compute_metrics",
]

METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to ``METRICS`` (ValueError if the name is taken)."""
    if spec.name in METRICS:
        raise ValueError(f"metric '{spec.name}' registered twice")
    METRICS[spec.name] = spec
    return spec


def _add(name: str, fn: MetricFn, higher_is_better: bool, range_: tuple[float, float] | None,
         kwargs: tuple[str, ...] = (), min_ndim: int = 1) -> None:
    doc = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
    register_metric(MetricSpec(name, fn, higher_is_better, range_, doc, kwargs, min_ndim))


_add("mse", mse, False, (0.0, float("inf")))
_add("psnr", psnr, True, None, kwargs=("value_range",))
_add("cosine", cosine, True, (-1.0, 1.0), min_ndim=2)
_add("cosine_flat", cosine_flat, True, (-1.0, 1.0))
_add("cka", cka, True, (0.0, 1.0), min_ndim=2)
_add("cka_seed", cka_seed, True, (0.0, 1.0), min_ndim=2)
_add("learned", learned, False, None, kwargs=("task",), min_ndim=2)
_add("proxy", proxy, False, None, kwargs=("task", "split"), min_ndim=2)


def metric_names() -> list[str]:
    return sorted(METRICS)


def get_metric(name: str) -> MetricSpec:
    """The spec registered as ``name`` (MetricError listing the known names otherwise)."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise MetricError(f"unknown metric '{name}' (known: {', '.join(metric_names())})") from None


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
