"""Property tests of what the cloud parses from the wire: protobuf, codec_meta_json, frame sizes, bitstreams.

Every parser either returns a well-formed value or raises its one documented
error type; nothing else escapes, whatever the bytes.
"""
from __future__ import annotations

import json
import zlib

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cfqa_core.codecs as codecs
from cfqa_cloud.service import RpcFailure, cap_message, parse_request
from cfqa_core.codecs import entropy
from cfqa_core.codecs.base import EncodedFeature
from cfqa_core.codecs.block import MAX_FRAME_SAMPLES, checked_frame_size
from cfqa_core.errors import CodecError, DataError
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import MAX_META_JSON_CHARS, encoded_from_payload, parse_meta_json, payload_from_encoded

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FAST
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_meta_json_parser_returns_an_object_or_data_error(text: str) -> None:
    try:
        value = parse_meta_json(text)
    except DataError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert isinstance(value, dict)


@FAST
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_meta_json_round_trips_small_objects(obj: dict) -> None:
    text = json.dumps(obj)
    if len(text) <= MAX_META_JSON_CHARS:
        assert parse_meta_json(text) == json.loads(text)


@FAST
@given(st.integers(0, 300), st.booleans())
def test_meta_json_nesting_is_bounded(depth: int, objects: bool) -> None:
    inner = ('{"k":' * depth + "1" + "}" * depth) if objects else ("[" * depth + "1" + "]" * depth)
    text = '{"a":' + inner + "}"
    if depth + 1 <= 8:
        assert isinstance(parse_meta_json(text), dict)
    else:
        with pytest.raises(DataError, match="nested deeper than 8 levels"):
            parse_meta_json(text)


@FAST
@given(st.binary(max_size=400))
def test_protobuf_parser_returns_a_request_or_invalid_argument(data: bytes) -> None:
    try:
        msg = parse_request(data)
    except RpcFailure as f:
        assert f.code == grpc.StatusCode.INVALID_ARGUMENT and len(f.message) <= 512
        return
    assert isinstance(msg, pb.InferRequest)


@FAST
@given(st.binary(max_size=200))
def test_learned_container_header_parser(data: bytes) -> None:
    try:
        z, y, y_max = entropy.unpack_strings(data)
    except CodecError:
        return
    assert 1 <= y_max <= entropy.MAX_Y_SYMBOL and len(z) + len(y) <= len(data)


@FAST
@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(1, entropy.MAX_Y_SYMBOL))
def test_learned_container_round_trip(z: bytes, y: bytes, y_max: int) -> None:
    assert entropy.unpack_strings(entropy.pack_strings(z, y, y_max)) == (z, y, y_max)


sizes = st.integers(-5, 1 << 40)


@FAST
@given(st.lists(st.integers(-3, 5000), min_size=0, max_size=10), sizes, sizes, sizes, sizes,
       st.sampled_from([8, 64]), st.sampled_from([1, 8, 16]))
def test_frame_size_check_allows_only_what_the_shape_implies(shape, w, h, pw, ph, align, min_size) -> None:
    meta = {"shape": shape, "width": w, "height": h, "padded_width": pw, "padded_height": ph}
    try:
        got = checked_frame_size(meta, align, min_size)
    except CodecError:
        return
    assert got == (pw, ph) and pw * ph <= MAX_FRAME_SAMPLES
    assert pw % align == 0 and ph % align == 0 and pw >= w and ph >= h and h == int(np.prod(shape[:-1]))


@FAST
@given(st.lists(st.integers(1, 300), min_size=2, max_size=4), st.sampled_from([8, 64]), st.sampled_from([1, 8, 16]))
def test_frame_size_check_accepts_the_encoders_padding(shape, align, min_size) -> None:
    from cfqa_core.packing import PackingParams, pack_levels

    if int(np.prod(shape)) > 200_000:
        return
    packed = pack_levels(np.zeros(shape, np.uint16), PackingParams((0.0, 1.0)), align, min_size)
    meta = packed.meta()
    assert checked_frame_size(meta, align, min_size) == (packed.padded_width, packed.padded_height)


payload_fields = st.fixed_dictionaries({
    "task": st.sampled_from(["cls", "seg", "dpt", "", "x" * 50]),
    "codec": st.sampled_from(["hevc", "hyperprior-cls", "nope"]),
    "rate_point": st.integers(-2**31, 2**31 - 1),
    "shape": st.lists(st.integers(-2**63, 2**63 - 1), max_size=5),
    "dtype": st.sampled_from(["", "float32", "int8"]),
    "value_range": st.lists(st.tuples(st.floats(), st.floats()), max_size=3),
    "bit_depth": st.none() | st.integers(-2**31, 2**31 - 1),
    "padded_width": st.none() | st.integers(-2**31, 2**31 - 1),
    "crc32": st.none() | st.integers(0, 2**32 - 1),
    "codec_meta_json": st.text(max_size=60) | json_values.map(json.dumps),
    "range_axis": st.none() | st.integers(-2**31, 2**31 - 1),
})


def _payload(fields: dict) -> pb.FeaturePayload:
    p = pb.FeaturePayload(task=fields["task"], codec=fields["codec"], rate_point=fields["rate_point"],
                          dtype=fields["dtype"], codec_meta_json=fields["codec_meta_json"], bitstream=b"\0" * 8)
    p.shape.extend(fields["shape"])
    p.value_range.extend(pb.ValueRange(lo=lo, hi=hi) for lo, hi in fields["value_range"])
    for name in ("bit_depth", "padded_width", "crc32", "range_axis"):
        if fields[name] is not None:
            setattr(p, name, fields[name])
    return p


@FAST
@given(payload_fields)
def test_payload_conversion_returns_a_feature_or_data_error(fields: dict) -> None:
    try:
        enc = encoded_from_payload(_payload(fields))
    except DataError as exc:
        assert len(str(exc)) < 400
        return
    assert isinstance(enc, EncodedFeature) and isinstance(enc.meta, dict)


@FAST
@given(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in {"shape", "value_range", "range_axis",
                                                                      "bit_depth", "width", "height", "padded_width",
                                                                      "padded_height", "crc32", "rounding",
                                                                      "layout"}),
                       json_values, max_size=5))
def test_payload_round_trip_keeps_codec_meta(extras: dict) -> None:
    meta = {"shape": [1, 145, 128], "value_range": [-1.0, 2.0], "bit_depth": 10, "crc32": 7, **extras}
    back = encoded_from_payload(payload_from_encoded("cls", EncodedFeature("hevc", 10, b"abc", meta)))
    assert back.meta == json.loads(json.dumps(meta))


@FAST
@given(st.text(max_size=3000))
def test_status_messages_are_one_bounded_line(text: str) -> None:
    out = cap_message(text)
    assert len(out) <= 512 and "\n" not in out and "\r" not in out


# ---- decoders: arbitrary bitstreams with consistent CRC and byte count -----------------------------


@pytest.fixture(scope="module")
def encoded_pair():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(1, 145, 128)).astype(np.float32)
    return {name: codecs.get_codec(name).encode(f, rp, value_range=(-3.0, 3.0))
            for name, rp in (("hevc", 20), ("hyperprior-cls", 5))}


def _decode_arbitrary(codec_name: str, base: EncodedFeature, data: bytes) -> None:
    meta = {**base.meta, "bytes": len(data), "crc32": zlib.crc32(data)}
    try:
        out = codecs.get_codec(codec_name).decode(EncodedFeature(codec_name, base.rate_point, data, meta))
    except CodecError as exc:
        assert "\n" not in str(exc)
        return
    assert out.shape == (1, 145, 128) and np.isfinite(out).all()


@SLOW
@given(data=st.data())
def test_hevc_decoder_on_arbitrary_bytes(encoded_pair, data) -> None:
    base = encoded_pair["hevc"]
    blob = data.draw(st.binary(max_size=300) | st.binary(min_size=1, max_size=64).map(
        lambda b: base.bitstream[: len(base.bitstream) // 2] + b))
    _decode_arbitrary("hevc", base, blob)


@SLOW
@given(data=st.data())
def test_learned_decoder_on_arbitrary_bytes(encoded_pair, data) -> None:
    base = encoded_pair["hyperprior-cls"]
    z, y, y_max = entropy.unpack_strings(base.bitstream)
    blob = data.draw(
        st.binary(max_size=200)
        | st.tuples(st.integers(0, 2**21), st.binary(max_size=100)).map(
            lambda t: entropy.write_varint(len(z)) + entropy.write_varint(t[0]) + z + t[1])
        | st.binary(max_size=100).map(lambda b: entropy.write_varint(len(z)) + entropy.write_varint(y_max) + b + y)
    )
    _decode_arbitrary("hyperprior-cls", base, blob)
