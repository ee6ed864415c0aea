"""VVC intra 4:0:0 10-bit with libvvenc in the static FFmpeg of imageio-ffmpeg.

FFmpeg's libvvenc wrapper only takes 4:2:0 10-bit input, so the frame is sent
as yuv420p10le with constant mid-grey chroma and vvenc is told to code 4:0:0
(``ChromaFormatIDC=400``): the stream is a real ``vvc (Main 10) gray10le``
picture and the chroma planes never reach the bitstream. The frame goes in as
raw yuv420p10le so FFmpeg never converts it (a gray10 -> yuv conversion would
squeeze full-range samples to video range).

The requested QP is the coded QP: ``-qpa 0`` turns off vvenc's perceptual QP
adaptation and ``IntraQPOffset=0`` its default -3 offset on intra pictures.

vvenc runs on one thread by default (``threads=1``, FFmpeg's ``-threads 1``):
the same bytes as its automatic thread count, without a thread pool per
picture competing with the other encodes of a parallel dataset build.
(vvenc's own ``Threads=0`` is not equivalent: it changes the bitstream.)
``threads=None`` keeps FFmpeg's automatic count.

Decoding uses FFmpeg's native VVC decoder with one thread: its multi-threaded
mode returns different (wrong) pictures from run to run for these streams,
caught by the picture-hash SEI (``picture_hash=True``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs import _ffmpeg
from cfqa_core.codecs._subprocess import private_dir, read_output, run_tool
from cfqa_core.codecs.base import register_codec
from cfqa_core.codecs.block import BlockCodec, raw_frame_bytes
from cfqa_core.codecs.ladders import VVC_OPERATING_LADDER
from cfqa_core.errors import CodecError

VVENC_PRESETS = ("faster", "fast", "medium", "slow", "slower")


def yuv420_with_grey_chroma(frame: np.ndarray, bit_depth: int) -> bytes:
    """Raw yuv420p (16-bit LE) of a luma frame with constant mid-level chroma."""
    height, width = frame.shape
    chroma = np.full(((height + 1) // 2, (width + 1) // 2), 1 << (bit_depth - 1), dtype="<u2")
    return raw_frame_bytes(frame, bit_depth) + chroma.tobytes() * 2


def decode_vvc(bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
    """Decode an Annex-B VVC picture in-process (ffmpeg CLI when PyAV lacks VVC)."""
    return _ffmpeg.decode_picture("vvc", "vvc", bitstream, width, height, bit_depth)


@register_codec("vvc")
class VvcCodec(BlockCodec):
    """VVC intra with vvenc (preset ``fast`` by default; ``medium`` is vvenc's own default)."""

    family: ClassVar[str] = "vvc"
    qp_range: ClassVar[tuple[int, int]] = (0, 63)
    ladder: ClassVar[tuple[int, ...]] = VVC_OPERATING_LADDER
    bit_depths: ClassVar[tuple[int, ...]] = (10,)

    def __init__(self, preset: str = "fast", picture_hash: bool = False, timeout: float = 1800.0,
                 threads: int | None = 1) -> None:
        if preset not in VVENC_PRESETS:
            raise CodecError(f"unknown vvenc preset {preset!r} (one of {', '.join(VVENC_PRESETS)})")
        if threads is not None and threads < 1:
            raise CodecError(f"vvenc threads must be >= 1 or None, got {threads}")
        self.preset = preset
        self.picture_hash = picture_hash
        self.timeout = timeout
        self.threads = threads

    def availability(self) -> tuple[bool, str | None]:
        return _ffmpeg.encoder_availability("libvvenc")

    def settings(self) -> dict[str, Any]:
        return {"encoder": "vvenc", "preset": self.preset}

    def command(self, src: str, dst: str, width: int, height: int, qp: int) -> list[str]:
        """The ffmpeg command line that codes raw yuv420p10le ``src`` into Annex-B ``dst``."""
        params = "IntraPeriod=1:ChromaFormatIDC=400:IntraQPOffset=0"
        if self.picture_hash:
            params += ":SEIDecodedPictureHash=1"
        return [
            _ffmpeg.ffmpeg_exe() or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "-s", f"{width}x{height}", "-i", src,
            "-frames:v", "1", *(("-threads", str(self.threads)) if self.threads else ()),
            "-c:v", "libvvenc", "-preset", self.preset,
            "-qp", str(qp), "-qpa", "0", "-vvenc-params", params,
            "-f", "vvc", "-y", dst,
        ]

    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        height, width = frame.shape
        with private_dir() as tmp:
            src, dst = os.path.join(tmp, "frame.yuv"), os.path.join(tmp, "out.vvc")
            Path(src).write_bytes(yuv420_with_grey_chroma(frame, bit_depth))
            run_tool(self.command(src, dst, width, height, qp), what="ffmpeg libvvenc", cwd=tmp,
                     timeout=self.timeout)
            return read_output(Path(dst), "ffmpeg libvvenc")

    def _decode_frame(self, bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
        return decode_vvc(bitstream, width, height, bit_depth)
