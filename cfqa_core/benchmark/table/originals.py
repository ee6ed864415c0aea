"""The original features of the benchmark: 100 per task from the bench split.

As in the paper, Cls originals are images the model classifies correctly
(so their own rank is 1); Seg and Dpt take the first images of their split.
Originals, their ground truth and the reference (uncompressed) scores are
cached in one ``.npz`` per task.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfqa_core.data.dataset import SceneSet, load_split
from cfqa_core.errors import DataError
from cfqa_core.inference import extract_features, predict, task_score


@dataclass
class Originals:
    """Originals of one task: features (n, *shape), ids, ground truth, reference scores."""

    task: str
    ids: list[str]
    features: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    depths: np.ndarray
    ref_scores: np.ndarray
    value_range: list

    def gt(self, i: int) -> dict:
        """Ground truth of original ``i`` as keyword arguments of ``task_score``."""
        return {"label": int(self.labels[i]), "mask": self.masks[i], "depth": self.depths[i]}


def _select(model, task: str, n: int, progress: bool) -> tuple[SceneSet, np.ndarray]:
    if task != "cls":
        scenes = load_split("bench", n, task=task, workers=2, progress=progress)
        return scenes, extract_features(model, task, scenes.images)
    pool = load_split("bench", 4 * n, task=task, workers=2, progress=progress)
    feats = extract_features(model, task, pool.images)
    correct = [i for i, out in enumerate(predict(model, task, feats)) if out.top1 == int(pool.labels[i])]
    if len(correct) < n:
        raise DataError(f"only {len(correct)} of {len(pool)} bench images are classified correctly; need {n}")
    keep = np.array(correct[:n])
    return pool.subset(keep), feats[keep]


def build_originals(model, task: str, n: int, progress: bool = False) -> Originals:
    """Select originals, extract their features and score the uncompressed model on them."""
    scenes, feats = _select(model, task, n, progress)
    refs = predict(model, task, feats)
    scores = np.array([
        task_score(o, label=int(scenes.labels[i]), mask=scenes.masks[i], depth=scenes.depths[i],
                   seg_classes=model.meta.seg_classes)
        for i, o in enumerate(refs)
    ])
    vr = model.meta.feature_ranges.get(task)
    if vr is None:
        lo, hi = np.quantile(feats, [1e-4, 1 - 1e-4])
        vr = (float(lo), float(hi))
    return Originals(task, scenes.ids, feats, scenes.labels, scenes.masks, scenes.depths, scores,
                     [list(p) for p in vr] if isinstance(vr[0], (list, tuple)) else list(vr))


def save_originals(orig: Originals, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array(orig.ids), features=orig.features, labels=orig.labels, masks=orig.masks,
             depths=orig.depths, ref_scores=orig.ref_scores, value_range=np.array(orig.value_range, dtype=np.float64))
    tmp.replace(path)


def load_originals(task: str, path: Path) -> Originals | None:
    """Cached originals, or None when absent or unreadable (a corrupt entry is removed, never reused)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return Originals(task, [str(s) for s in z["ids"]], z["features"], z["labels"], z["masks"],
                             z["depths"], z["ref_scores"], z["value_range"].tolist())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        path.unlink(missing_ok=True)
        return None
