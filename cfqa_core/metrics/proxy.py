"""A task-aware, label-free CFQA metric: how much a proxy of the cloud's head moves.

Generic feature metrics (MSE, cosine, CKA) measure how far f^ is from f, not
whether the cloud's *output* changes: an image whose top-1 class wins by a
wide margin survives coarse coding, one with a narrow margin flips early,
and cosine cannot tell them apart. This metric runs a small linear proxy of
the cloud (remaining blocks + task head) on f and on f^ at the edge and
scores how far the proxy's output moved, in the unit of the task's output
tolerance (:mod:`cfqa_core.fidelity`). Lower is better; 0 = unchanged.

- cls: while the class predicted from f stays on top, the share of its
  logit margin that f^ used up, ``(m(f) - m(f^)) / m(f)`` with ``m`` its
  logit minus the best other logit (below 1); once it lost the top, the rank
  it fell to (2, 3, ...);
- seg: the fraction of pixels whose label changes: the proxy's class logits
  per patch are upsampled bilinearly (as the head does) to the head's output
  resolution (patch size x the patch grid), the image and its flipped view
  averaged (as the cloud merges them), and their argmax compared;
- dpt: RMSE between the proxy depth maps of f and f^ (depth-bin scores
  upsampled the same way to a grid 2 x finer, then softmax over the bins
  times the bin depths, as the head), divided by the mean proxy depth of f.

The proxy reads per-token layer-normalised features (the cloud's final norm
without its affine part) and is linear: Cls ``[CLS || mean patch] -> logits``,
Seg ``patch -> class logits``, Dpt ``[patch || CLS] of every sent block ->
depth-bin logits``. It is distilled by ridge regression from the cloud's own
outputs on features of the *train* split, clean and with added noise
(``cfqa train-metric --kind proxy``, :mod:`cfqa_core.training.train_proxy`):
no label, no codec and no benchmark image is used. One weight set per
(task, split); numpy at run time, a few matrix products per frame.

``proxy_risk`` is the same proxy scored by the task's loss instead of the
output change: on Seg the expected mIoU loss of f^'s labels under the
proxy's posterior at f (:mod:`cfqa_core.metrics.seg_risk`; unit mIoU, 0 =
unchanged, slightly negative when f^ drops a label the posterior doubts);
on Cls and Dpt it equals ``proxy``. ``proxy`` is the score to steer by output
fidelity (the rate-control tolerance); ``proxy_risk`` tracks the task's
ground-truth distortion, which the benchmark's protocol correlates with.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.errors import MetricError
from cfqa_core.metrics.seg_risk import SegRisk, SegRiskCalibration

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "metrics" / "proxy"
# Seg/Dpt outputs are compared on a grid this many times finer than the patch grid: Seg at the
# head's own resolution (one pixel per patch pixel: the labels near boundaries are what flips
# first); Dpt coarser, as its 64 depth bins make each grid point costlier and depth is smooth.
UPSAMPLE = {"seg": 14, "dpt": 2}
DEFAULT_WEIGHTS = WEIGHTS_DIR / "embedded.npz"
LN_EPS = 1e-6


def layer_norm(x: np.ndarray) -> np.ndarray:
    """Per-token normalisation over the channel axis (no affine), float32."""
    x = np.asarray(x, dtype=np.float32)
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS)


def proxy_inputs(task: str, feature: np.ndarray, prefix_tokens: int = 1) -> np.ndarray:
    """Design rows of one feature: cls (views, 2D); seg (views, P, D); dpt (views, P, 2 D L)."""
    f = layer_norm(feature)
    if task == "cls":
        return np.concatenate([f[..., 0, :], f[..., prefix_tokens:, :].mean(axis=-2)], axis=-1)
    if task == "seg":
        return f[..., prefix_tokens:, :]
    if task == "dpt":
        # (views, L, T, D) -> per patch [patch || CLS] of each level, levels concatenated.
        patches = f[..., prefix_tokens:, :]
        cls = np.broadcast_to(f[..., :1, :], patches.shape)
        both = np.concatenate([patches, cls], axis=-1)          # (views, L, P, 2D)
        return np.moveaxis(both, -3, -2).reshape(*both.shape[:-3], both.shape[-2], -1)
    raise MetricError(f"proxy metric: unknown task '{task}'")


@dataclass(frozen=True)
class ProxyHead:
    """One (task, split) proxy: ``outputs = inputs @ weight + bias``."""

    task: str
    split: int
    weight: np.ndarray   # (in, out)
    bias: np.ndarray     # (out,)
    bins: np.ndarray | None = None   # dpt: depth of each bin (metres)
    prefix_tokens: int = 1
    seg_risk: SegRisk | None = field(default=None, compare=False)   # seg: calibrated expected-mIoU loss

    def outputs(self, feature: np.ndarray) -> np.ndarray:
        x = proxy_inputs(self.task, feature, self.prefix_tokens)
        if x.shape[-1] != self.weight.shape[0]:
            raise MetricError(f"proxy metric: {self.task} feature of shape {np.shape(feature)} does not fit the "
                              f"proxy of split {self.split} ({self.weight.shape[0]} inputs, got {x.shape[-1]})")
        return x @ self.weight + self.bias

    def depth(self, scores: np.ndarray) -> np.ndarray:
        z = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=-1, keepdims=True)) @ self.bins

    def damage(self, f: np.ndarray, fhat: np.ndarray) -> float:
        """How far the proxy's output moved from f to f^ (0 = unchanged; see the module)."""
        ref, out = self.outputs(f), self.outputs(fhat)
        if self.task == "cls":
            return float(np.mean(class_damage(ref, out)))
        ref, out = upsample_patches(ref, UPSAMPLE[self.task]), upsample_patches(out, UPSAMPLE[self.task])
        if self.task == "seg":
            return float(np.mean(merge_views(ref).argmax(axis=-1) != merge_views(out).argmax(axis=-1)))
        d_ref, d_out = merge_views(self.depth(ref)), merge_views(self.depth(out))
        return float(np.sqrt(np.mean((d_out - d_ref) ** 2)) / max(float(np.mean(np.abs(d_ref))), 1e-9))

    def label_logits(self, feature: np.ndarray) -> np.ndarray:
        """Seg: the merged (H, W, C) class logits at the head's output resolution."""
        return merge_views(upsample_patches(self.outputs(feature), UPSAMPLE["seg"]))

    def risk(self, f: np.ndarray, fhat: np.ndarray) -> float:
        """Seg: the expected mIoU loss from f to f^ (:mod:`cfqa_core.metrics.seg_risk`); else :meth:`damage`."""
        if self.task != "seg":
            return self.damage(f, fhat)
        if self.seg_risk is None:
            raise MetricError(f"proxy_risk: the seg proxy of split {self.split} has no risk calibration "
                              "(retrain it with 'cfqa train-metric --kind proxy')")
        f = np.asarray(f, dtype=np.float32)
        return self.seg_risk(f, lambda: self.label_logits(f), self.label_logits(fhat))


@functools.lru_cache(maxsize=8)
def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres (``F.interpolate``, align_corners=False)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def upsample_patches(x: np.ndarray, factor: int = 4) -> np.ndarray:
    """(..., P, C) per-patch values on a square grid -> (..., g*factor, g*factor, C), bilinear."""
    g = int(round(np.sqrt(x.shape[-2])))
    if g * g != x.shape[-2]:
        raise MetricError(f"proxy metric: {x.shape[-2]} patches do not form a square grid")
    a = _interpolation(g, g * factor)
    lead, c, o = x.shape[:-2], x.shape[-1], g * factor
    grid = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, g, g * c)
    rows = (a @ grid).reshape(-1, o, g, c)                         # interpolate along the rows
    both = np.swapaxes(rows, -1, -2) @ a.T                         # ... then along the columns
    return np.swapaxes(both, -1, -2).reshape(*lead, o, o, c)


def merge_views(x: np.ndarray) -> np.ndarray:
    """An (image, h-flipped image) pair of (2, H, W[, C]) maps averaged as the cloud merges them."""
    if x.ndim < 3 or x.shape[0] != 2:
        return x
    return 0.5 * (x[0] + x[1][:, ::-1])


def class_damage(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per row: the share of the top-1 margin used up while the top-1 holds; once it changed, the rank
    the reference class fell to (2, 3, ...), so the score keeps growing as more classes overtake it."""
    top = ref.argmax(axis=-1)[..., None]
    rank = 1 + np.sum(out > np.take_along_axis(out, top, axis=-1), axis=-1)
    return np.where(rank > 1, rank.astype(np.float64), margin_used(ref, out))


def margin_used(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per row: the share of the reference top-1 margin that ``out`` lost (> 1: top-1 changed)."""
    top = ref.argmax(axis=-1)[..., None]

    def margin(z: np.ndarray) -> np.ndarray:
        own = np.take_along_axis(z, top, axis=-1)[..., 0]
        others = z.copy()
        np.put_along_axis(others, top, -np.inf, axis=-1)
        return own - others.max(axis=-1)

    m_ref = np.maximum(margin(ref), 1e-6)
    return (m_ref - margin(out)) / m_ref


class ProxySet:
    """Every (task, split) proxy of one model, read from an ``.npz`` written by training."""

    def __init__(self, heads: dict[tuple[str, int], ProxyHead], default_split: int, model: str) -> None:
        self.heads = heads
        self.default_split = default_split
        self.model = model

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> ProxySet:
        path = Path(path)
        if not path.is_file():
            raise MetricError(f"proxy metric weights not found: {path} (run 'cfqa train-metric --kind proxy')")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                heads = {}
                for entry in meta["heads"]:
                    key = f"{entry['task']}/{entry['split']}"
                    risk = SegRisk(SegRiskCalibration.from_array(z[f"{key}/risk"])) if f"{key}/risk" in z else None
                    heads[(entry["task"], int(entry["split"]))] = ProxyHead(
                        entry["task"], int(entry["split"]), z[f"{key}/weight"].astype(np.float32),
                        z[f"{key}/bias"].astype(np.float32),
                        z[f"{key}/bins"].astype(np.float32) if f"{key}/bins" in z else None,
                        int(meta.get("prefix_tokens", 1)), risk)
        except (OSError, ValueError, KeyError, MetricError) as exc:
            raise MetricError(f"proxy metric weights {path} are unreadable: {str(exc).splitlines()[0]}") from None
        return cls(heads, int(meta["default_split"]), str(meta.get("model", "?")))

    def head(self, task: str, split: int | None = None) -> ProxyHead:
        split = self.default_split if split is None else int(split)
        try:
            return self.heads[(task, split)]
        except KeyError:
            have = ", ".join(f"{t}@{s}" for t, s in sorted(self.heads))
            raise MetricError(f"proxy metric has no {task} proxy for split {split} (have {have}; "
                              f"train one with 'cfqa train-metric --kind proxy --splits {split}')") from None


@functools.lru_cache(maxsize=4)
def shipped_proxies(path: str = str(DEFAULT_WEIGHTS)) -> ProxySet:
    return ProxySet.load(path)


def proxy(f: np.ndarray, fhat: np.ndarray, task: str | None = None, split: int | None = None) -> float:
    """Task-aware damage of f^: how far a distilled proxy of the cloud's head moved (lower is better)."""
    if task is None:
        raise MetricError("proxy metric needs the task (cls, seg or dpt)")
    return shipped_proxies().head(task, split).damage(f, fhat)


def proxy_risk(f: np.ndarray, fhat: np.ndarray, task: str | None = None, split: int | None = None) -> float:
    """Task loss of f^ predicted by the proxy: Seg the expected mIoU loss, else :func:`proxy` (lower is better)."""
    if task is None:
        raise MetricError("proxy_risk metric needs the task (cls, seg or dpt)")
    return shipped_proxies().head(task, split).risk(f, fhat)
