"""``cfqa policies eval`` on a synthetic table: the figures it reports follow from the table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cfqa_core.errors import DataError, PolicyError
from edge.policies.evaluate import EvalConfig, evaluate, flat_results, folds_of, parse_spec
from edge.policies.table import replay_arrays
from edge.policies.testdata import synthetic_frame

POLICIES = ("fixed", "cfqa-target", "cfqa-target:search=exhaustive", "bandwidth", "hybrid", "oracle")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "table.parquet"
    synthetic_frame(np.exp(np.random.default_rng(4).normal(-0.6, 0.6, 40))).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def report(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    cfg = EvalConfig(table=str(table), policies=POLICIES, tolerance=1.0, throughput_mbps=0.05, deadline_s=0.5,
                     metric_s=0.001, out=str(out), progress=False)
    return evaluate(cfg), out


def test_report_files_and_fields(report):
    rep, out = report
    for name in ("report.md", "results.json", "rate_accuracy.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "calibration" / "cls-hevc-cosine-fold0.json").is_file()
    rows = flat_results(rep)
    labels = [r["policy"] for r in rows]
    assert labels == [*POLICIES, "fixed@calibrated", "cfqa-target@oracle-accuracy", "oracle@tolerance"]
    for r in rows:
        for key in ("bytes_total", "accuracy", "encodes_per_frame", "edge_time_s", "savings_vs_matched_fixed",
                    "savings_vs_calibrated_fixed", "bytes_vs_oracle"):
            assert key in r
    md = (out / "report.md").read_text()
    assert "| cfqa-target |" in md and "Fixed-QP curve" in md


def test_figures_follow_from_the_table(report, table):
    import pandas as pd

    rep, _ = report
    arr = replay_arrays(pd.read_parquet(table), "cls", "hevc")
    sec = rep["sections"][0]
    rows = {r["policy"]: r for r in sec["results"]}
    # Matched fixed: the largest QP whose accuracy is within 1 point of uncompressed.
    acc = 100 * arr.task_score.mean(axis=0)
    within = [r for r in range(len(arr.rate_points)) if 100 - acc[r] <= 1.0]
    assert sec["matched_fixed_rate_point"] == arr.rate_points[max(within)]
    fixed = rows["fixed"]
    m = max(within)
    assert fixed["bytes_total"] == arr.bytes[:, m].sum()
    assert fixed["encodes_per_frame"] == 1.0
    assert fixed["edge_time_s"] == pytest.approx(arr.encode_s[:, m].mean())
    target = rows["cfqa-target"]
    assert target["savings_vs_matched_fixed"] == pytest.approx(1 - target["bytes_total"] / fixed["bytes_total"])
    assert target["bytes_vs_oracle"] == pytest.approx(target["bytes_total"] / rows["oracle"]["bytes_total"])
    assert target["edge_time_vs_fixed"] == pytest.approx(target["edge_time_s"] / fixed["edge_time_s"])
    # The oracle is a bound: no damage at the fewest bytes of any zero-damage choice.
    assert rows["oracle"]["accuracy_drop"] == 0.0
    assert rows["oracle"]["bytes_total"] <= min(c["bytes_total"] for c in sec["fixed_curve"] if c["accuracy_drop"] == 0)
    # The budgeted oracle is the byte-minimal choice within the tolerance: nothing within it is cheaper.
    bound = rows["oracle@tolerance"]
    assert bound["accuracy_drop"] <= 1.0 + 1e-9
    assert all(r["bytes_total"] >= bound["bytes_total"] for r in sec["results"] if r["accuracy_drop"] <= 1.0)
    assert target["bytes_vs_oracle_at_tolerance"] == pytest.approx(target["bytes_total"] / bound["bytes_total"])
    # On this table the metric tracks what each image tolerates (cls correct iff cosine >= cutoff).
    assert sec["metric_vs_oracle_rank_correlation"] > 0.5
    # Per-frame adaptivity beats the matched fixed QP on this table, with few encodes.
    assert target["bytes_total"] < fixed["bytes_total"]
    assert target["encodes_per_frame"] <= 2.0
    assert rows["cfqa-target:search=exhaustive"]["encodes_per_frame"] > target["encodes_per_frame"]


def test_link_policies_respect_the_stated_budget(report, table):
    import pandas as pd

    rep, _ = report
    arr = replay_arrays(pd.read_parquet(table), "cls", "hevc")
    budget = 0.9 * 0.05e6 * 0.5 / 8
    for r in flat_results(rep):
        if r["name"] == "bandwidth":
            assert r["wire_bytes_total"] <= budget * arr.n_images
            assert r["met_target_rate"] is None
        if r["name"] == "hybrid":
            assert r["wire_bytes_total"] <= budget * arr.n_images
            assert 0.0 <= r["met_target_rate"] <= 1.0


def test_folds_and_specs():
    assert [f.tolist() for f in folds_of(5, 2)] == [[0, 2, 4], [1, 3]]
    spec = parse_spec("cfqa-target:search=bisect:max_encodes=3")
    assert (spec.name, spec.params) == ("cfqa-target", {"search": "bisect", "max_encodes": "3"})
    with pytest.raises(PolicyError, match="expected key=value"):
        parse_spec("cfqa-target:bisect")


def test_bad_configuration(table, tmp_path):
    with pytest.raises(DataError, match="no metric column 'cka'"):
        evaluate(EvalConfig(table=str(table), metric="cka", progress=False))
    with pytest.raises(DataError, match="no task 'seg'"):
        evaluate(EvalConfig(table=str(table), tasks=("seg",), progress=False))
    with pytest.raises(PolicyError, match="unknown parameter 'bogus'"):
        evaluate(EvalConfig(table=str(table), policies=("fixed:bogus=1",), metric_s=0.0, progress=False))
    with pytest.raises(DataError, match="benchmark table not found"):
        evaluate(EvalConfig(table=str(tmp_path / "nope.parquet"), progress=False))


def test_cli_json(table, monkeypatch, capsys):
    import cfqa_core.cli as cli

    if "policies" not in cli.build_parser()._subparsers._group_actions[0].choices:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "edge.policies_cmd"))
    rc = cli.main(["policies", "eval", "--table", str(table), "--policies", "fixed,cfqa-target,oracle",
                   "--metric-ms", "1", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["fixed", "cfqa-target", "oracle", "fixed@calibrated",
                                           "cfqa-target@oracle-accuracy", "oracle@tolerance"]
    assert all(r["task"] == "cls" and r["codec"] == "hevc" for r in rows)
    assert cli.main(["policies", "eval", "--table", str(table), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
