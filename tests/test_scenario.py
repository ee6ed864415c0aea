"""Scenario schema and loading: shipped scenarios, errors with field path and YAML line, --set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cfqa_core.cli import main
from cfqa_core.errors import ScenarioError
from cfqa_sim.scenario import REPO_ROOT, load_scenario
from tests.support.sim_tables import synthetic_table, tiny_scenario

SCENARIOS = sorted((REPO_ROOT / "scenarios").glob("*.yaml"))


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "table.parquet"
    synthetic_table(images=4).to_parquet(path)
    return path


def write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_containing(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_the_five_scenarios_are_shipped():
    assert {p.stem for p in SCENARIOS} == {"default", "lte_commute", "umts_congested", "replay_1000", "outage_recovery"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path, table_path):
    loaded = load_scenario(path, [f"replay.table={table_path}"])
    s = loaded.scenario
    for name in s.links:
        assert loaded.trace(name).count > 0  # real traces parsed
    assert s.policy in s.policies or s.policy == "fixed"
    if path.stem == "replay_1000":
        assert s.node_count == 1000 and s.duration_s == 3600
    if path.stem == "default":
        assert s.mode == "live" and s.live.model == "embedded"


def test_missing_table_names_field_and_line(tmp_path):
    path = tmp_path / "lte.yaml"
    text = (REPO_ROOT / "scenarios" / "lte_commute.yaml").read_text()
    path.write_text(text.replace("table: builtin:embedded", "table: results/absent/table.parquet"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert f"replay.table (line {line_containing(path, 'table:')}): file not found" in str(err.value)


def test_unknown_key_and_wrong_type_give_path_and_line(tmp_path, table_path):
    data = tiny_scenario(table_path)
    data["links"]["up"]["bandwidth"] = 3
    data["nodes"][0]["deadline_s"] = "soon"
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert f"links.up.bandwidth (line {line_containing(path, 'bandwidth:')}): Extra inputs are not permitted" in msg
    assert f"nodes.0.deadline_s (line {line_containing(path, 'deadline_s:')})" in msg


def test_missing_required_field(tmp_path, table_path):
    data = tiny_scenario(table_path)
    del data["nodes"][0]["link"]
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError, match=r"nodes\.0\.link \(line \d+\): Field required"):
        load_scenario(path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nnodes:\n  - a: 1\n   b: [\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: malformed YAML \(line \d+"):
        load_scenario(path)


def test_trace_errors_before_the_run(tmp_path, table_path):
    data = tiny_scenario(table_path)
    data["links"]["up"]["trace"] = "nowhere.up"
    path = write(tmp_path, data)
    line = line_containing(path, "trace: nowhere.up")
    with pytest.raises(ScenarioError, match=rf"links\.up\.trace \(line {line}\): file not found: nowhere\.up"):
        load_scenario(path)
    (tmp_path / "nm.up").write_text("1\n2\n9\n4\n")
    with pytest.raises(ScenarioError, match=r"nm\.up:4: timestamps not monotonic \(4 after 9\)"):
        load_scenario(path, ["links.up.trace=nm.up"])


def test_trace_path_relative_to_the_scenario_file(tmp_path, table_path):
    (tmp_path / "flat.up").write_text("\n".join(str(i) for i in range(1, 101)) + "\n")
    data = tiny_scenario(table_path)
    data["links"]["up"]["trace"] = "flat.up"
    loaded = load_scenario(write(tmp_path, data))
    assert loaded.trace("up").count == 100


def test_unknown_policy_codec_and_link(tmp_path, table_path):
    path = write(tmp_path, tiny_scenario(table_path))
    with pytest.raises(ScenarioError, match=r"policy \(from --set\): unknown policy 'teleport'"):
        load_scenario(path, ["policy=teleport"])
    with pytest.raises(ScenarioError, match=r"nodes\.0\.codec \(from --set\): unknown codec 'h266' for task cls"):
        load_scenario(path, ["nodes.0.codec=h266"])
    with pytest.raises(ScenarioError, match=r"nodes\.0\.link \(from --set\): unknown link 'wifi'"):
        load_scenario(path, ["nodes.0.link=wifi"])


def test_set_overrides_are_typed_and_validated(tmp_path, table_path):
    path = write(tmp_path, tiny_scenario(table_path))
    loaded = load_scenario(path, ["nodes.0.count=5", "links.up.delay_ms=42.5", "cloud.servers=3"])
    s = loaded.scenario
    assert (s.nodes[0].count, s.links["up"].delay_ms, s.cloud.servers) == (5, 42.5, 3)
    with pytest.raises(ScenarioError, match=r"nodes\.0\.count \(from --set\): Input should be a valid integer"):
        load_scenario(path, ["nodes.0.count=many"])
    with pytest.raises(ScenarioError, match=r"--set nodes\.3\.count: '3' is not an index"):
        load_scenario(path, ["nodes.3.count=1"])
    with pytest.raises(ScenarioError, match="expected key=value"):
        load_scenario(path, ["duration_s"])
    with pytest.raises(ScenarioError, match=r"nodes\.0\.fps \(from --set\): Extra inputs are not permitted"):
        load_scenario(path, ["nodes.0.fps=3"])


def test_schema_and_validate_commands(tmp_path, table_path, capsys):
    assert main(["scenario", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {"duration_s", "nodes", "links", "policy"} <= set(schema["properties"])
    node = schema["$defs"]["NodeGroup"]["properties"]
    assert {"deadline_s", "queue_frames"} <= set(node)
    link = schema["$defs"]["LinkSpec"]["properties"]
    assert {"delay_ms", "loss_rate"} <= set(link)
    path = write(tmp_path, tiny_scenario(table_path))
    assert main(["scenario", "validate", str(path)]) == 0
    assert "ok (replay mode, 3 nodes" in capsys.readouterr().out
    assert main(["scenario", "validate", str(path), "--set", "policy=teleport"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfqa scenario: error: ") and "Traceback" not in err
