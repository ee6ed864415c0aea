"""Edge backends without a network: which truncation range each task's feature is packed with."""
from __future__ import annotations

import pytest

from cfqa_core.errors import DataError, ModelError
from cfqa_edge.backends import ModelInfo, make_backend, split_outputs, task_range

PER_BLOCK = [[-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0], [-4.0, 4.0]]  # dpt blocks 2, 4, 6, 8 of depth 8


def test_single_range_applies_to_every_split() -> None:
    assert task_range([-5, 7], "cls", 3, 8) == [-5.0, 7.0]
    assert task_range((-5, 7), "dpt", 5, 8) == [-5.0, 7.0]


def test_per_block_ranges_follow_the_blocks_sent() -> None:
    assert task_range(PER_BLOCK, "dpt", 8, 8) == PER_BLOCK
    # split 5 sends blocks 2, 4, 5: block 5 takes the range of block 6, the next calibrated one.
    assert task_range(PER_BLOCK, "dpt", 5, 8) == [[-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0]]
    assert task_range(PER_BLOCK, "dpt", 1, 8) == [[-1.0, 1.0]]
    assert task_range(PER_BLOCK, "dpt", 6, 8) == PER_BLOCK[:3]


def test_malformed_ranges() -> None:
    with pytest.raises(ModelError, match="must be"):
        task_range([[0, 1], [0, 2]], "dpt", 8, 8)
    info = ModelInfo("m", "1", 8, 168, 145, 128, {"cls": [0, 1]})
    with pytest.raises(ModelError, match="no feature range for task 'seg'"):
        info.value_range("seg")
    with pytest.raises(ModelError, match="incomplete"):
        ModelInfo.from_dict({"name": "m"})


def test_model_info_round_trip() -> None:
    info = ModelInfo("m", "3", 8, 168, 145, 128, {"dpt": PER_BLOCK}, ("background", "a"))
    assert ModelInfo.from_dict(info.to_dict()) == info
    assert info.value_range("dpt", 7) == PER_BLOCK


def test_split_outputs_and_unknown_backend() -> None:
    assert split_outputs(8, 8) == (2, 4, 6, 8)
    assert split_outputs(3, 8) == (2, 3)
    assert split_outputs(1, 8) == (1,)
    with pytest.raises(DataError, match="unknown backend 'tpu'"):
        make_backend("tpu")
    with pytest.raises(DataError, match="needs --onnx-dir"):
        make_backend("onnx")
