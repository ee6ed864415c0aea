"""Finding the cheapest rate point whose metric meets a target, in few trial encodes.

Ladder indices run from 0 (highest quality) to R-1 (lowest). Every trial
encodes, decodes and scores one rate point. All searches keep what the
trials proved under the usual monotonicity (a lower quality never scores
better): the cheapest passing index found so far and the first failing
index above it; only the gap between them is still open.

- ``exhaustive``: scan from the cheapest rate point upwards until one passes
  (the reference: exactly the calibration's per-image rule, many encodes).
- ``bisect``: bisection of the open gap, starting from the previous frame's
  choice (warm start), so a stationary sequence converges in one or two.
- ``model``: a fitted metric-versus-rate model. The metric is mapped to a
  distortion ``D`` (see :class:`~cfqa_edge.policies.metric_target.MetricTarget`) and
  modelled per frame as ``D_f(i) = a_f + c_i``: a per-rung profile ``c``
  shared by the node's frames (from the calibration file, else fitted
  linearly in the rate point on the first frame, then refined online) and a
  per-frame offset ``a_f`` predicted from recent frames: an exponential
  average, or -- when the frame comes with a cheap statistic of its feature
  (:func:`feature_statistic`) -- an exponentially weighted linear regression
  of the offset on that statistic. The first trial goes to the cheapest rung
  predicted to pass;
  each further trial re-anchors the profile on the nearest measured rung
  and moves to the cheapest rung predicted to pass inside the open gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import PolicyError
from cfqa_edge.policies.api import PolicyContext
from cfqa_edge.policies.metric_target import MetricTarget

_D_LIMIT = 1e6  # distortions are clamped to this magnitude (PSNR of a lossless frame is +inf)


@dataclass
class SearchResult:
    index: int            # chosen ladder index
    metric: float         # metric value there (NaN if not assessed)
    met: bool             # metric meets the target
    reason: str | None = None


def feature_statistic(feature: np.ndarray) -> float:
    """log of the mean inverse token energy, ``log mean_t 1 / |f_t|^2`` (tokens on the last axis but one).

    Coding noise is nearly the same for every token at a given QP, so tokens
    of small norm lose the most cosine similarity: across images this
    statistic explains most of the spread of ``log(1 - cosine)`` at a fixed
    QP (r ~ 0.9 on the embedded model's features). O(size of the feature).
    """
    f = np.asarray(feature, dtype=np.float32)
    energy = np.einsum("...c,...c->...", f, f).astype(np.float64)
    return float(np.log(np.mean(1.0 / (energy + 1e-12))))


class OffsetPredictor:
    """A frame's offset from recent frames: EW mean, or EW regression on a statistic."""

    def __init__(self, smoothing: float = 0.5, memory: float = 0.95) -> None:
        self.smoothing = smoothing      # weight of the newest frame in the mean
        self.memory = memory            # per-frame weight decay of the regression
        self.mean: float | None = None
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._n = 0

    def add(self, a: float, s: float | None = None) -> None:
        self.mean = a if self.mean is None else self.mean + self.smoothing * (a - self.mean)
        if s is not None and math.isfinite(s):
            m = self.memory
            self._w, self._sx, self._sy = m * self._w + 1, m * self._sx + s, m * self._sy + a
            self._sxx, self._sxy = m * self._sxx + s * s, m * self._sxy + s * a
            self._n += 1

    def predict(self, s: float | None = None) -> float | None:
        if s is None or not math.isfinite(s) or self._n < 3:
            return self.mean
        mx, my = self._sx / self._w, self._sy / self._w
        var = self._sxx / self._w - mx * mx
        if var <= 1e-12:
            return self.mean
        beta = (self._sxy / self._w - mx * my) / var
        return my + beta * (s - mx)


class RungModel:
    """Per-node model ``D_f(i) = a_f + c_i`` of the distortion along the ladder."""

    def __init__(self, xs: np.ndarray, profile: np.ndarray | None = None, learn_rate: float = 0.2,
                 offset_smoothing: float = 0.5, stat_memory: float = 0.95) -> None:
        self.xs = np.asarray(xs, dtype=float)
        self.profile = None if profile is None else [float(v) for v in profile]
        self.learn_rate = learn_rate
        self.offsets = OffsetPredictor(offset_smoothing, stat_memory)

    def predict(self, measured: dict[int, float], j: int, stat: float | None = None) -> float:
        """Predicted distortion at index ``j``: anchored on the nearest measured rung, else the offset."""
        c = self.profile
        if measured:
            k = min(measured, key=lambda i: (abs(i - j), i))
            return measured[k] + c[j] - c[k]
        return self.offsets.predict(stat) + c[j]

    def update(self, measured: dict[int, float], stat: float | None = None) -> None:
        """Learn from one frame's measured distortions (fit the profile if there is none yet)."""
        if not measured:
            return
        if self.profile is None:
            if len(measured) < 2:
                return
            idx = sorted(measured)
            slope = float(np.polyfit(self.xs[idx], [measured[i] for i in idx], 1)[0])
            if not slope > 0:
                slope = 1e-3  # degenerate fit: keep the ordering of the ladder
            self.profile = [slope * (x - self.xs[0]) for x in self.xs.tolist()]
        c = self.profile  # plain floats: a handful of rungs, called once per frame
        items = list(measured.items())
        a = sum(d - c[i] for i, d in items) / len(items)
        if len(items) >= 2:
            for i, d in items:
                c[i] += self.learn_rate * (d - a - c[i])
            a = sum(d - c[i] for i, d in items) / len(items)
        self.offsets.add(a, stat)

    @property
    def ready(self) -> bool:
        return self.profile is not None and self.offsets.mean is not None


class TargetSearch:
    """Stateful search of one node for the cheapest ladder index meeting a target."""

    def __init__(self, mode: str = "model", max_encodes: int = 4, margin: float = 0.0,
                 profile: np.ndarray | None = None, learn_rate: float = 0.2, offset_smoothing: float = 0.5,
                 stat_memory: float = 0.95) -> None:
        self.mode = mode
        self.max_encodes = max_encodes
        self.margin = margin
        self._profile = profile
        self._learn_rate = learn_rate
        self._offset_smoothing = offset_smoothing
        self._stat_memory = stat_memory
        self.model: RungModel | None = None
        self.previous: int | None = None

    def _ensure_model(self, ladder: tuple[int, ...]) -> RungModel:
        if self.model is None or self.model.xs.size != len(ladder):
            profile = self._profile if self._profile is not None and len(self._profile) == len(ladder) else None
            self.model = RungModel(np.asarray(ladder, dtype=float), profile, self._learn_rate,
                                   self._offset_smoothing, self._stat_memory)
        return self.model

    # ---- one frame -------------------------------------------------------------------
    def find(self, ctx: PolicyContext, target: MetricTarget, lo: int = 0, stat: float | None = None,
             learn: bool = True) -> SearchResult:
        """Search indices ``lo..R-1``; returns the cheapest passing index found, else ``lo`` (not met).

        ``stat``: the frame's :func:`feature_statistic` when known (model search only);
        ``learn=False`` for a second search of the same frame (it is learnt from once).
        """
        ladder = ctx.ladder
        hi = len(ladder) - 1
        lo = min(max(lo, 0), hi)
        model = self._ensure_model(ladder) if self.mode == "model" else None
        dmax = target.max_distortion
        values: dict[int, float] = {}   # index -> metric value
        dist: dict[int, float] = {}     # index -> distortion

        def trial(i: int) -> bool:
            metrics = ctx.encode(ladder[i]).metrics
            if target.metric not in metrics:
                raise PolicyError(f"metric '{target.metric}' is not scored at the edge "
                                  f"(scored: {', '.join(metrics) or 'none'})")
            v = float(metrics[target.metric])
            values[i] = v
            if not math.isnan(v):
                dist[i] = min(max(target.distortion(v), -_D_LIMIT), _D_LIMIT)
            return target.meets(v)

        passed: set[int] = set()
        failed: set[int] = set()
        budget = len(ladder) if self.mode == "exhaustive" else max(1, self.max_encodes)
        nxt = self._first(ladder, lo, hi, dmax, model, stat)
        while nxt is not None and len(values) < budget:
            (passed if trial(nxt) else failed).add(nxt)
            nxt = self._next(lo, hi, dmax, passed, failed, dist, model)
        if model is not None and learn:
            model.update(dist, stat)

        if passed:
            best = max(passed)
            result = SearchResult(best, values[best], True)
        else:
            top = min(failed) if failed else lo
            got = f"{ladder[top]} gives {target.metric} {values.get(top, math.nan):.6g}, needs {target.describe()}"
            if lo in failed:
                reason = f"unreachable: {got}" + (" (highest quality the link allows)" if lo > 0 else "")
            else:
                reason = f"encode budget: {len(values)} encodes spent; {got}"
            result = SearchResult(top, values.get(top, math.nan), False, reason)
        self.previous = result.index
        return result

    def _first(self, ladder, lo: int, hi: int, dmax: float, model: RungModel | None, stat: float | None) -> int:
        if self.mode == "exhaustive":
            return hi
        if model is not None and model.ready:
            ok = [j for j in range(lo, hi + 1) if model.predict({}, j, stat) <= dmax - self.margin]
            return max(ok) if ok else lo
        if self.previous is not None:
            return min(max(self.previous, lo), hi)
        return (lo + hi + 1) // 2

    def _next(self, lo: int, hi: int, dmax: float, passed: set[int], failed: set[int],
              dist: dict[int, float], model: RungModel | None) -> int | None:
        """The next index to try, or None when the open gap is empty (or nothing can improve)."""
        best = max(passed) if passed else None
        above = [f for f in failed if best is None or f > best]
        if best is None:
            if lo in failed:
                return None  # even the highest quality allowed fails
            gap = (lo, min(failed) - 1) if failed else (lo, hi)
        else:
            gap = (best + 1, (min(above) - 1) if above else hi)
        a, b = gap
        if a > b:
            return None
        if self.mode == "exhaustive":
            return b  # keep scanning upwards in quality from the cheapest untested
        if model is not None and model.profile is not None and dist:
            # Cheaper than a pass: predicted as is; towards quality after failures: with the margin.
            limit = dmax - (0.0 if best is not None else self.margin)
            ok = [j for j in range(a, b + 1) if model.predict(dist, j) <= limit]
            if ok:
                return max(ok)
            return None if best is not None else a
        # Bisection of the open gap (the warm start was the first trial).
        if best is not None:
            return (a + b + 1) // 2
        return (a + b) // 2
