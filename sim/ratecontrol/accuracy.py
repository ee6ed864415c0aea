"""Task accuracy and accuracy drop against ground truth, defined once.

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

Rate control is judged on output fidelity instead (:mod:`cfqa_core.fidelity`,
:mod:`cfqa_core.accounting`); accuracy against ground truth is reported beside it.
Offline only (it needs ground truth); the units' labels, which calibration files
record, are :data:`cfqa_edge.policies.calibration.DROP_UNIT`.
"""
from __future__ import annotations

import numpy as np

from cfqa_core.tasks import get_task


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
