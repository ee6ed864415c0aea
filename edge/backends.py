"""Edge feature extraction backends: PyTorch (the reference) and ONNX Runtime (torch-free).

Both run the backbone once per image on the union of the views and blocks
the requested tasks need (cls uses the first of the seg/dpt views, which is
the same preprocessed image) and return each task's feature as
``cfqa_core.tasks.feature_shape`` describes, float32.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cfqa_core.errors import DataError, ModelError
from cfqa_core.tasks import dpt_blocks, feature_blocks, get_task, make_views

ONNX_META_FILE = "meta.json"
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class ModelInfo:
    """What the edge needs to know about a model besides its weights."""

    name: str
    version: str
    depth: int
    image_size: int
    num_tokens: int
    embed_dim: int
    feature_ranges: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_model(cls, model) -> ModelInfo:
        """From a torch ``SplitModel``."""
        meta = model.meta
        return cls(meta.name, str(meta.version), model.depth, model.image_size, model.num_tokens,
                   model.backbone.cfg.embed_dim, {k: list(v) for k, v in meta.feature_ranges.items()},
                   tuple(meta.class_names))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        try:
            return cls(str(d["name"]), str(d["version"]), int(d["depth"]), int(d["image_size"]),
                       int(d["num_tokens"]), int(d["embed_dim"]), dict(d.get("feature_ranges", {})),
                       tuple(d.get("class_names", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"edge model metadata is incomplete or malformed: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    def value_range(self, task: str, split: int | None = None) -> Any:
        """The truncation range of ``task``'s feature at ``split`` (default: the last block); see :func:`task_range`."""
        if task not in self.feature_ranges:
            raise ModelError(f"model '{self.name}' has no feature range for task '{task}'")
        return task_range(self.feature_ranges[task], task, self.depth if split is None else split, self.depth)


def task_range(calibrated: Any, task: str, split: int, depth: int) -> Any:
    """The range to pack a feature with, from the model's calibrated ``feature_ranges[task]``.

    A single ``[lo, hi]`` applies to the whole feature. A list of pairs holds
    one range per depth-head block (``dpt_blocks``, calibrated at the last
    split); the feature at ``split`` carries ``feature_blocks(task, split)``, and
    a block without its own range takes that of the next deeper calibrated
    block, whose wider range covers it (token magnitudes grow with depth).
    """
    arr = np.asarray(calibrated, dtype=np.float64)
    if arr.shape == (2,):
        return [float(arr[0]), float(arr[1])]
    calibrated_blocks = dpt_blocks(depth)
    if arr.ndim != 2 or arr.shape != (len(calibrated_blocks), 2):
        raise ModelError(f"{task} feature range must be [lo, hi] or {len(calibrated_blocks)} such pairs, "
                         f"got shape {arr.shape}")
    by_block = dict(zip(calibrated_blocks, arr.tolist()))
    out = []
    for b in feature_blocks(task, split, depth):
        deeper = [c for c in calibrated_blocks if c >= b]
        out.append(by_block[deeper[0]] if deeper else by_block[calibrated_blocks[-1]])
    return out if task == "dpt" else out[0]


def split_outputs(split: int, depth: int) -> tuple[int, ...]:
    """Blocks an edge graph for ``split`` outputs: the split block and the dpt blocks below it."""
    return feature_blocks("dpt", split, depth)


class FeatureBackend(ABC):
    """Image -> per-task features at a fixed split."""

    name: str = ""

    def __init__(self, info: ModelInfo, split: int | None) -> None:
        self.info = info
        self.split = info.depth if split is None else int(split)
        if not 1 <= self.split <= info.depth:
            raise DataError(f"split block {self.split} outside 1..{info.depth}")

    def value_range(self, task: str) -> Any:
        """Truncation range of ``task``'s feature at this backend's split."""
        return self.info.value_range(task, self.split)

    @abstractmethod
    def run_blocks(self, pixels: np.ndarray, blocks: Sequence[int]) -> list[np.ndarray]:
        """Pre-norm tokens after each of ``blocks`` for pixels (N, 3, S, S) float32."""

    def features(self, image: np.ndarray, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Each task's feature for one H x W x 3 image."""
        if not tasks:
            raise DataError("no task requested")
        views = max(get_task(t).views for t in tasks)
        pixels = make_views("seg" if views == 2 else "cls", image, self.info.image_size)
        blocks = sorted({b for t in tasks for b in feature_blocks(t, self.split, self.info.depth)})
        out = dict(zip(blocks, self.run_blocks(pixels, blocks)))
        feats = {}
        for t in tasks:
            n = get_task(t).views
            fb = feature_blocks(t, self.split, self.info.depth)
            if t == "dpt":
                feats[t] = np.ascontiguousarray(np.stack([out[b][:n] for b in fb], axis=1), dtype=np.float32)
            else:
                feats[t] = np.ascontiguousarray(out[fb[0]][:n], dtype=np.float32)
        return feats


class TorchBackend(FeatureBackend):
    """The PyTorch ``SplitModel`` (the reference the ONNX graphs are checked against)."""

    name = "torch"

    def __init__(self, model, split: int | None = None, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        super().__init__(ModelInfo.from_model(model), split)
        self.model = model

    @classmethod
    def load(cls, model: str, split: int | None = None, threads: int | None = None) -> TorchBackend:
        from cfqa_core.models import load_model

        return cls(load_model(model), split, threads)

    def run_blocks(self, pixels: np.ndarray, blocks: Sequence[int]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self.model.backbone.intermediate(torch.from_numpy(np.ascontiguousarray(pixels)), list(blocks))
        return [o.numpy() for o in outs]


def onnx_file(folder: Path, split: int) -> Path:
    return Path(folder) / f"edge_split{split}.onnx"


def read_onnx_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / ONNX_META_FILE
    if not path.is_file():
        raise ModelError(f"{folder} is not an edge ONNX export ({ONNX_META_FILE} missing); run 'cfqa edge export'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: invalid JSON ({exc.msg})") from None


class OnnxBackend(FeatureBackend):
    """ONNX Runtime on the graphs written by ``cfqa edge export`` (no torch needed)."""

    name = "onnx"

    def __init__(self, folder: str | Path, split: int | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        meta = read_onnx_meta(folder)
        info = ModelInfo.from_dict(meta.get("model", {}))
        super().__init__(info, split)
        path = onnx_file(Path(folder), self.split)
        if not path.is_file():
            have = ", ".join(str(s) for s in sorted(meta.get("splits", {}), key=int)) or "none"
            raise ModelError(f"no edge graph for split {self.split} in {folder} (exported splits: {have})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        available = ort.get_available_providers()
        missing = [p for p in providers or () if p not in available]
        if missing:
            raise ModelError(f"ONNX Runtime here lacks {', '.join(missing)} (available: {', '.join(available)})")
        chosen = list(providers or available)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        self.providers = self.session.get_providers()
        self.outputs = {int(o.name.split("_")[-1]): o.name for o in self.session.get_outputs()}
        self.input_name = self.session.get_inputs()[0].name

    def run_blocks(self, pixels: np.ndarray, blocks: Sequence[int]) -> list[np.ndarray]:
        missing = [b for b in blocks if b not in self.outputs]
        if missing:
            raise ModelError(f"edge graph for split {self.split} does not output blocks {missing}")
        names = [self.outputs[b] for b in blocks]
        return self.session.run(names, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})


def make_backend(kind: str, *, model: str = "embedded", split: int | None = None,
                 onnx_dir: str | Path | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> FeatureBackend:
    """A backend by name: ``torch`` loads ``model``; ``onnx`` reads the export in ``onnx_dir``
    and runs on ``providers`` (ONNX Runtime execution providers; default: all available);
    ``auto`` is ``onnx`` on ``onnx_dir``, or on the user-cache export of ``model`` (made now, with
    torch, at first use; see ``cfqa_edge.export_cache``), and ``torch`` only without ONNX Runtime."""
    if kind == "auto":
        if onnx_dir is None:
            import importlib.util

            if importlib.util.find_spec("onnxruntime") is None:
                return TorchBackend.load(model, split, threads)
            from cfqa_edge.export_cache import ensure_export

            onnx_dir = ensure_export(model, split)
        return OnnxBackend(onnx_dir, split, threads, providers)
    if kind == "torch":
        return TorchBackend.load(model, split, threads)
    if kind == "onnx":
        if onnx_dir is None:
            raise DataError("the onnx backend needs --onnx-dir (a folder written by 'cfqa edge export')")
        return OnnxBackend(onnx_dir, split, threads, providers)
    raise DataError(f"unknown backend '{kind}' (known: {', '.join(BACKENDS)})")
