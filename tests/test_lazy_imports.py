"""Commands import heavy modules only when they run: the parser alone imports none, encoding imports no torch."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

HEAVY = ("numpy", "torch", "av", "grpc", "onnxruntime", "PIL", "simpy", "pandas", "pyarrow")


def _modules_after(code: str, cwd) -> set[str]:
    probe = code + f"\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=cwd,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    last = (run.stdout.strip().splitlines() or [""])[-1]
    return set(filter(None, last.split(",")))


def test_building_the_parser_imports_nothing_heavy(tmp_path) -> None:
    assert _modules_after("from cfqa_core.cli import build_parser\nbuild_parser()", tmp_path) == set()


def test_codec_encode_runs_without_torch(tmp_path) -> None:
    feature = np.random.default_rng(0).standard_normal((1, 145, 128)).astype(np.float32)
    np.save(tmp_path / "f.npy", feature)
    code = ("from cfqa_core.cli import main\n"
            f"assert main(['codec', 'encode', {str(tmp_path / 'f.npy')!r}, '--codec', 'hevc', '--qp', '10', "
            f"'--out', {str(tmp_path / 'enc')!r}]) == 0")
    loaded = _modules_after(code, tmp_path)
    assert (tmp_path / "enc.bin").stat().st_size > 100
    assert "torch" not in loaded and {"numpy", "av"} <= loaded
