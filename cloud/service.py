"""The ``cfqa.v1.SplitInference`` servicer: parse, validate, admit per frame, call the engine.

Requests arrive as raw bytes and are parsed here, so that a message that is
not a valid protobuf is INVALID_ARGUMENT rather than grpc's INTERNAL.

Admission is per frame, never per call (:class:`cfqa_cloud.admission.FrameQueue`):
an ``Infer`` call and every message of an ``InferStream`` is admitted on its
own, waits at most the queue-delay limit for a compute slot (reported as
``queue_ms``) and is refused RESOURCE_EXHAUSTED beyond the queue bound. A
frame whose deadline passed, or whose client went away, while it waited is
not computed. Inside a stream every per-frame failure, overload included, is
answered in-band (``InferResponse.error``) and the stream goes on; streams are
capped in total and per peer and closed when idle.

A repeated ``(node_id, frame_id)`` with the same content (model, split,
payloads, top-k; the capture time and metric scores may differ) is answered
from a bounded cache (:class:`cfqa_cloud.admission.ResponseCache`), never
recomputed; the same id with other content is computed and replaces the entry.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from cfqa_cloud.admission import FrameQueue, Refusal, ResponseCache, StreamRegistry, peer_host
from cfqa_cloud.engine import (
    InferenceEngine,
    InferenceRequest,
    InferenceResult,
    ModelVersionError,
    TaskPayload,
    UnknownModelError,
)
from cfqa_cloud.metrics import CloudMetrics, label, log_access
from cfqa_core.errors import CfqaError, DataError
from cfqa_core.task_names import TASKS
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import depth_to_png, encoded_from_payload, load_codecs, mask_to_png

log = logging.getLogger("cfqa.cloud")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
# gRPC caps the status message (trailers) at 16 KB; requests can echo long names into errors.
MAX_STATUS_CHARS = 512
_INTERPRETER_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)
_TASKS = frozenset(TASKS)
_CODECS = frozenset(load_codecs())


@dataclass
class ServiceLimits:
    """Admission and stream limits (see the module docstring)."""

    max_queue: int = 16  # frames admitted at once: waiting or computing
    compute_slots: int = 1
    max_queue_delay_s: float = 2.0
    max_streams: int = 128
    max_streams_per_peer: int = 16
    stream_idle_s: float = 60.0
    cache_entries: int = 4096
    cache_ttl_s: float = 600.0


def cap_message(message: str, limit: int = MAX_STATUS_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 15] + " ...(truncated)"


class RpcFailure(Exception):
    """A request-level failure carrying its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = cap_message(message)
        self.reason = reason


def status_of(exc: CfqaError) -> grpc.StatusCode:
    """The gRPC status of an engine error."""
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ModelVersionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INVALID_ARGUMENT


def parse_request(data: bytes) -> pb.InferRequest:
    """Wire bytes -> InferRequest (RpcFailure INVALID_ARGUMENT when they are not one)."""
    msg = pb.InferRequest()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                         f"request is not a valid cfqa.v1.InferRequest message ({exc})") from None
    return msg


def request_from_pb(msg: pb.InferRequest) -> InferenceRequest:
    """Wire request -> engine request (DataError on a malformed payload)."""
    if len(msg.payloads) > len(_TASKS):  # refuse before converting thousands of payloads
        raise DataError(f"request carries {len(msg.payloads)} payloads; at most one per task ({len(_TASKS)})")
    payloads = [
        TaskPayload(p.task, encoded_from_payload(p), p.metric_score if p.HasField("metric_score") else None)
        for p in msg.payloads
    ]
    return InferenceRequest(
        model_id=msg.model_id,
        split=int(msg.split_block),
        payloads=payloads,
        model_version=msg.model_version,
        node_id=msg.node_id,
        frame_id=int(msg.frame_id),
        top_k=int(msg.top_k),
    )


def response_from_result(msg: pb.InferRequest, result: InferenceResult, server_id: str) -> pb.InferResponse:
    out = pb.InferResponse(
        node_id=msg.node_id, frame_id=msg.frame_id, model_id=result.model_id,
        model_version=result.model_version, server_id=server_id,
    )
    for pred in result.predictions:
        r = out.results.add(task=pred.task)
        for cid, label_, score in pred.top_k:
            r.top_k.add(class_id=cid, label=label_, score=score)
        if pred.mask is not None:
            r.mask_png = mask_to_png(pred.mask)
            r.height, r.width = pred.mask.shape
        if pred.depth is not None:
            r.depth_png = depth_to_png(pred.depth)
            r.height, r.width = pred.depth.shape
    return out


def content_digest(msg: pb.InferRequest) -> bytes:
    """SHA-256 of what the answer depends on: everything but the capture time and the edge's metric scores.

    A node that resends a frame after a restart may stamp it anew; it still gets
    the answer it would have had, from the cache.
    """
    core = pb.InferRequest()
    core.CopyFrom(msg)
    core.ClearField("capture_time")
    for p in core.payloads:
        p.ClearField("metric_score")
        p.ClearField("metric_name")
    return hashlib.sha256(core.SerializeToString(deterministic=True)).digest()


def _labels(msg: pb.InferRequest | None) -> tuple[str, str]:
    """(codec, task) labels of a request: '+'-joined when it carries several payloads."""
    if msg is None or not msg.payloads:
        return "none", "none"
    codecs = sorted({label(p.codec, _CODECS) for p in msg.payloads})
    tasks = [label(p.task, _TASKS) for p in msg.payloads]
    return "+".join(codecs)[:64], "+".join(tasks)[:32]


class SplitInferenceServicer:
    """gRPC front of an :class:`InferenceEngine` (see the module docstring)."""

    def __init__(self, engine: InferenceEngine, limits: ServiceLimits | None = None, server_id: str = "",
                 metrics: CloudMetrics | None = None,
                 on_saturation: Callable[[bool], None] | None = None) -> None:
        import cfqa_core.codecs as codecs

        load_codecs()
        self.engine = engine
        self.limits = limits or ServiceLimits()
        self.server_id = server_id
        self.metrics = metrics or CloudMetrics()
        self._on_saturation = on_saturation
        self._saturated = False
        lim = self.limits
        self.queue = FrameQueue(lim.max_queue, lim.compute_slots, lim.max_queue_delay_s, self._queue_changed)
        self.compute_slots = self.queue.slots
        self.streams = StreamRegistry(lim.max_streams, lim.max_streams_per_peer, lim.stream_idle_s,
                                      lambda n: self.metrics.open_streams.set(n))
        self.cache = ResponseCache(lim.cache_entries, lim.cache_ttl_s)
        self._stats_lock = threading.Lock()
        self.stats = {"ok": 0, "error": 0, "rejected_busy": 0, "expired_skipped": 0, "replayed": 0}
        names = []
        for name in codecs.registered_names():
            ok, _ = codecs.get_codec(name).availability()
            if ok:
                names.append(name)
        versions = engine.model_versions()
        self._ping = pb.PingResponse(server_id=server_id, model_ids=list(versions),
                                     model_versions=list(versions.values()), codecs=names)

    @property
    def in_flight(self) -> int:
        """Frames admitted: waiting for or holding a compute slot."""
        return self.queue.admitted

    def _queue_changed(self, admitted: int, waiting: int) -> None:
        self.metrics.in_flight.set(admitted)
        self.metrics.queue_depth.set(waiting)
        saturated = admitted >= self.limits.max_queue
        if saturated != self._saturated:
            self._saturated = saturated
            if self._on_saturation is not None:
                self._on_saturation(saturated)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def close(self) -> None:
        self.streams.stop()

    # ---- one frame ---------------------------------------------------------------------
    def _compute(self, msg: pb.InferRequest, context: grpc.ServicerContext, t_entry: float) -> pb.InferResponse:
        """Validate, admit and compute one frame, or raise RpcFailure."""
        try:
            checked = self.engine.validate(request_from_pb(msg))
        except CfqaError as exc:
            raise RpcFailure(status_of(exc), str(exc)) from None
        try:
            self.queue.enter()
        except Refusal as r:
            self._count("rejected_busy")
            raise RpcFailure(r.code, r.message, r.reason) from None
        try:
            try:
                self.queue.wait_slot(context.time_remaining())
            except Refusal as r:
                if r.reason == "queue_delay":
                    self._count("rejected_busy")
                raise RpcFailure(r.code, r.message, r.reason) from None
            try:
                t_start = time.perf_counter()
                if not context.is_active() or _expired(context):
                    self._count("expired_skipped")
                    raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before compute started",
                                     "deadline")
                try:
                    result = self.engine.run(checked)
                except CfqaError as exc:
                    raise RpcFailure(status_of(exc), str(exc)) from None
            finally:
                self.queue.release_slot()
        finally:
            self.queue.leave()
        resp = response_from_result(msg, result, self.server_id)
        t = resp.timings
        t.queue_ms = 1e3 * (t_start - t_entry)
        t.decode_ms = 1e3 * result.decode_s
        t.compute_ms = 1e3 * result.compute_s
        t.total_ms = 1e3 * (time.perf_counter() - t_entry)
        return resp

    def _frame(self, data: bytes, context: grpc.ServicerContext, method: str, peer: str) -> pb.InferResponse:
        """Answer one frame's bytes (from the cache when repeated) or raise RpcFailure; logs and counts it."""
        t_entry = time.perf_counter()
        msg: pb.InferRequest | None = None
        code, message, replayed = grpc.StatusCode.OK, "", False
        try:
            msg = parse_request(data)
            key = (msg.node_id, int(msg.frame_id)) if msg.node_id else None
            digest = content_digest(msg) if key else b""
            cached = self.cache.claim(key, digest, min(_wait_budget(context), 30.0)) if key else None
            if cached is not None:
                replayed = True
                self._count("replayed")
                self.metrics.replays.inc()
                resp = pb.InferResponse.FromString(cached)
            else:
                answer = None
                try:
                    resp = self._compute(msg, context, t_entry)
                    answer = resp.SerializeToString()
                finally:
                    if key:
                        self.cache.finish(key, digest, answer)
            self._count("ok")
            return resp
        except RpcFailure as f:
            code, message = f.code, f.message
            self._count("error")
            if f.reason in ("queue_full", "queue_delay"):
                self.metrics.admission_rejections.labels(f.reason).inc()
            raise
        except BaseException as exc:
            if isinstance(exc, _INTERPRETER_EXITS):
                raise
            self._count("error")
            fid = msg.frame_id if msg is not None else "?"
            log.exception("internal error on frame %s of node %r", fid, (msg.node_id if msg is not None else "")[:64])
            code, message = grpc.StatusCode.INTERNAL, "internal server error (see the server log)"
            raise RpcFailure(code, message) from None
        finally:
            elapsed = time.perf_counter() - t_entry
            codec, task = _labels(msg)
            self.metrics.requests.labels(method, code.name, codec, task).inc()
            self.metrics.latency.labels(method).observe(elapsed)
            log_access(method=method, peer=peer, node=(msg.node_id[:64] if msg is not None else ""),
                       frame=(msg.frame_id if msg is not None else None), codec=codec, task=task,
                       code=code.name, ms=round(1e3 * elapsed, 3), bytes=len(data), replayed=replayed,
                       error=message[:200] or None)

    # ---- RPCs --------------------------------------------------------------------------
    def Infer(self, request: bytes, context: grpc.ServicerContext) -> pb.InferResponse:
        try:
            return self._frame(request, context, "Infer", peer_host(context.peer()))
        except RpcFailure as f:
            context.abort(f.code, f.message)

    def InferStream(self, request_iterator: Iterator[bytes],
                    context: grpc.ServicerContext) -> Iterator[pb.InferResponse]:
        peer = peer_host(context.peer())
        try:
            sid = self.streams.open(peer, context)
        except Refusal as r:
            self.metrics.admission_rejections.labels(r.reason).inc()
            log_access(method="InferStream", peer=peer, code=r.code.name, error=r.message)
            context.abort(r.code, r.message)
        try:
            for data in request_iterator:
                self.streams.busy(sid, True)
                try:
                    resp = self._frame(data, context, "InferStream", peer)
                except RpcFailure as f:
                    if f.code == grpc.StatusCode.DEADLINE_EXCEEDED and _expired(context):
                        context.abort(f.code, f.message)  # the stream's own deadline: nothing more to answer
                    msg = _frame_ids(data)
                    resp = pb.InferResponse(node_id=msg[0], frame_id=msg[1], server_id=self.server_id,
                                            error=pb.FrameError(code=f.code.value[0], message=f.message))
                self.streams.busy(sid, False)
                yield resp
        finally:
            self.streams.close(sid)

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        resp = pb.PingResponse()
        resp.CopyFrom(self._ping)
        resp.server_time.GetCurrentTime()
        return resp

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's method handlers; Infer and InferStream take raw bytes (parsed in the handler)."""
        ser = pb.InferResponse.SerializeToString
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Infer": grpc.unary_unary_rpc_method_handler(self.Infer, response_serializer=ser),
            "InferStream": grpc.stream_stream_rpc_method_handler(self.InferStream, response_serializer=ser),
            "Ping": grpc.unary_unary_rpc_method_handler(
                self.Ping, request_deserializer=_lenient_ping, response_serializer=pb.PingResponse.SerializeToString),
        })


def _lenient_ping(data: bytes) -> pb.PingRequest:
    """PingRequest has no fields: any bytes are a ping (nothing to refuse, nothing to fail on)."""
    return pb.PingRequest()


def _frame_ids(data: bytes) -> tuple[str, int]:
    """(node_id, frame_id) of a frame's bytes when they parse, else ('', 0)."""
    try:
        msg = pb.InferRequest.FromString(data)
        return msg.node_id, int(msg.frame_id)
    except Exception:
        return "", 0


# Without a client deadline gRPC reports a far-future one; cap waits at a day.
_NO_DEADLINE_S = 86400.0


def _wait_budget(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    return _NO_DEADLINE_S if remaining is None else min(max(0.0, remaining), _NO_DEADLINE_S)


def _expired(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0.0

