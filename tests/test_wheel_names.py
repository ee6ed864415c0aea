"""The wheel installs only project-prefixed import names and carries every package folder of the repository."""
from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile

import pytest

from tests.support.installs import ROOT, copy_source

# Folder on disk -> installed import name (pyproject.toml [tool.setuptools] package-dir).
INSTALLED_AS = {"cfqa_core": "cfqa_core", "edge": "cfqa_edge", "cloud": "cfqa_cloud", "sim": "cfqa_sim",
                "proto": "cfqa_proto"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    base = tmp_path_factory.mktemp("wheel")
    src = copy_source(base / "src")
    out = base / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(src)], capture_output=True, text=True, timeout=600, cwd=base)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("cfqa_edgecloud-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in INSTALLED_AS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *rel.parts)))
    return found


def test_top_level_names_are_project_prefixed(wheel) -> None:
    tops = {n.split("/", 1)[0] for n in wheel.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == set(INSTALLED_AS.values())
    # the names other distributions install (proto-plus: proto) are not ours
    assert not tops & {"proto", "edge", "cloud", "sim"}


def test_every_package_folder_is_in_the_wheel(wheel) -> None:
    shipped = {n.rsplit("/", 1)[0].replace("/", ".") for n in wheel.namelist() if n.endswith("/__init__.py")}
    assert shipped == _packages_on_disk()


def test_shipped_data_and_generated_code_are_in_the_wheel(wheel) -> None:
    names = set(wheel.namelist())
    for needed in ("cfqa_core/weights/embedded/model.safetensors", "cfqa_edge/policies/plans/embedded.json",
                   "cfqa_sim/data/embedded_table.parquet", "cfqa_sim/data/timing-embedded.json",
                   "cfqa_proto/cfqa_v1.proto", "cfqa_proto/cfqa_v1_pb2_grpc.py"):
        assert needed in names
    grpc_module = wheel.read("cfqa_proto/cfqa_v1_pb2_grpc.py").decode()
    assert "from cfqa_proto import cfqa_v1_pb2" in grpc_module


def test_command_groups_are_entry_points(wheel) -> None:
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(meta).decode())
    assert dict(parser["cfqa_edgecloud.commands"]) == {
        "core": "cfqa_core.commands", "edge": "cfqa_edge.commands", "cloud": "cfqa_cloud.commands",
        "sim": "cfqa_sim.commands"}
    assert parser["console_scripts"]["cfqa"] == "cfqa_core.cli:main"
