"""Install extras: [edge] resolves to aarch64 wheels (Jetson, Python 3.10); learned codecs need [learned]."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
# JetPack 6 (L4T r36) is Ubuntu 22.04: glibc 2.35, Python 3.10. pip does not widen a
# --platform to older glibc tags by itself, so every manylinux tag up to 2.35 is listed.
JETSON_PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{y}_aarch64" for y in range(17, 36))]


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_extras_layout():
    assert "constriction" not in names(PROJECT["dependencies"]) | names(EXTRAS["edge"])
    assert names(EXTRAS["learned"]) == {"constriction"}
    assert "cfqa-edgecloud[learned]" in EXTRAS["full"] and "cfqa-edgecloud[learned]" in EXTRAS["cloud"]
    # the server image's extra: the server's imports, none of the simulator's or plotting's
    cloud = names(EXTRAS["cloud"])
    assert {"torch", "grpcio", "grpcio-health-checking", "protobuf", "safetensors"} <= cloud
    assert not cloud & {"matplotlib", "pandas", "simpy", "scipy", "pyarrow", "onnxscript"}
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="needs the network to pypi.org")
def test_edge_extra_resolves_to_aarch64_wheels_for_python_310(tmp_path):
    reqs = tmp_path / "edge.txt"
    reqs.write_text("\n".join(PROJECT["dependencies"] + EXTRAS["edge"]) + "\n")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp",
           *(a for p in JETSON_PLATFORMS for a in ("--platform", p)),
           "--target", str(tmp_path / "target"), "--report", str(report), "-r", str(reqs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    wheels = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in json.loads(report.read_text())["install"]]
    assert {"onnxruntime", "grpcio", "av", "numpy"} <= {w.split("-")[0].lower() for w in wheels}
    for wheel in wheels:
        assert wheel.endswith(".whl"), wheel
        python_tag, abi_tag, platform_tag = wheel[:-4].split("-")[-3:]
        assert platform_tag == "any" or "aarch64" in platform_tag, wheel
        assert platform_tag == "any" or re.search(r"cp310|abi3|py3", python_tag + abi_tag), wheel
