"""Distil the proxy metric (:mod:`cfqa_core.metrics.proxy`) from the cloud's outputs.

For every task and split: features of train-split images at the split, the
same features with white noise at a few levels (so that the proxy learns how
the cloud reacts to a perturbed feature, not only to clean ones), and the
cloud's own pre-activation outputs on each (Cls logits; Seg class logits per
patch; Dpt depth-bin scores per patch). A ridge regression maps the proxy's
inputs to those outputs. The normal equations are accumulated chunk by chunk,
so memory stays small. No label, no codec and no benchmark image is used.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cfqa_core.metrics.proxy import DEFAULT_WEIGHTS, ProxyHead, proxy_inputs
from cfqa_core.tasks import TASKS, dpt_blocks, feature_blocks
from cfqa_core.training.seg_risk_fit import fit_seg_risk


@dataclass
class ProxyTrainConfig:
    model: str = "embedded"
    splits: tuple[int, ...] = (4, 8)
    tasks: tuple[str, ...] = TASKS
    images: dict[str, int] = field(default_factory=lambda: {"cls": 1200, "seg": 300, "dpt": 300})
    # Noise standard deviations relative to the feature's standard deviation.
    noise_levels: tuple[float, ...] = (0.0, 0.03, 0.1, 0.2, 0.35)
    ridge: float = 1e-3   # relative to the mean diagonal of X^T X
    seed: int = 0
    risk_images: int = 120   # seg: train images (with their masks) that calibrate proxy_risk


@torch.inference_mode()
def cloud_targets(model, task: str, feature: torch.Tensor, split: int) -> torch.Tensor:
    """The cloud's pre-activation outputs per view: cls (N, C); seg (N, P, C); dpt (N, P, K)."""
    levels = [model.backbone.norm(t) for t in model._levels(task, feature, split)]
    parts = [model.backbone.split_tokens(t) for t in levels]
    if task == "cls":
        cls_tok, patches = parts[-1]
        return model.cls_head.fc(torch.cat((cls_tok, patches.mean(dim=1)), dim=-1))
    if task == "seg":
        return model.seg_head.fc(parts[-1][1])
    feats = [torch.cat((p, c.unsqueeze(1).expand_as(p)), dim=-1) for c, p in parts]
    return model.dpt_head.fc(torch.cat(feats, dim=-1))


def _fit(xtx: np.ndarray, xty: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution with an unpenalised bias (the last row/column of the augmented system)."""
    d = xtx.shape[0] - 1
    reg = np.zeros_like(xtx)
    reg[np.arange(d), np.arange(d)] = ridge * float(np.trace(xtx[:d, :d])) / d
    w = np.linalg.solve(xtx + reg, xty)
    return w[:d].astype(np.float32), w[d].astype(np.float32)


def train_proxies(cfg: ProxyTrainConfig, out: str | Path = DEFAULT_WEIGHTS, progress: bool = True) -> dict:
    """Fit every (task, split) proxy and write one ``.npz`` with a JSON ``meta`` entry."""
    from cfqa_core.data.dataset import load_split
    from cfqa_core.inference import image_views
    from cfqa_core.models import load_model

    t0 = time.time()
    model = load_model(cfg.model)
    # Many small matrix products: one thread avoids the synchronisation cost on a shared machine.
    torch.set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    arrays: dict[str, np.ndarray] = {}
    heads, fit_report = [], []
    for task in cfg.tasks:
        scenes = load_split("train", cfg.images[task], task=task, workers=2, progress=progress)
        views = image_views(task, scenes.images, model.image_size)
        pixels = torch.from_numpy(np.ascontiguousarray(views.reshape(-1, *views.shape[2:]), dtype=np.float32))
        blocks = sorted(set(dpt_blocks(model.depth)) | set(cfg.splits))
        with torch.inference_mode():
            tokens = dict(zip(blocks, (t.numpy() for t in model.backbone.intermediate(pixels, blocks))))
        for split in cfg.splits:
            sent = feature_blocks(task, split, model.depth)
            feat = tokens[split] if task != "dpt" else np.stack([tokens[b] for b in sent], axis=1)
            std = float(feat.std())
            xtx = xty = None
            bar = tqdm(cfg.noise_levels, desc=f"proxy {task}@{split}", disable=not progress, leave=False)
            for level in bar:
                for start in range(0, len(feat), 64):
                    f = feat[start:start + 64]
                    if level > 0:
                        f = f + rng.normal(0.0, level * std, f.shape).astype(np.float32)
                    y = cloud_targets(model, task, torch.from_numpy(np.ascontiguousarray(f)), split).numpy()
                    x = proxy_inputs(task, f[:, None], model.backbone.num_prefix_tokens)
                    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
                    y = y.reshape(-1, y.shape[-1]).astype(np.float64)
                    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
                    xtx = xa.T @ xa if xtx is None else xtx + xa.T @ xa
                    xty = xa.T @ y if xty is None else xty + xa.T @ y
            weight, bias = _fit(xtx, xty, cfg.ridge)
            key = f"{task}/{split}"
            arrays[f"{key}/weight"], arrays[f"{key}/bias"] = weight, bias
            if task == "dpt":
                arrays[f"{key}/bins"] = model.dpt_head.bins.numpy().astype(np.float32)
            if task == "seg":
                head = ProxyHead(task, split, weight, bias, prefix_tokens=model.backbone.num_prefix_tokens)
                n = min(cfg.risk_images, len(scenes.masks))
                per_image = feat[: n * views.shape[1]].reshape(n, views.shape[1], *feat.shape[1:])
                cal, risk_report = fit_seg_risk(np.stack([head.label_logits(f) for f in per_image]),
                                                scenes.masks[:n])
                arrays[f"{key}/risk"] = cal.to_array()
            heads.append({"task": task, "split": split, "inputs": int(weight.shape[0]),
                          "outputs": int(weight.shape[1])})
            fit_report.append({"task": task, "split": split,
                               "r2_clean": _r2(model, task, feat[: min(len(feat), 128)], split, weight, bias),
                               **({"seg_risk": risk_report} if task == "seg" else {})})
    meta = {"model": cfg.model, "default_split": model.depth, "prefix_tokens": model.backbone.num_prefix_tokens,
            "heads": heads, "config": asdict(cfg), "fit": fit_report, "seconds": round(time.time() - t0, 1)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(out)
    return {"out": str(out), **meta}


def _r2(model, task: str, feat: np.ndarray, split: int, weight: np.ndarray, bias: np.ndarray) -> float:
    """Share of the variance of the cloud's outputs on clean held-in features that the proxy explains."""
    y = cloud_targets(model, task, torch.from_numpy(np.ascontiguousarray(feat)), split).numpy()
    x = proxy_inputs(task, feat[:, None], model.backbone.num_prefix_tokens)
    pred = x.reshape(-1, x.shape[-1]) @ weight + bias
    y = y.reshape(-1, y.shape[-1])
    return round(float(1.0 - ((pred - y) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()), 4)
