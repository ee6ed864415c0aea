"""The learned metric: statistics, the numpy MLP, its ONNX twin, and training on a real build."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cfqa_core.benchmark.learned_metric import (
    MetricTrainConfig,
    damage,
    export_onnx,
    fit,
    leave_one_codec_out,
    pair_table,
    train_metric,
)
from cfqa_core.errors import DataError, MetricError
from cfqa_core.metrics import compute_metric
from cfqa_core.metrics.learned import STAT_NAMES, LearnedMetricModel, pair_statistics
from cfqa_core.models import EMBEDDED_DIR

RNG = np.random.default_rng(0)
F = RNG.normal(0, 1, (2, 17, 24)).astype(np.float32)


def _noisy(sigma: float, seed: int = 1) -> np.ndarray:
    return (F + np.random.default_rng(seed).normal(0, sigma, F.shape)).astype(np.float32)


def test_statistics_of_identical_pair_sit_at_their_floor():
    s = dict(zip(STAT_NAMES, pair_statistics(F, F.copy())))
    assert len(s) == len(STAT_NAMES)
    for name, value in s.items():
        assert value < -8.0, name  # log10 of ~0 (up to float rounding)


def test_statistics_grow_with_the_error():
    small, large = (dict(zip(STAT_NAMES, pair_statistics(F, _noisy(s)))) for s in (0.01, 0.3))
    for name in ("log_nmse", "log_max_err", "log_1m_cos_mean", "log_1m_cos_cls", "log_pool_err", "log_top_nmse"):
        assert large[name] > small[name] + 1.0, name
    # nmse of N(0, sigma^2) noise on unit-variance features is sigma^2 (log10: -4 and about -1.05)
    assert small["log_nmse"] == pytest.approx(-4.0, abs=0.1)
    assert large["log_nmse"] == pytest.approx(np.log10(0.09), abs=0.1)


def test_damage_is_oriented_higher_worse_in_task_units():
    t = pd.DataFrame({"task": ["cls", "cls", "seg", "dpt"], "gt_distortion": [1.0, 4.0, -0.2, 0.3]})
    np.testing.assert_allclose(damage(t), [0.0, 3.0, 0.2, 0.3])


def _synthetic(n: int, seed: int):
    """Rows whose damage is a known function of two statistics, per task."""
    rng = np.random.default_rng(seed)
    stats = rng.normal(0, 1, (n, len(STAT_NAMES)))
    tasks = np.array(["cls", "seg", "dpt"])[rng.integers(0, 3, n)]
    target = np.where(tasks == "seg", 0.1, 1.0) * (2.0 * stats[:, 0] + np.maximum(stats[:, 2], 0.0))
    return stats, tasks, target


def test_fit_learns_a_known_function_and_generalises():
    stats, tasks, target = _synthetic(4000, 0)
    model = fit(stats, tasks, target, MetricTrainConfig(steps=1500, huber=10.0))
    s2, t2, y2 = _synthetic(1000, 1)
    pred = model.predict(s2, t2)
    for task in ("cls", "seg", "dpt"):
        m = t2 == task
        assert np.corrcoef(pred[m], y2[m])[0, 1] > 0.97, task
    assert np.abs(pred[t2 == "seg"]).mean() < 0.3 * np.abs(pred[t2 == "cls"]).mean()  # task units kept


def test_monotone_model_never_lowers_damage_as_an_error_grows():
    stats, tasks, target = _synthetic(2000, 4)
    groups = np.arange(len(stats)) // 10
    model = fit(stats, tasks, target, MetricTrainConfig(steps=300), groups=groups)
    assert all((w >= 0).all() for w, _ in model.layers)
    base = model.predict(stats[:200], tasks[:200])
    for k in range(len(STAT_NAMES)):
        bumped = stats[:200].copy()
        bumped[:, k] += 0.5
        assert (model.predict(bumped, tasks[:200]) >= base - 1e-12).all(), STAT_NAMES[k]


def _damage_from_files(folder, stats: np.ndarray, tasks) -> np.ndarray:
    """The saved model's damage, row by row, straight from ``model.json`` and ``model.npz``.

    Written out from the file format (standardise, append the one-hot, leaky-ReLU MLP,
    de-standardise by the row's task) without ``LearnedMetricModel``.
    """
    meta = json.loads((folder / "model.json").read_text())
    with np.load(folder / "model.npz") as z:
        a = {k: z[k].astype(np.float64) for k in z.files}
    out = []
    for row, task in zip(np.asarray(stats, np.float64), tasks):
        k = meta["tasks"].index(task)
        h = np.concatenate([(row - a["x_mean"]) / a["x_std"], np.eye(len(meta["tasks"]))[k]])
        for i in range(meta["n_layers"]):
            h = h @ a[f"w{i}"] + a[f"b{i}"]
            if i < meta["n_layers"] - 1:
                h = np.where(h > 0, h, meta["leak"] * h)
        out.append(h[0] * a["y_std"][k] + a["y_mean"][k])
    return np.array(out)


def test_save_load_and_onnx_give_the_same_numbers(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    stats, tasks, target = _synthetic(600, 2)
    model = fit(stats, tasks, target, MetricTrainConfig(steps=200))
    model.save(tmp_path)
    again = LearnedMetricModel.load(tmp_path)
    by_hand = _damage_from_files(tmp_path, stats, tasks)
    assert np.ptp(by_hand) > 0.1  # a fitted model, not a constant
    np.testing.assert_allclose(again.predict(stats, tasks), by_hand, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(again.predict(stats, tasks), model.predict(stats, tasks), rtol=1e-4, atol=1e-4)
    export_onnx(again, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"stats": stats.astype(np.float32),
                          "task_onehot": again.task_onehot(tasks).astype(np.float32)})[0][:, 0]
    np.testing.assert_allclose(out, again.predict(stats, tasks), rtol=1e-4, atol=1e-4)


def test_shipped_weights_match_the_shipped_onnx_graph():
    from cfqa_core.metrics.learned import WEIGHTS_DIR

    ort = pytest.importorskip("onnxruntime")
    if not (WEIGHTS_DIR / "model.onnx").is_file():
        pytest.skip("learned metric weights are not trained yet")
    model = LearnedMetricModel.load(WEIGHTS_DIR)
    stats, tasks, _ = _synthetic(300, 5)
    stats = stats - 3.0  # log10 statistics of real pairs sit well below zero
    sess = ort.InferenceSession(str(WEIGHTS_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    onehot = np.eye(len(model.tasks))[[model.tasks.index(t) for t in tasks]]
    out = sess.run(None, {"stats": stats.astype(np.float32), "task_onehot": onehot.astype(np.float32)})[0][:, 0]
    np.testing.assert_allclose(model.predict(stats, tasks), out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_damage_from_files(WEIGHTS_DIR, stats, tasks), out, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(MetricError, match="weights not found"):
        LearnedMetricModel.load(tmp_path / "nowhere")
    stats, tasks, target = _synthetic(300, 3)
    model = fit(stats[tasks != "dpt"], tasks[tasks != "dpt"], target[tasks != "dpt"], MetricTrainConfig(steps=20))
    with pytest.raises(MetricError, match="no model for task 'dpt'"):
        model.predict(stats[:1], ["dpt"])
    with pytest.raises(MetricError, match="expected 10 statistics"):
        model.predict(stats[:1, :3], ["cls"])
    with pytest.raises(MetricError, match="needs the task"):
        compute_metric("learned", F, _noisy(0.1))
    with pytest.raises(DataError, match="benchmark table not found"):
        pair_table(tmp_path)
    with pytest.raises(DataError, match="folds"):
        MetricTrainConfig(folds=1)


@pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(), reason="embedded weights not trained yet")
def test_train_metric_on_a_real_build(tmp_path):
    from cfqa_core.benchmark.table.builder import BuildConfig, build

    build_dir = tmp_path / "build"
    build(BuildConfig(out=str(build_dir), n_per_task=4, tasks=("seg",), codecs=("hevc", "av1"), workers=1,
                      progress=False, metrics=("mse", "cosine", "cka")))
    pairs = pair_table(build_dir, progress=False)
    table = pd.read_parquet(build_dir / "table.parquet")
    assert len(pairs) == len(table) and np.isfinite(pairs[list(STAT_NAMES)].to_numpy()).all()
    # a second call reads the cached statistics back unchanged
    again = pair_table(build_dir, progress=False)
    pd.testing.assert_frame_equal(pairs, again)
    scored = leave_one_codec_out(pairs, MetricTrainConfig(steps=50), progress=False)
    assert scored["learned"].notna().all()  # every row predicted out of sample
    result = train_metric(build_dir, tmp_path / "metric", MetricTrainConfig(steps=50), progress=False)
    assert {r["codec"] for r in result["loco"]} == {"hevc", "av1"}
    assert (tmp_path / "metric" / "model.onnx").is_file() and "cosine" in result["verdict"]
    model = LearnedMetricModel.load(tmp_path / "metric")
    row = pairs.iloc[0]
    assert model.predict(row[list(STAT_NAMES)].to_numpy(float)[None], [row["task"]]).shape == (1,)


def test_shipped_metric_scores_more_damage_for_a_coarser_encode():
    from cfqa_core.codecs import get_codec
    from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, synthetic_feature
    from cfqa_core.metrics.learned import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "model.npz").is_file():
        pytest.skip("learned metric weights are not trained yet")
    codec = get_codec("hevc")
    ok, reason = codec.availability()
    if not ok:
        pytest.skip(reason)
    f = synthetic_feature(EMBEDDED_SHAPES["seg"], seed=3)
    vr = (float(f.min()), float(f.max()))
    damage_at = [compute_metric("learned", f, codec.decode(codec.encode(f, qp, value_range=vr)).reshape(f.shape),
                                task="seg") for qp in (4, 20, 36)]
    assert damage_at[0] < damage_at[1] < damage_at[2], damage_at
    assert (WEIGHTS_DIR / "model.onnx").is_file() and "cosine" in (WEIGHTS_DIR / "loco.md").read_text()


def test_cached_statistics_of_a_reencoded_row_are_recomputed(tmp_path):
    from cfqa_core.benchmark.learned_metric import STATS_FILE

    if not (EMBEDDED_DIR / "model.safetensors").is_file():
        pytest.skip("embedded weights not trained yet")
    from cfqa_core.benchmark.table.builder import BuildConfig, build

    build_dir = tmp_path / "build"
    build(BuildConfig(out=str(build_dir), n_per_task=1, tasks=("cls",), codecs=("hevc",), workers=1,
                      progress=False, metrics=("mse",)))
    first = pair_table(build_dir, progress=False)
    cache = pd.read_parquet(build_dir / STATS_FILE)
    cache.loc[0, "bytes"] += 1  # as if row 0 had been re-encoded since
    cache.loc[0, STAT_NAMES[0]] = 99.0
    cache.to_parquet(build_dir / STATS_FILE, index=False)
    again = pair_table(build_dir, progress=False)
    assert again[STAT_NAMES[0]].iloc[0] == pytest.approx(first[STAT_NAMES[0]].iloc[0])
