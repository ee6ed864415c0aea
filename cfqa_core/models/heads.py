"""Task heads in the style of DINOv2's linear evaluation.

All heads read *final-normed* tokens, as DINOv2's evaluation does:
- Cls: linear layer on [CLS || mean of patch tokens] of the last block.
- Seg: linear layer on the patch tokens of the last block, bilinearly upsampled.
- Dpt: linear layer on [patch || CLS] of four blocks, predicting a softmax over
  uniform depth bins whose expectation is the depth (DINOv2's ``linear4``
  depth head with classification bins).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_BAND_BYTES = 1 << 20  # rows of upsampled depth-bin scores taken through the softmax at once
_GEOMETRIC_BAND_BYTES = 1 << 19  # exponentials of the rows filled and reduced at once: a workspace that stays in L2
_GEOMETRIC_MIN_BAND_ROWS = 8  # fewer images at once rather than bands of fewer rows
_MAX_LOGIT_SPREAD = 60.0  # exp(-60) ~ 1e-26: the fast depth path stays far from float32 under/overflow


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

        The bin scores are upsampled bilinearly (``F.interpolate``, ``align_corners=False``)
        and the depth is the softmax-weighted mean of the bins at every pixel. Without
        autograd this is computed by ``_depth_geometric`` (two exponentials per bin for
        every 14 pixels of a row instead of 14); with autograd, or for inputs it does not
        cover, by ``_depth_upsampled``. The two agree to float32 rounding.
        """
        return self.depth_from_scores(self.bin_scores(levels), grid, out_size)

    def depth_from_scores(self, scores: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int],
                          ) -> torch.Tensor:
        """Depth N x H x W in metres from the bin logits N x P x K of ``bin_scores``."""
        if scores.shape[0] and not (torch.is_grad_enabled() and scores.requires_grad):
            depth = _depth_geometric(scores, grid, out_size, self.bins)
            if depth is not None:
                return depth
        return self._depth_upsampled(scores, grid, out_size)

    def bin_scores(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Bin logits N x P x K: ``fc`` applied to [patches || CLS] of every level, per patch.

        The CLS half of that product is the same for all patches of an image, so it is
        computed once per image and added to the patch half, rather than multiplying P
        copies of the CLS tokens (half the multiply-adds, no N x P x 2LD input).
        """
        k, d = self.fc.out_features, levels[0][1].shape[-1]
        w = self.fc.weight.view(k, len(levels), 2, d)  # per level: [patch | cls] columns
        per_image = F.linear(torch.cat([c for c, _ in levels], dim=-1), w[:, :, 1].reshape(k, -1), self.fc.bias)
        patches = torch.cat([p for _, p in levels], dim=-1)
        return torch.matmul(patches, w[:, :, 0].reshape(k, -1).t()).add_(per_image.unsqueeze(1))

    def _depth_upsampled(self, scores: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """The definition, computed channels-last: upsample the N x h x w x K scores, softmax(-1) @ bins.

        Channels-last, the upsampling writes contiguous K-vectors and the softmax and the
        bin expectation run over the innermost axis. One image is upsampled at a time and
        its softmax taken a band of rows at a time (about 1 MB, so it stays in cache for
        the product with the bins): the temporaries are one H x W x K image plus one band,
        whatever the batch size.
        """
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


def _axis_weights(n_in: int, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """n_out x n_in matrix of F.interpolate's bilinear weights along one axis (the other axis kept)."""
    eye = torch.eye(n_in, dtype=dtype).view(1, n_in, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()


@functools.lru_cache(maxsize=64)
def _row_weights(h: int, out_h: int, dtype: torch.dtype, device: torch.device) -> tuple[slice, torch.Tensor]:
    """(distinct, weights): F.interpolate's bilinear weights along the height, for the rows ``distinct``.

    The output rows above ``distinct`` equal its first row (all clamped to the first patch
    row), those below it its last row (clamped to the last patch row).
    """
    weights = _axis_weights(h, out_h, dtype)
    top = int(torch.cumprod(weights[:, 0] == 1, 0).sum())  # rows clamped to patch row 0
    bottom = int(torch.cumprod(weights.flip(0)[:, h - 1] == 1, 0).sum())
    first, end = max(top - 1, 0), min(out_h - bottom + 1, out_h)
    if end <= first:  # a single patch row: every output row is the same
        first, end = 0, 1
    return slice(first, end), weights[first:end].to(device)


@functools.lru_cache(maxsize=64)
def _column_spans(w: int, s: int, dtype: torch.dtype, device: torch.device,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coef, slope, shift): the width of ``_depth_geometric``, w patch columns upsampled s times.

    F.interpolate (bilinear, ``align_corners=False``) clamps the first s // 2 and the last
    s - s // 2 pixels of a row to the first and the last column, and between them is
    linear on each of the w - 1 spans of s pixels between adjacent columns. ``coef``
    (2w x w), applied to the w columns, gives the value at each span's first pixel,
    then each span's change per pixel, then the first and the last column, all times
    log2(e) (``exp2`` is ~2.7x faster than ``exp`` on CPU). Positions use F.interpolate's
    source coordinate ``scale * (x + 0.5) - 0.5`` with its scale 1 / s rounded to ``dtype``
    as it does; F.interpolate also rounds each coordinate (by up to half a unit in the last
    place, ~5e-7 of a patch in float32). ``shift`` (s x (w - 1) x 1 x 1) is that rounding in
    pixels, for the first-order correction ``depth += shift * d depth / dx``; ``slope``
    (s x s) gives d depth / dx at the s pixels of a span as ``slope @ depth`` (central
    differences, one-sided at the span's ends).
    """
    scale = float(torch.tensor(w, dtype=dtype) / (w * s))
    x = (s // 2 + torch.arange((w - 1) * s, dtype=torch.float64)).view(w - 1, s)  # the spans' pixels
    ours = scale * (x + 0.5) - 0.5  # source coordinate, linear in x
    theirs = _axis_weights(w, w * s, dtype).double()[x.long()] @ torch.arange(w, dtype=torch.float64)
    spans = torch.arange(w - 1)
    first = ours[:, 0] - spans  # weight of the next column at each span's first pixel
    coef = torch.zeros(2 * w, w, dtype=torch.float64)
    coef[spans, spans], coef[spans, spans + 1] = 1.0 - first, first
    coef[w - 1 + spans, spans], coef[w - 1 + spans, spans + 1] = -scale, scale
    coef[2 * w - 2, 0] = coef[2 * w - 1, w - 1] = 1.0
    slope = torch.zeros(s, s, dtype=torch.float64)
    if s > 1:
        m = torch.arange(s)
        ahead, behind = (m + 1).clamp(max=s - 1), (m - 1).clamp(min=0)
        slope[m, ahead] += 1.0 / (ahead - behind)
        slope[m, behind] -= 1.0 / (ahead - behind)
    shift = ((theirs - ours) / scale).t().reshape(s, w - 1, 1, 1)
    return tuple(t.to(dtype=dtype, device=device) for t in (coef * math.log2(math.e), slope, shift))


def _depth_geometric(scores: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int], bins: torch.Tensor,
                     ) -> torch.Tensor | None:
    """``_depth_upsampled`` with two exponentials per bin for each span of s pixels of a row, or None.

    Along a row of the upsampled map, between two patch columns (a span of s pixels,
    s = 14 for 14 x 14 patches) the logits are linear in x: l(x0 + m) = a + m b, so
    exp(l) = exp(a) exp(b)^m: the span needs two exponentials per bin and s - 1
    multiplications instead of s exponentials (an exponential costs ~8 multiplications
    on CPU). The borders outside the outer patch centres are the edge columns, constant
    along the row, and the rows clamped to the first or the last patch row are computed
    once each. The logits are first shifted by each patch's maximum: softmax is invariant
    to a per-pixel shift, and an interpolated shift keeps every exponent in [-spread, 0].
    The depth at each pixel is then sum_k e_k bins_k / sum_k e_k, one product with
    [bins; 1].

    The bins are the outer axis of the work (K x spans): every span's exponentials are
    multiplied by its step once per pixel offset m, in place, and after each the product
    with [bins; 1] reduces them to two rows, so no tensor of every span pixel's
    exponentials is ever made. The images go through together, their rows a band at a
    time in one workspace of ``_GEOMETRIC_BAND_BYTES`` that stays in L2: right after
    other work has flushed the caches, a workspace of a few MB made a call ~40 % slower.

    None (use ``_depth_upsampled``) unless the scores are float32 or float64, the width
    is a whole multiple of the patch columns, and no patch's logits spread over more
    than ``_MAX_LOGIT_SPREAD`` (so that nothing under- or overflows).
    """
    n, k = scores.shape[0], scores.shape[-1]
    (h, w), (out_h, out_w) = grid, out_size
    if scores.dtype not in (torch.float32, torch.float64) or out_w % w or h * w != scores.shape[1]:
        return None
    s = out_w // w
    logits = scores.reshape(n, h, w, k)
    logits = logits - logits.amax(dim=-1, keepdim=True)
    if not bool(logits.amin() >= -_MAX_LOGIT_SPREAD):  # also False for NaN
        return None
    distinct, row_weights = _row_weights(h, out_h, scores.dtype, scores.device)
    coef, slope, shift = _column_spans(w, s, scores.dtype, scores.device)
    weights = torch.stack((bins, torch.ones_like(bins)))  # [bins; 1]: numerator and denominator
    out = scores.new_empty((n, out_h, out_w))
    per_row = k * 2 * w * scores.element_size()  # one image's exponentials for one row
    group = max(1, min(n, _GEOMETRIC_BAND_BYTES // (per_row * _GEOMETRIC_MIN_BAND_ROWS)))
    band = max(1, _GEOMETRIC_BAND_BYTES // (per_row * group))
    for i in range(0, n, group):
        _geometric_rows(logits[i : i + group], out[i : i + group, distinct], row_weights, coef, slope, shift,
                        weights, band)
    out[:, : distinct.start] = out[:, distinct.start : distinct.start + 1]
    out[:, distinct.stop :] = out[:, distinct.stop - 1 : distinct.stop]
    return out


def _geometric_rows(logits: torch.Tensor, out: torch.Tensor, row_weights: torch.Tensor, coef: torch.Tensor,
                    slope: torch.Tensor, shift: torch.Tensor, weights: torch.Tensor, band: int) -> None:
    """Fill ``out`` (n x rows x W, the distinct rows) from shifted logits n x h x w x K (``_depth_geometric``).

    ``band`` rows at a time, every band in the same workspace.
    """
    n, h, w, k = logits.shape
    rows, s = row_weights.shape[0], out.shape[-1] // w
    lo, hi = s // 2, s // 2 + (w - 1) * s  # the spans' pixels; left of lo column 0, from hi on column w - 1
    # Per patch row, K x 2w x n exponents: span starts, span steps, first and last column.
    by_column = torch.mm(logits.permute(3, 0, 1, 2).reshape(-1, w), coef.t()).view(k, n * h, 2 * w)
    by_column = by_column.transpose(1, 2).reshape(-1, h)
    band = min(band, rows)
    spans = (w - 1) * n * band
    work = logits.new_empty(by_column.shape[0] * band + 2 * s * spans + s * spans)
    ab_work, nd_work, depth_work = work.split([by_column.shape[0] * band, 2 * s * spans, s * spans])
    for r0 in range(0, rows, band):
        b = min(rows, r0 + band) - r0
        ab = torch.mm(by_column, row_weights[r0 : r0 + b].t(), out=ab_work[: by_column.shape[0] * b].view(-1, b))
        ab = ab.view(k, 2 * w, n * b).exp2_()
        band_out = out[:, r0 : r0 + b]
        nd = torch.mm(weights, ab[:, 2 * w - 2 :].reshape(k, -1)).view(2, 2, n, b, 1)
        band_out[..., :lo], band_out[..., hi:] = nd[0, 0] / nd[1, 0], nd[0, 1] / nd[1, 1]
        if w == 1:
            continue
        m_spans = (w - 1) * n * b
        e, steps = ab[:, : w - 1].reshape(k, m_spans), ab[:, w - 1 : 2 * w - 2].reshape(k, m_spans)
        nd = nd_work[: 2 * s * m_spans].view(s, 2, m_spans)
        for m in range(s):  # e = exp(a) exp(b)^m at the m-th pixel of every span
            if m:
                e.mul_(steps)
            torch.mm(weights, e, out=nd[m])
        depth = torch.div(nd[:, 0], nd[:, 1], out=depth_work[: s * m_spans].view(s, m_spans)).view(s, w - 1, n, b)
        if s > 1:  # F.interpolate's rounding of the source coordinates, to first order
            depth.addcmul_(torch.mm(slope, depth.view(s, -1)).view_as(depth), shift)
        band_out[..., lo:hi].view(n, b, w - 1, s).copy_(depth.permute(2, 3, 1, 0))
