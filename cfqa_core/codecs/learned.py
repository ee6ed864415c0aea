"""Learned hyperprior feature codecs: registered ``FeatureCodec``s, torch-free by default.

A codec folder (``cfqa_core/weights/codecs/<name>/``, written by
:func:`cfqa_core.codecs.hyperprior.export.export_codec`) holds the four transforms
as ONNX graphs (``g_a``, ``h_a``, ``h_s``, ``g_s``), the entropy tables and
gains (``tables.npz``) and ``codec.json``. Encoding is

1. truncate to ``value_range``, quantise to ``bit_depth`` bits and lay out
   as one frame (:mod:`cfqa_core.packing`), padded by edge replication to a
   multiple of 64; the frame divided by ``2**b - 1`` is the network input in [0, 1];
2. ``y = g_a(x) * gain_y[k]``, ``z = h_a(y) * gain_z[k]`` for rate point ``k``;
3. ``z`` is range-coded with the factorised prior, ``h_s(z_hat / ...)``
   gives scales (and means), and ``y`` is range-coded with the Gaussian
   conditional (:mod:`cfqa_core.codecs.entropy`).

Decoding inverts every step; the reconstruction is returned as float (not
re-quantised to integer levels). Two inference backends run the transforms:
ONNX Runtime (``backend="onnx"``, the default, no torch needed) and torch
(``backend="torch"``, modules loaded from the same ONNX weights). Both use
the same numpy entropy coding. The scale table index is computed from each
side's own float output of ``h_s``, so an encoder and a decoder on different
backends can in rare cases disagree on one index; the CRC of the y symbols
in the metadata turns that into a ``CodecError`` instead of a wrong feature.
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs import entropy
from cfqa_core.codecs.base import EncodedFeature, FeatureCodec, register_codec
from cfqa_core.codecs.block import checked_frame_size
from cfqa_core.codecs.learned_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    LATENT_STRIDE,
    STRIDE,
    TABLES_FILE,
    TRANSFORMS,
)
from cfqa_core.errors import CodecError, DataError
from cfqa_core.packing import PackingParams, pack, unpack

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "codecs"
BACKENDS = ("auto", "onnx", "torch")
# name -> (variant, training task) of the codecs shipped with the package.
SHIPPED: dict[str, tuple[str, str]] = {
    "hyperprior-cls": ("scale", "cls"),
    "hyperprior-seg": ("scale", "seg"),
    "hyperprior-dpt": ("scale", "dpt"),
    "hyperprior-multi": ("scale", "multi"),
    "mshyperprior-multi": ("meanscale", "multi"),
}
DEFAULT_RATES = 10


def truncate(feature: np.ndarray, value_range: Any, range_axis: int = -3) -> np.ndarray:
    """``feature`` clipped to ``value_range`` (one pair, or one pair per slice along ``range_axis``).

    The reference a codec's distortion is measured against: what survives truncation.
    """
    params = PackingParams(value_range, range_axis=range_axis)
    pairs = np.asarray(params.value_range, dtype=np.float32)
    if not params.per_slice:
        return np.clip(feature, pairs[0], pairs[1])
    shape = [1] * feature.ndim
    shape[range_axis] = len(pairs)
    return np.clip(feature, pairs[:, 0].reshape(shape), pairs[:, 1].reshape(shape))


def range_span(value_range: Any) -> float:
    """Width of the range (mean width for per-slice ranges): the peak of a PSNR."""
    pairs = np.asarray(value_range, dtype=np.float64).reshape(-1, 2)
    return float(np.mean(pairs[:, 1] - pairs[:, 0]))


class CodecBundle:
    """Everything a learned codec reads from its folder (numpy only)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise CodecError(f"learned codec weights missing: {cfg_path} not found")
        try:
            self.meta: dict[str, Any] = json.loads(cfg_path.read_text())
            cfg = self.meta["config"]
            self.variant: str = cfg["variant"]
            self.lambdas: tuple[float, ...] = tuple(float(v) for v in cfg["lambdas"])
            self.M, self.Nh = int(cfg["M"]), int(cfg["Nh"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecError(f"{cfg_path} is malformed: {exc}") from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise CodecError(f"{cfg_path} has format {self.meta.get('format')}, expected {FORMAT_VERSION}")
        if int(self.meta.get("stride", STRIDE)) != STRIDE:
            raise CodecError(f"{cfg_path}: stride {self.meta.get('stride')} is not {STRIDE}")
        for name in TRANSFORMS:
            if not (self.folder / f"{name}.onnx").is_file():
                raise CodecError(f"learned codec weights missing: {self.folder / name}.onnx not found")
        try:
            with np.load(self.folder / TABLES_FILE) as t:
                self.scale_table = t["scale_table"].astype(np.float64)
                self.prior = entropy.FactorizedTable(
                    t["medians"].astype(np.float32), t["offsets"].astype(np.int32),
                    t["lengths"].astype(np.int32), t["pmfs"].astype(np.float64),
                )
                self.gains = {k: t[k].astype(np.float32) for k in ("gain_y", "igain_y", "gain_z", "igain_z")}
        except (OSError, KeyError, ValueError) as exc:
            raise CodecError(f"cannot read {self.folder / TABLES_FILE}: {exc}") from None
        k = len(self.lambdas)
        if self.gains["gain_y"].shape != (k, self.M) or self.gains["gain_z"].shape != (k, self.Nh):
            raise CodecError(f"{self.folder}: gains do not match {k} rate points of M={self.M}, Nh={self.Nh}")
        if self.prior.channels != self.Nh:
            raise CodecError(f"{self.folder}: prior has {self.prior.channels} channels, expected {self.Nh}")

    @cached_property
    def weights_id(self) -> str:
        """Short hash of every file that determines the bitstream: encoder and decoder must agree."""
        h = hashlib.sha256()
        for name in (*(f"{t}.onnx" for t in TRANSFORMS), TABLES_FILE):
            h.update((self.folder / name).read_bytes())
        return h.hexdigest()[:16]

    @property
    def num_rates(self) -> int:
        return len(self.lambdas)


class OnnxTransforms:
    """The transforms through ONNX Runtime (the torch-free path)."""

    name = "onnx"

    def __init__(self, bundle: CodecBundle, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CodecError("learned codec backend 'onnx' needs onnxruntime (pip install onnxruntime)") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sessions = {}
        for t in TRANSFORMS:
            path = bundle.folder / f"{t}.onnx"
            try:
                self.sessions[t] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise CodecError(f"cannot load {path} with ONNX Runtime: {exc}") from None

    def __call__(self, name: str, x: np.ndarray) -> np.ndarray:
        sess = self.sessions[name]
        return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class TorchTransforms:
    """The same transforms as torch modules (weights read from the ONNX files)."""

    name = "torch"

    def __init__(self, bundle: CodecBundle) -> None:
        # torch's thread count is process-wide: left to the application, never set here.
        try:
            import torch

            from cfqa_core.codecs.hyperprior import HyperpriorConfig, load_deploy_transforms
        except ImportError as exc:
            raise CodecError(f"learned codec backend 'torch' needs torch and onnx: {exc}") from exc
        self._torch = torch
        self.modules = load_deploy_transforms(bundle.folder, HyperpriorConfig.from_dict(bundle.meta["config"]))

    def __call__(self, name: str, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.modules[name](torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CodecError(f"unknown learned codec backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend != "auto":
        return backend
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


class LearnedCodec(FeatureCodec):
    """A hyperprior codec whose rate point is the index of a trained lambda (0 = best quality)."""

    name: ClassVar[str] = "learned"
    family: ClassVar[str] = "learned"
    ladder: ClassVar[tuple[int, ...]] = tuple(range(DEFAULT_RATES))
    align: ClassVar[int] = STRIDE
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10, 12)

    def __init__(
        self, folder: str | Path | None = None, backend: str = "auto", threads: int = 1, name: str | None = None
    ) -> None:
        if name is not None:
            self.name = name  # type: ignore[misc]  # an unregistered codec loaded from a folder
        self.folder = Path(folder) if folder is not None else WEIGHTS_DIR / self.name
        self.backend_name = backend
        self.threads = threads

    @classmethod
    def from_folder(cls, folder: str | Path, backend: str = "auto", threads: int = 1) -> LearnedCodec:
        """A codec for any exported folder (e.g. the output of ``cfqa train-codec``)."""
        folder = Path(folder)
        codec = cls(folder, backend, threads, name=folder.name)
        codec.ladder = tuple(range(codec.bundle.num_rates))  # type: ignore[misc]
        return codec

    # -- lazily loaded state ----------------------------------------------------------

    @cached_property
    def bundle(self) -> CodecBundle:
        return CodecBundle(self.folder)

    @cached_property
    def transforms(self) -> OnnxTransforms | TorchTransforms:
        backend = _pick_backend(self.backend_name)
        if backend == "onnx":
            return OnnxTransforms(self.bundle, self.threads)
        return TorchTransforms(self.bundle)

    @property
    def lambdas(self) -> tuple[float, ...]:
        return self.bundle.lambdas

    def availability(self) -> tuple[bool, str | None]:
        import importlib.util

        # constriction is an optional extra: it has no aarch64 wheel (Jetson), where the edge runs HEVC.
        if importlib.util.find_spec("constriction") is None:
            return False, entropy.MISSING_CONSTRICTION
        try:
            self.bundle
            backend = _pick_backend(self.backend_name)
        except CodecError as exc:
            return False, str(exc)
        if backend == "torch":
            try:
                import onnx  # noqa: F401
                import torch  # noqa: F401
            except ImportError as exc:
                return False, f"neither onnxruntime nor torch+onnx is installed ({exc.name} missing)"
        return True, None

    def check_rate_point(self, rate_point: Any) -> int:
        if isinstance(rate_point, bool) or not isinstance(rate_point, (int, np.integer)):
            raise CodecError(f"codec '{self.name}' needs an integer rate point (lambda index), got {rate_point!r}")
        k = self.bundle.num_rates
        if not 0 <= int(rate_point) < k:
            raise CodecError(f"rate point {rate_point} outside 0..{k - 1} for codec '{self.name}'")
        return int(rate_point)

    # -- the transforms with gains ------------------------------------------------------

    def _entropy_params(self, z_hat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        g = self.bundle.gains
        params = self.transforms("h_s", z_hat * g["igain_z"][k].reshape(1, -1, 1, 1))
        if self.bundle.variant == "meanscale":
            m = self.bundle.M
            return params[:, :m], params[:, m:]
        return params, None

    def _latent_shapes(self, ph: int, pw: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        b = self.bundle
        return (1, b.M, ph // LATENT_STRIDE, pw // LATENT_STRIDE), (1, b.Nh, ph // STRIDE, pw // STRIDE)

    # -- the FeatureCodec contract ------------------------------------------------------

    def encode(
        self,
        feature: np.ndarray,
        rate_point: int,
        *,
        value_range: Any,
        bit_depth: int = 10,
        rounding: str = "round",
        range_axis: int = -3,
    ) -> EncodedFeature:
        """Normalise, pack and entropy-code ``feature`` at lambda index ``rate_point``."""
        k = self.check_rate_point(rate_point)
        if bit_depth not in self.bit_depths:
            raise CodecError(f"codec '{self.name}' normalises from {self.bit_depths}-bit levels, not {bit_depth}")
        self.require_available()
        params = PackingParams(value_range, bit_depth, rounding, "stack", range_axis)
        start = time.perf_counter()
        packed = pack(feature, params, align=self.align)
        x = (packed.frame.astype(np.float32) / np.float32(params.max_level))[None, None]
        g = self.bundle.gains
        y = self.transforms("g_a", x) * g["gain_y"][k].reshape(1, -1, 1, 1)
        z = self.transforms("h_a", y) * g["gain_z"][k].reshape(1, -1, 1, 1)
        y_shape, z_shape = self._latent_shapes(packed.padded_height, packed.padded_width)
        if y.shape != y_shape or z.shape != z_shape:
            raise CodecError(f"transforms returned latents {y.shape}/{z.shape}, expected {y_shape}/{z_shape}")
        z_bytes, z_hat = entropy.encode_z(z, self.bundle.prior)
        scales, means = self._entropy_params(z_hat, k)
        y_bytes, y_max, _, symbols = entropy.encode_y(y, scales, means, self.bundle.scale_table)
        bitstream = entropy.pack_strings(z_bytes, y_bytes, y_max)
        elapsed = time.perf_counter() - start
        n = int(np.prod(packed.shape))
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "codec": self.name,
            "family": self.family,
            "rate_point": k,
            "lambda": self.bundle.lambdas[k],
            "model": self.bundle.meta.get("architecture", self.bundle.variant),
            "weights": self.bundle.weights_id,
            "backend": self.transforms.name,
            **packed.meta(),
            "bytes": len(bitstream),
            "z_bytes": len(z_bytes),
            "bpfp": 8.0 * len(bitstream) / n,
            "crc32": zlib.crc32(bitstream),
            "symbols_crc32": entropy.symbols_crc(symbols),
        }
        return EncodedFeature(self.name, k, bitstream, meta, encode_s=elapsed)

    def decode_frame(self, encoded: EncodedFeature) -> np.ndarray:
        """The reconstructed, still padded frame in the network's [0, 1] scale (not clipped)."""
        meta = encoded.meta
        try:
            k = self.check_rate_point(meta["rate_point"])
            expected_bytes, expected_crc = int(meta["bytes"]), int(meta["crc32"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"encoded feature metadata is incomplete: missing or bad {exc}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise CodecError(f"encoded feature has format {meta.get('format')!r:.40}, expected {FORMAT_VERSION}")
        # Latent and frame sizes follow from the shape alone; the metadata must agree exactly.
        pw, ph = checked_frame_size(meta, STRIDE)
        if meta.get("weights") not in (None, self.bundle.weights_id):
            raise CodecError(
                f"bitstream was made with weights {str(meta.get('weights'))[:40]}, "
                f"this '{self.name}' has {self.bundle.weights_id}"
            )
        data = encoded.bitstream
        if len(data) != expected_bytes:
            raise CodecError(f"corrupt bitstream: {len(data)} bytes, metadata says {expected_bytes} (truncated?)")
        if zlib.crc32(data) != expected_crc:
            raise CodecError("corrupt bitstream: CRC-32 does not match the metadata")
        self.require_available()
        y_shape, z_shape = self._latent_shapes(ph, pw)
        z_data, y_data, y_max = entropy.unpack_strings(data)
        z_hat = entropy.decode_z(z_data, z_shape, self.bundle.prior)
        scales, means = self._entropy_params(z_hat, k)
        if scales.shape != y_shape:
            raise CodecError(f"hyper-synthesis returned {scales.shape}, expected {y_shape}")
        y_hat, symbols = entropy.decode_y(y_data, y_max, scales, means, self.bundle.scale_table)
        if "symbols_crc32" in meta and entropy.symbols_crc(symbols) != int(meta["symbols_crc32"]):
            raise CodecError(
                f"decoded latents do not match the encoder's (encoded with backend '{meta.get('backend')}', "
                f"decoded with '{self.transforms.name}'; floating-point differences moved a scale index)"
            )
        x_hat = self.transforms("g_s", y_hat * self.bundle.gains["igain_y"][k].reshape(1, -1, 1, 1))
        return x_hat[0, 0]

    def decode(self, encoded: EncodedFeature) -> np.ndarray:
        """Reconstruct the float32 feature of ``encoded.meta['shape']``."""
        frame = self.decode_frame(encoded)
        try:
            params = PackingParams.from_meta(encoded.meta)
            levels = np.clip(frame, 0.0, 1.0) * np.float32(params.max_level)
            return unpack(levels, encoded.meta)
        except DataError as exc:
            raise CodecError(f"cannot unpack decoded frame: {exc}") from None


# The codecs shipped with the package (weights in WEIGHTS_DIR/<name>/), one registration each.


@register_codec("hyperprior-cls")
class HyperpriorClsCodec(LearnedCodec):
    """Learned scale hyperprior codec trained on cls features."""

    tasks = ("cls",)


@register_codec("hyperprior-seg")
class HyperpriorSegCodec(LearnedCodec):
    """Learned scale hyperprior codec trained on seg features."""

    tasks = ("seg",)


@register_codec("hyperprior-dpt")
class HyperpriorDptCodec(LearnedCodec):
    """Learned scale hyperprior codec trained on dpt features."""

    tasks = ("dpt",)


@register_codec("hyperprior-multi")
class HyperpriorMultiCodec(LearnedCodec):
    """Learned scale hyperprior codec trained on features of all three tasks."""


@register_codec("mshyperprior-multi")
class MshyperpriorMultiCodec(LearnedCodec):
    """Learned mean-scale hyperprior codec trained on features of all three tasks."""
