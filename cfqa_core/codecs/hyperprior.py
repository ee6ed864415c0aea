"""Hyperprior feature codecs in torch: Ballé et al. 2018 and Minnen et al. 2018.

The networks code a 1-channel frame (tokens x channels per slice, slices
stacked; see :mod:`cfqa_core.packing`) normalised to [0, 1]. They are fully
convolutional, so any frame whose sides are multiples of :data:`STRIDE` works.

Building blocks, composable like CompressAI's ``google.py`` models:

* :class:`GDN` / :class:`FixedGDN` — generalised divisive normalisation, the
  trainable (re-parametrised) form and the frozen form that is exported;
* :class:`EntropyBottleneck` — the factorised prior of the hyper-latent ``z``
  (Ballé 2018, appendix 6.1), which also tabulates its discrete PMFs;
* :class:`GaussianConditional` — the likelihood of ``y`` given scales (and means);
* :class:`ScaleHyperprior` (``variant="scale"``) and
  :class:`MeanScaleHyperprior` (``variant="meanscale"``).

Variable rate uses gain units (Cui et al. 2021, "asymmetric gained"): one
network carries ``K`` rate points, each a per-channel gain on ``y`` and ``z``
before quantisation and its inverse after. The transforms themselves do not
depend on the rate point, so the four exported ONNX graphs serve all of them
and the gains are applied in numpy between graphs.

The codec's quantisation is CompressAI's: ``z_hat = round(z - median) + median``,
``y_hat = round(y - mean) + mean`` (mean = 0 for the scale hyperprior).
:meth:`HyperpriorModel.quantized_forward` runs exactly that (no entropy
coding) and is what the real codec reproduces.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfqa_core.errors import ModelError

STRIDE = 64  # 4 stride-2 layers in g_a and 2 more in h_a
SCALE_BOUND = 0.11
LIKELIHOOD_BOUND = 1e-9
TAIL_MASS = 1e-9


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


# ---- small layers -------------------------------------------------------------------


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


# ---- entropy models -----------------------------------------------------------------


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


# ---- the models -----------------------------------------------------------------------


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
TRANSFORMS: tuple[str, ...] = ("g_a", "h_a", "h_s", "g_s")


def build_model(cfg: HyperpriorConfig) -> HyperpriorModel:
    """A freshly initialised network of ``cfg.variant``."""
    return VARIANTS[cfg.variant](cfg)


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


# ---- export: ONNX graphs (the shipped weights) + entropy tables ------------------------

ONNX_OPSET = 17
FP16_SUFFIX = "__fp16"
CONFIG_FILE = "codec.json"
TABLES_FILE = "tables.npz"
FORMAT_VERSION = 1
_IO = {"g_a": ("x", "y"), "h_a": ("y", "z"), "h_s": ("z", "params"), "g_s": ("y", "x")}


def _input_channels(cfg: HyperpriorConfig) -> dict[str, int]:
    return {"g_a": 1, "h_a": cfg.M, "h_s": cfg.Nh, "g_s": cfg.M}


def _store_fp16(model_proto) -> None:
    """Store every initializer that float16 represents exactly as float16 plus a Cast.

    The conv weights were rounded to float16 values before export, so this
    halves the files without changing a single number; GDN parameters and
    anything else stay float32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if arr.size < 16 or not np.array_equal(half.astype(np.float32), arr):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name + FP16_SUFFIX))
        casts.append(helper.make_node("Cast", [name + FP16_SUFFIX], [name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model_proto)


def export_onnx(module: nn.Module, path, in_channels: int, names: tuple[str, str]) -> None:
    """Export one transform with dynamic height and width; initializers keep parameter names."""
    import warnings

    import onnx

    sample = torch.rand(1, in_channels, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (sample,), str(path), dynamo=False, do_constant_folding=False, opset_version=ONNX_OPSET,
            training=torch.onnx.TrainingMode.TRAINING,  # eval mode would merge equal-valued weights
            input_names=[names[0]], output_names=[names[1]],
            dynamic_axes={names[0]: {2: "h", 3: "w"}, names[1]: {2: "h", 3: "w"}},
        )
    proto = onnx.load(str(path))
    expected = set(module.state_dict())
    found = {i.name for i in proto.graph.initializer}
    if found != expected:
        raise ModelError(f"ONNX export of {path} renamed weights: {sorted(found ^ expected)}")
    _store_fp16(proto)
    onnx.save(proto, str(path))


@torch.no_grad()
def export_codec(model: HyperpriorModel, folder, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Freeze ``model`` (float16 conv weights, tabulated prior) and write the codec folder.

    Writes ``g_a/h_a/h_s/g_s.onnx``, ``tables.npz`` (prior PMFs, medians,
    gains, scale table) and ``codec.json``; returns the JSON content. The
    model is left in exactly the deployed state, so its
    :meth:`~HyperpriorModel.quantized_forward` is what the codec computes.
    """
    import json
    from pathlib import Path

    from cfqa_core.codecs.entropy import scale_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.round_weights_fp16()
    prior = model.entropy_bottleneck.update()
    deploy = model.deploy_transforms()
    channels = _input_channels(model.cfg)
    for name, module in deploy.items():
        export_onnx(module, folder / f"{name}.onnx", channels[name], _IO[name])
    np.savez(folder / TABLES_FILE, scale_table=scale_table(), **prior, **model.gain_arrays())
    meta = {
        "format": FORMAT_VERSION,
        "family": "learned",
        "architecture": f"{model.cfg.variant}-hyperprior",
        "config": model.cfg.to_dict(),
        "stride": STRIDE,
        "io": {k: list(v) for k, v in _IO.items()},
        **(info or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_deploy_transforms(folder, cfg: HyperpriorConfig) -> dict[str, nn.Sequential]:
    """The four transforms as torch modules whose weights are read from the ONNX files."""
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    template = build_model(cfg).deploy_transforms()
    for name, module in template.items():
        path = Path(folder) / f"{name}.onnx"
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        state = {}
        for init in proto.graph.initializer:
            key = init.name[: -len(FP16_SUFFIX)] if init.name.endswith(FP16_SUFFIX) else init.name
            state[key] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path} does not match a {cfg.variant} hyperprior {cfg.to_dict()}: "
                             f"{str(exc).splitlines()[0]}") from None
    return template
