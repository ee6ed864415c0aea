"""The task-aware proxy metric: distilled from the cloud's outputs, zero when nothing changed."""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_core.errors import MetricError
from cfqa_core.metrics import compute_metric, get_metric
from cfqa_core.metrics.proxy import ProxySet, margin_used, shipped_proxies


@pytest.fixture(scope="module")
def features(model):
    from cfqa_core.data.dataset import load_split
    from cfqa_core.inference import extract_features

    scenes = load_split("val", 6)
    return {task: extract_features(model, task, scenes.images) for task in ("cls", "seg", "dpt")}


def test_registered_as_a_damage_score():
    spec = get_metric("proxy")
    assert spec.higher_is_better is False and set(spec.kwargs) == {"task", "split"}


@pytest.mark.parametrize("task", ["cls", "seg", "dpt"])
def test_zero_for_an_unchanged_feature_and_growing_with_noise(features, task):
    f = features[task][0]
    assert compute_metric("proxy", f, f.copy(), task=task) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, f.shape).astype(np.float32) * float(f.std())
    damage = [compute_metric("proxy", f, f + s * noise, task=task) for s in (0.02, 0.1, 0.4)]
    assert damage[0] < damage[1] < damage[2]


def test_at_the_last_block_the_proxy_is_the_cloud_head(model, features):
    """Split 8: the cloud is the final norm and a linear head, which the ridge fit recovers."""
    from cfqa_core.inference import predict

    heads = shipped_proxies()
    for task in ("cls", "seg"):
        f = features[task]
        cloud = predict(model, task, f)
        proxy = heads.head(task, 8)
        for i, out in enumerate(cloud):
            z = proxy.outputs(f[i])
            if task == "cls":
                assert int(np.argmax(z[0])) + 1 == out.top1
            else:
                # Patch-level labels agree with the cloud's upsampled mask at patch centres (first view).
                g = int(np.sqrt(z.shape[1]))
                step = out.mask.shape[0] / g
                centres = out.mask[(np.arange(g) * step + step / 2).astype(int)][:, (np.arange(g) * step + step / 2)
                                                                                  .astype(int)]
                assert (z[0].argmax(-1).reshape(g, g) == centres).mean() > 0.9


def test_margin_used_flags_a_changed_top1():
    ref = np.array([[3.0, 1.0, 0.0]])
    assert margin_used(ref, ref)[0] == 0.0
    assert margin_used(ref, np.array([[2.0, 1.0, 0.0]]))[0] == pytest.approx(0.5)
    assert margin_used(ref, np.array([[1.0, 2.0, 0.0]]))[0] > 1.0


def test_clear_errors(features, tmp_path):
    f = features["cls"][0]
    with pytest.raises(MetricError, match="no cls proxy for split 3"):
        compute_metric("proxy", f, f, task="cls", split=3)
    with pytest.raises(MetricError, match="needs the task"):
        compute_metric("proxy", f, f)
    with pytest.raises(MetricError, match="does not fit the proxy"):
        compute_metric("proxy", features["dpt"][0], features["dpt"][0], task="dpt", split=4)
    with pytest.raises(MetricError, match="not found"):
        ProxySet.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(MetricError, match="unreadable"):
        ProxySet.load(tmp_path / "bad.npz")


def test_training_recovers_the_head_at_the_last_block(tmp_path):
    from cfqa_core.training.train_proxy import ProxyTrainConfig, train_proxies

    cfg = ProxyTrainConfig(splits=(8,), tasks=("cls",), images={"cls": 24}, noise_levels=(0.0, 0.1))
    result = train_proxies(cfg, tmp_path / "p.npz", progress=False)
    assert result["fit"][0]["r2_clean"] > 0.99
    heads = ProxySet.load(tmp_path / "p.npz")
    assert set(heads.heads) == {("cls", 8)} and heads.default_split == 8


def test_seg_training_fits_and_stores_the_risk_calibration(tmp_path):
    from cfqa_core.training.train_proxy import ProxyTrainConfig, train_proxies

    cfg = ProxyTrainConfig(splits=(8,), tasks=("seg",), images={"seg": 6}, noise_levels=(0.0,), risk_images=6)
    result = train_proxies(cfg, tmp_path / "p.npz", progress=False)
    fit = result["fit"][0]["seg_risk"]
    assert fit["images"] == 6 and str(fit["correlation"]) in fit["miou_rmse"]
    assert min(fit["miou_rmse"].values()) == fit["miou_rmse"][str(fit["correlation"])]
    cal = ProxySet.load(tmp_path / "p.npz").head("seg", 8).seg_risk.cal
    assert cal.temperature == pytest.approx(fit["temperature"], abs=1e-4) and cal.correlation == fit["correlation"]


def test_class_damage_grows_with_the_rank_lost():
    from cfqa_core.metrics.proxy import class_damage

    ref = np.array([[3.0, 1.0, 0.0]])
    assert class_damage(ref, np.array([[2.0, 1.0, 0.0]]))[0] == pytest.approx(0.5)   # margin half used
    assert class_damage(ref, np.array([[1.0, 2.0, 0.0]]))[0] == 2.0                  # overtaken once
    assert class_damage(ref, np.array([[0.0, 2.0, 1.0]]))[0] == 3.0                  # overtaken twice
