"""The fast inference paths of a dpt request give the values of the plain computation.

- ``DepthHead.bin_scores`` (CLS share computed once per image) equals ``fc`` on the
  concatenated [patches || CLS] features;
- the geometric depth path (two exponentials per bin for each patch span of a row instead
  of one per pixel) equals upsampling the bin scores with ``F.interpolate`` and taking
  softmax @ bins, in float32 to its rounding and in float64 to 1e-10, for grids that are not
  square, odd scales, heights that are not a multiple of the grid, one patch row or column;
- outside its range (huge logit spreads, autograd) the head uses the upsampling path;
- ``Block.forward`` (LayerScale fused with the residual add) equals the written-out block.

Random small modules: a few seconds.
"""
from __future__ import annotations

import pytest
import torch

from cfqa_core.models import heads
from cfqa_core.models.dinov2 import Block, ViTConfig
from cfqa_core.models.heads import DepthHead
from tests.support.depth_reference import channels_first_scores, depth_from_scores


def _head_and_levels(embed_dim: int, n: int, grid, seed: int = 0):
    torch.manual_seed(seed)
    head = DepthHead(embed_dim, n_bins=32, max_depth=10.0).eval()
    with torch.no_grad():
        head.fc.weight.normal_(0.0, 0.6)  # logit spreads of ~10-20 across the bins, like the trained head
        head.fc.bias.normal_(0.0, 1.0)
    p = grid[0] * grid[1]
    levels = [(torch.randn(n, embed_dim), torch.randn(n, p, embed_dim)) for _ in range(4)]
    return head, levels


def test_bin_scores_equal_fc_on_concatenated_features() -> None:
    head, levels = _head_and_levels(24, 3, (5, 7))
    with torch.inference_mode():
        got, want = head.bin_scores(levels), channels_first_scores(head, levels)
    assert got.shape == want.shape == (3, 35, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, grid, out_size", [(1, (12, 12), (168, 168)),  # the embedded model: 14 x 14 patches
                                               (2, (3, 5), (42, 70)),  # not square
                                               (2, (4, 4), (12, 12)),  # odd scale: spans start on patch centres
                                               (2, (4, 5), (50, 70)),  # height not a multiple of the grid
                                               (2, (5, 1), (15, 3)),  # a single patch column
                                               (3, (1, 3), (14, 42))])  # a single patch row
def test_geometric_depth_equals_upsampled_softmax(n, grid, out_size) -> None:
    head, levels = _head_and_levels(16, n, grid)
    with torch.inference_mode():
        scores = head.bin_scores(levels)
        spread = float((scores.amax(-1) - scores.amin(-1)).max())
        assert 5.0 < spread < heads._MAX_LOGIT_SPREAD
        fast = heads._depth_geometric(scores, grid, out_size, head.bins)
        assert fast is not None and fast.shape == (n, *out_size) and fast.is_contiguous()
        # float32: within float32 rounding of the channels-first definition and of the upsampling path
        want = depth_from_scores(scores, grid, out_size, head.bins)
        torch.testing.assert_close(fast, want, rtol=0, atol=2e-5)
        torch.testing.assert_close(fast, head._depth_upsampled(scores, grid, out_size), rtol=0, atol=2e-5)
        assert float((fast - want).abs().max()) < 0.01 * float(want.std())  # not a constant match
        # float64: the same algorithm agrees with the definition to float64 rounding
        s64 = scores.double()
        fast64 = heads._depth_geometric(s64, grid, out_size, head.bins.double())
        torch.testing.assert_close(fast64, depth_from_scores(s64, grid, out_size, head.bins), rtol=0, atol=1e-10)
        # and the head's forward takes this path
        torch.testing.assert_close(head(levels, grid, out_size), fast, rtol=0, atol=0)


@pytest.mark.parametrize("band_bytes", [1, 20_000, 1 << 19])  # one row of one image, a few rows, all at once
def test_geometric_depth_is_the_same_in_bands_and_image_groups(monkeypatch, band_bytes) -> None:
    """The workspace bounds (rows per band, images per group) change the order of work, not the values."""
    grid, out_size = (6, 5), (84, 70)
    head, levels = _head_and_levels(16, 5, grid, seed=2)
    with torch.inference_mode():
        scores = head.bin_scores(levels)
        want = depth_from_scores(scores.double(), grid, out_size, head.bins.double())
        monkeypatch.setattr(heads, "_GEOMETRIC_BAND_BYTES", band_bytes)
        got = heads._depth_geometric(scores, grid, out_size, head.bins)
        got64 = heads._depth_geometric(scores.double(), grid, out_size, head.bins.double())
    assert got is not None and got.shape == (5, *out_size)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    torch.testing.assert_close(got64, want, rtol=0, atol=1e-10)


def test_head_falls_back_to_upsampling_outside_the_fast_range() -> None:
    grid, out_size = (3, 4), (42, 56)
    head, levels = _head_and_levels(16, 2, grid)
    with torch.inference_mode():
        scores = head.bin_scores(levels) * 40.0  # logit spreads of hundreds: exp would underflow
        assert heads._depth_geometric(scores, grid, out_size, head.bins) is None
        got = head._depth_upsampled(scores, grid, out_size)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, depth_from_scores(scores, grid, out_size, head.bins), rtol=0, atol=1e-4)
        # a width that is not a whole multiple of the grid
        assert heads._depth_geometric(head.bin_scores(levels), grid, (42, 50), head.bins) is None
    # with autograd the head is the differentiable upsampling path
    lv = [(c.requires_grad_(True), p) for c, p in levels]
    depth = head(lv, grid, out_size)
    depth.mean().backward()
    assert lv[0][0].grad is not None and head.fc.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(depth.detach(), head(levels, grid, out_size), rtol=0, atol=2e-5)


def test_block_forward_equals_written_out_block() -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(embed_dim=32, depth=1, num_heads=4, init_values=0.3)
    block = Block(cfg).eval()
    x = torch.randn(2, 11, 32) * 3
    with torch.inference_mode():
        want = x + block.ls1(block.attn(block.norm1(x)))
        want = want + block.ls2(block.mlp(block.norm2(want)))
        got = block(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert float((got - x).abs().max()) > 0.1  # the block does something
