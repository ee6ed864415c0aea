"""The Seg risk score: expected mIoU loss under the posterior, its Gumbel bank and its train-split fit."""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_core.errors import MetricError
from cfqa_core.metrics import compute_metric, get_metric
from cfqa_core.metrics.proxy import ProxyHead, shipped_proxies
from cfqa_core.metrics.seg_risk import (
    SegRisk,
    SegRiskCalibration,
    gumbel_bank,
    mask_mious,
    normal_cdf,
    posterior_masks,
)
from cfqa_core.tasks import miou
from cfqa_core.training.seg_risk_fit import correlation_errors, fit_seg_risk, fit_temperature

EULER_GAMMA = 0.5772156649


def test_mask_mious_is_the_task_miou_for_every_mask():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 5, 400)
    masks = rng.integers(0, 5, (6, 400))
    masks[2] = pred                      # a perfect mask
    masks[3] = np.where(masks[3] == 4, 0, masks[3])   # a class absent from the mask but present in pred
    got = mask_mious(pred, masks, 5)
    want = [miou(pred, m, 5) for m in masks]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[2] == 1.0


def test_normal_cdf_matches_erf():
    from math import erf, sqrt

    z = np.linspace(-5, 5, 41)
    np.testing.assert_allclose(normal_cdf(z), [0.5 * (1 + erf(v / sqrt(2))) for v in z], atol=2e-7)


@pytest.mark.parametrize("correlation", [0.0, 3.0])
def test_gumbel_bank_has_gumbel_marginals_and_the_asked_correlation(correlation):
    bank = gumbel_bank(64, 3, draws=48, correlation=correlation, seed=1)
    assert bank.shape == (48, 64 * 64, 3) and bank.dtype == np.float32 and not bank.flags.writeable
    # Gumbel(0, 1): mean = Euler's gamma, standard deviation = pi / sqrt(6).
    assert float(bank.mean()) == pytest.approx(EULER_GAMMA, abs=0.05)
    assert float(bank.std()) == pytest.approx(np.pi / np.sqrt(6), abs=0.05)
    grid = bank[:, :, 0].reshape(48, 64, 64)
    neighbours = np.corrcoef(grid[:, :, :-1].ravel(), grid[:, :, 1:].ravel())[0, 1]
    if correlation == 0:
        assert abs(neighbours) < 0.03
    else:
        assert neighbours > 0.9


def test_drawn_masks_follow_the_tempered_posterior():
    """Each pixel's class frequency over the draws is softmax(logits / T)."""
    logits = np.zeros((32, 32, 3), dtype=np.float32)
    logits[..., 0], logits[..., 1] = 1.0, 0.5
    cal = SegRiskCalibration(temperature=0.5, correlation=0.0, draws=64, seed=2)
    masks = posterior_masks(logits, cal)
    want = np.exp(np.array([1.0, 0.5, 0.0]) / 0.5)
    want /= want.sum()
    freq = np.bincount(masks.ravel(), minlength=3) / masks.size
    np.testing.assert_allclose(freq, want, atol=0.01)


def _two_region_logits(margin_right: float) -> np.ndarray:
    """Left half class 0 and right half class 1, the right half decided by ``margin_right`` over class 2."""
    logits = np.full((24, 24, 3), -4.0, dtype=np.float32)
    logits[:, :12, 0] = 4.0
    logits[:, 12:, 1] = margin_right
    logits[:, 12:, 2] = 0.0
    return logits


def test_risk_is_zero_when_unchanged_and_higher_for_a_confident_region_lost():
    risk = SegRisk(SegRiskCalibration(temperature=1.0, correlation=3.0, draws=32))
    for margin in (0.2, 6.0):
        ref = _two_region_logits(margin)
        out = ref.copy()
        out[:, 12:, 2] = margin + 1.0            # the right half turns into class 2
        f = np.full(4, margin, dtype=np.float32)  # the key of this reference
        assert risk(f, lambda: ref, ref.copy()) == 0.0
        if margin < 1:
            doubtful = risk(f, lambda: ref, out)
        else:
            confident = risk(f, lambda: ref, out)
    # The same pixels relabelled: a flip between two near-tied classes costs little, a confident one much.
    assert 0.0 <= doubtful < 0.1 < confident


def test_risk_reuses_the_reference_of_a_seen_feature():
    risk = SegRisk(SegRiskCalibration(1.0, 0.0, draws=4))
    calls = []

    def reference():
        calls.append(1)
        return _two_region_logits(3.0)

    f = np.arange(6, dtype=np.float32)
    out = _two_region_logits(-3.0)
    first = risk(f, reference, out)
    assert risk(f, reference, out) == first and len(calls) == 1
    risk(f + 1, reference, out)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def seg_features(model):
    from cfqa_core.data.dataset import load_split
    from cfqa_core.inference import extract_features

    return {task: extract_features(model, task, load_split("val", 2).images) for task in ("cls", "seg", "dpt")}


def test_proxy_risk_is_registered_and_equals_proxy_off_seg(seg_features):
    spec = get_metric("proxy_risk")
    assert spec.higher_is_better is False and set(spec.kwargs) == {"task", "split"}
    rng = np.random.default_rng(0)
    for task in ("cls", "dpt"):
        f = seg_features[task][0]
        g = f + 0.2 * float(f.std()) * rng.normal(size=f.shape).astype(np.float32)
        assert compute_metric("proxy_risk", f, g, task=task) == compute_metric("proxy", f, g, task=task)


def test_proxy_risk_on_seg_grows_with_noise(seg_features):
    f = seg_features["seg"][0]
    assert compute_metric("proxy_risk", f, f.copy(), task="seg") == 0.0
    noise = np.random.default_rng(1).normal(size=f.shape).astype(np.float32) * float(f.std())
    risks = [compute_metric("proxy_risk", f, f + s * noise, task="seg") for s in (0.1, 1.0)]
    assert 0.0 < risks[0] < risks[1] <= 1.0


def test_shipped_seg_proxies_carry_their_calibration():
    for split in (4, 8):
        cal = shipped_proxies().head("seg", split).seg_risk.cal
        assert 0.3 < cal.temperature < 3.0 and cal.correlation in (0.0, 7.0, 14.0, 28.0, 56.0, 128.0)


def test_a_seg_proxy_without_calibration_is_refused_by_name():
    head = shipped_proxies().head("seg", 8)
    bare = ProxyHead("seg", 8, head.weight, head.bias)
    f = np.zeros((2, 145, head.weight.shape[0]), dtype=np.float32)
    with pytest.raises(MetricError, match="no risk calibration"):
        bare.risk(f, f)


@pytest.mark.parametrize("correlation", [0.0, 4.0, 16.0])
def test_fit_recovers_the_temperature_and_correlation_masks_were_drawn_with(correlation):
    """Two confident regions per image; the other classes' small probability makes scattered (independent)
    or blob-like (correlated) spurious labels, which change the mIoU the drawn masks give."""
    rng = np.random.default_rng(0)
    n = 20
    logits = np.zeros((n, 32, 32, 6), dtype=np.float32)
    for i in range(n):
        cut = rng.integers(8, 24)
        a, b = rng.choice(6, 2, replace=False)
        logits[i, :, :cut, a], logits[i, :, cut:, b] = 3.0, 3.0
    truth = SegRiskCalibration(temperature=1.0, correlation=correlation, draws=n, seed=11)
    masks = np.stack([posterior_masks(lg, truth)[i].reshape(32, 32) for i, lg in enumerate(logits)])
    assert fit_temperature(logits, masks) == pytest.approx(1.0, rel=0.2)
    errors = correlation_errors(logits, masks, 1.0, correlations=(0.0, 4.0, 16.0))
    assert min(errors, key=errors.get) == correlation
    cal, report = fit_seg_risk(logits, masks, correlations=(0.0, 4.0, 16.0))
    assert cal.correlation == correlation and report["images"] == n
    with pytest.raises(ValueError, match="do not match"):
        fit_seg_risk(logits, masks[:, :16])
