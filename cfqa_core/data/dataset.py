"""Deterministic splits of the synthetic scenes, a disk cache, and user folders.

Splits are disjoint ranges of scene seeds, so every machine renders the same
images. The bench split holds separate originals per task (100 each, as the
paper's Cls/Seg/Dpt sets).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cfqa_core.errors import DataError

SPLIT_BASE = {"train": 0, "val": 10_000_000, "bench": 20_000_000}
BENCH_TASK_OFFSET = {"cls": 0, "seg": 1_000_000, "dpt": 2_000_000}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class SceneSet:
    """A stack of scenes: images (n, H, W, 3) uint8, masks (n, H, W) uint8,
    depths (n, H, W) float32 metres, labels (n,) int (1..10, 0 = unknown), ids."""

    images: np.ndarray
    masks: np.ndarray | None
    depths: np.ndarray | None
    labels: np.ndarray | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray | list[int]) -> SceneSet:
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return SceneSet(self.images[idx], pick(self.masks), pick(self.depths), pick(self.labels),
                        [self.ids[i] for i in idx])


def cache_dir() -> Path:
    """``$CFQA_CACHE_DIR``, else ``.cache`` in the source checkout, else ``~/.cache/cfqa``."""
    env = os.environ.get("CFQA_CACHE_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / ".cache"
    return Path.home() / ".cache" / "cfqa"


def split_seeds(split: str, n: int, task: str | None = None, start: int = 0) -> list[int]:
    """Seeds of the first ``n`` scenes of ``split`` (bench: per ``task``)."""
    if split not in SPLIT_BASE:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLIT_BASE)})")
    base = SPLIT_BASE[split]
    if split == "bench":
        if task not in BENCH_TASK_OFFSET:
            raise DataError("the bench split needs a task: cls, seg or dpt")
        base += BENCH_TASK_OFFSET[task]
    return list(range(base + start, base + start + n))


def render_set(seeds: list[int], size: int = 168, workers: int = 1, progress: bool = False) -> SceneSet:
    """Render scenes for ``seeds`` (no cache)."""
    from cfqa_core.data.scenes import render_batch

    scenes = render_batch(seeds, size=size, workers=workers, progress=progress)
    return SceneSet(
        images=np.stack([s.image for s in scenes]),
        masks=np.stack([s.mask for s in scenes]),
        depths=np.stack([s.depth for s in scenes]).astype(np.float32),
        labels=np.array([s.label for s in scenes], dtype=np.int64),
        ids=[f"scene-{s}" for s in seeds],
    )


def _cache_key(seeds: list[int], size: int) -> str:
    from cfqa_core.data import scenes

    # Rendering code changes invalidate the cache: hash its source too.
    src = Path(scenes.__file__).read_bytes()
    h = hashlib.sha256(src + json.dumps([seeds[0], seeds[-1], len(seeds), size]).encode())
    return h.hexdigest()[:16]


def load_split(
    split: str,
    n: int,
    *,
    task: str | None = None,
    size: int = 168,
    workers: int = 1,
    progress: bool = False,
    cache: bool = True,
) -> SceneSet:
    """The first ``n`` scenes of a split, rendered once and cached as .npz."""
    seeds = split_seeds(split, n, task)
    if not cache:
        return render_set(seeds, size, workers, progress)
    path = cache_dir() / "scenes" / f"{split}-{task or 'all'}-{n}-{_cache_key(seeds, size)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return SceneSet(z["images"], z["masks"], z["depths"], z["labels"], [f"scene-{s}" for s in seeds])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # corrupt cache entry: rebuild, never reuse
    data = render_set(seeds, size, workers, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data.images, masks=data.masks, depths=data.depths, labels=data.labels)
    tmp.replace(path)
    return data


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 image from disk (DataError naming the file if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_folder(folder: str | Path) -> SceneSet:
    """User images in ``folder`` (+ optional ``labels.json`` {stem: class id},
    ``masks/<stem>.png`` class masks and ``depth/<stem>.npy`` metric depth).

    Optional annotations must be complete when present: a half-annotated
    folder is an error rather than silently scored on a subset.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = [read_image(p) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        size = min(min(s[:2]) for s in shapes)
        images = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
    stems = [p.stem for p in files]
    labels = None
    if (folder / "labels.json").is_file():
        table = json.loads((folder / "labels.json").read_text())
        missing = [s for s in stems if s not in table]
        if missing:
            raise DataError(f"labels.json has no label for {', '.join(missing[:5])}")
        labels = np.array([int(table[s]) for s in stems], dtype=np.int64)
    masks = _optional_stack(folder / "masks", stems, ".png", lambda p: np.asarray(Image.open(p)).astype(np.uint8))
    depths = _optional_stack(folder / "depth", stems, ".npy", lambda p: np.load(p).astype(np.float32))
    return SceneSet(np.stack(images), masks, depths, labels, stems)


def _optional_stack(sub: Path, stems: list[str], suffix: str, reader) -> np.ndarray | None:
    if not sub.is_dir():
        return None
    paths = [sub / f"{s}{suffix}" for s in stems]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{sub} lacks {', '.join(missing[:5])}")
    return np.stack([reader(p) for p in paths])
