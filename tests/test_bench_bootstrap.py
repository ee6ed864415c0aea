"""Bootstrap intervals over originals: known correlations, pairing, agreement with a plain loop."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfqa_core.benchmark.bootstrap import OriginalBootstrap, draw_weights, interval, mean_samples
from cfqa_core.benchmark.protocol import ladder_halves, run_protocol
from cfqa_core.errors import DataError

POINTS = 8


def ladder_table(metric_fn, images: int = 40, seed: int = 0, task: str = "dpt", codec: str = "hevc"):
    """One codec x task: distortion rising along the ladder; ``metric_fn(dist, rng)`` gives the metric (an MSE)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(images):
        dist = np.sort(rng.uniform(0, 1, POINTS)) + np.linspace(0, 0.5, POINTS)
        mse = metric_fn(dist, rng)
        for k in range(POINTS):
            rows.append({"image_id": f"im{i:03d}", "task": task, "codec": codec, "family": "hevc",
                         "rate_point": 2 * k + 2, "rate_index": k, "gt_distortion": float(dist[k]),
                         "mse": float(mse[k])})
    return pd.DataFrame(rows)


def test_metric_equal_to_distortion_gives_plcc_one_with_a_tight_interval():
    summary, results = run_protocol(ladder_table(lambda d, rng: d.copy()), ["mse"])
    r = results["hevc/dpt/mse"]
    assert r["plcc"] == pytest.approx(1.0) and r["srocc"] == pytest.approx(1.0)
    assert r["plcc_ci"][0] > 0.999999 and r["plcc_ci"][1] <= 1.0 + 1e-12
    assert r["n"] == 40


def test_random_metric_interval_contains_zero():
    summary, results = run_protocol(ladder_table(lambda d, rng: rng.normal(size=d.size), images=60), ["mse"])
    r = results["hevc/dpt/mse"]
    assert r["plcc_ci"][0] < 0 < r["plcc_ci"][1]
    assert r["srocc_ci"][0] < 0 < r["srocc_ci"][1]
    assert r["plcc_ci"][0] <= r["plcc"] <= r["plcc_ci"][1]
    # Reported raw and oriented: MSE on dpt has sign +1, so both intervals coincide.
    row = summary.iloc[0]
    assert (row.plcc_oriented_lo, row.plcc_oriented_hi) == pytest.approx((row.plcc_lo, row.plcc_hi))


def test_noisy_metric_interval_is_wider_than_a_clean_one():
    clean = run_protocol(ladder_table(lambda d, rng: d + rng.normal(0, 0.05, d.size)), ["mse"])[1]["hevc/dpt/mse"]
    noisy = run_protocol(ladder_table(lambda d, rng: d + rng.normal(0, 0.6, d.size)), ["mse"])[1]["hevc/dpt/mse"]
    width = lambda r: r["plcc_ci"][1] - r["plcc_ci"][0]  # noqa: E731
    assert width(noisy) > 3 * width(clean)
    assert noisy["plcc"] < clean["plcc"]


def test_cell_mean_matches_a_plain_resampling_loop():
    values = np.random.default_rng(3).normal(size=25)
    values[[4, 9]] = np.nan  # undefined correlations are left out of each resample's mean
    pf = pd.DataFrame({"task": "seg", "image_id": [f"i{k}" for k in range(25)]})
    boot = OriginalBootstrap(pf, resamples=300, seed=7)
    got = boot.cell("seg", pf["image_id"].to_numpy(), values).mean()
    # Originals are drawn in sorted-name order.
    ids = list(pf["image_id"])
    ordered = values[[ids.index(i) for i in sorted(ids)]]
    idx = np.random.default_rng(7).integers(0, 25, size=(300, 25))
    expect = np.array([np.nanmean(ordered[row]) for row in idx])
    assert got == pytest.approx(expect, abs=1e-12)
    std = boot.cell("seg", pf["image_id"].to_numpy(), values).std()
    assert std == pytest.approx(np.array([np.nanstd(ordered[row]) for row in idx]), abs=1e-9)


def test_cells_of_a_task_are_paired_by_original():
    # Two metrics whose per-original values differ by exactly 0.1: the paired difference has no spread.
    pf = pd.DataFrame({"task": "cls", "image_id": [f"i{k}" for k in range(30)]})
    boot = OriginalBootstrap(pf)
    a = np.random.default_rng(0).uniform(-1, 1, 30)
    ids = pf["image_id"].to_numpy()
    diff = boot.cell("cls", ids, a).mean() - boot.cell("cls", ids, a - 0.1).mean()
    assert interval(diff) == pytest.approx((0.1, 0.1), abs=1e-12)
    # The same values on another task are drawn independently.
    pf2 = pd.concat([pf, pf.assign(task="seg")])
    boot2 = OriginalBootstrap(pf2)
    lo, hi = interval(boot2.cell("cls", ids, a).mean() - boot2.cell("seg", ids, a).mean())
    assert lo < -0.05 and hi > 0.05


def test_draw_weights_and_mean_samples():
    w = draw_weights(7, 50, np.random.default_rng(0))
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all()
    pf = pd.DataFrame({"task": "cls", "image_id": ["a", "b"]})
    boot = OriginalBootstrap(pf, resamples=20)
    empty = boot.cell("cls", ["a", "b"], [np.nan, np.nan])
    assert np.isnan(empty.mean()).all()
    full = boot.cell("cls", ["a", "b"], [0.5, 0.5])
    assert mean_samples([empty, full]) == pytest.approx(np.full(20, 0.5))  # a cell with no value is skipped
    assert interval(np.full(10, np.nan)) != interval(np.full(10, np.nan))  # (nan, nan)


def test_bootstrap_bad_input():
    pf = pd.DataFrame({"task": "cls", "image_id": ["a", "b"]})
    with pytest.raises(DataError, match="resamples must be positive"):
        OriginalBootstrap(pf, resamples=0)
    boot = OriginalBootstrap(pf, resamples=5)
    with pytest.raises(DataError, match="no originals of task 'seg'"):
        boot.cell("seg", ["a"], [0.1])
    with pytest.raises(DataError, match="original 'zz' of task 'cls'"):
        boot.cell("cls", ["zz"], [0.1])
    with pytest.raises(DataError, match="no cell to average"):
        mean_samples([])


def test_ladder_halves_split_each_feature_by_rate_index():
    t = ladder_table(lambda d, rng: d, images=3)
    t = t[~((t.image_id == "im001") & (t.rate_index == 7))]  # 7 points: the middle goes to the high half
    high, low = ladder_halves(t.sample(frac=1.0, random_state=0))
    assert set(high.groupby("image_id")["rate_index"].max()) == {3}
    assert set(low.groupby("image_id")["rate_index"].min()) == {4}
    assert high.groupby("image_id").size().to_dict() == {"im000": 4, "im001": 4, "im002": 4}
    assert low.groupby("image_id").size().to_dict() == {"im000": 4, "im001": 3, "im002": 4}
    with pytest.raises(DataError, match="lacks column.*rate_index"):
        ladder_halves(t.drop(columns="rate_index"))


def test_no_interval_from_a_handful_of_originals():
    results = run_protocol(ladder_table(lambda d, rng: d + rng.normal(0, 0.3, d.size), images=9), ["mse"])[1]
    r = results["hevc/dpt/mse"]
    assert r["n"] == 9 and r["plcc"] is not None and r["plcc_ci"] is None and r["srocc_ci"] is None
    r = run_protocol(ladder_table(lambda d, rng: d + rng.normal(0, 0.3, d.size), images=10), ["mse"])[1]
    assert r["hevc/dpt/mse"]["plcc_ci"] is not None
