"""Fixtures shared by the transport tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def model():
    """The model the transport tests serve (``CFQA_TEST_MODEL``, default the embedded one)."""
    import torch

    from cfqa_core.models import load_model
    from cloud.testing import test_model_spec

    torch.set_num_threads(1)
    return load_model(test_model_spec())


@pytest.fixture(scope="module")
def engine(model):
    from cloud.engine import InferenceEngine

    return InferenceEngine({model.meta.name: model})
