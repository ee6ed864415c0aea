"""AV1 intra monochrome with libaom (static FFmpeg of imageio-ffmpeg), decoded with dav1d.

libaom takes gray / gray10le / gray12le directly and then writes a real
monochrome sequence header (``mono_chrome = 1``); SVT-AV1 and rav1e only code
4:2:0, so libaom is the AV1 encoder used here. ``-usage allintra`` with
``-cpu-used 6`` is libaom's all-intra mode at a practical speed.

Rate point: libaom's quantizer ``q`` in 0..63 (aomenc ``--min-q``/``--max-q``,
FFmpeg ``-qmin``/``-qmax``/``-crf``), pinned by setting all three to ``q`` with
``-b:v 0`` (constant quality), ``-aq-mode 0`` and ``deltaq-mode=0`` (no
per-block QP changes). The frame header then carries ``base_q_idx = 4 q``
(255 for q = 63); ``q = 0`` is lossless.

AV1's quantiser steps differ from HEVC's, so its ladder is not the paper's QP
list: it is the quantizers whose reconstruction MSE on packed DINOv2-like
features spans the same range as HEVC QP 2..20: at equal MSE, HEVC QP
2, 6, 8, 10, 12, 14, 16, 18, 20 match AV1 q 2, 3, 4, 5, 6, 7, 9, 11, 13
(``benchmarks/bench_codecs.py --calibrate-av1``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs import _ffmpeg, _pyav
from cfqa_core.codecs._subprocess import private_dir, read_output, run_tool
from cfqa_core.codecs.base import register_codec
from cfqa_core.codecs.block import BlockCodec, raw_frame_bytes
from cfqa_core.codecs.ladders import AV1_OPERATING_LADDER, AV1_PAPER_LADDER


def base_q_idx(q: int) -> int:
    """The AV1 frame header's base_q_idx that libaom codes for quantizer ``q``."""
    return 255 if q >= 63 else 4 * q


def decode_av1(bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
    """Decode an AV1 OBU stream with dav1d in-process (ffmpeg CLI when PyAV lacks it)."""
    return _ffmpeg.decode_picture("libdav1d", "obu", bitstream, width, height, bit_depth)


@register_codec("av1")
class Av1Codec(BlockCodec):
    """AV1 all-intra monochrome with libaom."""

    family: ClassVar[str] = "av1"
    ladder: ClassVar[tuple[int, ...]] = AV1_OPERATING_LADDER
    paper_ladder: ClassVar[tuple[int, ...]] = AV1_PAPER_LADDER
    qp_range: ClassVar[tuple[int, int]] = (0, 63)
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10, 12)
    container: ClassVar[str] = "obu"

    def __init__(self, cpu_used: int = 6, timeout: float = 1800.0) -> None:
        self.cpu_used = cpu_used
        self.timeout = timeout

    def availability(self) -> tuple[bool, str | None]:
        return _ffmpeg.encoder_availability("libaom-av1")

    def settings(self) -> dict[str, Any]:
        return {"encoder": "libaom", "cpu_used": self.cpu_used}

    def command(self, src: str, dst: str, width: int, height: int, q: int, bit_depth: int) -> list[str]:
        """The ffmpeg command line that codes raw monochrome ``src`` into an OBU stream ``dst``."""
        fmt = _pyav.gray_format(bit_depth)
        return [
            _ffmpeg.ffmpeg_exe() or "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", fmt, "-s", f"{width}x{height}", "-i", src,
            "-frames:v", "1", "-c:v", "libaom-av1", "-pix_fmt", fmt,
            "-usage", "allintra", "-cpu-used", str(self.cpu_used), "-aq-mode", "0",
            "-crf", str(q), "-b:v", "0", "-qmin", str(q), "-qmax", str(q),
            "-aom-params", "deltaq-mode=0",
            "-f", "obu", "-y", dst,
        ]

    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        height, width = frame.shape
        with private_dir() as tmp:
            src, dst = os.path.join(tmp, "frame.raw"), os.path.join(tmp, "out.obu")
            Path(src).write_bytes(raw_frame_bytes(frame, bit_depth))
            run_tool(self.command(src, dst, width, height, qp, bit_depth), what="ffmpeg libaom-av1",
                     cwd=tmp, timeout=self.timeout)
            return read_output(Path(dst), "ffmpeg libaom-av1")

    def _decode_frame(self, bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
        return decode_av1(bitstream, width, height, bit_depth)
