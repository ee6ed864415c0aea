"""Install the project into a fresh virtual environment, as a user would, for the extras tests.

TEST SUPPORT ONLY. The repository is copied without caches, data, results,
tests and benchmarks (what a wheel never carries) and installed with
``pip install SRC[extra]`` in an environment with no project path leaking in.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ALWAYS_SKIPPED = {".git", "__pycache__", ".pytest_cache", "build", "dist"}
_TOP_SKIPPED = {"data", "runs", ".cache", "benchmarks", "tests", "results"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _ALWAYS_SKIPPED or n.endswith((".egg-info", ".pyc"))}
    if Path(folder) == ROOT:
        skip |= {n for n in names if n in _TOP_SKIPPED}
    return skip


def clean_env() -> dict[str, str]:
    """This process's environment without the interpreter paths that would leak the checkout in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def copy_source(dest: Path) -> Path:
    """A copy of the repository at ``dest`` with only what a source distribution carries; returns ``dest``."""
    shutil.copytree(ROOT, dest, ignore=_ignore)
    return dest


def install_extra(base: Path, extra: str) -> Path:
    """A new venv under ``base`` with ``cfqa-edgecloud[extra]`` installed from a copy of the repository."""
    src = copy_source(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=1800)
    # --no-compile: byte-compiling torch's tree at install is half the install's time; imports compile lazily.
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                          f"{src}[{extra}]"], capture_output=True, text=True, timeout=1800, env=clean_env(), cwd=base)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv
