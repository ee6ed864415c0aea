"""Conversions between ``cfqa.v1`` messages and numpy / codec objects (torch-free).

A codec's ``EncodedFeature.meta`` travels as explicit ``FeaturePayload`` fields
for everything packing defines (shape, range, bit depth, frame size, CRC) plus
one JSON object for the codec-specific rest, so that
``encoded_from_payload(payload_from_encoded(t, e)).meta == e.meta`` for any
JSON-serialisable meta. Task maps travel as PNG: seg masks as 8-bit class ids,
depth as 16-bit millimetres.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from cfqa_core.codecs.base import EncodedFeature
from cfqa_core.errors import DataError
from cfqa_proto import cfqa_v1_pb2 as pb

FEATURE_DTYPE = "float32"
# meta key -> payload field, for the optional scalar fields of FeaturePayload.
_INT_FIELDS: dict[str, str] = {
    "bit_depth": "bit_depth",
    "width": "frame_width",
    "height": "frame_height",
    "padded_width": "padded_width",
    "padded_height": "padded_height",
    "crc32": "crc32",
}
_STR_FIELDS: tuple[str, ...] = ("rounding", "layout")
EXPLICIT_KEYS: frozenset[str] = frozenset({"shape", "value_range", "range_axis", *_INT_FIELDS, *_STR_FIELDS})
MAX_DEPTH_MM = 65535
# codec_meta_json bounds: real codecs write a few hundred bytes, two levels deep.
MAX_META_JSON_CHARS = 8192
MAX_META_JSON_DEPTH = 8
MAX_JSON_NUMBER_CHARS = 40


class _MetaJsonError(ValueError):
    """A codec_meta_json value outside the accepted bounds."""


def _bounded_number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_JSON_NUMBER_CHARS:
            raise _MetaJsonError(f"a number of {len(text)} characters")
        value = kind(text)
        if kind is float and not math.isfinite(value):
            raise _MetaJsonError(f"non-finite number {text}")
        return value

    return parse


def _no_constant(name: str) -> Any:
    raise _MetaJsonError(f"non-finite number {name}")


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, brackets inside strings ignored."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_meta_json(text: str, task: str = "") -> dict[str, Any]:
    """The codec-specific metadata object of a payload (DataError when malformed or out of bounds).

    Bounded before parsing: at most :data:`MAX_META_JSON_CHARS` characters,
    :data:`MAX_META_JSON_DEPTH` levels of nesting, numbers of at most
    :data:`MAX_JSON_NUMBER_CHARS` characters, no NaN or Infinity.
    """
    what = f"{task[:32] or '?'} payload: codec_meta_json"
    if not text:
        return {}
    if len(text) > MAX_META_JSON_CHARS:
        raise DataError(f"{what} has {len(text)} characters, more than {MAX_META_JSON_CHARS}")
    if _nesting_depth(text) > MAX_META_JSON_DEPTH:
        raise DataError(f"{what} is nested deeper than {MAX_META_JSON_DEPTH} levels")
    try:
        value = json.loads(text, parse_int=_bounded_number(int), parse_float=_bounded_number(float),
                           parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} is not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{what} is out of bounds ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} must be a JSON object")
    return value


def load_codecs() -> list[str]:
    """Register the built-in codecs (importing ``cfqa_core.codecs`` does); returns the registered names."""
    import cfqa_core.codecs as codecs

    return codecs.registered_names()


def _ranges(value: Any) -> tuple[list[tuple[float, float]], bool]:
    """(pairs, per_slice) of a meta ``value_range``: one [lo, hi] or a list of them."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (2,):
        return [(float(arr[0]), float(arr[1]))], False
    if arr.ndim == 2 and arr.shape[1] == 2:
        return [(float(lo), float(hi)) for lo, hi in arr], True
    raise DataError(f"value_range must be [lo, hi] or a list of them, got shape {arr.shape}")


def payload_from_encoded(
    task: str,
    encoded: EncodedFeature,
    *,
    metric_score: float | None = None,
    metric_name: str = "",
) -> pb.FeaturePayload:
    """The wire form of one task's encoded feature."""
    meta = encoded.meta
    p = pb.FeaturePayload(
        task=task,
        codec=encoded.codec,
        rate_point=int(encoded.rate_point),
        dtype=FEATURE_DTYPE,
        bitstream=encoded.bitstream,
        metric_name=metric_name,
    )
    if "shape" in meta:
        p.shape.extend(int(s) for s in meta["shape"])
    if "value_range" in meta:
        pairs, per_slice = _ranges(meta["value_range"])
        p.value_range.extend(pb.ValueRange(lo=lo, hi=hi) for lo, hi in pairs)
        if per_slice:
            p.range_axis = int(meta.get("range_axis", -3))
    elif "range_axis" in meta:
        p.range_axis = int(meta["range_axis"])
    for key, name in _INT_FIELDS.items():
        if key in meta:
            setattr(p, name, int(meta[key]))
    for key in _STR_FIELDS:
        if key in meta:
            setattr(p, key, str(meta[key]))
    extras = {k: v for k, v in meta.items() if k not in EXPLICIT_KEYS}
    p.codec_meta_json = json.dumps(extras, separators=(",", ":"), sort_keys=True) if extras else ""
    if metric_score is not None:
        p.metric_score = float(metric_score)
    return p


def encoded_from_payload(p: pb.FeaturePayload) -> EncodedFeature:
    """Rebuild the ``EncodedFeature`` a codec decodes (DataError when the payload is malformed)."""
    if p.dtype and p.dtype != FEATURE_DTYPE:
        raise DataError(f"{p.task or '?'} payload: unsupported feature dtype '{p.dtype}' (expected {FEATURE_DTYPE})")
    extras = parse_meta_json(p.codec_meta_json, p.task)
    clash = EXPLICIT_KEYS & set(extras)
    if clash:
        raise DataError(f"{p.task or '?'} payload: codec_meta_json repeats explicit fields {sorted(clash)}")
    meta: dict[str, Any] = dict(extras)
    if p.shape:
        meta["shape"] = [int(s) for s in p.shape]
    if p.value_range:
        pairs = [[r.lo, r.hi] for r in p.value_range]
        if p.HasField("range_axis"):
            meta["value_range"] = pairs
            meta["range_axis"] = int(p.range_axis)
        elif len(pairs) == 1:
            meta["value_range"] = pairs[0]
        else:
            raise DataError(f"{p.task or '?'} payload: {len(pairs)} value ranges but no range_axis")
    elif p.HasField("range_axis"):
        meta["range_axis"] = int(p.range_axis)
    for key, name in _INT_FIELDS.items():
        if p.HasField(name):
            meta[key] = int(getattr(p, name))
    for key in _STR_FIELDS:
        if getattr(p, key):
            meta[key] = getattr(p, key)
    return EncodedFeature(codec=p.codec, rate_point=int(p.rate_point), bitstream=bytes(p.bitstream), meta=meta)


# ---- task maps as PNG --------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_to_png(mask: np.ndarray) -> bytes:
    """8-bit greyscale PNG of a class-id mask (H, W)."""
    if mask.ndim != 2:
        raise DataError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DataError("mask class ids must lie in 0..255")
    return _png(np.ascontiguousarray(mask, dtype=np.uint8))


def depth_to_png(depth_m: np.ndarray) -> bytes:
    """16-bit greyscale PNG of a depth map in metres, stored as millimetres (clipped to 0..65.535 m)."""
    if depth_m.ndim != 2:
        raise DataError(f"depth map must be 2-D, got shape {depth_m.shape}")
    mm = np.clip(np.rint(np.nan_to_num(depth_m, nan=0.0) * 1000.0), 0, MAX_DEPTH_MM).astype(np.uint16)
    return _png(mm)


def _read_png(data: bytes, what: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except Exception as exc:  # PIL raises several types for bad data
        raise DataError(f"{what} is not a readable PNG: {exc}") from None


def mask_from_png(data: bytes) -> np.ndarray:
    """Class-id mask (uint8) from :func:`mask_to_png` bytes."""
    return _read_png(data, "mask_png").astype(np.uint8)


def depth_from_png(data: bytes) -> np.ndarray:
    """Depth in metres (float32) from :func:`depth_to_png` bytes."""
    return _read_png(data, "depth_png").astype(np.float32) / 1000.0


def result_summary(result: pb.TaskResult) -> dict[str, Any]:
    """A compact JSON-ready view of one task result (top-k; mask class counts; depth stats)."""
    out: dict[str, Any] = {"task": result.task}
    if result.top_k:
        out["top_k"] = [{"class_id": c.class_id, "label": c.label, "score": round(float(c.score), 6)}
                        for c in result.top_k]
    if result.mask_png:
        mask = mask_from_png(result.mask_png)
        ids, counts = np.unique(mask, return_counts=True)
        out["mask"] = {"width": result.width, "height": result.height, "png_bytes": len(result.mask_png),
                       "class_pixels": {str(int(i)): int(c) for i, c in zip(ids, counts)}}
    if result.depth_png:
        depth = depth_from_png(result.depth_png)
        out["depth_m"] = {"width": result.width, "height": result.height, "png_bytes": len(result.depth_png),
                          "min": round(float(depth.min()), 3), "mean": round(float(depth.mean()), 3),
                          "max": round(float(depth.max()), 3)}
    return out
