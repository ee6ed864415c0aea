"""Block codecs (HEVC / VVC / AV1 intra, 4:0:0): real bitstreams, real decoders."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
import zlib
from dataclasses import replace
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import pytest

import cfqa_core.codecs.av1  # noqa: F401  (registers the block codecs)
import cfqa_core.codecs.hevc  # noqa: F401
import cfqa_core.codecs.reference  # noqa: F401
import cfqa_core.codecs.vvc  # noqa: F401
from cfqa_core.codecs import _ffmpeg
from cfqa_core.codecs._subprocess import run_tool
from cfqa_core.codecs.av1 import base_q_idx
from cfqa_core.codecs.base import EncodedFeature, get_codec, registered_names
from cfqa_core.codecs.block import BlockCodec
from cfqa_core.codecs.hevc import HevcCodec, HevcX265CliCodec, decode_hevc
from cfqa_core.codecs.ladders import HEVC_OPERATING_LADDER, PAPER_LADDER, ladder_of
from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, PAPER_SHAPES, synthetic_feature
from cfqa_core.codecs.vvc import VvcCodec, decode_vvc
from cfqa_core.errors import CodecError, DataError
from cfqa_core.packing import PackingParams, dequantize, feature_range, quantize

LOSSY = ("hevc", "hevc-x265", "vvc", "av1")


def codec_or_skip(name: str) -> BlockCodec:
    codec = get_codec(name)
    ok, reason = codec.availability()
    if not ok:
        pytest.skip(f"codec '{name}' unavailable here: {reason}")
    return codec


@pytest.fixture(scope="module")
def cls_feature() -> np.ndarray:
    return synthetic_feature(EMBEDDED_SHAPES["cls"], seed=11)


@pytest.fixture(scope="module")
def small_feature() -> np.ndarray:
    # 2 x 20 tokens x 64 channels: a 40x64 frame, padded to 40x64.
    return synthetic_feature((2, 20, 64), seed=5)


def test_registry_has_every_block_codec():
    names = set(registered_names())
    assert {"hevc", "hevc-x265", "hevc-lossless", "vvc", "av1", "hm", "vtm"} <= names
    families = {n: get_codec(n).family for n in ("hevc", "hevc-x265", "hm", "vvc", "vtm", "av1")}
    assert families == {"hevc": "hevc", "hevc-x265": "hevc", "hm": "hevc",
                        "vvc": "vvc", "vtm": "vvc", "av1": "av1"}
    assert get_codec("hevc").ladder == HEVC_OPERATING_LADDER
    assert ladder_of(get_codec("hevc"), "paper") == PAPER_LADDER == (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
    for name in ("hevc", "vvc", "av1"):
        codec = get_codec(name)
        ladder = ladder_of(codec, "operating")
        lo, hi = codec.qp_range
        assert list(ladder) == sorted(set(ladder)) and lo <= ladder[0] and ladder[-1] <= hi
        assert ladder[-1] >= hi - 8, f"{name}'s operating ladder must reach the codec's low-rate end"
    with pytest.raises(DataError, match="unknown ladder 'wide'"):
        ladder_of(get_codec("hevc"), "wide")


@pytest.mark.parametrize("name", LOSSY)
def test_round_trip_meta_and_rate(name, cls_feature):
    codec = codec_or_skip(name)
    vr = feature_range(cls_feature)
    top = ladder_of(codec, "paper")[0]  # the paper ladder's best rung: near-lossless
    enc = codec.encode(cls_feature, top, value_range=vr)
    meta = enc.meta
    assert meta["codec"] == name and meta["qp"] == top == enc.rate_point
    assert (meta["height"], meta["width"]) == (145, 128)
    assert (meta["padded_height"], meta["padded_width"]) == (152, 128)
    assert meta["shape"] == [1, 145, 128] and meta["bit_depth"] == 10 and meta["layout"] == "stack"
    assert meta["value_range"] == list(vr) and meta["rounding"] == "round"
    assert meta["bytes"] == enc.nbytes == len(enc.bitstream) > 100
    assert meta["crc32"] == zlib.crc32(enc.bitstream)
    n = 145 * 128
    assert enc.bpfp == pytest.approx(8 * enc.nbytes / n) == pytest.approx(meta["bpfp"])
    assert 0 < enc.meta_bytes < 1000
    dec = codec.decode(enc)
    assert dec.shape == cls_feature.shape and dec.dtype == np.float32
    step = (vr[1] - vr[0]) / 1023
    mse = float(np.mean((dec - cls_feature) ** 2))
    # Highest-quality rate point: within a few quantisation steps of the original.
    assert mse < (2 * step) ** 2
    assert np.corrcoef(dec.ravel(), cls_feature.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name, rate_point", [("hevc-lossless", 0), ("av1", 0)])
@pytest.mark.parametrize("bits", [8, 10, 12])
def test_lossless_modes_return_quantised_feature_bit_for_bit(name, rate_point, bits, small_feature):
    codec = codec_or_skip(name)
    params = PackingParams(feature_range(small_feature), bit_depth=bits)
    enc = codec.encode(small_feature, rate_point, value_range=params.value_range, bit_depth=bits)
    levels = quantize(small_feature, params)
    np.testing.assert_array_equal(codec.decode_levels(enc), levels)
    np.testing.assert_array_equal(codec.decode(enc), dequantize(levels, params))


def test_hevc_in_process_and_cli_code_the_same_pictures(cls_feature):
    inproc, cli = codec_or_skip("hevc"), codec_or_skip("hevc-x265")
    vr = feature_range(cls_feature)
    for qp in (4, 16):
        a = inproc.encode(cls_feature, qp, value_range=vr)
        b = cli.encode(cls_feature, qp, value_range=vr)
        # Same x265 settings: only parameter-set flags differ, the pictures are identical.
        assert abs(a.nbytes - b.nbytes) < 16
        np.testing.assert_array_equal(inproc.decode_frame(a), cli.decode_frame(b))


def _dec265() -> str | None:
    return shutil.which("dec265") or shutil.which("libde265-dec265")


@pytest.mark.parametrize("name", ["hevc", "hevc-x265"])
def test_libde265_decodes_our_hevc_bit_for_bit(name, cls_feature, tmp_path):
    tool = _dec265()
    if tool is None:
        pytest.skip("libde265's dec265 is not installed (Debian package libde265-examples)")
    codec = codec_or_skip(name)
    enc = codec.encode(cls_feature, 10, value_range=feature_range(cls_feature))
    src, out = tmp_path / "s.hevc", tmp_path / "d.yuv"
    src.write_bytes(enc.bitstream)
    subprocess.run([tool, "-q", "-o", str(out), str(src)], check=True, capture_output=True, timeout=60)
    ours = codec.decode_frame(enc)
    theirs = np.fromfile(out, dtype="<u2")
    assert theirs.size == ours.size  # 4:0:0: luma only
    np.testing.assert_array_equal(theirs.reshape(ours.shape), ours)


def _trace_headers(bitstream: bytes, demuxer: str, tmp_path: Path) -> dict[str, list[int]]:
    """Syntax elements of a stream, read by FFmpeg's trace_headers bitstream filter."""
    exe = _ffmpeg.ffmpeg_exe()
    if exe is None:
        pytest.skip("the static ffmpeg of imageio-ffmpeg is not installed")
    src = tmp_path / f"s.{demuxer}"
    src.write_bytes(bitstream)
    res = subprocess.run(
        [exe, "-hide_banner", "-f", demuxer, "-i", str(src), "-c", "copy", "-bsf:v", "trace_headers",
         "-f", "null", "-"], capture_output=True, text=True, timeout=60, check=True)
    found: dict[str, list[int]] = {}
    for name, value in re.findall(r"\]\s+\d+\s+(\w+)\s+[01]+\s+=\s+(-?\d+)", res.stderr):
        found.setdefault(name, []).append(int(value))
    return found


@pytest.mark.parametrize("qp", [2, 13, 20])
def test_requested_qp_is_the_coded_qp(qp, small_feature, tmp_path):
    vr = feature_range(small_feature)
    for name, demuxer in (("hevc", "hevc"), ("hevc-x265", "hevc")):
        h = _trace_headers(codec_or_skip(name).encode(small_feature, qp, value_range=vr).bitstream,
                           demuxer, tmp_path)
        assert 26 + h["init_qp_minus26"][0] + h["slice_qp_delta"][0] == qp, name
        assert set(h["cu_qp_delta_enabled_flag"]) == {0}
    h = _trace_headers(codec_or_skip("vvc").encode(small_feature, qp, value_range=vr).bitstream,
                       "vvc", tmp_path)
    delta = h.get("sh_qp_delta", h.get("ph_qp_delta"))
    assert 26 + h["pps_init_qp_minus26"][0] + delta[0] == qp
    assert set(h["sps_chroma_format_idc"]) == {0}
    h = _trace_headers(codec_or_skip("av1").encode(small_feature, qp, value_range=vr).bitstream,
                       "obu", tmp_path)
    assert set(h["base_q_idx"]) == {base_q_idx(qp)} and set(h["mono_chrome"]) == {1}
    assert set(h.get("delta_q_present", [0])) == {0}


@pytest.mark.parametrize("cls", [HevcCodec, HevcX265CliCodec, VvcCodec])
def test_decoder_matches_encoder_reconstruction(cls, small_feature):
    codec_or_skip(cls.name)
    vr = feature_range(small_feature)
    hashed = cls(picture_hash=True).encode(small_feature, 12, value_range=vr)
    # The decoder checks the MD5 SEI of the encoder's own reconstruction (else CodecError).
    frame = cls().decode_frame(hashed)
    plain = cls().encode(small_feature, 12, value_range=vr)
    assert 16 <= hashed.nbytes - plain.nbytes <= 40  # the SEI, nothing else
    np.testing.assert_array_equal(cls().decode_frame(plain), frame)


@pytest.mark.parametrize("name, demuxer", [("hevc", "hevc"), ("vvc", "vvc"), ("av1", "obu")])
def test_ffmpeg_cli_fallback_decoder_agrees(name, demuxer, small_feature):
    codec = codec_or_skip(name)
    if _ffmpeg.ffmpeg_exe() is None:
        pytest.skip("the static ffmpeg of imageio-ffmpeg is not installed")
    enc = codec.encode(small_feature, 10, value_range=feature_range(small_feature))
    w, h = enc.meta["padded_width"], enc.meta["padded_height"]
    cli = _ffmpeg.decode_with_ffmpeg(enc.bitstream, demuxer, "gray10le", w, h)
    np.testing.assert_array_equal(cli, codec.decode_frame(enc))
    with pytest.raises(CodecError):
        _ffmpeg.decode_with_ffmpeg(enc.bitstream[:40], demuxer, "gray10le", w, h)


@pytest.mark.parametrize("name", LOSSY)
def test_rate_distortion_is_monotone_over_the_ladder(name, cls_feature):
    codec = codec_or_skip(name)
    vr = feature_range(cls_feature)
    sizes, mses = [], []
    for qp in codec.ladder:
        enc = codec.encode(cls_feature, qp, value_range=vr)
        sizes.append(enc.nbytes)
        mses.append(float(np.mean((codec.decode(enc) - cls_feature) ** 2)))
    assert all(b <= a for a, b in zip(sizes, sizes[1:])), sizes
    assert all(b >= a * 0.98 for a, b in zip(mses, mses[1:])), mses
    assert sizes[0] > 2 * sizes[-1] and mses[-1] > 5 * mses[0]


@pytest.mark.parametrize("name", ["hevc", "hevc-x265", "av1"])
def test_concurrent_calls_are_independent(name):
    codec = codec_or_skip(name)
    feats = [synthetic_feature((1, 30, 64), seed=s) for s in range(6)]
    jobs = [(f, qp) for f in feats for qp in (4, 12)]

    def run(job):
        f, qp = job
        enc = codec.encode(f, qp, value_range=feature_range(f))
        return enc.bitstream, codec.decode(enc)

    serial = [run(j) for j in jobs]
    with ThreadPool(4) as pool:
        parallel = pool.map(run, jobs)
    for (b1, d1), (b2, d2) in zip(serial, parallel):
        assert b1 == b2
        np.testing.assert_array_equal(d1, d2)


def test_rate_point_and_bit_depth_validation(small_feature):
    vr = feature_range(small_feature)
    hevc, vvc, lossless = get_codec("hevc"), get_codec("vvc"), get_codec("hevc-lossless")
    with pytest.raises(CodecError, match=r"QP 52 outside 0\.\.51 for codec 'hevc'"):
        hevc.encode(small_feature, 52, value_range=vr)
    with pytest.raises(CodecError, match=r"QP -1 outside"):
        hevc.encode(small_feature, -1, value_range=vr)
    with pytest.raises(CodecError, match="integer QP"):
        hevc.encode(small_feature, 10.5, value_range=vr)
    with pytest.raises(CodecError, match="integer QP"):
        hevc.encode(small_feature, True, value_range=vr)
    with pytest.raises(CodecError, match=r"QP 64 outside 0\.\.63"):
        vvc.encode(small_feature, 64, value_range=vr)
    with pytest.raises(CodecError, match=r"QP 4 outside 0\.\.0"):
        lossless.encode(small_feature, 4, value_range=vr)
    with pytest.raises(CodecError, match="10-bit frames, not 8-bit"):
        vvc.encode(small_feature, 10, value_range=vr, bit_depth=8)
    with pytest.raises(DataError, match="non-finite"):
        bad = small_feature.copy()
        bad[0, 0, 0] = np.nan
        hevc.encode(bad, 10, value_range=vr)
    with pytest.raises(DataError, match="hi > lo"):
        hevc.encode(small_feature, 10, value_range=(1.0, -1.0))


@pytest.mark.parametrize("name", LOSSY)
def test_damaged_bitstreams_raise_codec_error(name, small_feature):
    codec = codec_or_skip(name)
    enc = codec.encode(small_feature, 8, value_range=feature_range(small_feature))
    data = enc.bitstream
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(replace(enc, bitstream=data[: len(data) // 2]))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x5A
    with pytest.raises(CodecError, match="CRC-32"):
        codec.decode(replace(enc, bitstream=bytes(flipped)))
    # Without the sidecar's guard the decoder itself must refuse what it cannot parse.
    bare = {k: v for k, v in enc.meta.items() if k not in ("bytes", "crc32")}
    rng = np.random.default_rng(0)
    for junk in (b"", data[:12], bytes(rng.integers(0, 256, 3000, dtype=np.uint8))):
        with pytest.raises(CodecError):
            codec.decode(EncodedFeature(name, 8, junk, bare))


def test_decode_rejects_incomplete_metadata(small_feature):
    codec = codec_or_skip("hevc")
    enc = codec.encode(small_feature, 8, value_range=feature_range(small_feature))
    meta = dict(enc.meta)
    del meta["padded_width"]
    with pytest.raises(CodecError, match="padded_width"):
        codec.decode(replace(enc, meta=meta))
    meta = dict(enc.meta, padded_height=enc.meta["padded_height"] + 8)
    with pytest.raises(CodecError, match="expected 64x48"):
        codec.decode(replace(enc, meta=meta))


@pytest.mark.parametrize("name", ["hm", "vtm"])
def test_reference_codecs_report_why_unavailable(name, small_feature, monkeypatch):
    tool = name.upper()
    monkeypatch.setenv(f"CFQA_{tool}_ENCODER", "/nonexistent/encoder")
    codec = get_codec(name)
    ok, reason = codec.availability()
    assert not ok and f"CFQA_{tool}_ENCODER" in reason
    with pytest.raises(CodecError, match=f"codec '{name}' is not available"):
        codec.encode(small_feature, 10, value_range=feature_range(small_feature))


@pytest.mark.parametrize("name", ["hm", "vtm"])
def test_reference_codec_round_trip(name, small_feature):
    codec = codec_or_skip(name)
    vr = feature_range(small_feature)
    enc = codec.encode(small_feature, 4, value_range=vr)
    dec = codec.decode(enc)
    step = (vr[1] - vr[0]) / 1023
    assert float(np.mean((dec - small_feature) ** 2)) < (2 * step) ** 2
    if codec.decoder() is not None:
        # The reference decoder and FFmpeg's agree bit for bit.
        ffmpeg_decode = decode_hevc if name == "hm" else decode_vvc
        w, h = enc.meta["padded_width"], enc.meta["padded_height"]
        np.testing.assert_array_equal(codec.decode_frame(enc), ffmpeg_decode(enc.bitstream, w, h, 10))


@pytest.mark.slow
def test_paper_size_cls_frame_with_hevc():
    codec = codec_or_skip("hevc")
    x = synthetic_feature(PAPER_SHAPES["cls"], seed=1)
    params = PackingParams(feature_range(x))
    enc = codec.encode(x, 4, value_range=params.value_range)
    assert (enc.meta["height"], enc.meta["width"]) == (257, 1536)
    assert (enc.meta["padded_height"], enc.meta["padded_width"]) == (264, 1536)
    levels = codec.decode_levels(enc)
    assert levels.shape == (257, 1536)
    # HEVC's 10-bit quantiser step at QP 4 is 2**((4 + 8) / 6) = 4 levels: MSE ~ 4**2 / 12.
    mse = float(np.mean((levels.astype(float) - quantize(x, params)) ** 2))
    assert 0.3 < mse < 2.0


def test_external_tool_failures_are_one_line_codec_errors(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(CodecError, match=r"sleeper timed out after 0\.5 s"):
        run_tool(["sleep", "30"], what="sleeper", timeout=0.5)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(CodecError, match=r"crasher crashed \(signal 11\)"):
        run_tool(["sh", "-c", "kill -SEGV $$"], what="crasher")
    with pytest.raises(CodecError, match=r"failer failed \(exit 3\): boom"):
        run_tool(["sh", "-c", "echo boom >&2; exit 3"], what="failer")
    with pytest.raises(CodecError, match="executable not found"):
        run_tool([str(tmp_path / "no-such-encoder")], what="ghost")
