"""Synthetic ViT-like token features for exercising codecs without a model.

The statistics imitate DINOv2 intermediate tokens closely enough for codec
tests and speed figures: heavy tails (Student-t, 3 dof), a log-normal scale per
channel, correlation between neighbouring tokens (AR(1) along the token axis)
and a class token three times larger than the patch tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Feature shapes per task: the embedded model and the paper's DINOv2 ViT-g/14.
EMBEDDED_SHAPES: dict[str, tuple[int, ...]] = {
    "cls": (1, 145, 128),
    "seg": (2, 145, 128),
    "dpt": (2, 4, 145, 128),
}
PAPER_SHAPES: dict[str, tuple[int, ...]] = {
    "cls": (257, 1536),
    "seg": (2, 1370, 1536),
    "dpt": (2, 4, 1611, 1536),
}


def synthetic_feature(shape: Sequence[int], seed: int = 0, rho: float = 0.8) -> np.ndarray:
    """A float32 feature of ``shape`` (..., tokens, channels)."""
    if len(shape) < 2:
        raise ValueError(f"shape needs (..., tokens, channels), got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    *lead, tokens, dim = (int(s) for s in shape)
    slices = int(np.prod(lead, dtype=np.int64)) if lead else 1
    scale = np.exp(rng.normal(0.0, 0.8, dim))
    x = rng.standard_t(3, size=(slices, tokens, dim))
    innovation = np.sqrt(1.0 - rho * rho)
    for t in range(1, tokens):
        x[:, t] = rho * x[:, t - 1] + innovation * x[:, t]
    x *= scale
    x[:, 0] *= 3.0
    return x.reshape(tuple(shape)).astype(np.float32)
