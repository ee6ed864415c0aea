"""Linear centred kernel alignment (CKA) between token x channel slices.

``cka`` is the standard linear CKA of Kornblith et al. (2019); ``cka_seed``
reproduces the CFQA reference implementation, which differs in two ways (see
its docstring), so that the reference numbers can be matched.
"""
from __future__ import annotations

import numpy as np

from cfqa_core.metrics.base import as_slices


def _centred(x: np.ndarray) -> np.ndarray:
    """float64 copy with the mean token subtracted from every token."""
    x = x.astype(np.float64)
    x -= x.mean(axis=0, keepdims=True)
    return x


def _safe_ratio(num: float, den: float, both_zero: bool) -> float:
    if den > 0.0:
        return num / den
    # A slice constant over tokens has no centred structure: equal to another such slice, unrelated to any other.
    return 1.0 if both_zero else 0.0


def linear_cka_slice(x: np.ndarray, y: np.ndarray) -> float:
    """Standard linear CKA of two (tokens, channels) matrices.

    With X, Y centred over tokens: CKA = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F).
    The equal kernel form <K, L>_F / (|K|_F |L|_F) with the T x T kernels
    K = X X^T, L = Y Y^T (|Y^T X|_F^2 = tr(X X^T Y Y^T)) costs two symmetric
    products (2 T^2 D flops) against one general and two symmetric D x D
    products (4 D^2 T): it is used whenever T < 2 D, i.e. for every DINOv2 shape.
    """
    xc, yc = _centred(x), _centred(y)
    tokens, dim = xc.shape
    if tokens < 2 * dim:
        k = xc @ xc.T
        l_ = yc @ yc.T
        hsic = float(np.vdot(k, l_))
        nx, ny = float(np.linalg.norm(k)), float(np.linalg.norm(l_))
    else:
        hsic = float(np.linalg.norm(yc.T @ xc) ** 2)
        nx, ny = float(np.linalg.norm(xc.T @ xc)), float(np.linalg.norm(yc.T @ yc))
    return _safe_ratio(hsic, nx * ny, nx == 0.0 and ny == 0.0)


def cka(f: np.ndarray, fhat: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019), mean over slices. Higher is better, in [0, 1].

    Each slice is a (tokens, channels) matrix; X = f[s], Y = f^[s] are centred
    over tokens (mean token removed) and
    CKA(X, Y) = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F); the score is its mean over
    slices. Invariant to isotropic scaling and orthogonal transforms of the
    channels; CKA(X, X) = 1.
    """
    a, b = as_slices(f), as_slices(fhat)
    return float(np.mean([linear_cka_slice(a[s], b[s]) for s in range(a.shape[0])]))


def seed_cka_slice(x: np.ndarray, y: np.ndarray) -> float:
    """The reference implementation's per-slice formula (computed in float64).

    With X, Y centred over tokens it takes |X Y^T|_F^2 / (|X X^T|_F |Y Y^T|_F + 1e-8).
    |X Y^T|_F^2 = <X^T X, Y^T Y>_F: the channel Gram matrices are aligned, i.e.
    the roles of tokens and channels are swapped relative to standard CKA
    (which aligns the token kernels X X^T, Y Y^T) while centring stays over tokens.
    """
    xc, yc = _centred(x), _centred(y)
    tokens, dim = xc.shape
    # T x T: one general and two symmetric products (4 T^2 D flops); D x D: two symmetric ones (2 D^2 T).
    if 2 * tokens < dim:
        hsic = float(np.linalg.norm(xc @ yc.T) ** 2)
        nx, ny = float(np.linalg.norm(xc @ xc.T)), float(np.linalg.norm(yc @ yc.T))
    else:  # same numbers from D x D Grams: |X X^T|_F = |X^T X|_F
        gx, gy = xc.T @ xc, yc.T @ yc
        hsic = float(np.vdot(gx, gy))
        nx, ny = float(np.linalg.norm(gx)), float(np.linalg.norm(gy))
    return hsic / (nx * ny + 1e-8)


def cka_seed(f: np.ndarray, fhat: np.ndarray) -> float:
    """CKA exactly as the CFQA reference code reports it. Higher is better.

    Two departures from ``cka``: (1) the per-slice formula of ``seed_cka_slice``;
    (2) the reference loop assigns instead of accumulating over slices and then
    divides by the number of slices, so the score is
    seed_cka_slice(last slice) / n_slices (for cls, one slice, the two agree).
    Per-feature PLCC/SROCC are unaffected by the constant 1/n_slices, but only
    the last slice (flipped view, deepest block) is looked at.
    """
    a, b = as_slices(f), as_slices(fhat)
    n = a.shape[0]
    return float(seed_cka_slice(a[n - 1], b[n - 1]) / n)
