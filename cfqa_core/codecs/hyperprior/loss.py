"""The rate-distortion training loss."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RateDistortion:
    """Rate-distortion loss as CompressAI: lambda * 255^2 * MSE + bits per frame element."""

    lambdas: tuple[float, ...]
    scale: float = 255.0**2
    terms: dict[str, float] = field(default_factory=dict)

    def __call__(self, out: dict[str, Any], x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        elems = x[0].numel()
        bits = sum(torch.log2(lik).reshape(n, -1).sum(1) for lik in out["likelihoods"].values())
        bpp = -bits / elems
        mse = (out["x_hat"] - x).pow(2).reshape(n, -1).mean(1)
        lam = torch.as_tensor(self.lambdas, dtype=x.dtype)[index]
        loss = (lam * self.scale * mse + bpp).mean()
        self.terms = {"loss": loss.item(), "mse": mse.mean().item(), "bpp": bpp.mean().item()}
        return loss
