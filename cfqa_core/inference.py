"""Numpy in, numpy out: features, task outputs and scores from a SplitModel.

This is the one place where images become features and features become task
outputs; the benchmark, the cloud server and the evaluation all call it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cfqa_core.errors import DataError
from cfqa_core.models.split_model import SplitModel
from cfqa_core.tasks import get_task, make_views, merge_flip, miou, rmse


@dataclass
class TaskOutput:
    """One image's task result: ``logits`` (cls), ``mask`` (seg) or ``depth`` (dpt)."""

    task: str
    logits: np.ndarray | None = None
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None

    @property
    def top1(self) -> int:
        """Predicted class id (object classes are 1-based; head index 0 is class 1)."""
        return int(np.argmax(self.logits)) + 1


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def image_views(task: str, images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """(B, N, 3, S, S) pixels of a batch of images for ``task``."""
    return np.stack([make_views(task, im, size) for im in images])


@torch.inference_mode()
def extract_features(
    model: SplitModel,
    task: str,
    images: Sequence[np.ndarray] | np.ndarray,
    split: int | None = None,
    batch: int = 32,
) -> np.ndarray:
    """Per-image features (B, *feature_shape) for ``task`` at ``split`` (default: last block)."""
    views = image_views(task, images, model.image_size)
    return features_from_pixels(model, task, views, split, batch)


@torch.inference_mode()
def features_from_pixels(
    model: SplitModel, task: str, views: np.ndarray, split: int | None = None, batch: int = 32
) -> np.ndarray:
    """Features of preprocessed pixels (B, N, 3, S, S)."""
    b, n = views.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(views.reshape(b * n, *views.shape[2:]), dtype=np.float32))
    per_image = max(1, batch // n) * n
    chunks = [model.edge_feature(flat[s], task, split) for s in _batches(len(flat), per_image)]
    feats = torch.cat(chunks).numpy()
    return feats.reshape(b, n, *feats.shape[1:])


@torch.inference_mode()
def predict(
    model: SplitModel, task: str, features: np.ndarray, split: int | None = None, batch: int = 32
) -> list[TaskOutput]:
    """Task outputs from a batch of per-image features (B, N, ...), views merged."""
    spec = get_task(task)
    if features.ndim < 3 or features.shape[1] != spec.views:
        raise DataError(f"{task} features must be (B, {spec.views}, ...) per image, got {features.shape}")
    if not np.isfinite(features).all():
        raise DataError(f"{task} features contain NaN or Inf")
    b, n = features.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(features.reshape(b * n, *features.shape[2:]), dtype=np.float32))
    per_image = max(1, batch // n) * n
    out = torch.cat([model.cloud_predict(task, flat[s], split) for s in _batches(len(flat), per_image)])
    out = out.numpy().reshape(b, n, *out.shape[1:])
    results = []
    for o in out:
        if task == "cls":
            results.append(TaskOutput(task, logits=o[0]))
        elif task == "seg":
            results.append(TaskOutput(task, mask=merge_flip(o).argmax(axis=0).astype(np.uint8)))
        else:
            results.append(TaskOutput(task, depth=merge_flip(o).astype(np.float32)))
    return results


def task_score(output: TaskOutput, *, label: int | None = None, mask: np.ndarray | None = None,
               depth: np.ndarray | None = None, seg_classes: int = 11) -> float:
    """Score against ground truth: cls 1.0/0.0 (top-1 correct), seg mIoU, dpt RMSE (metres)."""
    if output.task == "cls":
        if label is None:
            raise DataError("cls score needs a ground-truth label")
        return float(output.top1 == label)
    if output.task == "seg":
        if mask is None:
            raise DataError("seg score needs a ground-truth mask")
        return miou(output.mask, mask, seg_classes)
    if depth is None:
        raise DataError("dpt score needs a ground-truth depth map")
    return rmse(output.depth, depth)
