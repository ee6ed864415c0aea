"""Encoder thread settings change speed, never bytes: HEVC (in-process and CLI) and VVC."""
from __future__ import annotations

import numpy as np
import pytest

import cfqa_core.codecs as codecs
from cfqa_core.codecs import _pyav
from cfqa_core.codecs.hevc import HevcCodec, HevcX265CliCodec, ctu_size, x265_params, x265_threading
from cfqa_core.codecs.vvc import VvcCodec
from cfqa_core.errors import CodecError
from cfqa_edge.backends import TorchBackend
from tests.support.serving import scene_images


@pytest.fixture(scope="module")
def features(model) -> dict[str, tuple[np.ndarray, object]]:
    """Real cls and dpt features of the served model, and a wide one (more than two CTUs across)."""
    backend = TorchBackend(model, model.depth)
    feats = backend.features(scene_images(1, start=7)[0], ("cls", "dpt"))
    out = {t: (f, backend.value_range(t)) for t, f in feats.items()}
    rng = np.random.default_rng(3)
    wide = (rng.standard_normal((1, 145, 8)) @ rng.standard_normal((8, 384))).astype(np.float32)
    out["wide"] = (wide, (float(wide.min()), float(wide.max())))
    return out


def _bytes(codec, feature, value_range, qp) -> bytes:
    return codec.encode(feature, qp, value_range=value_range).bitstream


def _require(codec) -> None:
    ok, why = codec.availability()
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("kind", ["cls", "dpt", "wide"])
def test_hevc_bytes_do_not_depend_on_threads(features, kind) -> None:
    feature, value_range = features[kind]
    variants = [HevcCodec(threads=None), HevcCodec(), HevcCodec(threads=2)]
    _require(variants[0])
    for qp in (2, 12, 20):
        ref = _bytes(variants[0], feature, value_range, qp)
        for codec in variants[1:]:
            assert _bytes(codec, feature, value_range, qp) == ref, (kind, qp, codec.threads)
    # And the decoder reads the single-threaded stream back to the same feature.
    enc = HevcCodec().encode(feature, 12, value_range=value_range)
    np.testing.assert_array_equal(HevcCodec().decode(enc),
                                  HevcCodec(threads=None).decode(HevcCodec(threads=None).encode(
                                      feature, 12, value_range=value_range)))


def test_hevc_cli_bytes_do_not_depend_on_threads(features) -> None:
    cli, cli_default = HevcX265CliCodec(), HevcX265CliCodec(threads=None)
    _require(cli)
    for kind in ("cls", "wide"):
        feature, value_range = features[kind]
        ref = _bytes(cli_default, feature, value_range, 10)
        assert _bytes(cli, feature, value_range, 10) == ref
    assert "--pools" in cli.command("a", "b", 128, 145, 10, 10)
    assert "--pools" not in cli_default.command("a", "b", 128, 145, 10, 10)


def test_pools_none_would_change_wide_pictures() -> None:
    """Why the pool keeps one thread instead of none: without a pool x265 drops wavefronts."""
    if not _pyav.has_codec("libx265"):
        pytest.skip("PyAV lacks libx265")
    rng = np.random.default_rng(5)
    height, width = 145, 384  # six 64-pixel CTUs across
    smooth = rng.standard_normal((height, 6)) @ rng.standard_normal((6, width))
    frame = np.clip(512 + 80 * smooth, 0, 1023).astype(np.uint16)

    def encode(extra: list) -> bytes:
        params = x265_params(12, ctu_size(height, width)) + extra
        rendered = ":".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in params)
        return _pyav.encode_picture("libx265", frame, 10,
                                    {"preset": "medium", "x265-params": rendered + ":log-level=none"})

    one = encode(x265_threading(1))
    assert one == encode(x265_threading(None)) == encode(x265_threading(2))
    assert encode([("pools", "none"), ("frame-threads", "1")]) != one


@pytest.mark.parametrize("kind", ["cls", "dpt"])
def test_vvc_bytes_do_not_depend_on_threads(features, kind) -> None:
    feature, value_range = features[kind]
    single, auto = VvcCodec(), VvcCodec(threads=None)
    _require(single)
    for qp in (codecs.get_codec("vvc").ladder[0], codecs.get_codec("vvc").ladder[-1]):
        assert _bytes(single, feature, value_range, qp) == _bytes(auto, feature, value_range, qp), qp
    assert "-threads" in single.command("a", "b", 128, 145, 20)
    assert "-threads" not in auto.command("a", "b", 128, 145, 20)


def test_bad_thread_counts_are_refused() -> None:
    for make in (lambda: HevcCodec(threads=0), lambda: HevcX265CliCodec(threads=-1), lambda: VvcCodec(threads=0)):
        with pytest.raises(CodecError, match="threads must be >= 1"):
            make()
