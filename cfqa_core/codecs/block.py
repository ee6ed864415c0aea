"""Shared machinery of the block-based (HEVC/VVC/AV1) intra feature codecs.

A block codec packs the feature into one monochrome b-bit frame
(:mod:`cfqa_core.packing`), codes it as a single intra picture at a fixed QP
and reverses both on decode. Subclasses only say how to turn a frame into a
bitstream and back (``_encode_frame`` / ``_decode_frame``).

``EncodedFeature.meta`` carries everything a receiver needs: codec, QP, bit
depth, frame size before and after padding, layout, range, rounding, shape,
plus ``bytes`` and ``crc32`` of the bitstream so that a truncated or damaged
stream is refused instead of being decoded into a plausible-looking feature
(HEVC/VVC slices carry no checksum of their own).
"""
from __future__ import annotations

import time
import zlib
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs.base import EncodedFeature, FeatureCodec
from cfqa_core.codecs.ladders import HEVC_OPERATING_LADDER, PAPER_LADDER
from cfqa_core.errors import CodecError, DataError
from cfqa_core.packing import PackingParams, pack, unpack, unpack_levels

FORMAT_VERSION = 1


def raw_frame_bytes(frame: np.ndarray, bit_depth: int) -> bytes:
    """A frame as a raw planar luma file: 1 byte/sample at 8 bits, else little-endian 16-bit."""
    if bit_depth <= 8:
        return np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(frame, dtype="<u2").tobytes()


def frame_from_raw(data: bytes, width: int, height: int, bit_depth: int, what: str) -> np.ndarray:
    """Inverse of :func:`raw_frame_bytes`, reading only the luma plane."""
    dtype = np.uint8 if bit_depth <= 8 else np.dtype("<u2")
    need = width * height * np.dtype(dtype).itemsize
    if len(data) < need:
        raise CodecError(f"{what} wrote {len(data)} bytes, expected at least {need} for {width}x{height}")
    return np.frombuffer(data[:need], dtype=dtype).reshape(height, width).astype(np.uint16)


# Largest coded picture a decoder is allowed to allocate (samples); far above any token
# feature (ViT-g dpt: 2 x 4 x 257 x 1536 = 3.2 M) and far below what would hurt a server.
MAX_FRAME_SAMPLES = 1 << 25


def _ceil_to(n: int, align: int) -> int:
    return -(-n // align) * align


def checked_frame_size(meta: dict[str, Any], align: int, min_size: int = 1) -> tuple[int, int]:
    """(padded_width, padded_height) implied by ``meta['shape']``; CodecError unless the metadata agrees.

    ``width``/``height`` must equal the stacked frame of the shape and
    ``padded_width``/``padded_height`` that frame padded to ``align`` (and at
    least ``min_size``), exactly; the padded frame must stay under
    :data:`MAX_FRAME_SAMPLES`.
    """
    try:
        shape = [int(s) for s in meta["shape"]]
        claimed = (int(meta["width"]), int(meta["height"]), int(meta["padded_width"]), int(meta["padded_height"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"encoded feature metadata is incomplete: missing or bad {exc}") from None
    if len(shape) < 2 or len(shape) > 8 or any(s < 1 or s > MAX_FRAME_SAMPLES for s in shape):
        raise CodecError(f"feature shape {shape[:9]} is not 2 to 8 positive sizes")
    height = 1
    for s in shape[:-1]:
        height *= s
        if height > MAX_FRAME_SAMPLES:
            raise CodecError(f"feature shape {shape} makes a frame taller than {MAX_FRAME_SAMPLES} rows")
    width = shape[-1]
    pw = max(_ceil_to(width, align), _ceil_to(min_size, align))
    ph = max(_ceil_to(height, align), _ceil_to(min_size, align))
    if pw * ph > MAX_FRAME_SAMPLES:
        raise CodecError(f"feature shape {shape} needs a {pw}x{ph} frame, above {MAX_FRAME_SAMPLES} samples")
    if claimed != (width, height, pw, ph):
        at_least = f", at least {min_size}" if min_size > align else ""
        raise CodecError(
            f"metadata expected {claimed[2]}x{claimed[3]} as the padded frame ({claimed[0]}x{claimed[1]} unpadded), "
            f"which does not match shape {shape}: {pw}x{ph} ({width}x{height} padded to a multiple of {align}"
            f"{at_least})"
        )
    return pw, ph


class BlockCodec(FeatureCodec):
    """A FeatureCodec whose rate point is the QP of a block-based intra encoder."""

    family: ClassVar[str] = "block"
    ladder: ClassVar[tuple[int, ...]] = HEVC_OPERATING_LADDER
    paper_ladder: ClassVar[tuple[int, ...]] = PAPER_LADDER
    qp_range: ClassVar[tuple[int, int]] = (0, 51)
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10, 12)
    # Frames are padded to a multiple of the smallest coding block all our encoders accept.
    align: ClassVar[int] = 8
    # Smallest frame side the encoder accepts; smaller frames are padded up to it.
    min_size: ClassVar[int] = 8
    container: ClassVar[str] = "annexb"

    def settings(self) -> dict[str, Any]:
        """Encoder settings recorded in the metadata (informative, not needed to decode)."""
        return {}

    def check_rate_point(self, rate_point: Any) -> int:
        """The rate point as an int QP inside ``qp_range``, else CodecError."""
        if isinstance(rate_point, bool) or not isinstance(rate_point, (int, np.integer)):
            raise CodecError(f"codec '{self.name}' needs an integer QP, got {rate_point!r}")
        lo, hi = self.qp_range
        if not lo <= int(rate_point) <= hi:
            raise CodecError(f"QP {rate_point} outside {lo}..{hi} for codec '{self.name}'")
        return int(rate_point)

    def check_bit_depth(self, bit_depth: Any) -> int:
        if isinstance(bit_depth, bool) or not isinstance(bit_depth, (int, np.integer)):
            raise CodecError(f"bit depth must be an integer, got {bit_depth!r}")
        if int(bit_depth) not in self.bit_depths:
            allowed = ", ".join(map(str, self.bit_depths))
            raise CodecError(f"codec '{self.name}' codes {allowed}-bit frames, not {bit_depth}-bit")
        return int(bit_depth)

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
        """Quantise, pack and code ``feature`` at QP ``rate_point``."""
        qp = self.check_rate_point(rate_point)
        depth = self.check_bit_depth(bit_depth)
        self.require_available()
        params = PackingParams(value_range, depth, rounding, "stack", range_axis)
        start = time.perf_counter()
        packed = pack(feature, params, align=self.align, min_size=self.min_size)
        bitstream = self._encode_frame(packed.frame, qp, depth)
        elapsed = time.perf_counter() - start
        n = int(np.prod(packed.shape))
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "codec": self.name,
            "family": self.family,
            "rate_point": qp,
            "qp": qp,
            **packed.meta(),
            "container": self.container,
            "bytes": len(bitstream),
            "bpfp": 8.0 * len(bitstream) / n,
            "crc32": zlib.crc32(bitstream),
            "settings": self.settings(),
        }
        return EncodedFeature(self.name, qp, bitstream, meta, encode_s=elapsed)

    def expected_frame(self, meta: dict[str, Any]) -> tuple[int, int]:
        """(padded_width, padded_height) that the metadata's shape implies, after checking it.

        Every size a decoder allocates from is derived here from the shape and the
        alignment and must equal what the metadata claims, so that a small request
        cannot declare a huge picture.
        """
        return checked_frame_size(meta, self.align, self.min_size)

    def decode_frame(self, encoded: EncodedFeature) -> np.ndarray:
        """The decoded, still padded frame (uint16) after integrity checks."""
        meta = encoded.meta
        try:
            depth = int(meta["bit_depth"])
            expected_bytes, expected_crc = int(meta["bytes"]), int(meta["crc32"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"encoded feature metadata is incomplete: missing or bad {exc}") from None
        self.check_bit_depth(depth)
        width, height = self.expected_frame(meta)
        data = encoded.bitstream
        if len(data) != expected_bytes:
            raise CodecError(
                f"corrupt bitstream: {len(data)} bytes, metadata says {expected_bytes} (truncated?)"
            )
        if zlib.crc32(data) != expected_crc:
            raise CodecError("corrupt bitstream: CRC-32 does not match the metadata")
        frame = self._decode_frame(data, width, height, depth)
        if frame.shape != (height, width):
            raise CodecError(
                f"decoded picture is {frame.shape[1]}x{frame.shape[0]}, expected {width}x{height}"
            )
        return frame

    def decode(self, encoded: EncodedFeature) -> np.ndarray:
        """Reconstruct the float32 feature of ``encoded.meta['shape']``."""
        frame = self.decode_frame(encoded)
        try:
            return unpack(frame, encoded.meta)
        except DataError as exc:
            raise CodecError(f"cannot unpack decoded frame: {exc}") from None

    def decode_levels(self, encoded: EncodedFeature) -> np.ndarray:
        """The decoded integer levels in the feature's shape (before dequantisation)."""
        try:
            return unpack_levels(self.decode_frame(encoded), encoded.meta)
        except DataError as exc:
            raise CodecError(f"cannot unpack decoded frame: {exc}") from None

    @abstractmethod
    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        """Code one padded ``(H, W)`` uint16 frame; return the elementary stream."""

    @abstractmethod
    def _decode_frame(self, bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
        """Decode the elementary stream to a ``(height, width)`` uint16 frame."""
