"""The channels-last depth head equals the channels-first definition on the trained weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfqa_core.tasks import dpt_blocks, make_views
from tests.support.depth_reference import channels_first_depth
from tests.support.serving import scene_images


def _levels(model, images):
    pixels = torch.from_numpy(np.concatenate([make_views("dpt", im, model.image_size) for im in images]))
    outs = model.backbone.intermediate(pixels, dpt_blocks(model.depth))
    return [model.backbone.split_tokens(model.backbone.norm(t)) for t in outs]


@pytest.mark.parametrize("n_images", [1, 3])
def test_depth_equals_channels_first_definition(model, n_images) -> None:
    size = (model.image_size, model.image_size)
    with torch.inference_mode():
        levels = _levels(model, scene_images(n_images))
        got = model.dpt_head(levels, model.grid(), size)
        want = channels_first_depth(model.dpt_head, levels, model.grid(), size)
    assert got.shape == want.shape == (2 * n_images, *size)
    assert got.is_contiguous()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5)
    # Depth is an expectation over the bins: inside [min, max] bin and not constant.
    assert float(got.min()) >= float(model.dpt_head.bins[0]) - 1e-5
    assert float(got.max()) <= float(model.dpt_head.bins[-1]) + 1e-5
    assert float(got.std()) > 0.05


def test_depth_gradients_equal_channels_first_definition(model) -> None:
    """Training goes through the same head: its gradients must not change either."""
    size = (model.image_size, model.image_size)  # several softmax bands per image
    with torch.no_grad():
        levels = _levels(model, scene_images(1))
    grads = []
    for fn in (lambda lv: model.dpt_head(lv, model.grid(), size),
               lambda lv: channels_first_depth(model.dpt_head, lv, model.grid(), size)):
        model.dpt_head.zero_grad()
        lv = [(c.clone().requires_grad_(True), p.clone()) for c, p in levels]
        fn(lv).square().mean().backward()
        grads.append((model.dpt_head.fc.weight.grad.clone(), lv[0][0].grad.clone()))
    model.dpt_head.zero_grad()
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
