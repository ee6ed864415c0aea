"""Feature packing: quantisation, layout, padding and their exact inverses."""
from __future__ import annotations

import numpy as np
import pytest

from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, synthetic_feature
from cfqa_core.errors import DataError
from cfqa_core.packing import (
    PackingParams,
    dequantize,
    feature_range,
    frame_size,
    pack,
    pack_levels,
    quantize,
    unpack,
    unpack_levels,
)

SHAPES = EMBEDDED_SHAPES


@pytest.mark.parametrize("task", sorted(SHAPES))
def test_stack_layout_frame_sizes(task):
    shape = SHAPES[task]
    x = synthetic_feature(shape)
    p = PackingParams(feature_range(x), bit_depth=10)
    packed = pack(x, p, align=8)
    height = int(np.prod(shape[:-1]))
    assert (packed.height, packed.width) == (height, 128)
    assert packed.padded_height % 8 == 0 and packed.padded_width % 8 == 0
    assert packed.padded_height - height < 8
    assert packed.frame.dtype == np.uint16


def test_paper_frame_sizes():
    assert frame_size((257, 1536)) == (257, 1536)
    assert frame_size((2, 1370, 1536)) == (2740, 1536)
    assert frame_size((2, 4, 1611, 1536)) == (12888, 1536)


def test_layout_is_slices_stacked_vertically():
    x = synthetic_feature((2, 3, 5, 4))
    p = PackingParams(feature_range(x), bit_depth=10)
    levels = quantize(x, p)
    frame = pack_levels(levels, p).frame
    # Slice (view 1, block 2) occupies rows (1*3 + 2)*5 .. +5, tokens down, channels across.
    np.testing.assert_array_equal(frame[25:30], levels[1, 2])
    np.testing.assert_array_equal(frame[0:5], levels[0, 0])


def test_pack_unpack_levels_is_lossless_with_padding():
    x = synthetic_feature((2, 145, 128), seed=3)
    p = PackingParams(feature_range(x), bit_depth=10)
    levels = quantize(x, p)
    packed = pack_levels(levels, p, align=64)
    assert packed.pad_h == 320 - 290 and packed.pad_w == 0
    # Edge replication: the padding repeats the last real row.
    np.testing.assert_array_equal(packed.frame[-1], levels[1, -1])
    np.testing.assert_array_equal(unpack_levels(packed.frame, packed.meta()), levels)
    np.testing.assert_array_equal(unpack(packed.frame, packed.meta()), dequantize(levels, p))


@pytest.mark.parametrize("bits", [8, 10, 12])
def test_levels_span_range_and_error_bound(bits):
    x = synthetic_feature((1, 145, 128), seed=bits)
    lo, hi = feature_range(x)
    p = PackingParams((lo, hi), bit_depth=bits)
    levels = quantize(x, p)
    assert levels.min() == 0 and levels.max() == (1 << bits) - 1
    step = (hi - lo) / ((1 << bits) - 1)
    err = np.abs(dequantize(levels, p) - x)
    assert err.max() <= step / 2 * 1.0001 + 1e-6


def test_rounding_reconstructs_closer_than_floor():
    x = synthetic_feature((2, 145, 128), seed=7)
    vr = feature_range(x)
    mse = {}
    for rounding in ("round", "floor"):
        p = PackingParams(vr, bit_depth=10, rounding=rounding)
        mse[rounding] = float(np.mean((dequantize(quantize(x, p), p) - x) ** 2))
    step = (vr[1] - vr[0]) / 1023
    # Uniform error: step^2/12 for rounding, step^2/3 for flooring (half a step of bias).
    assert mse["round"] == pytest.approx(step**2 / 12, rel=0.05)
    assert mse["floor"] == pytest.approx(step**2 / 3, rel=0.05)
    assert mse["round"] < mse["floor"] / 3.5


def test_truncation_clips_outside_range():
    x = np.array([[-10.0, -1.0, 0.0, 1.0, 10.0]], dtype=np.float32)
    p = PackingParams((-1.0, 1.0), bit_depth=8)
    levels = quantize(x, p)
    assert levels.tolist() == [[0, 0, 128, 255, 255]]
    np.testing.assert_allclose(dequantize(levels, p)[0, [0, 4]], [-1.0, 1.0])


def test_per_block_ranges():
    x = synthetic_feature((2, 4, 145, 128), seed=1)
    x *= np.array([1.0, 5.0, 50.0, 300.0], dtype=np.float32)[None, :, None, None]
    ranges = feature_range(x, axis=-3)
    assert len(ranges) == 4
    per_block = PackingParams(ranges, bit_depth=10)
    one = PackingParams(feature_range(x), bit_depth=10)
    err_block = np.abs(dequantize(quantize(x, per_block), per_block) - x)[:, 0]
    err_one = np.abs(dequantize(quantize(x, one), one) - x)[:, 0]
    assert err_block.mean() < err_one.mean() / 10
    meta = pack(x, per_block).meta()
    assert meta["range_axis"] == -3 and len(meta["value_range"]) == 4
    np.testing.assert_array_equal(unpack(pack(x, per_block).frame, meta), dequantize(quantize(x, per_block), per_block))


def test_percentile_range_is_inside_minmax():
    x = synthetic_feature((2, 145, 128), seed=2)
    lo, hi = feature_range(x)
    plo, phi = feature_range([x, x * 0.5], method="percentile", q=1.0)
    assert lo < plo < phi < hi
    assert plo == pytest.approx(float(np.percentile(np.concatenate([x.ravel(), 0.5 * x.ravel()]), 1.0)))


def test_constant_feature_gets_a_usable_range():
    x = np.full((4, 8), 3.5, dtype=np.float32)
    lo, hi = feature_range(x)
    assert (lo, hi) == (3.5, 4.5)
    p = PackingParams((lo, hi))
    np.testing.assert_array_equal(dequantize(quantize(x, p), p), x)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 8), dtype=np.int32), "floating-point"),
        (np.zeros(8, dtype=np.float32), "rank >= 2"),
        (np.array([[0.0, np.nan]], dtype=np.float32), "non-finite"),
        (np.array([[0.0, np.inf]], dtype=np.float32), "non-finite"),
        ([[0.0, 1.0]], "numpy array"),
    ],
)
def test_bad_features_raise_data_error(bad, match):
    with pytest.raises(DataError, match=match):
        quantize(bad, PackingParams((0.0, 1.0)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"value_range": (1.0, 1.0)}, "hi > lo"),
        ({"value_range": (0.0, float("nan"))}, "finite"),
        ({"value_range": (0.0, 1.0, 2.0)}, r"\(lo, hi\)"),
        ({"value_range": (0.0, 1.0), "bit_depth": 16}, "outside 8..12"),
        ({"value_range": (0.0, 1.0), "rounding": "ceil"}, "rounding"),
        ({"value_range": (0.0, 1.0), "layout": "tile"}, "layout"),
    ],
)
def test_bad_params_raise_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        PackingParams(**kwargs)


def test_mismatched_per_slice_ranges_raise():
    x = synthetic_feature((2, 4, 6, 8))
    with pytest.raises(DataError, match="3 value ranges"):
        quantize(x, PackingParams([(0, 1)] * 3))
    with pytest.raises(DataError, match="range_axis"):
        quantize(x, PackingParams([(0, 1)] * 6, range_axis=-2))


def test_unpack_rejects_small_frame_and_bad_meta():
    x = synthetic_feature((1, 16, 8))
    packed = pack(x, PackingParams(feature_range(x)))
    with pytest.raises(DataError, match="smaller"):
        unpack(packed.frame[:10], packed.meta())
    meta = packed.meta()
    del meta["height"]
    with pytest.raises(DataError, match="height"):
        unpack(packed.frame, meta)
