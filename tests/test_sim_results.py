"""Run folders, summaries, reports and the run/compare/sweep commands."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cfqa_core.cli import main
from cfqa_edge.policies.registry import POLICIES, PolicyParams
from cfqa_sim.results import run_policies, write_run
from cfqa_sim.scenario import load_scenario
from tests.support.sim_tables import synthetic_table, tiny_scenario

SUMMARY_KEYS = {
    "bytes_total", "bandwidth_savings_vs_baseline", "cls_top1", "seg_miou", "dpt_rmse", "latency_p50_s",
    "latency_p99_s", "deadline_miss_rate", "frames_total", "frames_dropped",
}


@pytest.fixture(scope="module")
def scenario_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("scn")
    synthetic_table(images=6).to_parquet(d / "table.parquet")
    data = tiny_scenario("table.parquet")
    data["nodes"].append({"name": "seg", "count": 1, "link": "up", "task": "seg", "arrivals": {"fps": 1.0},
                          "deadline_s": 1.0})
    path = d / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_dir(scenario_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["run", str(scenario_path), "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_a_complete_folder(run_dir):
    out = run_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is False
    s = summary["policies"]["hq"]
    assert SUMMARY_KEYS <= set(s)
    frames = pd.read_parquet(out / "frames.parquet")
    assert len(frames) == s["frames_total"] > 50
    assert {"node", "frame", "t_capture", "bytes", "rate_point", "metric", "task_score", "status",
            "drop_reason", "latency_s"} <= set(frames.columns)
    # the summary agrees with the per-frame data
    delivered = frames[frames["status"].isin(["ok", "late"])]
    assert s["latency_p50_s"] == pytest.approx(np.percentile(delivered["latency_s"], 50))
    assert s["latency_p99_s"] == pytest.approx(np.percentile(delivered["latency_s"], 99))
    assert s["bytes_total"] == frames.loc[frames["t_send_start"].notna(), "bytes"].sum()
    assert s["frames_dropped"] == (frames["status"] == "dropped").sum()
    finished = frames["status"] != "unfinished"
    misses = frames["status"].isin(["late", "dropped"]).sum()
    assert s["deadline_miss_rate"] == pytest.approx(misses / finished.sum())
    cls = delivered[delivered["task"] == "cls"]
    assert s["cls_top1"] == pytest.approx(cls["task_score"].mean())
    assert s["seg_miou"] == pytest.approx(delivered.loc[delivered["task"] == "seg", "task_score"].mean())
    assert s["dpt_rmse"] is None
    assert s["bandwidth_savings_vs_baseline"] == 0.0  # the run's policy is the baseline
    assert yaml.safe_load((out / "scenario.yaml").read_text())["name"] == "tiny"


def test_report_html_is_self_contained(run_dir):
    out = run_dir
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5  # summary, capacity, rate-accuracy, latency CDF, rate timeline
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.size[0] >= 400 and img.size[1] >= 250
    assert "<table>" in page and "hq" in page
    md = (out / "report.md").read_text()
    for name in ("summary", "capacity", "rate_accuracy", "latency_cdf", "rate_timeline"):
        assert f"(plots/{name}.png)" in md and (out / "plots" / f"{name}.png").is_file()


def test_compare_adds_the_baseline_and_measures_savings(scenario_path, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(scenario_path), "--policies", "lq", "--out", str(out), "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "savings" in printed and "lq" in printed and str(out) in printed
    summary = json.loads((out / "summary.json").read_text())
    pol = summary["policies"]
    assert list(pol) == ["hq", "lq"]
    assert pol["lq"]["bandwidth_savings_vs_baseline"] == pytest.approx(
        1 - pol["lq"]["bytes_total"] / pol["hq"]["bytes_total"])
    assert pol["lq"]["bandwidth_savings_vs_baseline"] > 0.5
    assert pol["hq"]["frames_total"] == pol["lq"]["frames_total"]
    frames = pd.read_parquet(out / "frames.parquet")
    assert set(frames["policy"]) == {"hq", "lq"}


class StopAfter:
    """Test policy: Ctrl-C on its 30th frame."""

    Params = PolicyParams
    name = "stop"
    calls = 0

    def __init__(self, params) -> None:
        pass

    def decide(self, ctx):
        StopAfter.calls += 1
        if StopAfter.calls == 30:
            raise KeyboardInterrupt
        return ctx.decision(ctx.ladder[0])


def test_partial_run_is_written_and_flagged(scenario_path, tmp_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "stop", StopAfter)
    StopAfter.calls = 0
    loaded = load_scenario(scenario_path)
    results, partial = run_policies(loaded, ["stop", "hq"], progress=False)
    assert partial and [r.policy for r in results] == ["stop"]
    summary = write_run(tmp_path / "p", loaded, results, partial)
    assert summary["partial"] is True and summary["policies"]["stop"]["partial"] is True
    assert summary["policies"]["stop"]["frames_total"] >= 29
    assert "PARTIAL RUN" in (tmp_path / "p" / "report.md").read_text()
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["partial"] is True


def test_sweep_runs_each_grid_point(scenario_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["sweep", str(scenario_path), "--grid", "nodes.0.count=1,4", "--grid", "cloud.servers=1",
               "--workers", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [p["overrides"] for p in result["points"]] == [
        ["nodes.0.count=1", "cloud.servers=1"], ["nodes.0.count=4", "cloud.servers=1"],
    ]
    one, four = (p["summary"]["frames_total"] for p in result["points"])
    assert four > 2 * one
    assert (out / result["points"][0]["folder"] / "summary.json").is_file()
    assert "nodes.0.count=4" in (out / "sweep.md").read_text()
    assert main(["sweep", str(scenario_path), "--grid", "nodes.0.count=1,zero", "--out", str(out)]) == 2
    assert "nodes.0.count (from --set)" in capsys.readouterr().err


def test_sweep_on_ray_without_ray_is_a_clear_error(scenario_path, tmp_path, capsys):
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    rc = main(["sweep", str(scenario_path), "--grid", "cloud.servers=1", "--ray", "--out", str(tmp_path / "s"),
               "--quiet"])
    assert rc == 2
    assert "--ray needs the 'ray' package" in capsys.readouterr().err


def test_bytes_over_time_follow_the_link_and_skip_outages():
    from cfqa_sim.engine import LinkInfo
    from cfqa_sim.report import sent_per_bin
    from cfqa_sim.traces import synthetic

    info = LinkInfo("up", synthetic("constant", capacity_mbps=12.0, duration_s=1.0), 0.0, [(0.002, 0.004)], True)
    # one packet per ms at 1, 2, ... ms; the outage removes the 2-5 ms packets
    assert info.usable(0.003) == 1 and info.usable(0.010) == 5
    bins = sent_per_bin(info, np.array([0.0]), np.array([0.009]), np.array([4000.0]),
                        np.array([0.0, 0.002, 0.006, 0.010]))
    assert bins == pytest.approx([1000.0, 0.0, 3000.0])
