"""One frame's path at the edge, shared by the edge runner, the live policy context and the simulator's live mode.

- :func:`trial_encode`, :func:`assess`: a feature encoded at one rate point
  with the real codec; a trial decoded locally and scored with
  :mod:`cfqa_core.metrics`, with measured times (the trials of a policy's
  search, :class:`cfqa_edge.policies.live.LiveContext`).
- :func:`infer_request`: the ``cfqa.v1`` request that carries a frame's
  encoded features to the cloud (payloads from
  :func:`cfqa_proto.convert.payload_from_encoded`).
- :func:`task_output_arrays`: a cloud ``TaskResult`` back as the arrays of a
  task output (cls logits, seg mask, dpt depth).

Torch-free: numpy, the codecs, the metrics and the protobuf messages.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from cfqa_core.codecs.base import EncodedFeature, FeatureCodec
from cfqa_core.errors import DataError
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import depth_from_png, mask_from_png

# ---- trial encodes and their local assessment ------------------------------------------------


def metric_value_range(value_range: Any) -> tuple[float, float]:
    """One (lo, hi) for the metrics from a codec value range (a pair or per-slice pairs)."""
    vr = np.asarray(value_range, dtype=np.float64).reshape(-1, 2)
    return float(vr[:, 0].min()), float(vr[:, 1].max())


def trial_encode(codec: FeatureCodec, feature: np.ndarray, rate_point: int, *, value_range: Any,
                 bit_depth: int = 10) -> tuple[EncodedFeature, float]:
    """``feature`` encoded at ``rate_point``, and the wall seconds the encode took."""
    t0 = time.perf_counter()
    enc = codec.encode(feature, rate_point, value_range=value_range, bit_depth=bit_depth)
    return enc, time.perf_counter() - t0


class Assessment(NamedTuple):
    """A trial decoded at the edge and scored against the original feature."""

    metrics: dict[str, float]
    decode_s: float   # the local decode
    seconds: float    # decode + metric scoring


def assess(codec: FeatureCodec, encoded: EncodedFeature, feature: np.ndarray, metrics: Sequence[str], *,
           task: str, value_range: Any, split: int | None = None) -> Assessment:
    """Decode ``encoded`` locally and score it against ``feature`` with ``metrics`` (none: decode only).

    ``value_range`` is the codec's (a pair or per-slice pairs; the metrics get
    its overall span); ``task`` and ``split`` go to the task-aware metrics
    (``proxy``; ``split`` None: the metric's default split).
    """
    from cfqa_core.metrics import compute_metrics

    t0 = time.perf_counter()
    fhat = codec.decode(encoded).reshape(feature.shape)
    t1 = time.perf_counter()
    scores = compute_metrics(list(metrics), feature, fhat, task=task, split=split,
                             value_range=metric_value_range(value_range)) if metrics else {}
    return Assessment(scores, t1 - t0, time.perf_counter() - t0)


# ---- the wire -----------------------------------------------------------------------------


def infer_request(payloads: Iterable[pb.FeaturePayload], *, node_id: str, frame_id: int, model_id: str,
                  split_block: int, top_k: int, model_version: str = "",
                  capture_ns: int | None = None) -> pb.InferRequest:
    """The request of one frame: its payloads (one per task) and who, what model and where it was split."""
    req = pb.InferRequest(node_id=node_id, frame_id=frame_id, model_id=model_id, model_version=model_version,
                          split_block=split_block, top_k=top_k)
    if capture_ns is not None:
        req.capture_time.FromNanoseconds(capture_ns)
    req.payloads.extend(payloads)
    return req


def task_output_arrays(task: str, result: pb.TaskResult, cls_classes: int) -> dict[str, np.ndarray]:
    """The keyword arrays of a task output (``logits``, ``mask`` or ``depth``) from the cloud's result.

    cls: ``cls_classes`` logits, ``log(score)`` at the returned top-k classes
    (1-based ids) and ``-inf`` elsewhere, so the argmax and the top-k order are
    the cloud's; seg: the class-id mask; dpt: depth in metres.
    """
    if task == "cls":
        logits = np.full(cls_classes, -math.inf)
        for entry in result.top_k:
            if not 1 <= entry.class_id <= cls_classes:
                raise DataError(f"cls result names class id {entry.class_id}, outside 1..{cls_classes}")
            logits[entry.class_id - 1] = math.log(max(entry.score, 1e-30))
        return {"logits": logits}
    if task == "seg":
        return {"mask": mask_from_png(result.mask_png)}
    return {"depth": depth_from_png(result.depth_png)}
