"""The cfqa.v1 contract: generated code is current, codec metadata and task maps survive the wire."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cfqa_core.codecs as codecs
from cfqa_core.errors import DataError
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import (
    depth_from_png,
    depth_to_png,
    encoded_from_payload,
    load_codecs,
    mask_from_png,
    mask_to_png,
    payload_from_encoded,
)
from cfqa_proto.generate import GENERATED, ROOT, generate

load_codecs()


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    produced = generate(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in produced] == list(GENERATED)
    for rel in GENERATED:
        fresh = (tmp_path / rel).read_bytes()
        committed = (ROOT / rel).read_bytes()
        assert fresh == committed, f"{rel} is stale: run 'python -m cfqa_proto.generate'"


def test_service_shape() -> None:
    service = pb.DESCRIPTOR.services_by_name["SplitInference"]
    assert pb.DESCRIPTOR.package == "cfqa.v1"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"Infer": (False, False), "InferStream": (True, True), "Ping": (False, False)}


@pytest.fixture(scope="module")
def hevc():
    codec = codecs.get_codec("hevc")
    ok, reason = codec.availability()
    if not ok:
        pytest.skip(f"hevc unavailable: {reason}")
    return codec


def _feature(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def test_payload_round_trip_keeps_meta_and_bytes(hevc) -> None:
    enc = hevc.encode(_feature((1, 145, 128)), 12, value_range=(-3.0, 3.0), bit_depth=10)
    p = payload_from_encoded("cls", enc, metric_score=0.25, metric_name="cfqa")
    wire = pb.FeaturePayload.FromString(p.SerializeToString())
    back = encoded_from_payload(wire)
    assert back.meta == json.loads(json.dumps(enc.meta))
    assert back.bitstream == enc.bitstream and back.codec == "hevc" and back.rate_point == 12
    assert list(wire.shape) == [1, 145, 128] and wire.bit_depth == 10 and wire.dtype == "float32"
    assert (wire.frame_width, wire.frame_height) == (128, 145)
    assert wire.metric_score == 0.25 and wire.metric_name == "cfqa"
    np.testing.assert_array_equal(hevc.decode(back), hevc.decode(enc))


def test_per_slice_ranges_round_trip(hevc) -> None:
    ranges = [(-2.0, 2.0), (-3.0, 3.5), (-1.0, 4.0)]
    enc = hevc.encode(_feature((2, 3, 145, 128), 1), 20, value_range=ranges, bit_depth=10)
    wire = payload_from_encoded("dpt", enc)
    assert wire.HasField("range_axis") and len(wire.value_range) == 3
    back = encoded_from_payload(wire)
    assert back.meta["value_range"] == [list(r) for r in ranges]
    assert back.meta == json.loads(json.dumps(enc.meta))


def test_single_range_has_no_axis(hevc) -> None:
    enc = hevc.encode(_feature((1, 145, 128)), 30, value_range=(-3.0, 3.0))
    wire = payload_from_encoded("cls", enc)
    assert not wire.HasField("range_axis")
    assert "value_range" not in json.loads(wire.codec_meta_json)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: setattr(p, "dtype", "float16"), "dtype"),
        (lambda p: setattr(p, "codec_meta_json", "{not json"), "not valid JSON"),
        (lambda p: setattr(p, "codec_meta_json", "[1, 2]"), "JSON object"),
        (lambda p: setattr(p, "codec_meta_json", '{"shape": [1]}'), "repeats explicit"),
        (lambda p: p.value_range.add(lo=0.0, hi=1.0), "no range_axis"),
    ],
)
def test_malformed_payload_is_refused(hevc, mutate, match) -> None:
    enc = hevc.encode(_feature((1, 145, 128)), 30, value_range=(-3.0, 3.0))
    p = payload_from_encoded("cls", enc)
    mutate(p)
    with pytest.raises(DataError, match=match):
        encoded_from_payload(p)


def test_mask_png_is_lossless() -> None:
    mask = np.random.default_rng(0).integers(0, 11, (40, 56)).astype(np.uint8)
    np.testing.assert_array_equal(mask_from_png(mask_to_png(mask)), mask)


def test_depth_png_is_millimetres() -> None:
    depth = np.random.default_rng(0).uniform(0.5, 15.0, (40, 56)).astype(np.float32)
    back = depth_from_png(depth_to_png(depth))
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert np.abs(back - depth).max() <= 0.0005 + 1e-6
    clipped = depth_from_png(depth_to_png(np.array([[-1.0, 70.0]], dtype=np.float32)))
    np.testing.assert_allclose(clipped, [[0.0, 65.535]], rtol=0, atol=1e-5)
