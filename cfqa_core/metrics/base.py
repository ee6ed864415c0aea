"""What every metric shares: its spec, input checks and the slice view.

A feature is ``(..., tokens, channels)``: the leading dimensions are "slices"
(views x blocks), e.g. cls (1, 145, 128), seg (2, 145, 128), dpt (2, 4, 145, 128);
a 2-D feature such as the paper's cls (257, 1536) is a single slice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import MetricError

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    ``fn(f, fhat, **kwargs) -> float`` receives only the keyword arguments named
    in ``kwargs`` (e.g. ``value_range`` for PSNR), so callers may pass one common
    set of keywords to many metrics.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool
    range: tuple[float, float] | None
    doc: str
    kwargs: tuple[str, ...] = ()
    min_ndim: int = 1  # token metrics need (tokens, channels) at least

    @classmethod
    def of(cls, name: str, fn: MetricFn, *, higher_is_better: bool, range: tuple[float, float] | None = None,
           kwargs: tuple[str, ...] = (), min_ndim: int = 1, doc: str | None = None) -> MetricSpec:
        """A spec from keyword arguments; ``doc`` defaults to the first paragraph of ``fn``'s docstring."""
        if doc is None:
            doc = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
        return cls(name, fn, higher_is_better, range, doc, tuple(kwargs), min_ndim)


def _where(item: str | None) -> str:
    return f" for {item}" if item else ""


def check_pair(name: str, f: np.ndarray, fhat: np.ndarray, *, min_ndim: int = 1,
               item: str | None = None, finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of features for metric ``name``; MetricError naming what is wrong."""
    f = np.asarray(f)
    fhat = np.asarray(fhat)
    if f.shape != fhat.shape:
        raise MetricError(f"metric '{name}'{_where(item)}: shapes differ: f {f.shape} vs fhat {fhat.shape}")
    if f.ndim < min_ndim:
        raise MetricError(f"metric '{name}'{_where(item)}: needs (..., tokens, channels), got shape {f.shape}")
    if f.size == 0:
        raise MetricError(f"metric '{name}'{_where(item)}: empty feature of shape {f.shape}")
    for label, x in (("f", f), ("fhat", fhat)):
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise MetricError(f"metric '{name}'{_where(item)}: {label} has non-real dtype {x.dtype}")
        if finite and not np.isfinite(x).all():
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise MetricError(f"metric '{name}'{_where(item)}: {label} has {bad} NaN/Inf value(s)")
    return f, fhat


def as_slices(x: np.ndarray) -> np.ndarray:
    """View ``x`` as (slices, tokens, channels) without copying."""
    if x.ndim < 2:
        raise ValueError(f"need (..., tokens, channels), got shape {x.shape}")
    return x.reshape(-1, x.shape[-2], x.shape[-1])
