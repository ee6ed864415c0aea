"""Task accuracy, accuracy drop and per-frame task damage, defined once.

The benchmark table stores per image ``task_score`` (from the compressed
feature f^) and ``ref_task_score`` (from the uncompressed f): cls 1/0 (top-1
correct), seg mIoU in [0, 1], dpt RMSE in metres. From these:

| task | ``accuracy`` (reported)         | ``accuracy_drop`` (the tolerance unit)                 |
|------|---------------------------------|--------------------------------------------------------|
| cls  | top-1 accuracy, %               | percentage points below the uncompressed model         |
| seg  | mean per-image mIoU, % (x100)   | mIoU points (x100) below the uncompressed model        |
| dpt  | mean per-image RMSE, metres     | RMSE increase relative to the uncompressed model, %    |

A positive drop is worse than uncompressed; "within a tolerance of 1.0"
means ``accuracy_drop <= 1.0`` in that unit.

Per-frame *damage* (what the oracle minimises) uses the same units on one
image: cls 100 x (ref - score) points (a misclassification costs 100, i.e.
a changed top-1), seg 100 x (ref - score) mIoU points, dpt 100 x (score -
ref) / ref % of RMSE. Damage <= the task's :data:`UNCHANGED_TOLERANCE` counts
as "task output unchanged": 0 for cls (same top-1 decision), 0.1 mIoU point
for seg and 0.1 % RMSE for dpt -- well below one pixel class flip of a
typical object and below the depth noise between neighbouring QPs. An
output that scores *better* than the uncompressed one is no damage.
"""
from __future__ import annotations

import numpy as np

from cfqa_core.tasks import get_task

ACCURACY_NAME = {"cls": "top1_pct", "seg": "miou_pct", "dpt": "rmse_m"}
DROP_UNIT = {"cls": "top-1 points", "seg": "mIoU points", "dpt": "% RMSE"}
UNCHANGED_TOLERANCE = {"cls": 0.0, "seg": 0.1, "dpt": 0.1}


def accuracy(task: str, scores: np.ndarray) -> float:
    """The task's headline accuracy over a set of per-image scores (see the module table)."""
    spec = get_task(task)
    mean = float(np.mean(scores))
    return mean if spec.name == "dpt" else 100.0 * mean


def accuracy_drop(task: str, scores: np.ndarray, ref_scores: np.ndarray) -> float:
    """How much worse ``scores`` are than the uncompressed ``ref_scores``, in the tolerance unit."""
    get_task(task)
    s, r = float(np.mean(scores)), float(np.mean(ref_scores))
    if task == "dpt":
        return 100.0 * (s - r) / r if r > 0 else 0.0
    return 100.0 * (r - s)


def damage(task: str, scores: np.ndarray, ref_scores: np.ndarray) -> np.ndarray:
    """Per-image task damage (>= 0) in the tolerance unit; broadcasts over rate points."""
    get_task(task)
    s = np.asarray(scores, dtype=float)
    r = np.asarray(ref_scores, dtype=float)
    if task == "dpt":
        d = 100.0 * (s - r) / np.where(r > 0, r, np.inf)
    else:
        d = 100.0 * (r - s)
    return np.maximum(d, 0.0)


def unchanged(task: str, damage_values: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    """Whether each damage value counts as "task output unchanged"."""
    tol = UNCHANGED_TOLERANCE[get_task(task).name] if tolerance is None else tolerance
    return np.asarray(damage_values) <= tol + 1e-12
