"""Task metrics of a model on a set of scenes (the numbers in the model card)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from cfqa_core.data.dataset import SceneSet
from cfqa_core.inference import extract_features, predict
from cfqa_core.models.split_model import SplitModel
from cfqa_core.tasks import confusion, miou_from_confusion


def evaluate(model: SplitModel, scenes: SceneSet, batch: int = 32, progress: bool = False) -> dict:
    """Cls top-1, dataset-level Seg mIoU, Dpt RMSE and the mean-depth baseline RMSE.

    The baseline predicts each image's own mean ground-truth depth everywhere;
    a useful depth head must beat it by a wide margin.
    """
    n = len(scenes)
    correct = 0
    conf = np.zeros((model.meta.seg_classes,) * 2, dtype=np.int64)
    sq_err = sq_base = 0.0
    pixels = 0
    for start in tqdm(range(0, n, batch), desc="eval", disable=not progress, unit="batch"):
        part = scenes.subset(range(start, min(n, start + batch)))
        for out, label in zip(predict(model, "cls", extract_features(model, "cls", part.images)), part.labels):
            correct += int(out.top1 == int(label))
        for out, mask in zip(predict(model, "seg", extract_features(model, "seg", part.images)), part.masks):
            conf += confusion(out.mask, mask, model.meta.seg_classes)
        for out, depth in zip(predict(model, "dpt", extract_features(model, "dpt", part.images)), part.depths):
            sq_err += float(((out.depth - depth) ** 2).sum())
            sq_base += float(((depth - depth.mean()) ** 2).sum())
            pixels += depth.size
    return {
        "cls_top1": correct / n,
        "seg_miou": miou_from_confusion(conf),
        "dpt_rmse": float(np.sqrt(sq_err / pixels)),
        "dpt_rmse_mean_baseline": float(np.sqrt(sq_base / pixels)),
        "n_images": n,
    }
