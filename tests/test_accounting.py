"""Equal-accuracy accounting and output fidelity: the figures every report shares."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from cfqa_core.accounting import (
    FrameLedger,
    bootstrap_savings,
    compare,
    ledger,
    matched_fixed_rung,
    oracle_rungs,
    wilson_interval,
)
from cfqa_core.errors import DataError
from cfqa_core.fidelity import output_change, tolerance_for, within_tolerance


def test_output_change_per_task():
    a = SimpleNamespace(logits=np.array([0.1, 2.0, 0.3]), mask=np.array([[1, 1], [0, 2]]), depth=np.full((2, 2), 2.0))
    b = SimpleNamespace(logits=np.array([3.0, 2.0, 0.3]), mask=np.array([[1, 1], [0, 0]]),
                        depth=np.array([[2.0, 2.0], [2.0, 2.2]]))
    assert output_change("cls", a, a) == 0.0
    assert output_change("cls", b, a) == 1.0
    assert output_change("seg", b, a) == pytest.approx(0.25)
    # RMSE 0.1 over a mean depth of 2 m
    assert output_change("dpt", b, a) == pytest.approx(0.1 / 2.0)
    with pytest.raises(DataError, match="unknown task 'pose'"):
        output_change("pose", a, b)
    with pytest.raises(DataError, match="differ in shape"):
        output_change("seg", SimpleNamespace(mask=np.zeros((2, 3))), a)


def test_tolerances_default_and_override():
    assert tolerance_for("cls") == 0.0 and tolerance_for("seg") == 0.02 and tolerance_for("dpt") == 0.02
    assert tolerance_for("seg", {"seg": 0.05}) == 0.05
    ok = within_tolerance("seg", np.array([0.0, 0.02, 0.021, np.nan]))
    assert ok.tolist() == [True, True, False, False]
    with pytest.raises(DataError, match="finite number >= 0"):
        tolerance_for("dpt", {"dpt": -1})


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-3) and hi == pytest.approx(0.9785, abs=1e-3)
    assert wilson_interval(0, 0)[0] != wilson_interval(0, 0)[0]  # NaN for no frames
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_dropped_and_late_frames_are_failures_never_left_out():
    led = ledger([100, 0, 100, 100], [True, False, False, True], [0.0, math.nan, 0.0, 1.0], "cls")
    assert led.frames == 4
    assert led.success.tolist() == [True, False, False, False]
    s = led.summary()
    assert s["success_rate"] == 0.25 and s["bytes_per_captured_frame"] == 75.0
    mixed = ledger([1, 1], [True, True], [0.5, 0.01], ["cls", "seg"])
    assert mixed.success.tolist() == [False, True]


def test_matched_fixed_is_the_cheapest_rung_reaching_the_target():
    # 4 images x 3 rungs (highest quality first); rung 2 fails one image.
    change = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=float)
    nbytes = np.array([[300, 200, 100]] * 4)
    assert matched_fixed_rung("cls", change, nbytes, target=0.99) == 1
    assert matched_fixed_rung("cls", change, nbytes, target=0.75) == 2
    # Nothing reaches the target: the rung with the best success rate.
    assert matched_fixed_rung("cls", np.ones((2, 3)) - np.eye(2, 3), np.array([[3, 2, 1]] * 2), target=1.0) == 1


def test_oracle_never_prefers_a_rung_outside_tolerance():
    change = np.array([[0.0, 0.5, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    nbytes = np.array([[30, 20, 10]] * 3)
    assert oracle_rungs("cls", change, nbytes).tolist() == [2, 0, 0]


def test_savings_interval_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    ref = rng.integers(800, 1200, 200)
    pol = (ref * 0.7).astype(int)
    lo, hi = bootstrap_savings(pol, ref)
    point = 1 - pol.sum() / ref.sum()
    assert lo < point < hi and hi - lo < 0.02 and abs(point - 0.3) < 0.01
    a = FrameLedger(pol, np.ones(200, bool), np.ones(200, bool))
    b = FrameLedger(ref, np.ones(200, bool), np.ones(200, bool))
    cmp = compare(a, b)
    assert cmp["savings"] == pytest.approx(1 - pol.sum() / ref.sum())
    assert cmp["equal_accuracy"] is True
    worse = FrameLedger(pol, np.arange(200) % 10 != 0, np.ones(200, bool))
    assert compare(worse, b)["equal_accuracy"] is False
    with pytest.raises(DataError, match="cannot compare"):
        compare(a, FrameLedger(ref[:10], np.ones(10, bool), np.ones(10, bool)))


def test_interval_resamples_images_not_repeated_frames():
    rng = np.random.default_rng(1)
    per_image = rng.integers(500, 1500, 20)
    images = np.repeat(np.arange(20), 50)            # 50 frames of each of 20 images
    ref = per_image[images]
    pol = (ref * rng.uniform(0.3, 1.0, 20)[images]).astype(int)
    narrow = bootstrap_savings(pol, ref)
    honest = bootstrap_savings(pol, ref, groups=images)
    assert honest[1] - honest[0] > 3 * (narrow[1] - narrow[0])
    a = ledger(pol, np.ones(1000, bool), np.zeros(1000), "cls", groups=images)
    b = ledger(ref, np.ones(1000, bool), np.zeros(1000), "cls", groups=images)
    assert compare(a, b)["savings_ci"] == pytest.approx(list(honest))
