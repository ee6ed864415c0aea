"""HEVC intra 4:0:0 with x265: in-process through PyAV, or the x265 command line.

Both variants use the same x265 settings, chosen so that the requested QP is
the QP coded and nothing but the picture is sent:

* ``keyint=1`` (all intra) and ``ipratio=1``: x265 otherwise lowers the QP of
  I pictures by ``6*log2(ipratio)`` (QP 10 would be coded as QP 7);
* ``psy-rd=0``, ``psy-rdoq=0``: features are judged by fidelity, not by
  perceived texture, so rate-distortion decisions use plain squared error;
* ``info=0``: drops the user-data SEI with x265's version and options
  (about 2 KB per picture, which would otherwise be counted as feature bits);
* ``ctu``: 64, or 32/16 for frames smaller than that (x265 3.5 refuses, or
  crashes on, pictures smaller than one CTU).

x265's own ``--recon`` output is wrong for 4:0:0 at 10 bits, so every stream is
checked through a real decoder (FFmpeg's HEVC decoder via PyAV).

Threads: by default each encode runs on a one-thread x265 pool with one frame
thread (``pools=1:frame-threads=1``), the same bytes as x265's default pool
over every core but without starting a pool per picture, which costs more CPU
than a small picture takes to code and oversubscribes the cores when many
encodes run in parallel (the dataset build). ``pools=none`` would be cheaper
still but makes x265 drop wavefront parallel processing, which changes the
bitstream of pictures wider than two CTUs. ``threads=None`` keeps x265's own
default.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs import _ffmpeg, _pyav
from cfqa_core.codecs._subprocess import find_executable, private_dir, read_output, run_tool
from cfqa_core.codecs.base import register_codec
from cfqa_core.codecs.block import BlockCodec, raw_frame_bytes
from cfqa_core.errors import CodecError

X265_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")

# (x265 option, value); a bool is a switch (``--<name>`` / ``--no-<name>`` on the CLI).
X265Param = tuple[str, str | bool]
_X265_TUNING: tuple[X265Param, ...] = (
    ("keyint", "1"),
    ("ipratio", "1"),
    ("psy-rd", "0"),
    ("psy-rdoq", "0"),
    ("info", False),
)


def ctu_size(height: int, width: int) -> int:
    """Largest x265 CTU size that fits the picture (frames are at least 16x16)."""
    side = min(height, width)
    return 64 if side >= 64 else 32 if side >= 32 else 16


def x265_threading(threads: int | None) -> list[X265Param]:
    """x265 pool options for ``threads`` worker threads (None: x265's default, a pool over every core).

    Wavefront processing stays on whatever the count, so the bitstream does not depend on it.
    """
    if threads is None:
        return []
    if threads < 1:
        raise CodecError(f"x265 threads must be >= 1 or None, got {threads}")
    return [("pools", str(threads)), ("frame-threads", "1")]


def x265_params(
    qp: int, ctu: int = 64, lossless: bool = False, picture_hash: bool = False
) -> list[X265Param]:
    """The x265 options of our HEVC codecs (QP mode or lossless); threading is separate (``x265_threading``)."""
    params = list(_X265_TUNING)
    params.append(("ctu", str(ctu)))
    params.append(("lossless", True) if lossless else ("qp", str(qp)))
    if picture_hash:
        params.append(("hash", "1"))  # MD5 of the decoded picture in an SEI
    return params


def decode_hevc(bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
    """Decode an Annex-B HEVC picture in-process (ffmpeg CLI when PyAV lacks HEVC)."""
    return _ffmpeg.decode_picture("hevc", "hevc", bitstream, width, height, bit_depth)


def hevc_decoder_availability() -> tuple[bool, str | None]:
    if _pyav.has_codec("hevc") or _ffmpeg.ffmpeg_exe():
        return True, None
    return False, "no HEVC decoder: neither PyAV nor the static ffmpeg is installed"


class _HevcBase(BlockCodec):
    family: ClassVar[str] = "hevc"
    qp_range: ClassVar[tuple[int, int]] = (0, 51)
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10, 12)
    min_size: ClassVar[int] = 16

    def __init__(self, preset: str = "medium", picture_hash: bool = False, threads: int | None = 1) -> None:
        if preset not in X265_PRESETS:
            raise CodecError(f"unknown x265 preset {preset!r} (one of {', '.join(X265_PRESETS)})")
        self.preset = preset
        self.picture_hash = picture_hash
        self.threads = threads
        x265_threading(threads)  # refuse a bad count now, not at the first encode

    def settings(self) -> dict[str, Any]:
        return {"encoder": "x265", "preset": self.preset}

    def _decode_frame(self, bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
        return decode_hevc(bitstream, width, height, bit_depth)


@register_codec("hevc")
class HevcCodec(_HevcBase):
    """HEVC intra with the libx265 bundled in PyAV, in-process (the default codec)."""

    lossless: ClassVar[bool] = False

    def availability(self) -> tuple[bool, str | None]:
        return _pyav.pyav_availability("libx265", "hevc")

    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        params = x265_params(qp, ctu_size(*frame.shape), self.lossless, self.picture_hash)
        params += x265_threading(self.threads)
        rendered = ":".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in params)
        options = {"preset": self.preset, "x265-params": rendered + ":log-level=none"}
        return _pyav.encode_picture("libx265", frame, bit_depth, options)


@register_codec("hevc-lossless")
class HevcLosslessCodec(HevcCodec):
    """HEVC lossless (transquant bypass): returns the quantised feature bit for bit."""

    ladder: ClassVar[tuple[int, ...]] = (0,)
    paper_ladder: ClassVar[tuple[int, ...]] = (0,)
    qp_range: ClassVar[tuple[int, int]] = (0, 0)
    lossless: ClassVar[bool] = True


@register_codec("hevc-x265")
class HevcX265CliCodec(_HevcBase):
    """HEVC intra with the ``x265`` command line (``$CFQA_X265`` or PATH), one process per picture."""

    def __init__(self, preset: str = "medium", picture_hash: bool = False, timeout: float = 600.0,
                 threads: int | None = 1) -> None:
        super().__init__(preset, picture_hash, threads)
        self.timeout = timeout

    def executable(self) -> str | None:
        return find_executable("CFQA_X265", "x265")

    def availability(self) -> tuple[bool, str | None]:
        if self.executable() is None:
            return False, "x265 executable not found (install x265 or set CFQA_X265)"
        return hevc_decoder_availability()

    def command(self, src: str, dst: str, width: int, height: int, qp: int, bit_depth: int) -> list[str]:
        """The x265 command line that codes raw 4:0:0 frame ``src`` into Annex-B ``dst``."""
        args = [
            self.executable() or "x265",
            "--input", src, "--input-res", f"{width}x{height}", "--fps", "1", "--frames", "1",
            "--input-csp", "i400", "--input-depth", str(bit_depth), "--output-depth", str(bit_depth),
            "--preset", self.preset, "--log-level", "error",
        ]
        params = x265_params(qp, ctu_size(height, width), False, self.picture_hash) + x265_threading(self.threads)
        for key, value in params:
            if isinstance(value, bool):
                args.append(f"--{key}" if value else f"--no-{key}")
            else:
                args += [f"--{key}", value]
        return args + ["--output", dst]

    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        height, width = frame.shape
        with private_dir() as tmp:
            src, dst = os.path.join(tmp, "frame.yuv"), os.path.join(tmp, "out.hevc")
            Path(src).write_bytes(raw_frame_bytes(frame, bit_depth))
            run_tool(self.command(src, dst, width, height, qp, bit_depth), what="x265", cwd=tmp,
                     timeout=self.timeout)
            return read_output(Path(dst), "x265")
