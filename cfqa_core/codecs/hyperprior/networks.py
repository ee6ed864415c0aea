"""The hyperprior networks: configuration, transforms, the scale and mean-scale models with gain units."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cfqa_core.codecs.hyperprior.entropy_models import EntropyBottleneck, GaussianConditional, ste_round
from cfqa_core.codecs.hyperprior.layers import GDN, Abs, FixedGDN, conv, deconv
from cfqa_core.codecs.learned_format import TRANSFORMS
from cfqa_core.errors import ModelError


@dataclass
class HyperpriorConfig:
    """Architecture of one hyperprior network (all rate points share it)."""

    variant: str = "scale"  # scale | meanscale
    N: int = 48  # channels inside g_a / g_s
    M: int = 64  # channels of the latent y
    Nh: int = 32  # channels inside h_a / h_s and of z
    lambdas: tuple[float, ...] = (0.2, 0.06, 0.02, 0.006, 0.002)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelError(f"unknown hyperprior variant '{self.variant}' (known: {', '.join(VARIANTS)})")
        self.lambdas = tuple(float(v) for v in self.lambdas)
        if not self.lambdas or any(v <= 0 for v in self.lambdas):
            raise ModelError(f"lambdas must be positive, got {list(self.lambdas)}")
        if list(self.lambdas) != sorted(self.lambdas, reverse=True):
            raise ModelError("lambdas must be ordered from highest quality (largest) to lowest")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HyperpriorConfig:
        return cls(**{k: d[k] for k in ("variant", "N", "M", "Nh", "lambdas") if k in d})


def analysis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(conv(1, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def synthesis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True), deconv(N, 1),
    )


class HyperpriorModel(nn.Module):
    """Common machinery: gains per rate point, entropy models, RD forward pass."""

    def __init__(self, cfg: HyperpriorConfig):
        super().__init__()
        self.cfg = cfg
        k = len(cfg.lambdas)
        self.g_a = analysis(cfg.N, cfg.M)
        self.g_s = synthesis(cfg.N, cfg.M)
        self.h_a = self._hyper_analysis()
        self.h_s = self._hyper_synthesis()
        self.entropy_bottleneck = EntropyBottleneck(cfg.Nh)
        self.gaussian_conditional = GaussianConditional()
        # Log-gains start so that the quantisation step scales like lambda^-1/2.
        lam = torch.tensor(cfg.lambdas)
        init = 0.5 * torch.log(lam / lam.log().mean().exp())
        self.log_gain_y = nn.Parameter(init.view(k, 1).repeat(1, cfg.M))
        self.log_igain_y = nn.Parameter(-init.view(k, 1).repeat(1, cfg.M))
        self.log_gain_z = nn.Parameter(torch.zeros(k, cfg.Nh))
        self.log_igain_z = nn.Parameter(torch.zeros(k, cfg.Nh))

    def _hyper_analysis(self) -> nn.Sequential:
        raise NotImplementedError

    def _hyper_synthesis(self) -> nn.Sequential:
        raise NotImplementedError

    @property
    def num_rates(self) -> int:
        return len(self.cfg.lambdas)

    def gains(self, index: torch.Tensor | int) -> dict[str, torch.Tensor]:
        """Gains of rate point(s) ``index`` shaped (B or 1, C, 1, 1)."""
        idx = torch.as_tensor(index).reshape(-1)
        return {
            name: torch.exp(getattr(self, f"log_{name}"))[idx][:, :, None, None]
            for name in ("gain_y", "igain_y", "gain_z", "igain_z")
        }

    def entropy_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scales, means or None) of y from the (inverse-gained) hyper-latent."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, index: torch.Tensor | int) -> dict[str, Any]:
        """Rate-distortion pass: reconstruction and likelihoods of y and z.

        Training uses noise for the likelihoods and straight-through rounding
        for the decoder's input; eval mode rounds exactly as the codec.
        """
        g = self.gains(index)
        y = self.g_a(x) * g["gain_y"]
        z = self.h_a(y) * g["gain_z"]
        z_tilde, z_lik = self.entropy_bottleneck(z)
        if self.training:
            z_tilde = ste_round(z, self.entropy_bottleneck.medians.view(1, -1, 1, 1))
        scales, means = self.entropy_parameters(z_tilde * g["igain_z"])
        y_tilde, y_lik = self.gaussian_conditional(y, scales, means)
        y_dec = ste_round(y, means) if self.training else y_tilde
        x_hat = self.g_s(y_dec * g["igain_y"])
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    @torch.no_grad()
    def quantized_forward(self, x: torch.Tensor, index: int) -> dict[str, Any]:
        """The codec's computation without entropy coding (eval-mode rounding)."""
        was = self.training
        self.eval()
        try:
            return self.forward(x, index)
        finally:
            self.train(was)

    def deploy_transforms(self) -> dict[str, nn.Sequential]:
        """Frozen copies of g_a, h_a, h_s, g_s with GDNs in exported form."""
        out = {}
        for name in TRANSFORMS:
            layers = [FixedGDN.from_gdn(m) if isinstance(m, GDN) else copy.deepcopy(m) for m in getattr(self, name)]
            seq = nn.Sequential(*layers).eval()
            seq.requires_grad_(False)
            out[name] = seq
        return out

    @torch.no_grad()
    def round_weights_fp16(self) -> None:
        """Round conv weights and biases to float16 values (shipped as float16 exactly)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                for p in module.parameters():
                    p.copy_(p.half().float())

    def gain_arrays(self) -> dict[str, np.ndarray]:
        """The gains as (K, C) float32 arrays for the numpy coding path."""
        with torch.no_grad():
            return {name: torch.exp(getattr(self, f"log_{name}")).float().numpy().copy()
                    for name in ("gain_y", "igain_y", "gain_z", "igain_z")}


class ScaleHyperprior(HyperpriorModel):
    """Ballé et al. 2018: h_a sees |y|, h_s predicts one scale per latent."""

    def _hyper_analysis(self) -> nn.Sequential:
        c = self.cfg
        return nn.Sequential(Abs(), conv(c.M, c.Nh, 3, 1), nn.ReLU(), conv(c.Nh, c.Nh), nn.ReLU(), conv(c.Nh, c.Nh))

    def _hyper_synthesis(self) -> nn.Sequential:
        c = self.cfg
        return nn.Sequential(
            deconv(c.Nh, c.Nh), nn.ReLU(), deconv(c.Nh, c.Nh), nn.ReLU(), conv(c.Nh, c.M, 3, 1), nn.ReLU()
        )

    def entropy_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.h_s(z_hat), None


class MeanScaleHyperprior(HyperpriorModel):
    """Minnen et al. 2018 (without context model): h_s predicts scales and means."""

    def _hyper_analysis(self) -> nn.Sequential:
        c = self.cfg
        return nn.Sequential(
            conv(c.M, c.Nh, 3, 1), nn.LeakyReLU(), conv(c.Nh, c.Nh), nn.LeakyReLU(), conv(c.Nh, c.Nh)
        )

    def _hyper_synthesis(self) -> nn.Sequential:
        c = self.cfg
        return nn.Sequential(
            deconv(c.Nh, c.Nh), nn.LeakyReLU(), deconv(c.Nh, c.Nh), nn.LeakyReLU(), conv(c.Nh, 2 * c.M, 3, 1)
        )

    def entropy_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scales, means = self.h_s(z_hat).chunk(2, dim=1)
        return scales, means


VARIANTS: dict[str, type[HyperpriorModel]] = {"scale": ScaleHyperprior, "meanscale": MeanScaleHyperprior}


def build_model(cfg: HyperpriorConfig) -> HyperpriorModel:
    """A freshly initialised network of ``cfg.variant``."""
    return VARIANTS[cfg.variant](cfg)
