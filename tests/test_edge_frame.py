"""The edge's per-frame functions (cfqa_edge.frame), shared by the runner, LiveContext and the simulator's live mode."""
from __future__ import annotations

import math

import numpy as np
import pytest

import cfqa_core.codecs as codecs
from cfqa_core.errors import DataError, PolicyError
from cfqa_core.metrics import compute_metrics
from cfqa_edge.frame import assess, infer_request, metric_value_range, task_output_arrays, trial_encode
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import depth_to_png, mask_to_png, payload_from_encoded


@pytest.fixture(scope="module")
def hevc():
    return codecs.get_codec("hevc")  # bundled (PyAV), as in test_policies' live context tests


def _feature() -> np.ndarray:
    return np.random.default_rng(4).normal(0.0, 1.0, (1, 145, 128)).astype(np.float32)


def test_trial_encode_and_assess_are_the_codec_and_the_metrics(hevc):
    f, vr = _feature(), [[-4.0, 4.0]]
    enc, seconds = trial_encode(hevc, f, 20, value_range=vr)
    direct = hevc.encode(f, 20, value_range=vr, bit_depth=10)
    assert enc.bitstream == direct.bitstream and enc.meta == direct.meta and seconds > 0
    a = assess(hevc, enc, f, ("mse", "cosine"), task="cls", value_range=vr)
    fhat = hevc.decode(direct).reshape(f.shape)
    assert a.metrics == compute_metrics(["mse", "cosine"], f, fhat, task="cls", value_range=(-4.0, 4.0))
    assert 0 < a.decode_s <= a.seconds
    assert assess(hevc, enc, f, (), task="cls", value_range=vr).metrics == {}  # decode only
    assert metric_value_range([[-1.0, 2.0], [-3.0, 0.5]]) == (-3.0, 2.0)


def test_infer_request_is_the_hand_built_request(hevc):
    enc = hevc.encode(_feature(), 24, value_range=(-4.0, 4.0))
    # The edge runner's request: model version, capture time, the payload's metric.
    want = pb.InferRequest(node_id="n1", frame_id=7, model_id="embedded", model_version="v2", split_block=8, top_k=5)
    want.capture_time.FromNanoseconds(1_700_000_000_123_456_789)
    want.payloads.append(payload_from_encoded("cls", enc, metric_score=0.5, metric_name="proxy"))
    got = infer_request([payload_from_encoded("cls", enc, metric_score=0.5, metric_name="proxy")], node_id="n1",
                        frame_id=7, model_id="embedded", model_version="v2", split_block=8, top_k=5,
                        capture_ns=1_700_000_000_123_456_789)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    # The simulator's: no version, no capture time.
    want = pb.InferRequest(node_id="0", frame_id=3, model_id="embedded", split_block=8, top_k=10)
    want.payloads.append(payload_from_encoded("cls", enc))
    got = infer_request([payload_from_encoded("cls", enc)], node_id="0", frame_id=3, model_id="embedded",
                        split_block=8, top_k=10)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert not got.HasField("capture_time")


def test_task_output_arrays_read_the_cloud_result():
    cls = pb.TaskResult(task="cls", top_k=[pb.ClassScore(class_id=3, score=0.7), pb.ClassScore(class_id=1, score=0.2)])
    logits = task_output_arrays("cls", cls, 4)["logits"]
    assert int(np.argmax(logits)) + 1 == 3 and logits[0] == pytest.approx(math.log(0.2))
    assert np.isneginf(logits[[1, 3]]).all()
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(task_output_arrays("seg", pb.TaskResult(mask_png=mask_to_png(mask)), 4)["mask"],
                                  mask)
    depth = np.full((2, 3), 1.25, np.float32)
    out = task_output_arrays("dpt", pb.TaskResult(depth_png=depth_to_png(depth)), 4)
    np.testing.assert_allclose(out["depth"], depth)
    for bad in (0, 5):  # class ids are 1-based: 0 would silently write the last logit
        wrong = pb.TaskResult(task="cls", top_k=[pb.ClassScore(class_id=bad, score=0.9)])
        with pytest.raises(DataError, match=f"class id {bad}, outside 1..4"):
            task_output_arrays("cls", wrong, 4)


def test_the_edge_runner_refuses_the_oracle_with_its_reason():
    from cfqa_edge.runner import build_policy

    for _ in range(2):  # unknown to the edge, then registered by the simulator in this process: refused both times
        with pytest.raises(PolicyError, match="'oracle' is offline-only: it needs ground truth"):
            build_policy("oracle", {})
        import cfqa_sim.ratecontrol.oracle  # noqa: F401
