"""Fit the two constants of the Seg risk score (:mod:`cfqa_core.metrics.seg_risk`) on train-split masks.

- the posterior temperature ``T``: the one minimising the per-pixel negative
  log-likelihood of the true masks under ``softmax(logits / T)``;
- the spatial correlation of the drawn masks: on each train image, the mean
  mIoU of the predicted labels against the drawn masks should be the mIoU
  against the true mask. The correlation (from a grid) with the smallest
  RMSE between the two over the images is kept: independent pixels make the
  drawn masks too easy to match (errors scatter thinly), a field too smooth
  too hard.

Numpy only; no benchmark image, no codec.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfqa_core.metrics.seg_risk import SegRiskCalibration, mask_mious, posterior_masks
from cfqa_core.tasks import miou

CORRELATIONS: tuple[float, ...] = (0.0, 7.0, 14.0, 28.0, 56.0, 128.0)   # 0: independent pixels


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, masks: np.ndarray) -> float:
    """Temperature of the best per-pixel NLL: a log grid over 0.05-20, refined around its minimum."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    labels = masks.reshape(-1).astype(np.int64)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    i = int(np.argmin([_nll(flat, labels, t) for t in grid]))
    fine = np.exp(np.linspace(np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)]), 41))
    return float(fine[int(np.argmin([_nll(flat, labels, t) for t in fine]))])


def correlation_errors(logits: np.ndarray, masks: np.ndarray, temperature: float,
                       correlations: Sequence[float] = CORRELATIONS) -> dict[float, float]:
    """Per correlation: RMSE over images between mean mIoU(labels, drawn masks) and mIoU(labels, true mask)."""
    classes = logits.shape[-1]
    labels = [lg.reshape(-1, classes).argmax(axis=-1) for lg in logits]
    true = np.array([miou(c, m.reshape(-1), classes) for c, m in zip(labels, masks)])
    errors = {}
    for corr in correlations:
        cal = SegRiskCalibration(temperature, float(corr))
        drawn = np.array([mask_mious(c, posterior_masks(lg, cal), classes).mean() for c, lg in zip(labels, logits)])
        errors[float(corr)] = float(np.sqrt(np.mean((drawn - true) ** 2)))
    return errors


def fit_seg_risk(logits: np.ndarray, masks: np.ndarray,
                 correlations: Sequence[float] = CORRELATIONS) -> tuple[SegRiskCalibration, dict]:
    """(N, H, W, C) merged class logits and (N, H, W) true masks of train images -> calibration and report."""
    if logits.shape[:3] != masks.shape:
        raise ValueError(f"seg risk fit: logits {logits.shape} do not match masks {masks.shape}")
    temperature = fit_temperature(logits, masks)
    errors = correlation_errors(logits, masks, temperature, correlations)
    best = min(errors, key=errors.get)
    report = {"images": int(len(masks)), "temperature": round(temperature, 4),
              "nll": round(_nll(logits.reshape(-1, logits.shape[-1]).astype(np.float64),
                                masks.reshape(-1).astype(np.int64), temperature), 4),
              "correlation": best, "miou_rmse": {str(k): round(v, 4) for k, v in errors.items()}}
    return SegRiskCalibration(temperature, best), report
