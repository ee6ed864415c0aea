"""The lean ``[cloud]`` extra (the server image's install) serves on its own.

Builds a fresh virtual environment with only ``pip install <repo>[cloud]``,
checks that the simulator's and plotting's packages are absent, and starts
``cfqa cloud serve`` from it; a gRPC health check must answer SERVING.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in {".git", "__pycache__", ".pytest_cache", "build", "dist"}
            or n.endswith((".egg-info", ".pyc"))}
    if Path(folder) == ROOT:
        skip |= {n for n in names if n in {"data", "runs", ".cache", "benchmarks", "tests", "results"}}
    return skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def cloud_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cloud-install")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=1800)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[cloud]"],
                         capture_output=True, text=True, timeout=1800, env=_clean_env(), cwd=base)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_cloud_extra_is_lean_and_serves(cloud_venv, tmp_path) -> None:
    py = str(cloud_venv / "bin" / "python")
    absent = subprocess.run(
        [py, "-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
                   "('matplotlib', 'pandas', 'simpy', 'scipy', 'pyarrow', 'torch', 'constriction', 'grpc_health')}))"],
        capture_output=True, text=True, timeout=300, env=_clean_env(), cwd=tmp_path)
    found = json.loads(absent.stdout)
    assert found == {"matplotlib": False, "pandas": False, "simpy": False, "scipy": False, "pyarrow": False,
                     "torch": True, "constriction": True, "grpc_health": True}
    server = subprocess.Popen([str(cloud_venv / "bin" / "cfqa"), "cloud", "serve", "--port", "0",
                               "--model", "embedded"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(), cwd=tmp_path)
    try:
        line = server.stdout.readline()  # the ready line, once the model is loaded
        port = re.search(r"serving embedded on port (\d+) of 127\.0\.0\.1", line)
        assert port, line + server.stderr.read() if server.poll() is not None else line
        code = ("import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g\n"
                f"ch = grpc.insecure_channel('127.0.0.1:{port.group(1)}')\n"
                "status = g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=30).status\n"
                "print(h.HealthCheckResponse.ServingStatus.Name(status))")
        health = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120, env=_clean_env())
        assert health.stdout.strip() == "SERVING", health.stderr[-2000:]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            time.sleep(1)
