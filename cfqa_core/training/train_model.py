"""Train the embedded default: backbone and all three heads jointly, on CPU.

Reproducible from a seed: the synthetic scenes are a function of their seeds,
the sampling order and the initialisation of ``seed``. Two resolutions are
used (progressive resizing): most steps at a lower input size, where tokens
are cheap, then the final steps at the model's native size; the position
embeddings are interpolated in between exactly as at inference.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cfqa_core.data.dataset import load_split
from cfqa_core.data.scenes import CLASS_NAMES, NUM_CLASSES
from cfqa_core.evaluation import evaluate
from cfqa_core.models.dinov2 import CONFIGS, DinoVisionTransformer
from cfqa_core.models.split_model import ModelMeta, SplitModel
from cfqa_core.models.zoo import save_model
from cfqa_core.tasks import IMAGENET_MEAN, IMAGENET_STD, TASKS


@dataclass
class TrainConfig:
    n_train: int = 24000
    n_val: int = 500
    steps: int = 6400
    low_res_fraction: float = 0.75
    low_res: int = 112
    batch: int = 48
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup: int = 200
    seed: int = 0
    threads: int = 2
    workers: int = 2
    loss_stride: int = 4  # dense losses on a 1/4-resolution grid: cheaper, same optimum
    w_cls: float = 1.0
    w_seg: float = 1.0
    w_dpt: float = 0.5
    label_smoothing: float = 0.1
    bf16: bool = True  # bfloat16 autocast for the forward pass (weights and optimiser stay float32)
    init_from: str | None = None  # continue from saved weights (a folder written by save_model)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    x = (x - torch.from_numpy(IMAGENET_MEAN)) / torch.from_numpy(IMAGENET_STD)
    return x.permute(0, 3, 1, 2).contiguous()


def _batch(data, idx: np.ndarray, rng: np.random.Generator, res: int, stride: int):
    images, masks, depths = data.images[idx], data.masks[idx], data.depths[idx]
    flip = rng.random(len(idx)) < 0.5
    images[flip] = images[flip, :, ::-1]
    masks[flip] = masks[flip, :, ::-1]
    depths[flip] = depths[flip, :, ::-1]
    x = _to_tensor(images)
    if res != x.shape[-1]:
        x = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    grid = masks.shape[-1] // stride
    m = torch.from_numpy(np.ascontiguousarray(masks[:, stride // 2 :: stride, stride // 2 :: stride])).long()
    d = torch.from_numpy(np.ascontiguousarray(depths[:, stride // 2 :: stride, stride // 2 :: stride])).float()
    y = torch.from_numpy(data.labels[idx] - 1).long()
    return x, y, m[:, :grid, :grid], d[:, :grid, :grid]


def new_embedded_model() -> SplitModel:
    """A freshly initialised embedded model (backbone + the three heads) for the scene classes."""
    meta = ModelMeta(
        name="embedded",
        config=CONFIGS["embedded"],
        cls_classes=NUM_CLASSES,
        seg_classes=NUM_CLASSES + 1,
        class_names=tuple(CLASS_NAMES),
        max_depth=16.0,
        version="1",
    )
    return SplitModel(DinoVisionTransformer(meta.config), meta)


def make_optimizer(model: SplitModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms or position embeddings)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )


def train_step(model: SplitModel, opt: torch.optim.Optimizer, batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """One optimiser step on ``batch = (pixels, labels, masks, depths)``; returns the loss terms."""
    x, y, m, d = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        out = model.forward_tasks(x, out_size=m.shape[-2:])
    l_cls = F.cross_entropy(out["cls"].float(), y, label_smoothing=cfg.label_smoothing)
    l_seg = F.cross_entropy(out["seg"].float(), m)
    l_dpt = F.l1_loss(out["dpt"].float(), d)
    loss = cfg.w_cls * l_cls + cfg.w_seg * l_seg + cfg.w_dpt * l_dpt
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return {"loss": loss.detach(), "cls": l_cls.detach(), "seg": l_seg.detach(), "dpt": l_dpt.detach()}


def feature_ranges(model: SplitModel, scenes, n: int = 64, q: float = 1e-4) -> dict[str, list]:
    """Per-task truncation ranges from the tokens the edge sends (the seed's max_min, robustly).

    The ``q`` / ``1 - q`` quantiles rather than the extremes, so one outlier
    token does not stretch the 10-bit grid. Dpt gets one range per block,
    as its blocks differ in scale.
    """
    from cfqa_core.inference import extract_features

    ranges: dict[str, list] = {}
    for task in TASKS:
        f = extract_features(model, task, scenes.images[:n])
        if task == "dpt":
            per_block = np.moveaxis(f, 2, 0).reshape(f.shape[2], -1)
            ranges[task] = [[float(v) for v in np.quantile(b, [q, 1 - q])] for b in per_block]
        else:
            ranges[task] = [float(v) for v in np.quantile(f, [q, 1 - q])]
    return ranges


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train, evaluate on val, and write weights + meta + metrics into ``out_dir``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    train_set = load_split("train", cfg.n_train, workers=cfg.workers, progress=progress)
    val_set = load_split("val", cfg.n_val, workers=cfg.workers, progress=progress)
    t_data = time.time() - t0

    if cfg.init_from:
        from cfqa_core.models.zoo import load_model

        model = load_model(cfg.init_from)
        model.meta.version = str(int(model.meta.version) + 1) if model.meta.version.isdigit() else "1"
    else:
        model = new_embedded_model()
    opt = make_optimizer(model, cfg)
    native = model.meta.config.img_size
    switch = int(cfg.steps * cfg.low_res_fraction)
    model.train()
    log = []
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress)
    for step in bar:
        res = cfg.low_res if step < switch else native
        idx = rng.integers(0, len(train_set), cfg.batch)
        x, y, m, d = _batch(train_set, idx, rng, res, cfg.loss_stride)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        losses = train_step(model, opt, (x, y, m, d), cfg)
        if step % 50 == 0 or step == cfg.steps - 1:
            rec = {"step": step, "res": res, **{k: v.item() for k, v in losses.items()}}
            log.append(rec)
            bar.set_postfix(cls=f"{rec['cls']:.2f}", seg=f"{rec['seg']:.2f}", dpt=f"{rec['dpt']:.2f}")
    t_train = time.time() - t0 - t_data
    model.eval()
    model.meta.feature_ranges = feature_ranges(model, train_set)
    metrics = evaluate(model, val_set, progress=progress)
    out_dir = Path(out_dir)
    save_model(model, out_dir)
    report = {
        "metrics_val": metrics,
        "train_config": asdict(cfg),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "torch": torch.__version__,
        "loss_log": log,
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
