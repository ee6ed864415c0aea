"""The edge's ONNX export in the user cache: made once, then features come from ONNX Runtime without torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfqa_core.cli import main
from cfqa_core.data.scenes import render_scene
from cfqa_core.models import EMBEDDED_DIR, load_model
from cfqa_edge.backends import OnnxBackend, TorchBackend, make_backend
from cfqa_edge.export_cache import cached_export_dir, ensure_export, find_export

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(),
                                reason="embedded weights not trained yet")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CFQA_EDGE_ONNX_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def embedded():
    torch.set_num_threads(1)
    return load_model("embedded")


@pytest.fixture()
def scene_png(tmp_path) -> tuple[np.ndarray, Path]:
    image = render_scene(20_000_007).image
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    return image, path


def test_features_export_once_then_run_without_torch(cache, scene_png, embedded, tmp_path) -> None:
    image, path = scene_png
    assert find_export("embedded", 4) is None
    first = tmp_path / "first.npy"
    assert main(["features", str(path), "--block", "4", "--out", str(first)]) == 0
    folder = find_export("embedded", 4)
    assert folder == cached_export_dir("embedded") and folder.parent == cache
    assert json.loads((folder / "meta.json").read_text())["model"]["version"] == str(embedded.meta.version)
    # A fresh process: the cached graph answers, torch is never imported.
    again = tmp_path / "again.npy"
    code = ("import sys\nfrom cfqa_core.cli import main\n"
            f"rc = main(['features', {str(path)!r}, '--block', '4', '--out', {str(again)!r}])\n"
            "assert rc == 0, rc\nassert 'torch' not in sys.modules, 'torch imported'\n"
            "print(sorted(m for m in ('onnxruntime', 'numpy') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[0] == "['numpy', 'onnxruntime']"
    ref = TorchBackend(embedded, 4).run_blocks(make_views_cls(image, embedded.image_size), [4])[0]
    for out in (first, again):
        got = np.load(out)
        assert got.shape == (1, 145, 128) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.load(first), np.load(again))


def make_views_cls(image: np.ndarray, size: int) -> np.ndarray:
    from cfqa_core.tasks import make_views

    return make_views("cls", image, size)


def test_torch_backend_and_other_pixel_sizes_bypass_onnx(cache, embedded, tmp_path) -> None:
    pixels = np.random.default_rng(1).standard_normal((2, 3, 112, 112)).astype(np.float32)
    np.save(tmp_path / "px.npy", pixels)
    out = tmp_path / "f.npy"
    # The graph is exported at 168 x 168: 112 x 112 pixels fall back to torch under auto ...
    assert main(["features", str(tmp_path / "px.npy"), "--block", "2", "--out", str(out)]) == 0
    with torch.inference_mode():
        ref = embedded.backbone.forward_until(torch.from_numpy(pixels), 2).numpy()
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    # ... and are refused by the explicit onnx backend.
    assert main(["features", str(tmp_path / "px.npy"), "--block", "2", "--out", str(out),
                 "--backend", "onnx", "--onnx-dir", str(ensure_export("embedded", 2))]) == 2
    assert main(["features", str(tmp_path / "px.npy"), "--block", "2", "--out", str(out),
                 "--backend", "torch"]) == 0
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


def test_auto_backend_uses_the_cached_export(cache, embedded) -> None:
    backend = make_backend("auto", split=3)
    assert isinstance(backend, OnnxBackend) and backend.split == 3
    assert backend.info.version == str(embedded.meta.version)
    assert find_export("embedded", 3) is not None and find_export("embedded", 5) is None
    # No split: the model's last block, answered from the cached meta.json once exported.
    assert find_export("embedded", None) is None
    full = make_backend("auto")
    assert full.split == embedded.depth and find_export("embedded", None) is not None
    image = render_scene(20_000_008).image
    ref = TorchBackend(embedded, 3).features(image, ("cls", "dpt"))
    got = backend.features(image, ("cls", "dpt"))
    for task in ("cls", "dpt"):
        np.testing.assert_allclose(got[task], ref[task], rtol=0, atol=1e-4)


def test_new_weights_get_a_new_export(cache, tmp_path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(EMBEDDED_DIR, copy)
    before = cached_export_dir(str(copy))
    assert before != cached_export_dir("embedded")
    assert ensure_export(str(copy), 2) == before
    weights = copy / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = cached_export_dir(str(copy))
    assert after != before and find_export(str(copy), 2) is None
