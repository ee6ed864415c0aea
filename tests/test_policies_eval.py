"""``cfqa policies eval``: equal-accuracy figures on held-out images follow from the table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cfqa_core.accounting import matched_fixed_rung, oracle_rungs
from cfqa_core.errors import DataError, PolicyError
from cfqa_edge.policies.spec import parse_spec
from cfqa_sim.ratecontrol.evaluate import EvalConfig, evaluate, flat_results, halves, headline
from cfqa_sim.ratecontrol.replay import replay_arrays
from tests.support.policy_frames import synthetic_frame

POLICIES = ("fixed-matched", "cfqa-target", "hybrid", "bandwidth", "oracle")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "table.parquet"
    synthetic_frame(np.exp(np.random.default_rng(4).normal(-0.6, 0.6, 40))).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def report(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    cfg = EvalConfig(table=str(table), policies=POLICIES, throughput_mbps=2.0, deadline_s=0.5,
                     metric_s=0.001, out=str(out), progress=False)
    return evaluate(cfg), out


def test_report_files_and_fields(report):
    rep, out = report
    for name in ("report.md", "results.json", "rate_success.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "plans" / "cls-hevc-fold0.json").is_file() and (out / "plans" / "cls-hevc-fold1.json").is_file()
    rows = flat_results(rep)
    assert [r["policy"] for r in rows] == list(POLICIES)
    for r in rows:
        for key in ("policy", "task", "codec", "bytes_per_frame", "success_rate", "within_tolerance",
                    "savings_vs_matched_fixed"):
            assert key in r
    assert {"capture_of_oracle"} <= set(rows[1]) and {"capture_of_oracle"} <= set(rows[2])
    md = (out / "report.md").read_text()
    assert "| cfqa-target |" in md and headline(rep["sections"][0]) in md


def test_figures_follow_from_the_table_on_held_out_images(report, table):
    import pandas as pd

    rep, _ = report
    arr = replay_arrays(pd.read_parquet(table), "cls", "hevc")
    sent = arr.bytes + arr.meta_bytes
    sec = rep["sections"][0]
    rows = {r["policy"]: r for r in sec["results"]}
    # Matched fixed: per fold, the cheapest rung with every calibration image within tolerance,
    # evaluated on the other half.
    expected = np.zeros(arr.n_images)
    for j, (cal, ev) in enumerate(halves(arr.n_images)):
        m = matched_fixed_rung("cls", arr.output_change[cal], sent[cal], target=0.99)
        assert sec["folds"][j]["matched_fixed_rate_point"] == arr.rate_points[m]
        expected[ev] = sent[ev, m]
    fixed = rows["fixed-matched"]
    assert fixed["bytes_per_frame"] == pytest.approx(expected.mean())
    assert fixed["encodes_per_frame"] == 1.0 and fixed["savings_vs_matched_fixed"] == 0.0
    # The oracle bound: per image the cheapest rung within tolerance.
    pick = oracle_rungs("cls", arr.output_change, sent)
    assert rows["oracle"]["bytes_per_frame"] == pytest.approx(sent[np.arange(arr.n_images), pick].mean())
    assert rows["oracle"]["success_rate"] == 1.0
    # The metric tells each image's tolerance here, so the plan saves bytes at equal success with <= 2 encodes.
    target = rows["cfqa-target"]
    assert target["savings_vs_matched_fixed"] > 0.1 and target["equal_accuracy"]
    assert target["max_encodes"] <= 2
    assert target["capture_of_oracle"] == pytest.approx(
        target["savings_vs_matched_fixed"] / rows["oracle"]["savings_vs_matched_fixed"])
    lo, hi = target["savings_vs_matched_fixed_ci"]
    assert lo <= target["savings_vs_matched_fixed"] <= hi


def test_a_late_frame_is_a_failure(table):
    cfg = EvalConfig(table=str(table), policies=("fixed-matched", "oracle"), throughput_mbps=0.01,
                     deadline_s=0.5, metric_s=0.0, progress=False)
    rows = {r["policy"]: r for r in flat_results(evaluate(cfg))}
    # 0.01 Mbit/s carries 625 bytes in 0.5 s: every frame is late, so nothing succeeds.
    assert rows["fixed-matched"]["success_rate"] == 0.0 and rows["fixed-matched"]["within_tolerance"] == 1.0


def test_specs():
    spec = parse_spec("cfqa-target:search=bisect:max_encodes=3")
    assert (spec.label, spec.name, spec.params) == ("cfqa-target:search=bisect:max_encodes=3", "cfqa-target",
                                                    {"search": "bisect", "max_encodes": "3"})
    assert (parse_spec("fixed-matched").name, parse_spec("fixed-matched").params) == ("fixed", {"matched": "true"})
    with pytest.raises(PolicyError, match="expected key=value"):
        parse_spec("cfqa-target:bisect")
    with pytest.raises(PolicyError, match="given twice"):
        parse_spec("fixed:qp=1:qp=2")


def test_bad_configuration(table, tmp_path):
    with pytest.raises(DataError, match="no metric column 'cka'"):
        evaluate(EvalConfig(table=str(table), metric="cka", progress=False))
    with pytest.raises(DataError, match="no task 'seg'"):
        evaluate(EvalConfig(table=str(table), tasks=("seg",), progress=False))
    with pytest.raises(PolicyError, match="unknown parameter 'bogus'"):
        evaluate(EvalConfig(table=str(table), policies=("fixed:bogus=1",), metric_s=0.0, progress=False))
    with pytest.raises(DataError, match="benchmark table not found"):
        evaluate(EvalConfig(table=str(tmp_path / "nope.parquet"), progress=False))
    with pytest.raises(PolicyError, match="target success rate"):
        evaluate(EvalConfig(table=str(table), target_success=1.5, progress=False))


def test_cli_json(table, capsys):
    import cfqa_core.cli as cli

    rc = cli.main(["policies", "eval", "--table", str(table), "--codec", "hevc", "--metric-ms", "1", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["fixed-matched", "cfqa-target", "hybrid", "bandwidth", "oracle"]
    assert all(r["task"] == "cls" and r["codec"] == "hevc" for r in rows)
    assert cli.main(["policies", "eval", "--table", str(table), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
