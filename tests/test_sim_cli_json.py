"""``--json`` on the simulator's commands, ``--version``, ``sweep --ray`` parsing, provenance, progress."""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from cfqa_core.cli import main
from cfqa_sim.progress import SimProgress
from cfqa_sim.traces import SHIPPED_TRACES_DIR
from tests.support.sim_tables import synthetic_table, tiny_scenario

LTE = SHIPPED_TRACES_DIR / "cellular" / "Verizon-LTE-short.up"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scn")
    synthetic_table(images=4).to_parquet(folder / "table.parquet")
    data = tiny_scenario("table.parquet", duration_s=6.0, drain_s=5.0)
    data["links"]["up"]["trace"] = "cellular/Verizon-LTE-short.up"  # a shipped trace, by name
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cfqa {version('cfqa-edgecloud')}"


def test_trace_info_json_finds_a_shipped_trace(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["trace", "info", "cellular/Verizon-LTE-short.up", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["opportunities"] == 69367 and info["period_s"] == 140.0
    assert info["mean_mbps"] == pytest.approx(5.946, abs=1e-3)
    assert Path(info["path"]) == LTE
    assert main(["trace", "info", "cellular/nope.up", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: file not found: cellular/nope.up" in captured.err


def test_scenario_validate_json(capsys, scenario):
    assert main(["scenario", "validate", str(scenario), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["nodes"] == 3 and doc["mode"] == "replay"
    assert doc["traces"] == {"up": "Verizon-LTE-short.up"}


def test_compare_json_is_the_only_stdout_and_carries_provenance(capsys, scenario, tmp_path):
    out = tmp_path / "run"
    assert main(["compare", str(scenario), "--policies", "hq,lq", "--out", str(out), "--json", "--no-report"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert set(doc["policies"]) == {"hq", "lq"} and doc["out"] == str(out)
    assert "results:" in captured.err  # the human table went to stderr
    on_disk = json.loads((out / "summary.json").read_text())
    prov = on_disk["provenance"]
    assert prov == doc["provenance"]
    assert prov["package_version"] == version("cfqa-edgecloud")
    assert prov["seed"] == 7
    assert prov["scenario_file"]["sha256"] == sha256(scenario)
    assert prov["traces"]["up"]["sha256"] == sha256(LTE)
    assert prov["replay_table"]["sha256"] == sha256(scenario.parent / "table.parquet")
    assert prov["timing_profile"]["name"].startswith("scenario constants")
    git = prov["git"]
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"])
    else:
        assert git is None


def test_sweep_ray_flag_does_not_swallow_the_scenario(capsys, scenario, tmp_path):
    # '--ray' directly before the path: the path is the scenario (the bad grid is reported, not
    # a missing scenario), whether or not ray is installed.
    assert main(["sweep", "--ray", str(scenario), "--grid", "bogus", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--grid bogus: expected key=v1,v2" in err and "required" not in err
    assert main(["sweep", "--grid", "nodes.0.count=1"]) == 2
    assert "the scenario YAML file is required" in capsys.readouterr().err


def test_sweep_json(capsys, scenario, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", str(scenario), "--grid", "nodes.0.count=1,2", "--out", str(out), "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["overrides"] for p in doc["points"]] == [["nodes.0.count=1"], ["nodes.0.count=2"]]
    assert [p["summary"]["frames_total"] > 0 for p in doc["points"]] == [True, True]


def test_progress_logs_whole_seconds_without_a_terminal():
    stream = io.StringIO()  # not a terminal
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TqdmWarning fails the test
        with SimProgress(30.0, "s:p", stream=stream, interval_s=0.0) as bar:
            t = 0.0
            while t < 30.0:
                t = min(t + 0.15, 30.0)  # float steps: 0.30000000000000004, ...
                bar.update(t)
            bar.update(31.2)  # draining past the end
            bar.draining(3)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "<-" not in stream.getvalue()
    assert lines[0].startswith("s:p: started, 30 s to simulate")
    counts = [re.search(r": (\d+)/30 sim s", ln) for ln in lines[1:]]
    assert [int(m.group(1)) for m in counts if m] == [*range(1, 31), 30]
    assert any("draining 3 frames" in ln for ln in lines)


def test_progress_bar_on_a_terminal_counts_whole_seconds():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SimProgress(30.0, "s:p", stream=stream, refresh_s=0.0) as bar:
            for k in range(1, 201):
                bar.update(k * 0.15 + 1e-12)
            bar.update(30.7)
    text = stream.getvalue()
    assert "30/30 sim s" in text and "<-" not in text
    assert not re.search(r"\d\.\d+/30", text)  # no fractional counts


def test_provenance_of_a_live_scenario_hashes_the_model_weights(tmp_path):
    from cfqa_core.models.zoo import EMBEDDED_DIR
    from cfqa_sim.provenance import provenance
    from cfqa_sim.scenario import load_scenario

    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump({
        "name": "live", "mode": "live", "seed": 3, "duration_s": 5, "live": {"model": "embedded"},
        "links": {"lte": {"trace": "cellular/Verizon-LTE-short.up", "shared": True}},
        "nodes": [{"name": "cams", "count": 1, "link": "lte", "task": "cls", "codec": "hevc"}],
        "policy": "hq", "policies": {"hq": {"name": "fixed", "params": {"index": 0}}},
    }, sort_keys=False))
    loaded = load_scenario(path, ["nodes.0.codec=hyperprior-cls"])
    prov = provenance(loaded)
    weights = EMBEDDED_DIR / "model.safetensors"
    assert prov["model"]["name"] == "embedded"
    assert [f["sha256"] for f in prov["model"]["files"]] == [sha256(weights)]
    assert prov["traces"]["lte"]["sha256"] == sha256(LTE)
    assert prov["scenario_file"]["sha256"] == sha256(path) and prov["seed"] == 3
    codec_files = {Path(f["path"]).name: f["sha256"] for f in prov["codec_weights"]["hyperprior-cls"]}
    assert "codec.json" in codec_files and len(codec_files) >= 2
    # the overrides change the scenario as run, not the file's hash
    plain = provenance(load_scenario(path))
    assert plain["scenario_as_run_sha256"] != prov["scenario_as_run_sha256"]
    assert plain["scenario_file"] == prov["scenario_file"] and "codec_weights" not in plain


def test_sweep_logs_one_line_per_point_without_a_terminal(capsys, scenario, tmp_path):
    assert main(["sweep", str(scenario), "--grid", "cloud.servers=1,2", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "sweep: 1/2 points (cloud.servers=1 done)" in err and "sweep: 2/2 points (cloud.servers=2 done)" in err
    assert "\r" not in err
