"""Entropy models of the hyperprior networks: the factorised prior of ``z`` and the Gaussian conditional of ``y``."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfqa_core.codecs.hyperprior.layers import lower_bound

SCALE_BOUND = 0.11
LIKELIHOOD_BOUND = 1e-9
TAIL_MASS = 1e-9


def noise_or_round(x: torch.Tensor, training: bool, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Additive uniform noise in training, else round(x - offset) + offset."""
    if training:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    if offset is None:
        return torch.round(x)
    return torch.round(x - offset) + offset


def ste_round(x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Rounding with a straight-through gradient (the decoder sees real quantisation)."""
    if offset is None:
        return x + (torch.round(x) - x).detach()
    return x + (torch.round(x - offset) + offset - x).detach()


class EntropyBottleneck(nn.Module):
    """Factorised (per-channel) learned density of the hyper-latent ``z``."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # Set by update(): where round(z - median) is centred.
        self.register_buffer("medians", torch.zeros(channels))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of the cumulative distribution; ``x`` is (C, 1, n)."""
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def _likelihood(self, values: torch.Tensor) -> torch.Tensor:
        """P(value - 0.5 < Z <= value + 0.5) per element; ``values`` is (C, 1, n)."""
        lower = self.logits_cdf(values - 0.5)
        upper = self.logits_cdf(values + 0.5)
        # Evaluate on the side of the median where the sigmoid is not saturated.
        # (Never sign 0: a bin centred exactly on the median would get probability 0.)
        sign = torch.where(lower + upper > 0, -1.0, 1.0).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_tilde, likelihoods): noisy in training, rounded around the medians in eval."""
        med = self.medians.view(1, -1, 1, 1)
        z_tilde = noise_or_round(z, self.training, med)
        b, c, h, w = z_tilde.shape
        flat = z_tilde.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lik = self._likelihood(flat).reshape(c, b, h, w).permute(1, 0, 2, 3)
        return z_tilde, lower_bound(lik, LIKELIHOOD_BOUND)

    @torch.no_grad()
    def _quantile(self, target: float, lo: float = -1e4, hi: float = 1e4, iters: int = 80) -> torch.Tensor:
        """Per-channel x with CDF(x) = target, by bisection (the CDF is monotone)."""
        a = torch.full((self.channels, 1, 1), lo, dtype=torch.float64)
        b = torch.full((self.channels, 1, 1), hi, dtype=torch.float64)
        logit = math.log(target / (1 - target))
        for _ in range(iters):
            mid = 0.5 * (a + b)
            below = self.logits_cdf(mid.float()).double() < logit
            a = torch.where(below, mid, a)
            b = torch.where(below, b, mid)
        return (0.5 * (a + b)).reshape(-1)

    @torch.no_grad()
    def update(self, tail_mass: float = TAIL_MASS) -> dict[str, np.ndarray]:
        """Fix the medians and tabulate the discrete PMF of ``round(z - median)`` per channel.

        Returns ``medians`` (C,) float32, ``offsets`` (C,) int32 (the smallest
        symbol), ``lengths`` (C,) int32 and ``pmfs`` (C, L) float64 padded with
        zeros; the tail masses are folded into the end bins because the coder
        clamps symbols into the table's support.
        """
        medians = self._quantile(0.5).float()
        self.medians.copy_(medians)
        lo = self._quantile(tail_mass / 2).float()
        hi = self._quantile(1 - tail_mass / 2).float()
        offsets = torch.floor(lo - medians).to(torch.int64).clamp_max(0)
        ends = torch.ceil(hi - medians).to(torch.int64).clamp_min(0)
        lengths = (ends - offsets + 1).clamp_min(2)
        width = int(lengths.max())
        sym = offsets.view(-1, 1) + torch.arange(width).view(1, -1)
        values = (sym.float() + medians.view(-1, 1)).view(self.channels, 1, width)
        pmf = self._likelihood(values).view(self.channels, width).double()
        lower_tail = torch.sigmoid(self.logits_cdf(values[:, :, :1] - 0.5)).view(-1).double()
        upper_tail = torch.sigmoid(-self.logits_cdf(values + 0.5)).view(self.channels, width).double()
        idx = torch.arange(width).view(1, -1)
        pmf = torch.where(idx < lengths.view(-1, 1), pmf, torch.zeros_like(pmf))
        pmf[:, 0] += lower_tail
        last = (lengths - 1).view(-1, 1)
        pmf.scatter_add_(1, last, upper_tail.gather(1, last))
        return {
            "medians": medians.numpy().astype(np.float32),
            "offsets": offsets.numpy().astype(np.int32),
            "lengths": lengths.numpy().astype(np.int32),
            "pmfs": pmf.numpy(),
        }


class GaussianConditional(nn.Module):
    """Likelihood of ``y`` under a Gaussian with predicted scales (and means)."""

    def __init__(self, scale_bound: float = SCALE_BOUND):
        super().__init__()
        self.scale_bound = scale_bound

    def forward(
        self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y_tilde = noise_or_round(y, self.training, means)
        return y_tilde, self.likelihood(y_tilde, scales, means)

    def likelihood(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None) -> torch.Tensor:
        values = torch.abs(y - means) if means is not None else torch.abs(y)
        s = lower_bound(scales, self.scale_bound)
        # Symmetry: integrate the left tail, where the normal CDF is accurate.
        upper = 0.5 * torch.erfc(-(0.5 - values) / (s * math.sqrt(2.0)))
        lower = 0.5 * torch.erfc(-(-0.5 - values) / (s * math.sqrt(2.0)))
        return lower_bound(upper - lower, LIKELIHOOD_BOUND)
