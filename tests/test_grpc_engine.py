"""The cloud's inference engine without a network: results equal the direct path, bad input is named."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cfqa_core.codecs as codecs
from cfqa_cloud.engine import (
    InferenceRequest,
    ModelVersionError,
    RequestError,
    TaskPayload,
    UnknownModelError,
)
from cfqa_core.errors import CodecError
from cfqa_core.inference import predict
from cfqa_edge.backends import TorchBackend
from cfqa_proto.convert import load_codecs
from tests.support.serving import scene_images

load_codecs()

SPLIT = 5


@pytest.fixture(scope="module")
def frame(model):
    """Per-task encoded features of one scene at SPLIT."""
    backend = TorchBackend(model, SPLIT)
    feats = backend.features(scene_images(1)[0], ("cls", "seg", "dpt"))
    codec = codecs.get_codec("hevc")
    encoded = {t: codec.encode(f, 8, value_range=backend.value_range(t)) for t, f in feats.items()}
    return feats, encoded


def _request(model, encoded, tasks=("cls", "seg", "dpt"), **kw) -> InferenceRequest:
    base = dict(model_id=model.meta.name, split=SPLIT, model_version=model.meta.version,
                payloads=[TaskPayload(t, encoded[t]) for t in tasks])
    base.update(kw)
    return InferenceRequest(**base)


def test_results_equal_direct_prediction_on_decoded_features(model, engine, frame) -> None:
    _, encoded = frame
    before = engine.frames_computed
    result = engine.infer(_request(model, encoded, top_k=3))
    assert engine.frames_computed == before + 1
    assert [p.task for p in result.predictions] == ["cls", "seg", "dpt"]
    assert result.model_version == model.meta.version and result.decode_s > 0 and result.compute_s > 0
    codec = codecs.get_codec("hevc")
    direct = {t: predict(model, t, codec.decode(encoded[t])[None], SPLIT)[0] for t in encoded}
    cls, seg, dpt = result.predictions
    logits = direct["cls"].logits
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-probs)[:3]
    assert [c for c, _, _ in cls.top_k] == [int(i) + 1 for i in order]
    np.testing.assert_allclose([s for _, _, s in cls.top_k], probs[order], rtol=1e-5)
    assert cls.top_k[0][1] == model.meta.class_names[cls.top_k[0][0]]
    np.testing.assert_array_equal(seg.mask, direct["seg"].mask)
    np.testing.assert_allclose(dpt.depth, direct["dpt"].depth, rtol=0, atol=1e-5)
    assert seg.mask.shape == dpt.depth.shape == (model.image_size, model.image_size)


def test_compressed_features_stay_close_at_fine_qp(model, engine, frame) -> None:
    feats, encoded = frame
    decoded = codecs.get_codec("hevc").decode(encoded["cls"])
    lo, hi = model.meta.feature_ranges["cls"]
    # QP 8 on a 10-bit frame: error well under 1 % of the range.
    assert np.abs(decoded - np.clip(feats["cls"], lo, hi)).mean() < 0.01 * (hi - lo)


def test_unknown_model(engine, model, frame) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        engine.infer(_request(model, frame[1], model_id="nope"))


def test_version_pin(engine, model, frame) -> None:
    with pytest.raises(ModelVersionError, match="pins"):
        engine.infer(_request(model, frame[1], model_version="not-" + model.meta.version))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"split": 0}, "split block 0 outside"),
        ({"split": 99}, "split block 99 outside"),
        ({"model_id": ""}, "names no model"),
        ({"tasks": ()}, "no task payload"),
    ],
)
def test_bad_requests(engine, model, frame, kw, match) -> None:
    tasks = kw.pop("tasks", ("cls",))
    with pytest.raises(RequestError, match=match):
        engine.infer(_request(model, frame[1], tasks=tasks, **kw))


def test_wrong_split_is_a_shape_error(engine, model, frame) -> None:
    # A dpt feature at split 5 carries blocks (2, 4, 5); at split 7 the model expects (2, 4, 6, 7).
    with pytest.raises(RequestError, match=r"dpt feature shape \(2, 3, 145, 128\) does not match"):
        engine.infer(_request(model, frame[1], tasks=("dpt",), split=7))


def test_unknown_and_duplicate_task(engine, model, frame) -> None:
    enc = frame[1]["cls"]
    req = _request(model, frame[1], tasks=("cls",))
    req.payloads = [TaskPayload("det", enc)]
    with pytest.raises(RequestError, match="unknown task 'det'"):
        engine.infer(req)
    req = _request(model, frame[1], tasks=("cls",))
    req.payloads = [TaskPayload("cls", enc), TaskPayload("cls", enc)]
    with pytest.raises(RequestError, match="appears twice"):
        engine.infer(req)


def test_unknown_codec(engine, model, frame) -> None:
    enc = dataclasses.replace(frame[1]["cls"], codec="zip")
    req = _request(model, frame[1], tasks=("cls",))
    req.payloads = [TaskPayload("cls", enc)]
    with pytest.raises(CodecError, match="unknown codec 'zip'"):
        engine.infer(req)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_bitstream(engine, model, frame, damage) -> None:
    enc = frame[1]["seg"]
    bits = bytearray(enc.bitstream)
    if damage == "truncate":
        bits = bits[: len(bits) // 2]
    else:
        bits[len(bits) // 2] ^= 0xFF
    req = _request(model, frame[1], tasks=("seg",))
    req.payloads = [TaskPayload("seg", dataclasses.replace(enc, bitstream=bytes(bits)))]
    with pytest.raises(CodecError, match="seg payload: corrupt bitstream"):
        engine.infer(req)
