"""The learned hyperprior codecs: real range-coded bitstreams, both backends, errors."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cfqa_core.codecs import entropy
from cfqa_core.codecs.base import EncodedFeature, get_codec, registered_names
from cfqa_core.codecs.learned import SHIPPED, WEIGHTS_DIR, LearnedCodec, truncate
from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, synthetic_feature
from cfqa_core.errors import CodecError, DataError
from cfqa_core.packing import PackingParams, feature_range, pack

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(N=16, M=24, Nh=8, lambdas=(0.05, 0.005, 0.0005))


# ---- entropy coding primitives (numpy only) ----------------------------------------


def test_varints_and_word_bytes_round_trip():
    for v in (0, 1, 127, 128, 300, 2**20, 2**31 - 1):
        data = entropy.write_varint(v) + b"rest"
        assert entropy.read_varint(data, 0) == (v, len(data) - 4)
    words = np.array([0x01020304, 0xA0000000, 0], dtype=np.uint32)
    data = entropy.words_to_bytes(words)
    assert len(data) == 5  # the trailing zero bytes are not sent
    assert np.array_equal(entropy.bytes_to_words(data), words[:2])
    z, y = b"\x01\x02", b"\x03\x04\x05"
    assert entropy.unpack_strings(entropy.pack_strings(z, y, 17)) == (z, y, 17)
    with pytest.raises(CodecError, match="z string"):
        entropy.unpack_strings(entropy.write_varint(50) + entropy.write_varint(1) + b"ab")
    with pytest.raises(CodecError, match="header"):
        entropy.unpack_strings(b"\x80")


def test_scale_indexes_round_up_to_the_table():
    table = entropy.scale_table()
    assert len(table) == 64 and table[0] == pytest.approx(0.11) and table[-1] == pytest.approx(256.0)
    idx = entropy.scale_indexes(np.array([0.0, 0.11, 0.1100001, table[10], table[10] * 1.01, 1e6]), table)
    assert idx.tolist() == [0, 0, 1, 10, 11, 63]
    assert np.all(table[idx[1:5]] >= np.array([0.11, 0.1100001, table[10], table[10] * 1.01]) - 1e-12)


def _table(channels: int = 3) -> entropy.FactorizedTable:
    pmfs = np.zeros((channels, 9))
    lengths = np.array([9, 5, 2][:channels], dtype=np.int32)
    for c, n in enumerate(lengths):
        p = np.exp(-0.5 * (np.arange(n) - n // 2) ** 2)
        pmfs[c, :n] = p / p.sum()
    return entropy.FactorizedTable(
        np.array([0.25, -1.5, 0.0][:channels], np.float32), -(lengths // 2).astype(np.int32), lengths, pmfs
    )


def test_z_coding_round_trip_and_clamping():
    table = _table()
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (1, 3, 4, 5)).astype(np.float32)
    z[0, 0, 0, 0] = 40.0  # beyond the support: clamped to its last symbol
    data, z_hat = entropy.encode_z(z, table)
    back = entropy.decode_z(data, z.shape, table)
    assert np.array_equal(back, z_hat)
    assert z_hat[0, 0, 0, 0] == pytest.approx(0.25 + 4)
    inside = np.abs(z - table.medians.reshape(1, -1, 1, 1)) < 0.5
    assert np.allclose(z_hat[inside], table.medians.reshape(1, -1, 1, 1).repeat(4, 2).repeat(5, 3)[inside])
    with pytest.raises(CodecError):
        entropy.decode_z(data, (1, 2, 4, 5), table)


@pytest.mark.parametrize("with_means", [False, True])
def test_y_coding_round_trip_and_rate(with_means):
    table = entropy.scale_table()
    rng = np.random.default_rng(1)
    scales = np.exp(rng.uniform(-2, 3, (1, 8, 6, 7))).astype(np.float32)
    means = rng.normal(0, 2, scales.shape).astype(np.float32) if with_means else None
    y = (rng.normal(0, 1, scales.shape) * scales + (means if with_means else 0)).astype(np.float32)
    data, y_max, y_hat, symbols = entropy.encode_y(y, scales, means, table)
    back, sym2 = entropy.decode_y(data, y_max, scales, means, table)
    assert np.array_equal(back, y_hat) and np.array_equal(sym2, symbols)
    assert np.abs(y_hat - y).max() <= 0.5 + 1e-5
    # The coded size is the information content under the table's Gaussians.
    from math import erf, log2, sqrt

    stds = table[entropy.scale_indexes(scales, table)].ravel()
    bits = 0.0
    for s, sd in zip(symbols, stds):
        cdf = lambda v: 0.5 * (1 + erf(v / (sd * sqrt(2))))  # noqa: E731
        bits -= log2(max(cdf(s + 0.5) - cdf(s - 0.5), 1e-12))
    assert abs(len(data) - bits / 8) <= 0.02 * bits / 8 + 4


# ---- a codec from a freshly exported small network -----------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cfqa_core.codecs.hyperprior import HyperpriorConfig, build_model, export_codec

    torch.set_num_threads(1)
    out = {}
    for variant in ("scale", "meanscale"):
        torch.manual_seed(3)
        model = build_model(HyperpriorConfig(variant=variant, **SMALL))
        with torch.no_grad():  # break the symmetric initialisation so every rate point differs
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp(variant)
        export_codec(model, folder)
        out[variant] = (model, folder)
    return out


def _frame_tensor(feature, vr, bits=10):
    import torch

    frame = pack(feature, PackingParams(vr, bits), align=64).frame.astype(np.float32) / ((1 << bits) - 1)
    return torch.from_numpy(frame[None, None])


@pytest.mark.parametrize("variant", ["scale", "meanscale"])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_decode_equals_the_models_quantised_forward(exported, variant, backend):
    model, folder = exported[variant]
    codec = LearnedCodec.from_folder(folder, backend=backend)
    assert codec.ladder == (0, 1, 2)
    f = synthetic_feature(EMBEDDED_SHAPES["seg"], seed=2)
    vr = feature_range(f)
    for k in codec.ladder:
        enc = codec.encode(f, k, value_range=vr)
        ref = model.quantized_forward(_frame_tensor(f, vr), k)["x_hat"][0, 0].numpy()
        got = codec.decode_frame(enc)
        assert got.shape == ref.shape == (320, 128)
        assert np.allclose(got, ref, atol=1e-4 if backend == "onnx" else 1e-6), np.abs(got - ref).max()
        rec = codec.decode(enc)
        assert rec.shape == f.shape and rec.dtype == np.float32
        expected = np.clip(ref[:290], 0, 1).reshape(f.shape) * (vr[1] - vr[0]) + vr[0]
        assert np.allclose(rec, expected, atol=1e-4 * (vr[1] - vr[0]))


@pytest.mark.parametrize("variant", ["scale", "meanscale"])
def test_bytes_match_the_likelihood_estimate(exported, variant):
    import torch

    model, folder = exported[variant]
    codec = LearnedCodec.from_folder(folder, backend="torch")
    f = synthetic_feature(EMBEDDED_SHAPES["dpt"], seed=4)
    vr = feature_range(f)
    for k in codec.ladder:
        enc = codec.encode(f, k, value_range=vr)
        out = model.quantized_forward(_frame_tensor(f, vr), k)
        est_bytes = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values()) / 8
        assert enc.nbytes == enc.meta["bytes"] and enc.bpfp == pytest.approx(8 * enc.nbytes / f.size)
        assert abs(enc.nbytes - est_bytes) <= 0.05 * est_bytes + 8, (k, enc.nbytes, est_bytes)


def test_onnx_path_is_deterministic_and_close_to_the_torch_path(exported):
    _, folder = exported["meanscale"]
    onnx_codec = LearnedCodec.from_folder(folder, backend="onnx")
    torch_codec = LearnedCodec.from_folder(folder, backend="torch")
    f = synthetic_feature(EMBEDDED_SHAPES["dpt"], seed=6)
    vr = feature_range(f)
    a = onnx_codec.encode(f, 1, value_range=vr)
    b = onnx_codec.encode(f, 1, value_range=vr)
    assert a.bitstream == b.bitstream and a.meta["backend"] == "onnx"
    rec_a = onnx_codec.decode(a)
    assert np.array_equal(rec_a, onnx_codec.decode(b))
    t = torch_codec.encode(f, 1, value_range=vr)
    rec_t = torch_codec.decode(t)
    scale = vr[1] - vr[0]
    assert np.allclose(rec_a, rec_t, atol=1e-3 * scale)
    # Across backends a decode either reproduces the feature or refuses; never a silent wrong feature.
    try:
        cross = torch_codec.decode(a)
    except CodecError as exc:
        assert "backend" in str(exc)
    else:
        assert np.allclose(cross, rec_a, atol=1e-3 * scale)


def test_any_shape_and_per_slice_ranges(exported):
    _, folder = exported["scale"]
    codec = LearnedCodec.from_folder(folder, backend="onnx")
    f = synthetic_feature((3, 50, 70), seed=1)
    enc = codec.encode(f, 0, value_range=feature_range(f))
    assert (enc.meta["padded_height"], enc.meta["padded_width"]) == (192, 128)
    assert (enc.meta["height"], enc.meta["width"]) == (150, 70)
    assert codec.decode(enc).shape == f.shape
    dpt = synthetic_feature(EMBEDDED_SHAPES["dpt"], seed=2)
    ranges = feature_range(dpt, axis=-3)
    enc = codec.encode(dpt, 2, value_range=ranges, bit_depth=8)
    rec = codec.decode(enc)
    for b, (lo, hi) in enumerate(ranges):
        assert rec[:, b].min() >= lo - 1e-4 and rec[:, b].max() <= hi + 1e-4
    meta = enc.meta
    for key in ("shape", "value_range", "bit_depth", "rate_point", "lambda", "weights", "backend", "model",
                "padded_height", "padded_width", "height", "width", "crc32", "symbols_crc32"):
        assert key in meta, key
    assert meta["lambda"] == SMALL["lambdas"][2] and meta["model"] == "scale-hyperprior"


def _with(enc: EncodedFeature, bitstream: bytes | None = None, **meta) -> EncodedFeature:
    new_meta = {**enc.meta, **meta}
    new_meta = {k: v for k, v in new_meta.items() if v is not None}
    return dataclasses.replace(enc, bitstream=enc.bitstream if bitstream is None else bitstream, meta=new_meta)


@pytest.mark.timeout(120)
def test_corrupt_or_truncated_bitstreams_raise_codec_error(exported):
    _, folder = exported["meanscale"]
    codec = LearnedCodec.from_folder(folder, backend="onnx")
    f = synthetic_feature(EMBEDDED_SHAPES["seg"], seed=8)
    enc = codec.encode(f, 0, value_range=feature_range(f))
    data = enc.bitstream
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(_with(enc, data[:-3]))
    with pytest.raises(CodecError, match="CRC"):
        codec.decode(_with(enc, bytes([data[0]]) + bytes([data[1] ^ 0x10]) + data[2:]))
    # Without the sidecar checks, damaged data still ends in CodecError, never a crash or hang.
    rng = np.random.default_rng(0)
    damaged = [data[: len(data) // 2], b"", b"\xff" * 12, rng.bytes(len(data))]
    for i in range(0, len(data), max(1, len(data) // 16)):
        flipped = bytearray(data)
        flipped[i] ^= 0xA5
        damaged.append(bytes(flipped))
    for bad in damaged:
        with pytest.raises(CodecError):
            codec.decode(_with(enc, bad, bytes=len(bad), crc32=None))
    with pytest.raises(CodecError, match="weights"):
        codec.decode(_with(enc, weights="0123456789abcdef"))
    with pytest.raises(CodecError, match="metadata"):
        codec.decode(_with(enc, padded_height=None))
    with pytest.raises(CodecError, match="multiple of 64"):
        codec.decode(_with(enc, padded_height=100))
    with pytest.raises(CodecError, match="rate point"):
        codec.decode(_with(enc, rate_point=7))


def test_bad_arguments(exported):
    _, folder = exported["scale"]
    codec = LearnedCodec.from_folder(folder, backend="onnx")
    f = synthetic_feature(EMBEDDED_SHAPES["cls"])
    vr = feature_range(f)
    for bad in (3, -1, 1.0, True, "0"):
        with pytest.raises(CodecError, match="rate point"):
            codec.encode(f, bad, value_range=vr)
    with pytest.raises(CodecError, match="bit"):
        codec.encode(f, 0, value_range=vr, bit_depth=16)
    with pytest.raises(DataError):
        codec.encode(f[0, 0], 0, value_range=vr)
    with pytest.raises(DataError):
        codec.encode(np.full((1, 4, 4), np.nan, np.float32), 0, value_range=vr)
    with pytest.raises(CodecError, match="backend"):
        LearnedCodec.from_folder(folder, backend="tflite").encode(f, 0, value_range=vr)
    with pytest.raises(CodecError, match="missing"):
        LearnedCodec(folder.parent / "nowhere", name="nowhere").encode(f, 0, value_range=vr)
    ok, reason = LearnedCodec(folder.parent / "nowhere", name="nowhere").availability()
    assert not ok and "missing" in reason


# ---- the registered, shipped codecs -------------------------------------------------------


def test_shipped_codecs_are_registered():
    import cfqa_core.codecs.learned  # noqa: F401

    names = registered_names()
    for name in SHIPPED:
        assert name in names
        codec = get_codec(name)
        assert codec.name == name and codec.family == "learned" and codec.ladder == tuple(range(10))
    assert {"hyperprior-cls", "hyperprior-seg", "hyperprior-dpt", "hyperprior-multi", "mshyperprior-multi"} <= set(
        names
    )


def _shipped_or_skip(name: str) -> LearnedCodec:
    codec = get_codec(name)
    ok, reason = codec.availability()
    if not ok:
        pytest.skip(reason)
    return codec


@pytest.fixture(scope="module")
def real_features(model):
    """Features of two val scenes per task: what the shipped codecs were trained for."""
    from cfqa_core.data.scenes import render_batch
    from cfqa_core.inference import extract_features

    images = np.stack([s.image for s in render_batch([10_000_123, 10_000_456], size=model.meta.config.img_size)])
    return {t: (extract_features(model, t, images)[0], model.meta.feature_ranges[t]) for t in ("cls", "seg", "dpt")}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_codec_rates_are_ordered(name, real_features):
    codec = _shipped_or_skip(name)
    task = SHIPPED[name][1]
    f, vr = real_features["seg" if task == "multi" else task]
    sizes, errors = [], []
    for k in codec.ladder:
        enc = codec.encode(f, k, value_range=vr)
        rec = codec.decode(enc)
        sizes.append(enc.nbytes)
        errors.append(float(np.mean((rec - truncate(f, vr)) ** 2)))
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes
    assert errors[0] < errors[-1], errors


def test_shipped_codec_is_torch_free():
    if not (WEIGHTS_DIR / "hyperprior-multi" / "codec.json").is_file():
        pytest.skip("hyperprior-multi weights are not installed")
    code = (
        "import sys, numpy as np\n"
        "from cfqa_core.codecs.base import get_codec\n"
        "import cfqa_core.codecs.learned\n"
        "from cfqa_core.codecs.synthetic import synthetic_feature\n"
        "c = get_codec('hyperprior-multi')\n"
        "f = synthetic_feature((1, 145, 128))\n"
        "e = c.encode(f, 2, value_range=(-4.0, 4.0))\n"
        "r = c.decode(e)\n"
        "assert r.shape == f.shape and e.meta['backend'] == 'onnx', e.meta\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(e.nbytes)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0
