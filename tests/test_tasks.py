"""Task definitions, views and scores (numpy only)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cfqa_core.data.dataset import load_folder, split_seeds
from cfqa_core.errors import DataError
from cfqa_core.tasks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    dpt_blocks,
    feature_blocks,
    feature_shape,
    label_rank,
    make_views,
    miou,
    rmse,
)


def test_feature_blocks_follow_the_split():
    assert dpt_blocks(40) == (10, 20, 30, 40)  # the paper's ViT-g blocks
    assert feature_blocks("cls", 5, 8) == (5,)
    assert feature_blocks("dpt", 8, 8) == (2, 4, 6, 8)
    assert feature_blocks("dpt", 5, 8) == (2, 4, 5)
    assert feature_blocks("dpt", 1, 8) == (1,)
    assert feature_shape("dpt", 8, 8, 145, 128) == (2, 4, 145, 128)
    assert feature_shape("seg", 3, 8, 145, 128) == (2, 145, 128)
    assert feature_shape("cls", 40, 40, 257, 1536) == (1, 257, 1536)
    with pytest.raises(DataError, match="split block 9"):
        feature_blocks("cls", 9, 8)
    with pytest.raises(DataError, match="unknown task 'pose'"):
        feature_blocks("pose", 1, 8)


def test_views_normalise_and_flip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    v = make_views("seg", img, 28)
    assert v.shape == (2, 3, 28, 28) and v.dtype == np.float32
    expected = (img[..., 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(v[0, 0], expected, atol=1e-6)
    np.testing.assert_array_equal(v[1], v[0][:, :, ::-1])
    assert make_views("cls", img, 14).shape == (1, 3, 14, 14)


def test_scores_by_hand():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3 -> 2/3
    assert miou(pred, gt, 3) == pytest.approx((0.5 + 2 / 3) / 2)
    assert rmse(np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(np.sqrt(2.5))
    logits = np.array([0.1, 2.0, 0.5, 3.0])
    assert label_rank(logits, 3) == 1 and label_rank(logits, 1) == 2 and label_rank(logits, 0) == 4


def test_splits_are_disjoint():
    train = set(split_seeds("train", 50_000))
    val = set(split_seeds("val", 1000))
    bench = {s for t in ("cls", "seg", "dpt") for s in split_seeds("bench", 100, t)}
    assert not train & val and not train & bench and not val & bench and len(bench) == 300
    with pytest.raises(DataError, match="needs a task"):
        split_seeds("bench", 10)


def test_user_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "labels.json").write_text(json.dumps({"im0": 1, "im1": 2, "im2": 3}))
    data = load_folder(tmp_path)
    assert data.images.shape == (3, 20, 20, 3) and list(data.labels) == [1, 2, 3]
    assert data.masks is None and data.ids == ["im0", "im1", "im2"]
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "masks" / "im0.png")
    with pytest.raises(DataError, match="im1.png"):
        load_folder(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nope")
