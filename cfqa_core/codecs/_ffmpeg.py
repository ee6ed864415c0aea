"""The static FFmpeg shipped by imageio-ffmpeg (libvvenc, libaom, native VVC decoder)."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from cfqa_core.codecs import _pyav
from cfqa_core.codecs._subprocess import private_dir, read_output, run_tool
from cfqa_core.errors import CodecError


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str | None:
    """Path of the static ffmpeg (``$IMAGEIO_FFMPEG_EXE`` overrides), or None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        path = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None
    return path if path and os.path.isfile(path) else None


@functools.lru_cache(maxsize=4)
def _listing(kind: str) -> frozenset[str]:
    exe = ffmpeg_exe()
    if exe is None:
        return frozenset()
    try:
        out = run_tool([exe, "-hide_banner", f"-{kind}"], what=f"ffmpeg -{kind}", timeout=60).stdout
    except CodecError:
        return frozenset()
    names = re.findall(r"^\s*[A-Z.]{6}\s+(\S+)", out.decode(errors="replace"), flags=re.M)
    return frozenset(names)


def has_encoder(name: str) -> bool:
    return name in _listing("encoders")


def has_decoder(name: str) -> bool:
    return name in _listing("decoders")


def encoder_availability(encoder: str) -> tuple[bool, str | None]:
    """(True, None) when the static ffmpeg has ``encoder``, else why not."""
    if ffmpeg_exe() is None:
        return False, "the static ffmpeg of the imageio-ffmpeg package is not installed"
    if not has_encoder(encoder):
        return False, f"the static ffmpeg ({ffmpeg_exe()}) has no {encoder} encoder"
    return True, None


def decode_picture(
    pyav_decoder: str, demuxer: str, bitstream: bytes, width: int, height: int, bit_depth: int
) -> np.ndarray:
    """Decode one picture in-process with PyAV's ``pyav_decoder``, else with the ffmpeg CLI."""
    if _pyav.has_codec(pyav_decoder):
        return _pyav.decode_picture(pyav_decoder, bitstream, bit_depth, max_pixels=width * height)
    return decode_with_ffmpeg(bitstream, demuxer, _pyav.gray_format(bit_depth), width, height)


def decode_with_ffmpeg(
    bitstream: bytes, demuxer: str, pix_fmt: str, width: int, height: int, *, timeout: float = 300.0
) -> np.ndarray:
    """Decode one picture with the ffmpeg CLI (used when PyAV lacks the decoder)."""
    exe = ffmpeg_exe()
    if exe is None:
        raise CodecError("cannot decode: the static ffmpeg of imageio-ffmpeg is not installed")
    with private_dir() as tmp:
        src, dst = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.raw")
        with open(src, "wb") as fh:
            fh.write(bitstream)
        # One decoder thread: FFmpeg's multi-threaded VVC decoder is not deterministic.
        run_tool(
            [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1",
             "-err_detect", "crccheck+explode", "-max_pixels", str(width * height), "-f", demuxer, "-i", src,
             "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-y", dst],
            what=f"ffmpeg {demuxer} decoder", timeout=timeout,
        )
        data = read_output(Path(dst), f"ffmpeg {demuxer} decoder")
    dtype = np.uint8 if pix_fmt == "gray" else np.dtype("<u2")
    arr = np.frombuffer(data, dtype=dtype)
    if arr.size != width * height:
        raise CodecError(
            f"decoded picture has {arr.size} samples, expected {width}x{height}"
        )
    return arr.reshape(height, width).astype(np.uint16)
