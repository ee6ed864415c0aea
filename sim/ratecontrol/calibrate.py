"""Calibration fitting (offline): replay threshold rules over the benchmark table (``cfqa calibrate``).

For a threshold ``t`` on a metric, a CFQA-guided edge sends each image at the
cheapest rate point of the ladder whose metric meets ``t`` (the highest
quality when none does). Replaying that rule over the benchmark table gives
the accuracy drop ``drop(t)`` against ground truth (units in
:mod:`cfqa_sim.ratecontrol.accuracy`). Candidate thresholds are the metric
values in the table (the choice only changes there), ordered from strict to
loose, after the virtual strictest one "every image at the best rate".

The result is a :class:`~cfqa_edge.policies.calibration.Calibration`, the file
the edge reads; how a tolerance picks the loosest threshold from the noisy
drops (the rules) is defined there.
"""
from __future__ import annotations

import math

import numpy as np

from cfqa_core.errors import DataError, PolicyError
from cfqa_edge.policies.calibration import RULES, Calibration, CalibrationCurve
from cfqa_edge.policies.metric_target import metric_direction
from cfqa_sim.ratecontrol.accuracy import accuracy, accuracy_drop
from cfqa_sim.ratecontrol.replay import ReplayArrays, metric_columns, replay_arrays, tasks_and_codecs


def threshold_choices(values: np.ndarray, threshold: float, higher_is_better: bool) -> np.ndarray:
    """Per image, the ladder index of the cheapest rate point meeting ``threshold`` (0 if none)."""
    ok = values >= threshold if higher_is_better else values <= threshold
    ok &= ~np.isnan(values)
    n_r = values.shape[1]
    last = n_r - 1 - np.argmax(ok[:, ::-1], axis=1)
    return np.where(ok.any(axis=1), last, 0)


def calibrate_arrays(arr: ReplayArrays, metric: str, higher_is_better: bool,
                     rows: np.ndarray | None = None, rule: str = "isotonic") -> CalibrationCurve:
    """The calibration curve of ``metric`` on ``arr`` (optionally only image ``rows``)."""
    if rule not in RULES:
        raise PolicyError(f"unknown calibration rule '{rule}' (known: {', '.join(RULES)})")
    if rows is not None:
        arr = arr.subset(np.asarray(rows))
    if arr.n_images == 0:
        raise DataError(f"calibration of {arr.task}/{arr.codec}: no images")
    values = arr.metric(metric)
    task = arr.task
    idx = np.arange(arr.n_images)
    cand = np.unique(values[np.isfinite(values)])
    cand = cand[::-1] if higher_is_better else cand  # strict -> loose
    curve = CalibrationCurve(task, arr.codec, metric, higher_is_better, arr.n_images,
                             accuracy(task, arr.ref_score),
                             accuracy_drop(task, arr.task_score[:, 0], arr.ref_score), rule,
                             rate_points=list(arr.rate_points),
                             metric_median=[float(v) for v in np.nanmedian(values, axis=0)],
                             bytes_median=[float(v) for v in np.median(arr.bytes, axis=0)])
    for t in cand:
        choice = threshold_choices(values, float(t), higher_is_better)
        curve.thresholds.append(float(t))
        curve.drops.append(accuracy_drop(task, arr.task_score[idx, choice], arr.ref_score))
        curve.mean_bytes.append(float(arr.bytes[idx, choice].mean()))
    return curve


def calibrate(frame, metric: str, tasks: list[str] | None = None, codecs: list[str] | None = None,
              tolerance: float = 1.0, higher_is_better: bool | None = None, source: str = "",
              rule: str = "isotonic") -> Calibration:
    """Calibrate ``metric`` on a benchmark table (pandas) for the given tasks and codecs."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise PolicyError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if metric not in metric_columns(frame):
        raise DataError(f"benchmark table has no metric column '{metric}' (has: {', '.join(metric_columns(frame))})")
    hib, _ = metric_direction(metric, higher_is_better)
    present = tasks_and_codecs(frame)
    curves: dict[str, dict[str, CalibrationCurve]] = {}
    for task in tasks or sorted(present):
        if task not in present:
            raise DataError(f"benchmark table has no task '{task}' (has: {', '.join(present)})")
        for codec in codecs or present[task]:
            curves.setdefault(task, {})[codec] = calibrate_arrays(replay_arrays(frame, task, codec), metric, hib,
                                                                   rule=rule)
    return Calibration(metric, hib, float(tolerance), curves, source)
