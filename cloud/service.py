"""The ``cfqa.v1.SplitInference`` servicer: validate, convert, admit, call the engine.

Admission: at most ``max_concurrent`` requests are inside the handler at once
(more get RESOURCE_EXHAUSTED at once rather than queueing unseen in the
transport), and at most ``compute_slots`` of them decode and compute at a time
(the wait for a slot is reported as ``queue_ms``). A request whose deadline has
passed, or whose client went away, while it waited is not computed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from cfqa_core.errors import CfqaError
from cloud.engine import (
    InferenceEngine,
    InferenceRequest,
    InferenceResult,
    ModelVersionError,
    TaskPayload,
    UnknownModelError,
)
from proto import cfqa_v1_pb2 as pb
from proto import cfqa_v1_pb2_grpc as pb_grpc
from proto.convert import depth_to_png, encoded_from_payload, load_codecs, mask_to_png

log = logging.getLogger("cfqa.cloud")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name


@dataclass
class ServiceLimits:
    max_concurrent: int = 16
    compute_slots: int = 1


class RpcFailure(Exception):
    """A request-level failure carrying its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_of(exc: CfqaError) -> grpc.StatusCode:
    """The gRPC status of an engine error."""
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ModelVersionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INVALID_ARGUMENT


def request_from_pb(msg: pb.InferRequest) -> InferenceRequest:
    """Wire request -> engine request (DataError on a malformed payload)."""
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
        for cid, label, score in pred.top_k:
            r.top_k.add(class_id=cid, label=label, score=score)
        if pred.mask is not None:
            r.mask_png = mask_to_png(pred.mask)
            r.height, r.width = pred.mask.shape
        if pred.depth is not None:
            r.depth_png = depth_to_png(pred.depth)
            r.height, r.width = pred.depth.shape
    return out


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    """gRPC front of an :class:`InferenceEngine`."""

    def __init__(self, engine: InferenceEngine, limits: ServiceLimits | None = None, server_id: str = "") -> None:
        import cfqa_core.codecs as codecs

        load_codecs()
        self.engine = engine
        self.limits = limits or ServiceLimits()
        self.server_id = server_id
        self._admission = threading.BoundedSemaphore(self.limits.max_concurrent)
        self.compute_slots = threading.BoundedSemaphore(self.limits.compute_slots)
        self._stats_lock = threading.Lock()
        self.stats = {"ok": 0, "error": 0, "rejected_busy": 0, "expired_skipped": 0}
        self.in_flight = 0
        names = []
        for name in codecs.registered_names():
            ok, _ = codecs.get_codec(name).availability()
            if ok:
                names.append(name)
        versions = engine.model_versions()
        self._ping = pb.PingResponse(server_id=server_id, model_ids=list(versions),
                                     model_versions=list(versions.values()), codecs=names)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _admit(self, context: grpc.ServicerContext) -> None:
        """Take an admission slot or abort RESOURCE_EXHAUSTED."""
        if not self._admission.acquire(blocking=False):
            self._count("rejected_busy")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server busy: {self.limits.max_concurrent} requests in progress")
        with self._stats_lock:
            self.in_flight += 1

    def _release(self) -> None:
        with self._stats_lock:
            self.in_flight -= 1
        self._admission.release()

    # ---- one frame ---------------------------------------------------------------------
    def _process(self, msg: pb.InferRequest, context: grpc.ServicerContext, t_entry: float) -> pb.InferResponse:
        """Answer one frame or raise RpcFailure."""
        try:
            checked = self.engine.validate(request_from_pb(msg))
        except CfqaError as exc:
            raise RpcFailure(status_of(exc), str(exc)) from None
        if not self.compute_slots.acquire(timeout=_wait_budget(context)):
            raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a compute slot")
        try:
            t_start = time.perf_counter()
            if not context.is_active() or _expired(context):
                self._count("expired_skipped")
                raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before compute started")
            try:
                result = self.engine.run(checked)
            except CfqaError as exc:
                raise RpcFailure(status_of(exc), str(exc)) from None
        finally:
            self.compute_slots.release()
        resp = response_from_result(msg, result, self.server_id)
        t = resp.timings
        t.queue_ms = 1e3 * (t_start - t_entry)
        t.decode_ms = 1e3 * result.decode_s
        t.compute_ms = 1e3 * result.compute_s
        t.total_ms = 1e3 * (time.perf_counter() - t_entry)
        return resp

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        t_entry = time.perf_counter()
        self._admit(context)
        try:
            resp = self._process(request, context, t_entry)
        except RpcFailure as exc:
            self._count("error")
            context.abort(exc.code, exc.message)
        except Exception:
            self._count("error")
            log.exception("internal error on frame %s of node %s", request.frame_id, request.node_id)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")
        finally:
            self._release()
        self._count("ok")
        return resp

    def InferStream(self, request_iterator: Iterator[pb.InferRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.InferResponse]:
        # A stream holds one admission slot for its whole life.
        self._admit(context)
        try:
            for request in request_iterator:
                t_entry = time.perf_counter()
                try:
                    resp = self._process(request, context, t_entry)
                    self._count("ok")
                except RpcFailure as exc:
                    self._count("error")
                    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        context.abort(exc.code, exc.message)
                    resp = pb.InferResponse(node_id=request.node_id, frame_id=request.frame_id,
                                            server_id=self.server_id,
                                            error=pb.FrameError(code=exc.code.value[0], message=exc.message))
                yield resp
        finally:
            self._release()

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        resp = pb.PingResponse()
        resp.CopyFrom(self._ping)
        resp.server_time.GetCurrentTime()
        return resp


# Without a client deadline gRPC reports a far-future one; cap waits at a day.
_NO_DEADLINE_S = 86400.0


def _wait_budget(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    return _NO_DEADLINE_S if remaining is None else min(max(0.0, remaining), _NO_DEADLINE_S)


def _expired(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0.0
