"""Fixtures shared by the transport tests."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _edge_onnx_cache(tmp_path_factory):
    """Edge ONNX exports made at first use go to a per-run folder, not the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("edge-onnx-cache")
    old = os.environ.get("CFQA_EDGE_ONNX_CACHE")
    os.environ["CFQA_EDGE_ONNX_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("CFQA_EDGE_ONNX_CACHE", None)
    else:
        os.environ["CFQA_EDGE_ONNX_CACHE"] = old


@pytest.fixture(scope="module")
def model():
    """The model the transport tests serve (``CFQA_TEST_MODEL``, default the embedded one)."""
    import torch

    from cfqa_core.models import load_model
    from tests.support.serving import test_model_spec

    torch.set_num_threads(1)
    return load_model(test_model_spec())


@pytest.fixture(scope="module")
def engine(model):
    from cfqa_cloud.engine import InferenceEngine

    return InferenceEngine({model.meta.name: model})
