"""Small layers of the hyperprior networks: convolutions, a bounded max, GDN in trainable and frozen form."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x back above the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def _gdn(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, inverse: bool) -> torch.Tensor:
    # gamma is (C, C, 1, 1) already so that the exported graph needs no reshape of a weight.
    norm = F.conv2d(x * x, gamma, beta)
    return x * torch.sqrt(norm) if inverse else x * torch.rsqrt(norm)


class GDN(nn.Module):
    """Trainable GDN / inverse GDN with the non-negative re-parametrisation of Ballé 2018."""

    _pedestal = 2.0**-18

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self._beta_bound = math.sqrt(beta_min + self._pedestal)
        self._gamma_bound = math.sqrt(self._pedestal)
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self._pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self._pedestal))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta (C,), gamma (C, C, 1, 1)) as used in the forward pass."""
        beta = lower_bound(self.beta, self._beta_bound) ** 2 - self._pedestal
        gamma = lower_bound(self.gamma, self._gamma_bound) ** 2 - self._pedestal
        c = gamma.shape[0]
        return beta, gamma.reshape(c, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective()
        return _gdn(x, beta, gamma, self.inverse)


class FixedGDN(nn.Module):
    """GDN with frozen effective parameters: the form that is exported and deployed."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.gamma = nn.Parameter(torch.zeros(channels, channels, 1, 1), requires_grad=False)

    @classmethod
    def from_gdn(cls, gdn: GDN) -> FixedGDN:
        out = cls(gdn.beta.shape[0], gdn.inverse)
        with torch.no_grad():
            beta, gamma = gdn.effective()
            out.beta.copy_(beta)
            out.gamma.copy_(gamma)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gdn(x, self.beta, self.gamma, self.inverse)


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)
