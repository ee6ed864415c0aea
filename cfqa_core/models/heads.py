"""Task heads in the style of DINOv2's linear evaluation.

All heads read *final-normed* tokens, as DINOv2's evaluation does:
- Cls: linear layer on [CLS || mean of patch tokens] of the last block.
- Seg: linear layer on the patch tokens of the last block, bilinearly upsampled.
- Dpt: linear layer on [patch || CLS] of four blocks, predicting a softmax over
  uniform depth bins whose expectation is the depth (DINOv2's ``linear4``
  depth head with classification bins).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_BAND_BYTES = 1 << 20  # rows of upsampled depth-bin scores taken through the softmax at once


def _patch_grid(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """N x P x C patch tokens -> N x C x h x w feature map."""
    n, p, c = patches.shape
    h, w = grid
    return patches.transpose(1, 2).reshape(n, c, h, w)


class ClsHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * embed_dim, num_classes)

    def forward(self, cls_token: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Class logits N x num_classes."""
        return self.fc(torch.cat((cls_token, patches.mean(dim=1)), dim=-1))


class SegHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel class logits N x num_classes x H x W."""
        logits = _patch_grid(self.fc(patches), grid)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


class DepthHead(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_levels: int = 4,
        n_bins: int = 64,
        min_depth: float = 0.1,
        max_depth: float = 16.0,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * embed_dim * num_levels, n_bins)
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def forward(
        self,
        levels: Sequence[tuple[torch.Tensor, torch.Tensor]],
        grid: tuple[int, int],
        out_size: tuple[int, int],
    ) -> torch.Tensor:
        """Depth N x H x W in metres from [(cls, patches), ...] of each level.

        Computed channels-last: the bin scores stay N x h x w x K, so the
        upsampling writes contiguous K-vectors and the softmax and the bin
        expectation run over the innermost axis (``softmax(-1) @ bins``). The
        channels-first layout took the softmax across a strided axis and
        copied the full N x K x H x W scores several times. One image is
        upsampled at a time and its softmax taken a band of rows at a time
        (about 1 MB, so it stays in cache for the product with the bins):
        the temporaries are one H x W x K image plus one band, whatever the
        batch size.
        """
        feats = [torch.cat((p, c.unsqueeze(1).expand_as(p)), dim=-1) for c, p in levels]
        scores = self.fc(torch.cat(feats, dim=-1))  # N x P x K
        n, (h, w), k = scores.shape[0], grid, scores.shape[-1]
        # A permuted view of N x h x w x K is a channels-last N x K x h x w tensor;
        # interpolate keeps that memory format for its output.
        maps = scores.reshape(n, h, w, k).permute(0, 3, 1, 2)
        rows = max(1, _BAND_BYTES // (out_size[1] * k * scores.element_size()))
        # Without autograd every image is upsampled into one reused buffer: a fresh multi-megabyte
        # tensor per image is not reliably reused by the C allocator, and the process grew by one
        # upsampled image per image of the batch.
        reuse = not (torch.is_grad_enabled() and scores.requires_grad)
        buf = None
        if reuse and n:
            buf = torch.empty((1, k, *out_size), dtype=scores.dtype, device=scores.device,
                              memory_format=torch.channels_last)
        bands = []
        for i in range(n):
            if buf is not None:
                up = torch.ops.aten.upsample_bilinear2d.out(maps[i : i + 1], list(out_size), False, None, None,
                                                             out=buf)
            else:
                up = F.interpolate(maps[i : i + 1], size=out_size, mode="bilinear", align_corners=False)
            up = up.permute(0, 2, 3, 1)[0]  # H x W x K, contiguous
            bands += [up[r : r + rows].softmax(dim=-1) @ self.bins for r in range(0, out_size[0], rows)]
        if not bands:
            return scores.new_zeros((0, *out_size))
        return torch.cat(bands).reshape(n, *out_size)
