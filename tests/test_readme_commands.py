"""The READMEs' commands: every one parses with today's CLI, and the cheap ones run as written."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfqa_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "scenarios/README.md", "deploy/jetson/README.md")
# Run as written (in a scratch folder that has the repository's scenarios and an image.png),
# in this order: later ones read what earlier ones wrote. Each takes seconds.
CHEAP = (
    "cfqa codec list --json",
    "cfqa scenario schema",
    "cfqa trace gen",
    "cfqa trace info",
    "cfqa features image.png --model embedded",
    "cfqa codec encode",
    "cfqa codec decode",
    "cfqa infer image.png",
    "cfqa edge export",
)


def readme_commands() -> list[tuple[str, str]]:
    """(readme, command line) for every ``cfqa`` line of a shell block, continuations joined."""
    out = []
    for name in READMES:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", (ROOT / name).read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if line.strip().startswith("cfqa "):
                    out.append((name, line.strip()))
    return out


COMMANDS = readme_commands()


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    return words[1:words.index(">")] if ">" in words else words[1:]


@pytest.mark.parametrize("readme,line", COMMANDS, ids=[f"{r}:{c[:60]}" for r, c in COMMANDS])
def test_every_readme_command_parses(readme, line):
    if "..." in line or re.search(r"\[[A-Z]+\]", line):
        pytest.skip("a placeholder, not a command")
    try:
        args = build_parser().parse_args(_argv(line))
    except SystemExit as exc:
        pytest.fail(f"{readme}: '{line}' no longer parses (exit {exc.code})")
    assert callable(args.func)


def test_the_cheap_commands_are_in_the_readmes():
    lines = [c for _, c in COMMANDS]
    for prefix in (*CHEAP, "cfqa scenario validate"):
        assert any(c.startswith(prefix) for c in lines), f"no README command starts with '{prefix}'"


@pytest.mark.slow
def test_cheap_readme_commands_run_as_written(tmp_path):
    from cfqa_core.data.scenes import render_scene

    cfqa = shutil.which("cfqa")
    assert cfqa, "the cfqa entry point is not installed"
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    Image.fromarray(render_scene(20_000_123).image).resize((320, 240)).save(tmp_path / "image.png")
    ran = []
    for prefix in CHEAP:
        for _, line in COMMANDS:
            if not line.startswith(prefix):
                continue
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"'{line}' failed ({done.returncode}): {done.stderr.strip()[-1500:]}"
            ran.append(line)
    assert len(ran) >= len(CHEAP)
    # what they wrote is what the README says they write
    assert {row["name"] for row in json.loads(subprocess.run(
        ["bash", "-c", "cfqa codec list --json"], cwd=tmp_path, capture_output=True, text=True).stdout)} >= {"hevc"}
    assert json.loads((tmp_path / "scenario.schema.json").read_text())["title"]
    assert np.load(tmp_path / "f.npy").shape == (1, 145, 128)
    assert (tmp_path / "f_qp10.bin").stat().st_size > 0 and (tmp_path / "f_qp10.json").is_file()
    assert np.load(tmp_path / "f_hat.npy").shape == (1, 145, 128)
    assert Image.open(tmp_path / "out" / "image_seg.png").size == (320, 240)
    assert (tmp_path / "onoff.up").is_file() and any((tmp_path / "edge-onnx").glob("*.onnx"))


VALIDATIONS = [c for _, c in COMMANDS if c.startswith("cfqa scenario validate")]


@pytest.mark.parametrize("line", VALIDATIONS)
def test_readme_scenario_validations_pass_as_written(line, tmp_path):
    # a fresh folder with nothing but the repository's scenarios: traces and tables must ship with the package
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"'{line}' failed: {done.stderr.strip()[-1500:]}"
    assert ": ok (" in done.stdout
