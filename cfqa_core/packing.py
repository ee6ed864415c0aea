"""Feature packing: truncate, quantise to b-bit integers and lay out as one 2-D frame.

A token feature ``(..., T, D)`` (e.g. cls ``(1, 145, 128)``, dpt
``(2, 4, 145, 128)``) becomes one monochrome frame in the "stack" layout: every
leading slice is a ``T x D`` tile (tokens down, channels across) and the tiles
are stacked vertically, so the frame is ``prod(leading) * T`` high and ``D``
wide. The frame is padded to the codec's alignment by edge replication and
cropped back after decoding; every step is inverted by :func:`unpack`.

Quantisation maps ``[lo, hi]`` uniformly onto ``[0, 2**b - 1]``. Rounding to
the nearest level is the default; ``rounding="floor"`` truncates the way the
CFQA/FCM-LM reference scripts do (cast to an unsigned integer), which biases
every reconstruction half a step low.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cfqa_core.errors import DataError

MIN_BIT_DEPTH = 8
MAX_BIT_DEPTH = 12
ROUNDINGS = ("round", "floor")
LAYOUTS = ("stack",)

Range = tuple[float, float]


def _as_ranges(value_range: Any) -> tuple[Range, ...] | Range:
    """Normalise ``(lo, hi)`` or ``[(lo, hi), ...]`` and check them."""
    arr = np.asarray(value_range, dtype=np.float64)
    if arr.shape == (2,):
        pairs = arr[None, :]
    elif arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] >= 1:
        pairs = arr
    else:
        raise DataError(f"value_range must be (lo, hi) or a list of (lo, hi) pairs, got shape {arr.shape}")
    if not np.all(np.isfinite(pairs)):
        raise DataError(f"value_range must be finite, got {arr.tolist()}")
    if np.any(pairs[:, 1] <= pairs[:, 0]):
        raise DataError(f"value_range needs hi > lo, got {arr.tolist()}")
    out = tuple((float(lo), float(hi)) for lo, hi in pairs)
    return out[0] if arr.shape == (2,) else out


@dataclass(frozen=True)
class PackingParams:
    """How a feature becomes integer samples.

    ``value_range`` is one ``(lo, hi)`` for the whole feature, or one pair per
    slice along ``range_axis`` (the seed codes the four dpt blocks with their
    own ranges; default axis -3 is the block axis of ``(views, blocks, T, D)``).
    """

    value_range: Range | tuple[Range, ...]
    bit_depth: int = 10
    rounding: str = "round"
    layout: str = "stack"
    range_axis: int = -3

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_range", _as_ranges(self.value_range))
        if isinstance(self.bit_depth, bool) or not isinstance(self.bit_depth, (int, np.integer)):
            raise DataError(f"bit_depth must be an integer, got {self.bit_depth!r}")
        if not MIN_BIT_DEPTH <= int(self.bit_depth) <= MAX_BIT_DEPTH:
            raise DataError(f"bit_depth {self.bit_depth} outside {MIN_BIT_DEPTH}..{MAX_BIT_DEPTH}")
        object.__setattr__(self, "bit_depth", int(self.bit_depth))
        if self.rounding not in ROUNDINGS:
            raise DataError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.layout not in LAYOUTS:
            raise DataError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def per_slice(self) -> bool:
        return isinstance(self.value_range[0], tuple)

    @property
    def max_level(self) -> int:
        return (1 << self.bit_depth) - 1

    def to_meta(self) -> dict[str, Any]:
        vr = [list(p) for p in self.value_range] if self.per_slice else list(self.value_range)
        meta: dict[str, Any] = {
            "value_range": vr,
            "bit_depth": self.bit_depth,
            "rounding": self.rounding,
            "layout": self.layout,
        }
        if self.per_slice:
            meta["range_axis"] = self.range_axis
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PackingParams:
        try:
            return cls(
                value_range=meta["value_range"],
                bit_depth=meta["bit_depth"],
                rounding=meta.get("rounding", "round"),
                layout=meta.get("layout", "stack"),
                range_axis=meta.get("range_axis", -3),
            )
        except KeyError as exc:
            raise DataError(f"packing metadata lacks '{exc.args[0]}'") from None


@dataclass
class PackedFrame:
    """A packed feature: the (padded) integer frame plus what inverts it."""

    frame: np.ndarray  # uint16, (padded_height, padded_width)
    shape: tuple[int, ...]
    height: int
    width: int
    params: PackingParams
    align: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def padded_height(self) -> int:
        return int(self.frame.shape[0])

    @property
    def padded_width(self) -> int:
        return int(self.frame.shape[1])

    @property
    def pad_h(self) -> int:
        return self.padded_height - self.height

    @property
    def pad_w(self) -> int:
        return self.padded_width - self.width

    def meta(self) -> dict[str, Any]:
        """JSON-ready description that :func:`unpack` needs."""
        return {
            **self.params.to_meta(),
            "shape": list(self.shape),
            "width": self.width,
            "height": self.height,
            "padded_width": self.padded_width,
            "padded_height": self.padded_height,
        }


def validate_feature(feature: Any, name: str = "feature") -> np.ndarray:
    """Return ``feature`` as float32 or raise DataError naming what is wrong."""
    if not isinstance(feature, np.ndarray):
        raise DataError(f"{name} must be a numpy array, got {type(feature).__name__}")
    if not np.issubdtype(feature.dtype, np.floating):
        raise DataError(f"{name} must be a floating-point array, got dtype {feature.dtype}")
    if feature.ndim < 2:
        raise DataError(f"{name} must have rank >= 2 (..., tokens, channels), got shape {feature.shape}")
    if feature.size == 0:
        raise DataError(f"{name} is empty (shape {feature.shape})")
    if not np.all(np.isfinite(feature)):
        bad = int(np.size(feature) - np.count_nonzero(np.isfinite(feature)))
        raise DataError(f"{name} has {bad} non-finite values (NaN or Inf)")
    return np.asarray(feature, dtype=np.float32)


def _range_arrays(shape: Sequence[int], params: PackingParams) -> tuple[Any, Any]:
    """lo and hi broadcastable against a feature of ``shape``."""
    if not params.per_slice:
        lo, hi = params.value_range  # type: ignore[misc]
        return np.float64(lo), np.float64(hi)
    pairs = np.asarray(params.value_range, dtype=np.float64)
    ndim = len(shape)
    axis = params.range_axis
    if not -ndim <= axis < ndim or (axis % ndim) >= ndim - 2:
        raise DataError(
            f"range_axis {axis} is not a leading axis of a feature of shape {tuple(shape)}"
        )
    axis %= ndim
    if shape[axis] != len(pairs):
        raise DataError(
            f"{len(pairs)} value ranges given but axis {axis} of shape {tuple(shape)} has {shape[axis]} slices"
        )
    bshape = [1] * ndim
    bshape[axis] = len(pairs)
    return pairs[:, 0].reshape(bshape), pairs[:, 1].reshape(bshape)


def quantize(feature: np.ndarray, params: PackingParams) -> np.ndarray:
    """Clip to the range and map to integer levels ``0..2**b-1`` (uint16)."""
    x = validate_feature(feature)
    lo, hi = _range_arrays(x.shape, params)
    scale = params.max_level / (hi - lo)
    t = (np.clip(x.astype(np.float64), lo, hi) - lo) * scale
    t = np.floor(t) if params.rounding == "floor" else np.rint(t)
    return np.clip(t, 0, params.max_level).astype(np.uint16)


def dequantize(levels: np.ndarray, params: PackingParams) -> np.ndarray:
    """Integer levels back to float32 values of the range."""
    lo, hi = _range_arrays(levels.shape, params)
    scale = params.max_level / (hi - lo)
    return (levels.astype(np.float64) / scale + lo).astype(np.float32)


def frame_size(shape: Sequence[int], layout: str = "stack") -> tuple[int, int]:
    """(height, width) of the unpadded frame of a feature of ``shape``."""
    if layout != "stack":
        raise DataError(f"unknown layout {layout!r}")
    return int(np.prod(shape[:-1])), int(shape[-1])


def _ceil_to(n: int, align: int) -> int:
    return -(-n // align) * align


def pack_levels(
    levels: np.ndarray, params: PackingParams, align: int = 1, min_size: int = 1
) -> PackedFrame:
    """Lay out already-quantised levels as one frame padded to ``align`` (and at least ``min_size``)."""
    if align < 1:
        raise DataError(f"align must be >= 1, got {align}")
    height, width = frame_size(levels.shape, params.layout)
    frame = levels.reshape(height, width)
    ph = max(_ceil_to(height, align), _ceil_to(min_size, align)) - height
    pw = max(_ceil_to(width, align), _ceil_to(min_size, align)) - width
    if ph or pw:
        # Edge replication keeps the padded border as cheap to code as the content.
        frame = np.pad(frame, ((0, ph), (0, pw)), mode="edge")
    return PackedFrame(
        frame=np.ascontiguousarray(frame, dtype=np.uint16),
        shape=tuple(int(s) for s in levels.shape),
        height=height,
        width=width,
        params=params,
        align=align,
    )


def pack(
    feature: np.ndarray, params: PackingParams, align: int = 1, min_size: int = 1
) -> PackedFrame:
    """Quantise ``feature`` and lay it out as one frame padded to ``align`` (and ``min_size``)."""
    return pack_levels(quantize(feature, params), params, align, min_size)


def unpack_levels(frame: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Crop a (possibly padded) decoded frame and restore the level tensor."""
    try:
        shape = tuple(int(s) for s in meta["shape"])
        height, width = int(meta["height"]), int(meta["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"frame metadata is incomplete or malformed: {exc}") from None
    if frame_size(shape, meta.get("layout", "stack")) != (height, width):
        raise DataError(f"frame {width}x{height} does not match feature shape {shape}")
    if frame.ndim != 2 or frame.shape[0] < height or frame.shape[1] < width:
        raise DataError(
            f"decoded frame of shape {frame.shape} is smaller than the expected {height}x{width} (rows x cols)"
        )
    return np.ascontiguousarray(frame[:height, :width]).reshape(shape)


def unpack(frame: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Decoded frame (+ packing metadata) back to the float32 feature."""
    params = PackingParams.from_meta(meta)
    levels = unpack_levels(frame, meta)
    if int(levels.max(initial=0)) > params.max_level:
        raise DataError(f"decoded frame has levels above {params.max_level} for {params.bit_depth}-bit packing")
    return dequantize(levels, params)


def feature_range(
    features: np.ndarray | Iterable[np.ndarray],
    method: str = "minmax",
    q: float = 0.01,
    axis: int | None = None,
) -> Range | tuple[Range, ...]:
    """Truncation range from a set of features.

    ``method="minmax"`` takes the extremes; ``"percentile"`` takes the ``q`` and
    ``100 - q`` percentiles (``q`` in percent) and so clips outliers. With
    ``axis`` (a leading axis, e.g. -3 for dpt blocks) one range per slice is
    returned. A degenerate range (constant data) is widened to ``hi = lo + 1``.
    """
    if method not in ("minmax", "percentile"):
        raise DataError(f"range method must be 'minmax' or 'percentile', got {method!r}")
    if not 0.0 <= q < 50.0:
        raise DataError(f"percentile q must be in [0, 50), got {q}")
    items = [features] if isinstance(features, np.ndarray) else list(features)
    if not items:
        raise DataError("feature_range needs at least one feature")
    arrays = [validate_feature(f, "feature") for f in items]
    if axis is None:
        flat = np.concatenate([a.ravel() for a in arrays])
        return _one_range(flat, method, q)
    shape0 = arrays[0].shape
    if any(a.shape[axis] != shape0[axis] for a in arrays):
        raise DataError(f"features differ in the length of axis {axis}")
    moved = [np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1) for a in arrays]
    stacked = np.concatenate(moved, axis=1)
    return tuple(_one_range(row, method, q) for row in stacked)


def _one_range(values: np.ndarray, method: str, q: float) -> Range:
    if method == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in np.percentile(values, [q, 100.0 - q]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi
