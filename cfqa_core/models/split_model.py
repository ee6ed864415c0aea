"""A backbone with its task heads, split into an edge part and a cloud part."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from cfqa_core.errors import ModelError
from cfqa_core.models.dinov2 import DinoVisionTransformer, ViTConfig
from cfqa_core.models.heads import ClsHead, DepthHead, SegHead
from cfqa_core.tasks import dpt_blocks, feature_blocks, feature_shape, get_task


@dataclass
class ModelMeta:
    """Everything besides tensors that a model carries."""

    name: str
    config: ViTConfig
    cls_classes: int = 0
    seg_classes: int = 0
    class_names: tuple[str, ...] = ()
    max_depth: float = 16.0
    # Per task: [lo, hi], or one [lo, hi] per block (dpt), for truncation before quantisation.
    feature_ranges: dict[str, list] = field(default_factory=dict)
    version: str = "0"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        d = dict(d)
        d["config"] = ViTConfig(**d["config"])
        d["class_names"] = tuple(d.get("class_names", ()))
        d.setdefault("feature_ranges", {})
        return cls(**d)


class SplitModel(nn.Module):
    """DINOv2 backbone + Cls/Seg/Dpt heads with edge/cloud entry points.

    ``edge_feature`` returns what the edge sends for a task (tokens after the
    split block, pre-norm, plus earlier depth-head blocks); ``cloud_predict``
    runs the rest and the head, per view.
    """

    def __init__(self, backbone: DinoVisionTransformer, meta: ModelMeta) -> None:
        super().__init__()
        self.backbone = backbone
        self.meta = meta
        d = backbone.cfg.embed_dim
        self.cls_head = ClsHead(d, meta.cls_classes) if meta.cls_classes else None
        self.seg_head = SegHead(d, meta.seg_classes) if meta.seg_classes else None
        self.dpt_head = DepthHead(d, max_depth=meta.max_depth) if meta.max_depth and meta.seg_classes else None

    @property
    def depth(self) -> int:
        return self.backbone.depth

    @property
    def image_size(self) -> int:
        return self.backbone.cfg.img_size

    @property
    def num_tokens(self) -> int:
        return self.backbone.num_prefix_tokens + self.backbone.cfg.num_patches

    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.backbone.patch_size
        return g, g

    def has_head(self, task: str) -> bool:
        return {"cls": self.cls_head, "seg": self.seg_head, "dpt": self.dpt_head}[get_task(task).name] is not None

    def _require_head(self, task: str) -> None:
        if not self.has_head(task):
            raise ModelError(f"model '{self.meta.name}' has no {task} head")

    # ---- edge --------------------------------------------------------------------------
    def edge_feature(self, pixels: torch.Tensor, task: str, split: int | None = None) -> torch.Tensor:
        """Feature the edge sends: (N, T, D), or (N, L, T, D) for dpt."""
        split = self.depth if split is None else split
        blocks = feature_blocks(task, split, self.depth)
        outs = self.backbone.intermediate(pixels, blocks)
        return outs[0] if task != "dpt" else torch.stack(outs, dim=1)

    # ---- cloud -------------------------------------------------------------------------
    def check_feature(self, task: str, feature: torch.Tensor, split: int) -> None:
        """Trailing dims must match; the leading dim counts views (any batch of them).

        Skipped while a trace is recorded (the cloud's traced forward): a trace cannot
        keep a Python check, and the engine checks every request's shapes before a call.
        """
        if torch.jit.is_tracing():
            return
        want = feature_shape(task, split, self.depth, self.num_tokens, self.backbone.cfg.embed_dim)
        if feature.ndim != len(want) or tuple(feature.shape[1:]) != want[1:]:
            raise ModelError(
                f"{task} feature shape {tuple(feature.shape)} does not match model "
                f"'{self.meta.name}' at split {split} (expected (N, {', '.join(map(str, want[1:]))}))"
            )

    def _levels(self, task: str, feature: torch.Tensor, split: int) -> list[torch.Tensor]:
        """Pre-norm tokens of every block the head needs, running blocks after the split."""
        if task != "dpt":
            return [self.backbone.forward_from(feature, split, norm=False)]
        sent = dict(zip(feature_blocks(task, split, self.depth), feature.unbind(dim=1)))
        t = sent[split]
        for i in range(split, self.depth):
            t = self.backbone.blocks[i](t)
            sent[i + 1] = t
        return [sent[b] for b in dpt_blocks(self.depth)]

    def _head_inputs(self, task: str, feature: torch.Tensor, split: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(CLS, patches) of every final-normed level the task's head reads."""
        self._require_head(task)
        self.check_feature(task, feature, split)
        levels = [self.backbone.norm(t) for t in self._levels(task, feature, split)]
        return [self.backbone.split_tokens(t) for t in levels]

    def cloud_predict(self, task: str, feature: torch.Tensor, split: int | None = None) -> torch.Tensor:
        """Per-view head output: cls logits (N, C); seg logits (N, C, H, W); depth (N, H, W)."""
        split = self.depth if split is None else split
        parts = self._head_inputs(task, feature, split)
        size = (self.image_size, self.image_size)
        if task == "cls":
            return self.cls_head(*parts[-1])
        if task == "seg":
            return self.seg_head(parts[-1][1], self.grid(), size)
        return self.dpt_head(parts, self.grid(), size)

    def dpt_scores(self, feature: torch.Tensor, split: int | None = None) -> torch.Tensor:
        """Depth-bin logits (N, P, K) of a dpt feature: the first half of ``cloud_predict("dpt")``.

        Everything up to the depth head's per-pixel work: the remaining blocks, the norm and
        the head's linear layer. Fixed operators for any batch, so the cloud traces it;
        ``dpt_depth`` of the result is ``cloud_predict("dpt", feature, split)``.
        """
        split = self.depth if split is None else split
        return self.dpt_head.bin_scores(self._head_inputs("dpt", feature, split))

    def dpt_depth(self, scores: torch.Tensor) -> torch.Tensor:
        """Depth (N, H, W) in metres from ``dpt_scores``: the second half of ``cloud_predict("dpt")``."""
        size = (self.image_size, self.image_size)
        return self.dpt_head.depth_from_scores(scores, self.grid(), size)

    def forward_tasks(self, pixels: torch.Tensor, out_size: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """All heads on one batch in a single backbone pass (used for training)."""
        blocks = dpt_blocks(self.depth)
        levels = [self.backbone.norm(t) for t in self.backbone.intermediate(pixels, blocks)]
        parts = [self.backbone.split_tokens(t) for t in levels]
        size = tuple(out_size or (pixels.shape[-2], pixels.shape[-1]))
        p = self.backbone.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        return {
            "cls": self.cls_head(*parts[-1]),
            "seg": self.seg_head(parts[-1][1], grid, size),
            "dpt": self.dpt_head(parts, grid, size),
        }
