"""CFQA metrics: values against independent formulas, invariances and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cfqa_core.errors import MetricError
from cfqa_core.metrics import (
    METRICS,
    MetricSpec,
    compute_metric,
    compute_metrics,
    get_metric,
    metric_names,
    register_metric,
)
from cfqa_core.metrics.cka import linear_cka_slice


def rng(seed=0):
    return np.random.default_rng(seed)


def hsic_cka(x, y):
    """Linear CKA through HSIC with an explicit centring matrix H (Kornblith et al. 2019, eq. 3)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def seed_loop_cka(f, fhat):
    """The reference code's CKA loop, written out: note '=' (not '+=') then / (N*C)."""
    f4 = f.reshape(-1, f.shape[-3] if f.ndim >= 3 else 1, *f.shape[-2:]).astype(np.float64)
    g4 = fhat.reshape(f4.shape).astype(np.float64)
    n_, c_ = f4.shape[:2]
    total = 0.0
    for n in range(n_):
        for c in range(c_):
            x = f4[n, c] - f4[n, c].mean(axis=0, keepdims=True)
            y = g4[n, c] - g4[n, c].mean(axis=0, keepdims=True)
            num = np.linalg.norm(x @ y.T, "fro") ** 2
            den = np.linalg.norm(x @ x.T, "fro") * np.linalg.norm(y @ y.T, "fro")
            total = num / (den + 1e-8)
    return total / n_ / c_


def noisy_pair(shape, sigma=0.3, seed=0):
    r = rng(seed)
    f = r.normal(0, 1, shape).astype(np.float32) * r.uniform(0.5, 2, shape[-1]).astype(np.float32)
    return f, (f + r.normal(0, sigma, shape)).astype(np.float32)


# ---- CKA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens,dim", [(20, 64), (64, 20), (30, 30), (90, 40)])
def test_cka_matches_hsic_formula_both_branches(tokens, dim):
    x, y = noisy_pair((tokens, dim), sigma=0.8, seed=tokens)
    expected = hsic_cka(x.astype(np.float64), y.astype(np.float64))
    assert compute_metric("cka", x, y) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < 1.0


def test_cka_is_mean_over_slices():
    f, g = noisy_pair((2, 4, 15, 40), sigma=1.0, seed=3)
    per_slice = [hsic_cka(f[i, j].astype(np.float64), g[i, j].astype(np.float64))
                 for i in range(2) for j in range(4)]
    assert compute_metric("cka", f, g) == pytest.approx(np.mean(per_slice), rel=1e-10)
    assert np.ptp(per_slice) > 1e-3  # slices differ, so the mean is a real test


def test_cka_invariances():
    x, y = noisy_pair((25, 48), sigma=0.7, seed=5)
    base = compute_metric("cka", x, y)
    q, _ = np.linalg.qr(rng(1).normal(size=(48, 48)))
    assert compute_metric("cka", x, x) == pytest.approx(1.0, abs=1e-12)
    assert compute_metric("cka", x, 7.5 * y) == pytest.approx(base, rel=1e-9)
    assert compute_metric("cka", x, y @ q) == pytest.approx(base, rel=1e-9)
    assert compute_metric("cka", x, y + rng(2).normal(size=48)) == pytest.approx(base, rel=1e-9)
    # Not invariant to a non-isotropic scaling of channels.
    assert abs(compute_metric("cka", x, y * np.linspace(0.1, 3, 48)) - base) > 1e-3


def test_cka_falls_with_noise():
    f, _ = noisy_pair((2, 30, 64), seed=7)
    scores = [compute_metric("cka", f, f + rng(8).normal(0, s, f.shape)) for s in (0.05, 0.3, 1.0, 3.0)]
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_cka_of_token_constant_slice():
    x = np.ones((10, 8))
    assert linear_cka_slice(x, x) == 1.0
    assert linear_cka_slice(x, rng().normal(size=(10, 8))) == 0.0


@pytest.mark.parametrize("shape", [(40, 24), (1, 40, 24), (2, 40, 24), (2, 3, 12, 30), (2, 5, 40)])
def test_cka_seed_reproduces_reference_loop(shape):
    f, g = noisy_pair(shape, sigma=0.9, seed=len(shape))
    assert compute_metric("cka_seed", f, g) == pytest.approx(seed_loop_cka(f, g), rel=1e-9)


def test_cka_seed_differs_from_standard():
    f, g = noisy_pair((2, 40, 24), sigma=0.9, seed=11)
    assert compute_metric("cka_seed", f, g) < 0.6 * compute_metric("cka", f, g)  # the 1/n_slices
    one = (f[1:], g[1:])
    assert abs(compute_metric("cka_seed", *one) - compute_metric("cka", *one)) > 1e-3  # the formula


# ---- cosine, MSE, PSNR --------------------------------------------------------------------


def test_cosine_per_token_against_loops():
    f, g = noisy_pair((2, 4, 9, 16), sigma=1.0, seed=2)
    per_slice = []
    for s in range(8):
        a, b = f.reshape(8, 9, 16)[s].astype(np.float64), g.reshape(8, 9, 16)[s].astype(np.float64)
        per_slice.append(np.mean([a[t] @ b[t] / np.linalg.norm(a[t]) / np.linalg.norm(b[t]) for t in range(9)]))
    assert compute_metric("cosine", f, g) == pytest.approx(np.mean(per_slice), rel=1e-12)


def test_cosine_ignores_per_token_positive_scale_but_flat_does_not():
    f, g = noisy_pair((1, 12, 32), sigma=0.5, seed=4)
    scaled = g * rng(5).uniform(0.1, 10, (1, 12, 1))
    assert compute_metric("cosine", f, scaled) == pytest.approx(compute_metric("cosine", f, g), rel=1e-9)
    assert abs(compute_metric("cosine_flat", f, scaled) - compute_metric("cosine_flat", f, g)) > 1e-3
    assert compute_metric("cosine", f, -f) == pytest.approx(-1.0)
    assert compute_metric("cosine", f, f) == pytest.approx(1.0)


def test_cosine_flat_mse_psnr_formulas():
    f, g = noisy_pair((2, 10, 20), sigma=0.4, seed=6)
    a, b = f.astype(np.float64).ravel(), g.astype(np.float64).ravel()
    mse = np.mean((a - b) ** 2)
    assert compute_metric("cosine_flat", f, g) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert compute_metric("mse", f, g) == pytest.approx(mse, rel=1e-12)
    assert compute_metric("psnr", f, g, value_range=(-3.0, 5.0)) == pytest.approx(10 * np.log10(64 / mse))
    assert compute_metric("psnr", f, f, value_range=(-3.0, 5.0)) == math.inf
    assert compute_metric("mse", f, f) == 0.0


def test_mse_counts_truncation_error():
    f = np.array([[-5.0, 0.0, 5.0, 1.0]], dtype=np.float32)
    truncated = np.clip(f, -2.0, 2.0)  # a codec that truncates to [-2, 2] and reconstructs perfectly inside
    assert compute_metric("mse", f, truncated) == pytest.approx((9 + 9) / 4)


def test_compute_metrics_passes_only_known_kwargs():
    f, g = noisy_pair((1, 10, 20), seed=9)
    out = compute_metrics(["mse", "psnr", "cosine", "cka"], f, g, value_range=(-10, 10))
    assert set(out) == {"mse", "psnr", "cosine", "cka"}
    assert out["mse"] == compute_metric("mse", f, g)
    assert out["psnr"] == pytest.approx(10 * np.log10(400 / out["mse"]))


def test_registry_directions_and_docs():
    assert {"mse", "psnr", "cosine", "cosine_flat", "cka", "cka_seed"} <= set(metric_names())
    assert get_metric("mse").higher_is_better is False
    for name in ("psnr", "cosine", "cosine_flat", "cka", "cka_seed"):
        assert get_metric(name).higher_is_better is True
    for spec in METRICS.values():
        assert spec.doc and ("better" in spec.doc.lower())
    with pytest.raises(ValueError, match="twice"):
        register_metric(MetricSpec("mse", lambda f, g: 0.0, False, None, "dup"))


def test_register_a_new_metric_is_callable():
    spec = MetricSpec("_test_l1", lambda f, g: float(np.abs(f - g).mean()), False, (0.0, math.inf),
                      "L1; lower is better")
    register_metric(spec)
    try:
        assert compute_metric("_test_l1", np.zeros((2, 3)), np.ones((2, 3))) == 1.0
    finally:
        METRICS.pop("_test_l1")


# ---- bad input ----------------------------------------------------------------------------


def test_bad_input_errors_name_the_problem():
    f = np.zeros((1, 10, 8), np.float32)
    with pytest.raises(MetricError, match=r"unknown metric 'ssim'"):
        compute_metric("ssim", f, f)
    with pytest.raises(MetricError, match=r"unknown metric 'ssim'"):
        compute_metrics(["mse", "ssim"], f, f)
    with pytest.raises(MetricError,
                       match=r"'cka' for img7/hevc/QP22: shapes differ: f \(1, 10, 8\) vs fhat \(1, 10, 7\)"):
        compute_metric("cka", f, f[..., :7], item="img7/hevc/QP22")
    bad = f.copy()
    bad[0, 3, 2] = np.nan
    bad[0, 4, 2] = np.inf
    with pytest.raises(MetricError, match=r"fhat has 2 NaN/Inf"):
        compute_metrics(["mse", "cosine"], f, bad)
    with pytest.raises(MetricError, match=r"f has 2 NaN/Inf"):
        compute_metric("mse", bad, f)
    with pytest.raises(MetricError, match=r"'cosine'.*needs \(\.\.\., tokens, channels\)"):
        compute_metrics(["mse", "cosine"], np.zeros(5), np.zeros(5))
    with pytest.raises(MetricError, match="value_range"):
        compute_metric("psnr", f, f)
    with pytest.raises(MetricError, match="hi > lo"):
        compute_metric("psnr", f, f, value_range=(1.0, 1.0))
