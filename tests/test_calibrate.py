"""Threshold calibration: known answers, tolerance semantics, the file and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cfqa_core.cli import main as cli_main
from cfqa_core.errors import PolicyError
from cfqa_edge.policies import as_decision, get_policy
from cfqa_edge.policies.calibration import load_calibration
from cfqa_sim.ratecontrol.accuracy import accuracy, accuracy_drop
from cfqa_sim.ratecontrol.calibrate import calibrate, calibrate_arrays, threshold_choices
from cfqa_sim.ratecontrol.replay import replay_arrays, replay_context
from tests.support.policy_frames import synthetic_frame

CUTOFF = 0.999


@pytest.fixture
def frame():
    return synthetic_frame(np.exp(np.random.default_rng(11).normal(-0.4, 0.6, 50)), cutoff=CUTOFF)


def test_accuracy_units():
    assert accuracy("cls", np.array([1, 1, 0, 1])) == 75.0
    assert accuracy_drop("cls", np.array([1, 1, 0, 1]), np.ones(4)) == 25.0
    assert accuracy_drop("seg", np.array([0.50, 0.60]), np.array([0.52, 0.60])) == pytest.approx(1.0)
    assert accuracy("dpt", np.array([1.0, 3.0])) == 2.0
    assert accuracy_drop("dpt", np.array([1.1, 1.1]), np.array([1.0, 1.0])) == pytest.approx(10.0)


def test_zero_tolerance_threshold_is_the_known_cutoff(frame):
    """Correct exactly when cosine >= CUTOFF: the loosest safe threshold is the smallest metric value >= CUTOFF."""
    cal = calibrate(frame, "cosine", tolerance=0.0)
    cos = frame["cosine"].to_numpy()
    thr = cal.curve("cls", "hevc").threshold_for(0.0)
    assert thr == cos[cos >= CUTOFF].min()
    entry = cal.to_json()["tasks"]["cls"]["hevc"]
    assert entry["threshold"] == thr and entry["accuracy_drop"] == 0.0 and entry["reachable"]


def test_threshold_is_the_loosest_within_tolerance(frame):
    arr = replay_arrays(frame, "cls", "hevc")
    values = arr.metric("cosine")
    curve = calibrate_arrays(arr, "cosine", True, rule="monotone")
    rows = np.arange(arr.n_images)

    def drop(t):
        return accuracy_drop("cls", arr.task_score[rows, threshold_choices(values, t, True)], arr.ref_score)

    for tol in (2.0, 4.0, 10.0):
        thr = curve.threshold_for(tol)
        assert drop(thr) <= tol + 1e-9
        looser = values[values < thr].max()
        stricter = np.sort(values[values >= thr])
        # Conservative rule: every stricter candidate is within tolerance too; the next looser one is not.
        assert max(drop(t) for t in stricter) <= tol + 1e-9
        assert drop(looser) > tol
    assert curve.threshold_for(2.0) >= curve.threshold_for(10.0)


def test_rules_on_a_noisy_drop_sequence():
    from cfqa_edge.policies.calibration import isotonic_increasing, select_loosest

    drops = [0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.5, 3.0, 4.0]  # one early flip, then a real rise
    assert select_loosest(drops, 1.0, "monotone") == 1
    assert select_loosest(drops, 1.0, "loosest") == 5
    np.testing.assert_allclose(isotonic_increasing(drops), [0, 0, 0.5, 0.5, 0.5, 0.5, 1.5, 3, 4])
    assert select_loosest(drops, 1.0, "isotonic") == 5
    assert select_loosest([2.0, 3.0], 1.0, "isotonic") is None
    with pytest.raises(PolicyError, match="unknown calibration rule 'median'"):
        select_loosest(drops, 1.0, "median")


def test_unreachable_target_is_a_record_not_an_exception(tmp_path):
    # Two images fail even at the best rate point: a 1-point tolerance is unreachable.
    f = synthetic_frame(np.array([0.5, 1.0, 50.0, 60.0] + [1.0] * 16), cutoff=CUTOFF)
    cal = calibrate(f, "cosine", tolerance=1.0)
    entry = cal.to_json()["tasks"]["cls"]["hevc"]
    assert entry["reachable"] is False and entry["threshold"] is None
    path = tmp_path / "t.json"
    cal.save(path)
    arr = replay_arrays(f, "cls", "hevc")
    policy = get_policy("cfqa-target", target_accuracy_drop=1.0, calibration=str(path))
    ctx = replay_context(arr, 0, frame_idx=0)
    d = as_decision(policy.decide(ctx), ctx)
    assert d.rate_point == arr.rate_points[0] and d.met_target is False
    assert d.reason.startswith("unreachable: accuracy target of cls/hevc") and d.encodes == 1
    # A looser target in the same file is reachable.
    assert get_policy("cfqa-target", target_accuracy_drop=15.0, calibration=str(path)).resolver.resolve(
        "cls", "hevc", arr.rate_points).target is not None


def test_calibration_file_round_trip_drives_the_policy(frame, tmp_path):
    path = tmp_path / "thresholds.json"
    cal = calibrate(frame, "cosine", tolerance=0.0, source="synthetic")
    cal.save(path)
    back = load_calibration(path)
    assert back.metric == "cosine" and back.higher_is_better is True
    c0, c1 = cal.curve("cls", "hevc"), back.curve("cls", "hevc")
    for tol in (0.0, 3.0, 20.0):
        assert c0.threshold_for(tol) == c1.threshold_for(tol)
    arr = replay_arrays(frame, "cls", "hevc")
    policy = get_policy("cfqa-target", target_accuracy_drop=0.0, calibration=str(path), search="exhaustive")
    chosen = []
    for i in range(arr.n_images):
        ctx = replay_context(arr, i, frame_idx=i)
        chosen.append(arr.rate_points.index(as_decision(policy.decide(ctx), ctx).rate_point))
    scores = arr.task_score[np.arange(arr.n_images), chosen]
    assert accuracy_drop("cls", scores, arr.ref_score) == 0.0
    assert np.mean(chosen) > 0.5  # not simply the best rate point everywhere
    with pytest.raises(PolicyError, match="no codec 'vvc'"):
        policy.resolver.resolve("cls", "vvc", arr.rate_points)
    with pytest.raises(PolicyError, match="differs from the calibration's 'cosine'"):
        get_policy("cfqa-target", metric="mse", target_accuracy_drop=0.0, calibration=str(path))


def test_bad_calibration_files(tmp_path):
    with pytest.raises(PolicyError, match="calibration file not found"):
        get_policy("cfqa-target", target_accuracy_drop=1.0, calibration=str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(PolicyError, match="is not a calibration file"):
        load_calibration(bad)
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="cannot read calibration file"):
        load_calibration(bad)


def test_seg_and_dpt_calibrate_in_their_units():
    for task, ref in (("seg", 0.6), ("dpt", 1.5)):
        f = synthetic_frame(np.exp(np.random.default_rng(2).normal(0, 0.5, 30)), task=task, ref_score=ref)
        curve = calibrate(f, "cosine", tolerance=0.5).curve(task, "hevc")
        arr = replay_arrays(f, task, "hevc")
        thr = curve.threshold_for(0.5)
        choice = threshold_choices(arr.metric("cosine"), thr, True)
        drop = accuracy_drop(task, arr.task_score[np.arange(arr.n_images), choice], arr.ref_score)
        assert 0.0 <= drop <= 0.5
        assert curve.threshold_for(0.5) <= curve.threshold_for(0.0)


def test_cli_writes_the_file_and_reports_errors(frame, tmp_path, capsys):
    table = tmp_path / "table.parquet"
    frame.to_parquet(table)
    out = tmp_path / "thr.json"
    rc = cli_main(["calibrate", "--table", str(table), "--metric", "cosine", "--task", "cls", "--tolerance", "0",
                  "--codec", "hevc", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    cos = frame["cosine"].to_numpy()
    assert data["tasks"]["cls"]["hevc"]["threshold"] == cos[cos >= CUTOFF].min()
    assert "cls" in capsys.readouterr().out
    assert cli_main(["calibrate", "--table", str(tmp_path / "missing.parquet")]) == 2
    assert "benchmark table not found" in capsys.readouterr().err
    assert cli_main(["calibrate", "--table", str(table), "--metric", "cka"]) == 2
    assert "no metric column 'cka'" in capsys.readouterr().err
    assert cli_main(["calibrate", "--table", str(table), "--task", "seg"]) == 2
    assert "no task 'seg'" in capsys.readouterr().err
    assert math.isfinite(data["tasks"]["cls"]["hevc"]["curve"]["best_rate_drop"])
