"""The edge-only install has no torch and still runs the edge (ONNX backend) against a cloud.

Builds a fresh virtual environment (no system site-packages) with only
``pip install <repo>[edge]``, checks that torch is absent and that nothing the
edge imports pulls it in, then runs ``cfqa edge run --backend onnx`` from that
environment against a cloud server started from this one.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from cfqa_core.models import load_model
from cfqa_edge.onnx_export import export_edge
from tests.support.installs import clean_env, install_extra
from tests.support.serving import ServerProcess, test_model_spec, write_images

SPLIT = 4
EDGE_MODULES = ("cfqa_edge.runner", "cfqa_edge.backends", "cfqa_edge.client", "cfqa_edge.spool", "cfqa_edge.commands",
                "cfqa_edge.run_cmd", "cfqa_edge.export_cmd", "cfqa_proto.convert", "cfqa_proto.cfqa_v1_pb2_grpc",
                "cfqa_core.tasks", "cfqa_core.codecs", "cfqa_core.packing", "cfqa_core.metrics", "cfqa_core.cli",
                "cfqa_cloud.commands")


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    return install_extra(tmp_path_factory.mktemp("edge-install"), "edge")


def _venv_python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=900, env=clean_env(), cwd=cwd)


@pytest.mark.slow
def test_edge_install_has_no_torch(edge_venv, tmp_path) -> None:
    cfg = _venv_python(edge_venv, "import sys; print(sys.prefix, sys.flags.no_site)", tmp_path)
    assert cfg.stdout.split()[0] == str(edge_venv)
    no_torch = _venv_python(edge_venv, "import torch", tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    code = ("import importlib, sys\n"
            f"for m in {EDGE_MODULES!r}: importlib.import_module(m)\n"
            "import cfqa_core.codecs as c, cfqa_edge.runner as r\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert r.__file__.startswith(sys.prefix), r.__file__\n"
            "print(','.join(c.registered_names()))\n")
    imports = _venv_python(edge_venv, code, tmp_path)
    assert imports.returncode == 0, imports.stderr
    listed = subprocess.run([str(edge_venv / "bin" / "cfqa"), "edge", "run", "--help"], capture_output=True,
                            text=True, timeout=900, env=clean_env(), cwd=tmp_path)
    assert listed.returncode == 0 and "--backend" in listed.stdout


@pytest.mark.slow
def test_edge_install_reports_learned_codecs_need_their_extra(edge_venv, tmp_path) -> None:
    # [edge] has no constriction (no aarch64 wheel): learned codecs say which extra they need, HEVC works.
    missing = _venv_python(edge_venv, "import constriction", tmp_path)
    assert missing.returncode != 0 and "No module named 'constriction'" in missing.stderr
    listed = subprocess.run([str(edge_venv / "bin" / "cfqa"), "codec", "list", "--json"], capture_output=True,
                            text=True, timeout=900, env=clean_env(), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    learned = [name for name, row in rows.items() if row.get("family") == "learned"]
    assert learned and all(not rows[n]["available"] for n in learned)
    assert all("install cfqa-edgecloud[learned]" in rows[n]["reason"] for n in learned)
    assert rows["hevc"]["available"]


@pytest.mark.slow
def test_edge_runs_onnx_against_cloud(edge_venv, tmp_path) -> None:
    torch.set_num_threads(1)
    spec = test_model_spec()
    model = load_model(spec)
    onnx_dir = tmp_path / "onnx"
    export_edge(model, SPLIT, onnx_dir)
    images = write_images(tmp_path / "frames", 4)
    out = tmp_path / "frames.jsonl"
    with ServerProcess(["--model", spec, "--token", "edge-secret"]) as cloud:
        run = subprocess.run(
            [str(edge_venv / "bin" / "cfqa"), "edge", "run", "--cloud", cloud.target,
             "--images", str(tmp_path / "frames"), "--policy", "fixed", "--qp", "10", "--codec", "hevc",
             "--task", "cls", "--task", "seg", "--split", str(SPLIT), "--backend", "onnx",
             "--onnx-dir", str(onnx_dir), "--threads", "1", "--token", "edge-secret",
             "--out", str(out), "--no-progress"],
            capture_output=True, text=True, timeout=1200, env=clean_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert len(lines) == len(images)
    for rec in lines:
        assert rec["status"] == "delivered" and rec["backend"] == "onnx" and rec["split"] == SPLIT
        assert rec["cloud"]["model_version"] == str(model.meta.version)
        assert rec["payloads"]["cls"]["bytes"] > 0 and rec["rate_point"] == {"cls": 10, "seg": 10}
        cls, seg = rec["cloud"]["results"]
        assert len(cls["top_k"]) == 5 and seg["mask"]["width"] == model.image_size
    assert json.loads(run.stderr.strip().splitlines()[-1])["summary"]["delivered"] == len(images)
