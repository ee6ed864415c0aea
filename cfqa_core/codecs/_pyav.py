"""In-process encode/decode of one monochrome picture with PyAV (bundled FFmpeg)."""
from __future__ import annotations

import fractions
import functools

import numpy as np

from cfqa_core.errors import CodecError

GRAY_FORMATS = {8: "gray", 10: "gray10le", 12: "gray12le"}


@functools.lru_cache(maxsize=1)
def _available() -> frozenset[str]:
    try:
        import av
    except ImportError:
        return frozenset()
    return frozenset(av.codecs_available)


def has_codec(name: str) -> bool:
    """Whether PyAV's FFmpeg has an encoder or decoder called ``name``."""
    return name in _available()


def pyav_availability(*names: str) -> tuple[bool, str | None]:
    if not _available():
        return False, "PyAV (package 'av') is not installed"
    missing = [n for n in names if not has_codec(n)]
    if missing:
        return False, f"PyAV's FFmpeg lacks {', '.join(missing)}"
    return True, None


def gray_format(bit_depth: int) -> str:
    try:
        return GRAY_FORMATS[bit_depth]
    except KeyError:
        raise CodecError(f"no monochrome pixel format for {bit_depth}-bit samples") from None


def encode_picture(
    encoder: str, frame: np.ndarray, bit_depth: int, options: dict[str, str]
) -> bytes:
    """Encode one ``(H, W)`` uint16 frame as a single intra picture; returns the packets' bytes."""
    import av

    fmt = gray_format(bit_depth)
    height, width = frame.shape
    try:
        ctx = av.CodecContext.create(encoder, "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = fmt
        ctx.time_base = fractions.Fraction(1, 1)
        ctx.options = dict(options)
        data = frame.astype(np.uint8) if bit_depth == 8 else np.ascontiguousarray(frame, dtype=np.uint16)
        picture = av.VideoFrame.from_ndarray(data, format=fmt)
        packets = ctx.encode(picture) + ctx.encode(None)
    except av.FFmpegError as exc:
        raise CodecError(f"{encoder} encoder failed: {exc}") from None
    out = b"".join(bytes(p) for p in packets)
    if not out:
        raise CodecError(f"{encoder} encoder produced no bitstream")
    return out


def decode_picture(decoder: str, bitstream: bytes, bit_depth: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode the first picture of ``bitstream``; CodecError on any decoder complaint.

    ``max_pixels`` makes FFmpeg refuse a picture larger than the caller expects
    before it allocates it (a tiny stream can declare a huge picture).
    """
    import av

    if not bitstream:
        raise CodecError("empty bitstream")
    try:
        ctx = av.CodecContext.create(decoder, "r")
        # One thread: FFmpeg's frame/slice-threaded VVC decoder is not deterministic,
        # and a single small picture gains nothing from threads anyway.
        ctx.thread_count = 1
        # Refuse to conceal errors; verify picture hashes when the stream carries them.
        options = {"err_detect": "crccheck+explode"}
        if max_pixels:
            options["max_pixels"] = str(int(max_pixels))
        ctx.options = options
        frames = ctx.decode(av.Packet(bitstream)) + ctx.decode(None)
    except MemoryError:  # FFmpeg's answer to a picture above max_pixels
        raise CodecError(f"corrupt bitstream: {decoder} picture is larger than the {max_pixels} samples "
                         "the metadata declares") from None
    except (av.FFmpegError, EOFError, ValueError) as exc:
        raise CodecError(f"corrupt bitstream: {decoder} decoder: {exc}") from None
    if not frames:
        raise CodecError(f"corrupt bitstream: {decoder} decoder returned no picture")
    picture = frames[0]
    expected = gray_format(bit_depth)
    if picture.format.name != expected:
        raise CodecError(
            f"decoded picture is {picture.format.name}, expected {expected} (monochrome {bit_depth}-bit)"
        )
    return picture.to_ndarray().astype(np.uint16, copy=False)
