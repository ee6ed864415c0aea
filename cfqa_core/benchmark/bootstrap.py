"""Bootstrap intervals for the CFQA protocol, resampling originals.

The unit of the protocol is the original feature: each one contributes one
PLCC and one SROCC per (codec, metric). The bootstrap therefore redraws the
*originals* of each task with replacement and recomputes every cell mean from
the same draw, so that any two cells of a task (two metrics, two codecs, the
high- and low-rate halves of a ladder) are compared on the same resampled
originals: differences are paired by original. Tasks are drawn independently
(their originals are different images).

A draw is a weight matrix ``W`` (resamples x originals, how often each
original was drawn); a cell's resampled nan-mean is then
``W @ value / W @ defined``, one matrix product for all resamples and cells.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import DataError

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (NaN resamples ignored); (nan, nan) if none."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [tail, 100.0 - tail])
    return float(lo), float(hi)


def draw_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) counts: how often each of ``n`` originals is drawn in each resample."""
    idx = rng.integers(0, n, size=(resamples, n))
    # Row-wise bincount in one call: offset each resample's indices into its own block.
    flat = (idx + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


@dataclass
class CellSamples:
    """Bootstrap moments of one cell's per-original values: sums over each resample's draw."""

    total: np.ndarray   # (resamples,) sum of values
    square: np.ndarray  # (resamples,) sum of squared values
    count: np.ndarray   # (resamples,) number of defined values drawn

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / self.count, np.nan)

    def std(self) -> np.ndarray:
        """Population standard deviation of the resampled values (as numpy's default)."""
        m = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(self.count > 0, self.square / self.count, np.nan) - m * m
        return np.sqrt(np.clip(var, 0.0, None))


class OriginalBootstrap:
    """One fixed set of resamples of every task's originals, shared by every statistic of a report.

    ``per_feature``: the protocol's per-feature rows (``task``, ``image_id``, ...).
    Call :meth:`cell` with a key selecting rows and a value column to get that
    cell's resampled moments; the same originals are drawn for every cell of a task.
    """

    def __init__(self, per_feature, resamples: int = RESAMPLES, seed: int = SEED,
                 originals_by_task: dict[str, Sequence] | None = None):
        if resamples < 1:
            raise DataError(f"bootstrap resamples must be positive, got {resamples}")
        self.resamples = int(resamples)
        self.seed = int(seed)
        rng = np.random.default_rng(seed)
        if originals_by_task is None:
            originals_by_task = {t: sorted(g["image_id"].astype(str).unique())
                                 for t, g in per_feature.groupby("task", sort=True)}
        self._index: dict[str, dict[str, int]] = {}
        self._weights: dict[str, np.ndarray] = {}
        for task in sorted(originals_by_task):
            ids = list(originals_by_task[task])
            self._index[task] = {str(i): k for k, i in enumerate(ids)}
            self._weights[task] = draw_weights(len(ids), self.resamples, rng)

    def tasks(self) -> list[str]:
        return list(self._weights)

    def cell(self, task: str, image_ids, values) -> CellSamples:
        """Resampled moments of ``values`` (one per original in ``image_ids``; NaN = undefined)."""
        if task not in self._weights:
            raise DataError(f"no originals of task '{task}' in the bootstrap")
        index = self._index[task]
        v = np.full(len(index), np.nan)
        try:
            pos = np.fromiter((index[str(i)] for i in image_ids), dtype=np.int64, count=len(image_ids))
        except KeyError as exc:
            raise DataError(f"original '{exc.args[0]}' of task '{task}' is not in the bootstrap") from None
        v[pos] = np.asarray(values, dtype=np.float64)
        defined = np.isfinite(v)
        x = np.where(defined, v, 0.0)
        w = self._weights[task]
        return CellSamples(w @ x, w @ (x * x), w @ defined.astype(np.float64))


def mean_samples(cells: Sequence[CellSamples]) -> np.ndarray:
    """(resamples,) mean over cells of each cell's mean (a cell with no defined value is skipped)."""
    if not cells:
        raise DataError("no cell to average")
    stack = np.stack([c.mean() for c in cells])
    with np.errstate(invalid="ignore"):
        count = np.isfinite(stack).sum(axis=0)
        return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
