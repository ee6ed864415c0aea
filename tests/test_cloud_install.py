"""The lean ``[cloud]`` extra (the server image's install) serves on its own.

Builds a fresh virtual environment with only ``pip install <repo>[cloud]``,
checks that the simulator's and plotting's packages are absent, that dpt's
traced part runs in ONNX Runtime there, and starts
``cfqa cloud serve`` from it; a gRPC health check must answer SERVING.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.installs import clean_env, install_extra

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud_venv(tmp_path_factory) -> Path:
    return install_extra(tmp_path_factory.mktemp("cloud-install"), "cloud")


def test_cloud_extra_is_lean_and_serves(cloud_venv, tmp_path) -> None:
    py = str(cloud_venv / "bin" / "python")
    absent = subprocess.run(
        [py, "-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
                   "('matplotlib', 'pandas', 'simpy', 'scipy', 'pyarrow', 'torch', 'constriction', 'grpc_health')}))"],
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path)
    found = json.loads(absent.stdout)
    assert found == {"matplotlib": False, "pandas": False, "simpy": False, "scipy": False, "pyarrow": False,
                     "torch": True, "constriction": True, "grpc_health": True}
    # The image's install takes the fast dpt path: its traced part exported to and run by ONNX Runtime.
    runtimes = subprocess.run(
        [py, "-c", "from cfqa_cloud.engine import TracedForwards; from cfqa_core.models import load_model; "
                   "t = TracedForwards(load_model('embedded')); print(t.traced('dpt', 4), t.runtimes[('dpt', 4)])"],
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path)
    assert runtimes.stdout.split() == ["True", "onnxruntime"], runtimes.stderr[-2000:]
    server = subprocess.Popen([str(cloud_venv / "bin" / "cfqa"), "cloud", "serve", "--port", "0",
                               "--model", "embedded"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=tmp_path)
    try:
        line = server.stdout.readline()  # the ready line, once the model is loaded
        port = re.search(r"serving embedded on port (\d+) of 127\.0\.0\.1", line)
        assert port, line + server.stderr.read() if server.poll() is not None else line
        code = ("import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g\n"
                f"ch = grpc.insecure_channel('127.0.0.1:{port.group(1)}')\n"
                "status = g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=30).status\n"
                "print(h.HealthCheckResponse.ServingStatus.Name(status))")
        health = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env())
        assert health.stdout.strip() == "SERVING", health.stderr[-2000:]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            time.sleep(1)
