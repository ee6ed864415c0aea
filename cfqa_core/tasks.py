"""Task definitions, view preprocessing and task scores — numpy only.

Each task fixes which views of an image are fed to the backbone (the paper's
preprocessing: Cls resizes, Seg and Dpt use the image and its horizontal
flip) and which blocks' tokens form its feature:

| task | views | blocks                         | feature shape      |
|------|-------|--------------------------------|--------------------|
| cls  | 1     | split                          | (1, T, D)          |
| seg  | 2     | split                          | (2, T, D)          |
| dpt  | 2     | dpt blocks below split + split | (2, L, T, D)       |
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from cfqa_core.errors import DataError
from cfqa_core.task_names import TASKS  # noqa: F401 - re-exported; the names live in one light module

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    views: int
    score_name: str  # top1 | miou | rmse
    higher_is_better: bool


_SPECS = {
    "cls": TaskSpec("cls", 1, "top1", True),
    "seg": TaskSpec("seg", 2, "miou", True),
    "dpt": TaskSpec("dpt", 2, "rmse", False),
}


# The paper's ground-truth distortion grows (+1) or falls (-1) as quality drops:
# cls rank rises, seg mIoU difference falls, dpt RMSE difference rises.
DISTORTION_DIRECTION = {"cls": +1, "seg": -1, "dpt": +1}


def get_task(name: str) -> TaskSpec:
    if name not in _SPECS:
        raise DataError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return _SPECS[name]


def dpt_blocks(depth: int) -> tuple[int, ...]:
    """The four blocks the depth head reads: a quarter, half, three quarters and all of the depth."""
    return (depth // 4, depth // 2, 3 * depth // 4, depth)


def feature_blocks(task: str, split: int, depth: int) -> tuple[int, ...]:
    """Blocks whose tokens the edge sends for ``task`` when split after block ``split``."""
    get_task(task)
    if not 1 <= split <= depth:
        raise DataError(f"split block {split} outside 1..{depth}")
    if task != "dpt":
        return (split,)
    return tuple(sorted({b for b in dpt_blocks(depth) if b < split} | {split}))


def feature_shape(task: str, split: int, depth: int, tokens: int, dim: int) -> tuple[int, ...]:
    """Expected feature shape for ``task`` at ``split`` (see the module table)."""
    views = get_task(task).views
    if task == "dpt":
        return (views, len(feature_blocks(task, split, depth)), tokens, dim)
    return (views, tokens, dim)


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 (or float in [0, 1]) -> float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"expected an H x W x 3 image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of an H x W x 3 uint8 image to size x size."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a class mask or depth map to size x size."""
    if label.shape[:2] == (size, size):
        return label
    mode = "F" if label.dtype.kind == "f" else None
    img = Image.fromarray(label.astype(np.float32) if mode else label, mode=mode)
    return np.asarray(img.resize((size, size), Image.NEAREST)).astype(label.dtype)


def make_views(task: str, image: np.ndarray, size: int) -> np.ndarray:
    """Normalised N x 3 x S x S pixels of an image for ``task`` (N = 1 or the flip pair)."""
    spec = get_task(task)
    if image.dtype != np.uint8:
        image = np.clip(to_rgb_float(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    x = (to_rgb_float(resize_image(image, size)) - IMAGENET_MEAN) / IMAGENET_STD
    x = x.transpose(2, 0, 1)
    views = [x] if spec.views == 1 else [x, x[:, :, ::-1]]
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)


def merge_flip(per_view: np.ndarray) -> np.ndarray:
    """Average a (2, ..., H, W) prediction over the image and its flipped-back mirror."""
    return 0.5 * (per_view[0] + per_view[1][..., ::-1])


# ---- task scores against ground truth -------------------------------------------------


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth of one image."""
    if pred.shape != gt.shape:
        raise DataError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    idx = gt.astype(np.int64) * num_classes + pred.astype(np.int64)
    conf = np.bincount(idx.ravel(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (gt rows, pred columns) to accumulate a dataset-level mIoU."""
    idx = gt.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(idx.ravel(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def rmse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Root mean squared error in metres over valid (finite, positive) ground-truth pixels."""
    if pred.shape != gt.shape:
        raise DataError(f"depth shapes differ: {pred.shape} vs {gt.shape}")
    valid = np.isfinite(gt) & (gt > 0)
    return float(np.sqrt(np.mean((pred[valid] - gt[valid]) ** 2)))


def label_rank(logits: np.ndarray, target: int) -> int:
    """Rank of ``target`` in ``logits`` (1 = the top prediction)."""
    return int((logits > logits[target]).sum()) + 1
