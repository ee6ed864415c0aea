import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueRange(_message.Message):
    __slots__ = ("lo", "hi")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    lo: float
    hi: float
    def __init__(self, lo: _Optional[float] = ..., hi: _Optional[float] = ...) -> None: ...

class FeaturePayload(_message.Message):
    __slots__ = ("task", "codec", "rate_point", "shape", "dtype", "value_range", "range_axis", "bit_depth", "rounding", "layout", "frame_width", "frame_height", "padded_width", "padded_height", "crc32", "codec_meta_json", "bitstream", "metric_score", "metric_name")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RATE_POINT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_RANGE_FIELD_NUMBER: _ClassVar[int]
    RANGE_AXIS_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PADDED_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PADDED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    CODEC_META_JSON_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    METRIC_SCORE_FIELD_NUMBER: _ClassVar[int]
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    task: str
    codec: str
    rate_point: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    value_range: _containers.RepeatedCompositeFieldContainer[ValueRange]
    range_axis: int
    bit_depth: int
    rounding: str
    layout: str
    frame_width: int
    frame_height: int
    padded_width: int
    padded_height: int
    crc32: int
    codec_meta_json: str
    bitstream: bytes
    metric_score: float
    metric_name: str
    def __init__(self, task: _Optional[str] = ..., codec: _Optional[str] = ..., rate_point: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., value_range: _Optional[_Iterable[_Union[ValueRange, _Mapping]]] = ..., range_axis: _Optional[int] = ..., bit_depth: _Optional[int] = ..., rounding: _Optional[str] = ..., layout: _Optional[str] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., padded_width: _Optional[int] = ..., padded_height: _Optional[int] = ..., crc32: _Optional[int] = ..., codec_meta_json: _Optional[str] = ..., bitstream: _Optional[bytes] = ..., metric_score: _Optional[float] = ..., metric_name: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("node_id", "frame_id", "capture_time", "model_id", "model_version", "split_block", "payloads", "top_k")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_BLOCK_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    frame_id: int
    capture_time: _timestamp_pb2.Timestamp
    model_id: str
    model_version: str
    split_block: int
    payloads: _containers.RepeatedCompositeFieldContainer[FeaturePayload]
    top_k: int
    def __init__(self, node_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., split_block: _Optional[int] = ..., payloads: _Optional[_Iterable[_Union[FeaturePayload, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("class_id", "label", "score")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    label: str
    score: float
    def __init__(self, class_id: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "top_k", "mask_png", "depth_png", "width", "height")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    DEPTH_PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    task: str
    top_k: _containers.RepeatedCompositeFieldContainer[ClassScore]
    mask_png: bytes
    depth_png: bytes
    width: int
    height: int
    def __init__(self, task: _Optional[str] = ..., top_k: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., mask_png: _Optional[bytes] = ..., depth_png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "compute_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    compute_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("node_id", "frame_id", "results", "timings", "model_id", "model_version", "server_id", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    frame_id: int
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    timings: Timings
    model_id: str
    model_version: str
    server_id: str
    error: FrameError
    def __init__(self, node_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., server_id: _Optional[str] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("server_id", "model_ids", "model_versions", "codecs", "server_time")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, server_id: _Optional[str] = ..., model_ids: _Optional[_Iterable[str]] = ..., model_versions: _Optional[_Iterable[str]] = ..., codecs: _Optional[_Iterable[str]] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
