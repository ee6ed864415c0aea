"""HM (HEVC) and VTM (VVC) reference software, as used by the CFQA paper.

The binaries are not redistributable here, so the adapter runs the user's own
build. Where they are found:

* encoder: ``$CFQA_HM_ENCODER`` / ``$CFQA_VTM_ENCODER``, else
  ``TAppEncoderStatic``/``TAppEncoder`` (HM) or ``EncoderAppStatic``/``EncoderApp``
  (VTM) on PATH;
* decoder: ``$CFQA_HM_DECODER`` / ``$CFQA_VTM_DECODER``, else
  ``TAppDecoderStatic``/``TAppDecoder`` or ``DecoderAppStatic``/``DecoderApp`` on
  PATH, else FFmpeg's HEVC/VVC decoder (the streams are standard);
* configuration: ``$CFQA_HM_CONFIG`` / ``$CFQA_VTM_CONFIG``, else the file the
  paper names (``encoder_intra_main_rext.cfg`` from HM's ``cfg/``,
  ``encoder_intra_vtm.cfg`` from VTM's ``cfg/``) next to the encoder, in its
  ``cfg/`` or in ``../cfg/`` or ``../../cfg/`` of the encoder's directory.

The command line is the paper's: one 4:0:0 picture of the packed frame, input,
internal and output bit depth b, QP ``-q``, ``--ConformanceWindowMode=1``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfqa_core.codecs._subprocess import find_executable, private_dir, read_output, run_tool
from cfqa_core.codecs.base import register_codec
from cfqa_core.codecs.block import BlockCodec, frame_from_raw, raw_frame_bytes
from cfqa_core.codecs.hevc import decode_hevc
from cfqa_core.codecs.ladders import VVC_OPERATING_LADDER
from cfqa_core.codecs.vvc import decode_vvc

DEFAULT_TIMEOUT_S = 4 * 3600.0


class _ReferenceCodec(BlockCodec):
    """One picture through a JVET/JCT-VC reference encoder and decoder."""

    tool: ClassVar[str]
    config_name: ClassVar[str]
    encoder_names: ClassVar[tuple[str, ...]]
    decoder_names: ClassVar[tuple[str, ...]]
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10, 12)

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout = timeout

    # The decoder used when the reference decoder is not installed (FFmpeg's).
    _fallback_decode: ClassVar[Any]

    def encoder(self) -> str | None:
        return find_executable(f"CFQA_{self.tool}_ENCODER", *self.encoder_names)

    def decoder(self) -> str | None:
        return find_executable(f"CFQA_{self.tool}_DECODER", *self.decoder_names)

    def config(self) -> str | None:
        """The encoder configuration file, or None when it cannot be found."""
        env = os.environ.get(f"CFQA_{self.tool}_CONFIG")
        if env:
            return env if os.path.isfile(env) else None
        enc = self.encoder()
        if enc is None:
            return None
        here = Path(enc).resolve().parent
        for folder in (here, here / "cfg", here.parent / "cfg", here.parent.parent / "cfg"):
            candidate = folder / self.config_name
            if candidate.is_file():
                return str(candidate)
        return None

    def availability(self) -> tuple[bool, str | None]:
        if self.encoder() is None:
            names = "/".join(self.encoder_names)
            return False, (
                f"{self.tool} encoder not found: set CFQA_{self.tool}_ENCODER to {names} "
                f"(the {self.tool} reference software is not bundled)"
            )
        if self.config() is None:
            return False, (
                f"{self.tool} configuration {self.config_name} not found: set CFQA_{self.tool}_CONFIG"
            )
        return True, None

    def settings(self) -> dict[str, Any]:
        return {"encoder": self.tool, "config": os.path.basename(self.config() or self.config_name)}

    def encode_command(self, src: str, dst: str, width: int, height: int, qp: int, bit_depth: int) -> list[str]:
        """The paper's encoder command line for one 4:0:0 picture."""
        depth = str(bit_depth)
        return [
            self.encoder() or self.encoder_names[0], "-c", self.config() or self.config_name,
            "-i", src, "-o", "", "-b", dst, "-q", str(qp), "--ConformanceWindowMode=1",
            "-wdt", str(width), "-hgt", str(height), "-f", "1", "-fr", "1",
            f"--InternalBitDepth={depth}", f"--InputBitDepth={depth}",
            "--InputChromaFormat=400", f"--OutputBitDepth={depth}",
        ]

    def decode_command(self, src: str, dst: str, bit_depth: int) -> list[str]:
        return [self.decoder() or self.decoder_names[0], "-b", src, "-o", dst,
                f"--OutputBitDepth={bit_depth}"]

    def _encode_frame(self, frame: np.ndarray, qp: int, bit_depth: int) -> bytes:
        height, width = frame.shape
        with private_dir() as tmp:
            src, dst = os.path.join(tmp, "frame.yuv"), os.path.join(tmp, "out.bin")
            Path(src).write_bytes(raw_frame_bytes(frame, bit_depth))
            run_tool(self.encode_command(src, dst, width, height, qp, bit_depth),
                     what=f"{self.tool} encoder", cwd=tmp, timeout=self.timeout)
            return read_output(Path(dst), f"{self.tool} encoder")

    def _decode_frame(self, bitstream: bytes, width: int, height: int, bit_depth: int) -> np.ndarray:
        if self.decoder() is None:
            return self._fallback_decode(bitstream, width, height, bit_depth)
        with private_dir() as tmp:
            src, dst = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.yuv")
            Path(src).write_bytes(bitstream)
            run_tool(self.decode_command(src, dst, bit_depth), what=f"{self.tool} decoder", cwd=tmp,
                     timeout=self.timeout)
            data = read_output(Path(dst), f"{self.tool} decoder")
        return frame_from_raw(data, width, height, bit_depth, f"{self.tool} decoder")


@register_codec("hm")
class HmCodec(_ReferenceCodec):
    """HM intra (encoder_intra_main_rext.cfg), 4:0:0, as the paper."""

    family: ClassVar[str] = "hevc"
    tool: ClassVar[str] = "HM"
    qp_range: ClassVar[tuple[int, int]] = (0, 51)
    config_name: ClassVar[str] = "encoder_intra_main_rext.cfg"
    encoder_names: ClassVar[tuple[str, ...]] = ("TAppEncoderStatic", "TAppEncoder")
    decoder_names: ClassVar[tuple[str, ...]] = ("TAppDecoderStatic", "TAppDecoder")
    _fallback_decode = staticmethod(decode_hevc)


@register_codec("vtm")
class VtmCodec(_ReferenceCodec):
    """VTM intra (encoder_intra_vtm.cfg), 4:0:0, as the paper."""

    family: ClassVar[str] = "vvc"
    tool: ClassVar[str] = "VTM"
    qp_range: ClassVar[tuple[int, int]] = (0, 63)
    ladder: ClassVar[tuple[int, ...]] = VVC_OPERATING_LADDER
    bit_depths: ClassVar[tuple[int, ...]] = (8, 10)
    config_name: ClassVar[str] = "encoder_intra_vtm.cfg"
    encoder_names: ClassVar[tuple[str, ...]] = ("EncoderAppStatic", "EncoderApp")
    decoder_names: ClassVar[tuple[str, ...]] = ("DecoderAppStatic", "DecoderApp")
    _fallback_decode = staticmethod(decode_vvc)
