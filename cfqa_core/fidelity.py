"""How far a task output from a compressed feature moved from the uncompressed output.

Rate control is judged on *fidelity*: a frame succeeds when the cloud's
output from the decoded feature stays faithful to the output the
uncompressed feature would give, two-sided and without labels (a codec
that happens to "improve" an output against ground truth has still changed
it). ``output_change`` is one number per frame, 0 = unchanged, larger =
worse:

- cls: 1.0 if the top-1 class changed, else 0.0;
- seg: the fraction of pixels whose label changed;
- dpt: RMSE to the uncompressed depth divided by the mean uncompressed depth.

A frame is *within tolerance* when ``output_change <= tolerance[task]``.
The defaults (:data:`DEFAULT_TOLERANCE`) are: Cls top-1 unchanged, Seg at
least 98 % of pixels keep their label, Dpt RMSE at most 2 % of the mean
depth. Accuracy against ground truth is reported beside it, never instead.
Numpy only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cfqa_core.errors import DataError

DEFAULT_TOLERANCE: Mapping[str, float] = {"cls": 0.0, "seg": 0.02, "dpt": 0.02}
TOLERANCE_UNITS: Mapping[str, str] = {
    "cls": "top-1 changed (0/1)", "seg": "fraction of pixels relabelled", "dpt": "RMSE / mean depth",
}


def output_change(task: str, output: Any, reference: Any) -> float:
    """Change of ``output`` (from f-hat) against ``reference`` (from f); objects with logits/mask/depth."""
    if task == "cls":
        return float(int(np.argmax(output.logits)) != int(np.argmax(reference.logits)))
    if task == "seg":
        a, b = np.asarray(output.mask), np.asarray(reference.mask)
        if a.shape != b.shape:
            raise DataError(f"seg masks differ in shape: {a.shape} vs {b.shape}")
        return float(np.mean(a != b))
    if task == "dpt":
        a, b = np.asarray(output.depth, np.float64), np.asarray(reference.depth, np.float64)
        if a.shape != b.shape:
            raise DataError(f"depth maps differ in shape: {a.shape} vs {b.shape}")
        return float(np.sqrt(np.mean((a - b) ** 2)) / max(float(np.mean(np.abs(b))), 1e-9))
    raise DataError(f"unknown task '{task}' (known: cls, seg, dpt)")


def tolerance_for(task: str, tolerance: Mapping[str, float] | None = None) -> float:
    """The tolerance of ``task``: ``tolerance[task]`` if given, else the default."""
    merged = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    if task not in merged:
        raise DataError(f"no output tolerance for task '{task}'")
    value = float(merged[task])
    if not np.isfinite(value) or value < 0:
        raise DataError(f"output tolerance of {task} must be a finite number >= 0, got {value}")
    return value


def within_tolerance(task: str, change: np.ndarray | float,
                     tolerance: Mapping[str, float] | None = None) -> np.ndarray:
    """Boolean array: the output change is finite and within the task's tolerance."""
    change = np.asarray(change, dtype=np.float64)
    # A tiny slack so that float noise in a recomputed change does not flip a verdict.
    return np.isfinite(change) & (change <= tolerance_for(task, tolerance) + 1e-12)
