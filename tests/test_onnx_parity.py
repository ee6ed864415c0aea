"""The ONNX edge graphs match the PyTorch edge within 1e-4, for every task and any batch size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cfqa_core.cli import main as cli_main
from cfqa_core.errors import ModelError
from cfqa_core.models import load_model
from cfqa_core.tasks import feature_shape, make_views
from cfqa_edge.backends import OnnxBackend, TorchBackend, make_backend, split_outputs
from cfqa_edge.onnx_export import export_edge
from tests.support.serving import scene_images, test_model_spec

SPLITS = (3, 8)
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model(test_model_spec())


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    for split in SPLITS:
        export_edge(model, split, out)
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_features_match_torch(model, export_dir, split) -> None:
    onnx_backend = OnnxBackend(export_dir, split, threads=1)
    torch_backend = TorchBackend(model, split)
    tasks = ("cls", "seg", "dpt")
    for image in scene_images(2, start=10):
        got = onnx_backend.features(image, tasks)
        want = torch_backend.features(image, tasks)
        for task in tasks:
            shape = feature_shape(task, split, model.depth, model.num_tokens, model.backbone.cfg.embed_dim)
            assert got[task].shape == want[task].shape == shape and got[task].dtype == np.float32
            assert np.abs(got[task] - want[task]).max() <= TOL, task


def test_edge_feature_is_the_models_own(model, export_dir) -> None:
    """The backends' features are exactly what ``SplitModel.edge_feature`` gives the cloud to expect."""
    image = scene_images(1, start=20)[0]
    feats = TorchBackend(model, 3).features(image, ("cls", "dpt"))
    with torch.inference_mode():
        for task in ("cls", "dpt"):
            ref = model.edge_feature(torch.from_numpy(make_views(task, image, model.image_size)), task, 3).numpy()
            np.testing.assert_array_equal(feats[task], ref)


def test_dynamic_batch(model, export_dir) -> None:
    backend = OnnxBackend(export_dir, 8, threads=1)
    images = scene_images(3, start=30)
    pixels = np.concatenate([make_views("cls", im, model.image_size) for im in images])
    blocks = list(split_outputs(8, model.depth))
    with torch.inference_mode():
        want = [t.numpy() for t in model.backbone.intermediate(torch.from_numpy(pixels), blocks)]
    for batch in (1, 3):
        got = backend.run_blocks(pixels[:batch], blocks)
        for g, w in zip(got, want):
            assert g.shape == (batch, model.num_tokens, model.backbone.cfg.embed_dim)
            assert np.abs(g - w[:batch]).max() <= TOL


def test_export_metadata(model, export_dir) -> None:
    meta = json.loads((export_dir / "meta.json").read_text())
    assert sorted(meta["splits"], key=int) == [str(s) for s in SPLITS]
    assert meta["splits"]["8"]["outputs"] == [f"block_{b}" for b in split_outputs(8, model.depth)]
    info = OnnxBackend(export_dir, 3).info
    assert (info.name, info.version, info.depth, info.num_tokens) == (
        model.meta.name, str(model.meta.version), model.depth, model.num_tokens)
    assert info.value_range("seg") == list(model.meta.feature_ranges["seg"])


def test_missing_split_and_folder(export_dir, tmp_path) -> None:
    with pytest.raises(ModelError, match=r"no edge graph for split 5 .*exported splits: 3, 8"):
        OnnxBackend(export_dir, 5)
    with pytest.raises(ModelError, match="not an edge ONNX export"):
        make_backend("onnx", onnx_dir=tmp_path, split=3)


def test_cli_export(tmp_path) -> None:
    spec = test_model_spec()
    assert cli_main(["edge", "export", "--split", "2", "--model", spec, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "edge_split2.onnx").stat().st_size > 100_000
    assert cli_main(["edge", "export", "--split", "9", "--model", spec, "--out", str(tmp_path)]) == 2
