"""Calibration files: metric thresholds that keep a task's accuracy within a tolerance, read at the edge.

For a threshold ``t`` on a metric, a CFQA-guided edge sends each image at the
cheapest rate point of the ladder whose metric meets ``t`` (the highest
quality when none does). A calibration file (written offline by ``cfqa
calibrate``, :mod:`cfqa_sim.ratecontrol.calibrate`) stores, per task and
codec, every candidate threshold from strict to loose with the accuracy drop
``drop(t)`` its replay gave, so that any tolerance can be resolved here
(``target_accuracy_drop`` of the policies), plus the headline threshold for the
tolerance it was made with. When even the best rate point drops more than the
tolerance the target is *unreachable*: ``threshold`` is null.

``drop(t)`` is noisy (a few images flip back and forth between rate points),
so the loosest acceptable threshold is chosen by a *rule* on the sequence of
drops (:func:`select_loosest`):

- ``isotonic`` (default): the loosest ``t`` whose drop, fitted as a
  non-decreasing function of looseness (pool-adjacent-violators), is within
  the tolerance -- isolated flips are averaged out;
- ``monotone``: the loosest ``t`` such that no stricter candidate exceeds the
  tolerance (running maximum; the most conservative);
- ``loosest``: the loosest ``t`` whose own drop is within the tolerance (the
  analogue of "the largest fixed QP within tolerance"; fits noise).

Drops are in the units of :mod:`cfqa_sim.ratecontrol.accuracy` (labels:
:data:`DROP_UNIT`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.errors import PolicyError

FORMAT = "cfqa-calibration/1"
RULES = ("isotonic", "monotone", "loosest")
DROP_UNIT = {"cls": "top-1 points", "seg": "mIoU points", "dpt": "% RMSE"}  # of each task's accuracy drop
_SLACK = 1e-9  # float round-off of drops computed from means


def isotonic_increasing(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``y`` (pool adjacent violators)."""
    means: list[float] = []
    sizes: list[int] = []
    for v in np.asarray(y, dtype=float):
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = sizes[-2] + sizes[-1]
            means[-2:] = [(means[-2] * sizes[-2] + means[-1] * sizes[-1]) / n]
            sizes[-2:] = [n]
    return np.repeat(means, sizes)


def select_loosest(drops: np.ndarray, tolerance: float, rule: str = "isotonic") -> int | None:
    """Index of the loosest entry of ``drops`` (ordered strict -> loose) acceptable under ``rule``."""
    d = np.asarray(drops, dtype=float)
    if rule == "isotonic":
        d = isotonic_increasing(d)
    elif rule == "monotone":
        d = np.maximum.accumulate(d)
    elif rule != "loosest":
        raise PolicyError(f"unknown calibration rule '{rule}' (known: {', '.join(RULES)})")
    ok = np.flatnonzero(d <= tolerance + _SLACK)
    return int(ok[-1]) if ok.size else None


@dataclass
class CalibrationCurve:
    """Every candidate threshold of one (task, codec, metric) with its drop, strict to loose."""

    task: str
    codec: str
    metric: str
    higher_is_better: bool
    n_images: int
    uncompressed_accuracy: float
    best_rate_drop: float                 # every image at the highest quality
    rule: str = "isotonic"
    thresholds: list[float] = field(default_factory=list)
    drops: list[float] = field(default_factory=list)
    mean_bytes: list[float] = field(default_factory=list)
    # Per rung of the ladder (priors of the policies' metric and rate models):
    rate_points: list[int] = field(default_factory=list)
    metric_median: list[float] = field(default_factory=list)
    bytes_median: list[float] = field(default_factory=list)

    def threshold_for(self, tolerance: float, rule: str | None = None) -> float | None:
        """The loosest threshold within ``tolerance`` under the rule; None if unreachable.

        +-inf (for lower-is-better metrics -inf) means "every image at the best rate".
        """
        if self.best_rate_drop > tolerance + _SLACK:
            return None
        k = select_loosest([self.best_rate_drop, *self.drops], tolerance, rule or self.rule)
        if not k:  # 0 (or None after pooling): only the best rate everywhere is within tolerance
            return math.inf if self.higher_is_better else -math.inf
        return self.thresholds[k - 1]

    def drop_at(self, threshold: float) -> float:
        """The replayed drop of ``threshold`` (the best-rate drop beyond the strictest candidate)."""
        out = self.best_rate_drop
        for t, d in zip(self.thresholds, self.drops):
            if (t >= threshold) if self.higher_is_better else (t <= threshold):
                out = d
        return out


def _finite_or_none(obj):
    """JSON has no inf/NaN: non-finite floats become null (read back as NaN)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _curve_from_json(entry: dict) -> CalibrationCurve:
    c = CalibrationCurve(**entry)
    c.metric_median = [math.nan if v is None else float(v) for v in c.metric_median]
    return c


@dataclass
class Calibration:
    """Thresholds of one metric for every (task, codec), at a headline tolerance."""

    metric: str
    higher_is_better: bool
    tolerance: float
    curves: dict[str, dict[str, CalibrationCurve]]
    source: str = ""

    def curve(self, task: str, codec: str) -> CalibrationCurve:
        if task not in self.curves:
            raise PolicyError(f"calibration {self.source or '(in memory)'} has no task '{task}' "
                              f"(has: {', '.join(self.curves)})")
        if codec not in self.curves[task]:
            raise PolicyError(f"calibration {self.source or '(in memory)'} has no codec '{codec}' for {task} "
                              f"(has: {', '.join(self.curves[task])})")
        return self.curves[task][codec]

    def to_json(self) -> dict:
        tasks = {}
        for task, per_codec in self.curves.items():
            tasks[task] = {}
            for codec, c in per_codec.items():
                thr = c.threshold_for(self.tolerance)
                tasks[task][codec] = {
                    "threshold": None if thr is None or not math.isfinite(thr) else thr,
                    "reachable": thr is not None,
                    "always_best_rate": thr is not None and not math.isfinite(thr),
                    "accuracy_drop": None if thr is None else c.drop_at(thr),
                    "unit": DROP_UNIT[task],
                    "curve": _finite_or_none(asdict(c)),
                }
        return {"format": FORMAT, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "tolerance": self.tolerance, "source": self.source, "tasks": tasks}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file written by ``cfqa calibrate`` (PolicyError if unusable)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyError(f"calibration file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read calibration file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PolicyError(f"{path} is not a calibration file (format '{FORMAT}' expected)")
    try:
        curves = {
            task: {codec: _curve_from_json(entry["curve"]) for codec, entry in per_codec.items()}
            for task, per_codec in data["tasks"].items()
        }
        return Calibration(str(data["metric"]), bool(data["higher_is_better"]), float(data["tolerance"]),
                           curves, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"calibration file {path} is malformed: {exc}") from None
