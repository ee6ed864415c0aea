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

Modules: :mod:`~cfqa_core.codecs.hyperprior.layers`,
:mod:`~cfqa_core.codecs.hyperprior.entropy_models`,
:mod:`~cfqa_core.codecs.hyperprior.networks`,
:mod:`~cfqa_core.codecs.hyperprior.loss`,
:mod:`~cfqa_core.codecs.hyperprior.export`; the folder and bitstream format
they write is the torch-free :mod:`cfqa_core.codecs.learned_format`.
"""
from __future__ import annotations

from cfqa_core.codecs.hyperprior.entropy_models import (
    LIKELIHOOD_BOUND,
    SCALE_BOUND,
    TAIL_MASS,
    EntropyBottleneck,
    GaussianConditional,
    noise_or_round,
    ste_round,
)
from cfqa_core.codecs.hyperprior.export import (
    ONNX_OPSET,
    export_codec,
    export_onnx,
    load_deploy_transforms,
)
from cfqa_core.codecs.hyperprior.layers import GDN, Abs, FixedGDN, conv, deconv, lower_bound
from cfqa_core.codecs.hyperprior.loss import RateDistortion
from cfqa_core.codecs.hyperprior.networks import (
    VARIANTS,
    HyperpriorConfig,
    HyperpriorModel,
    MeanScaleHyperprior,
    ScaleHyperprior,
    analysis,
    build_model,
    synthesis,
)
from cfqa_core.codecs.learned_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    FP16_SUFFIX,
    STRIDE,
    TABLES_FILE,
    TRANSFORMS,
)

__all__ = [
    "CONFIG_FILE", "FORMAT_VERSION", "FP16_SUFFIX", "GDN", "LIKELIHOOD_BOUND", "ONNX_OPSET", "SCALE_BOUND", "STRIDE",
    "TABLES_FILE", "TAIL_MASS", "TRANSFORMS", "VARIANTS", "Abs", "EntropyBottleneck", "FixedGDN",
    "GaussianConditional", "HyperpriorConfig", "HyperpriorModel", "MeanScaleHyperprior", "RateDistortion",
    "ScaleHyperprior", "analysis", "build_model", "conv", "deconv", "export_codec", "export_onnx",
    "load_deploy_transforms", "lower_bound", "noise_or_round", "ste_round", "synthesis",
]
