"""The depth head's channels-first definition, for the tests of the shipped head and the benchmark's "before".

TEST SUPPORT ONLY. DINOv2's linear4 depth head as first written: per level
``[patch || CLS]``, one linear layer to the bin scores, upsampled N x K x H x W,
softmax across the bins, expectation over the bin depths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def channels_first_scores(head, levels) -> torch.Tensor:
    """Bin scores N x P x K of ``head``'s linear layer on ``levels`` (``[(cls, patches), ...]``)."""
    feats = [torch.cat((p, c.unsqueeze(1).expand_as(p)), dim=-1) for c, p in levels]
    return head.fc(torch.cat(feats, dim=-1))


def depth_from_scores(scores: torch.Tensor, grid, out_size, bins: torch.Tensor) -> torch.Tensor:
    """Depth N x H x W: scores upsampled N x K x H x W, softmax over K, expectation of ``bins`` (scores' dtype)."""
    n, _, k = scores.shape
    logits = scores.transpose(1, 2).reshape(n, k, *grid)
    logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return torch.einsum("nkhw,k->nhw", logits.softmax(dim=1), bins.to(scores.dtype))


def channels_first_depth(head, levels, grid, out_size) -> torch.Tensor:
    """Depth of ``head``'s weights on ``levels``, computed channels-first."""
    return depth_from_scores(channels_first_scores(head, levels), grid, out_size, head.bins)
