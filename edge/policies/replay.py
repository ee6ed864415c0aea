"""Policy contexts over the benchmark table (no network, no codec at run time).

A trial encode of image ``i`` at a rate point is a lookup: bytes sent
(bitstream + decode sidecar), the measured ``encode_s`` and ``decode_s`` and
every metric column; ``judge`` gives how far the task output moved from
the uncompressed one (:mod:`cfqa_core.fidelity`) for the oracle.
"""
from __future__ import annotations

import math

import numpy as np

from cfqa_edge.policies.api import EncodeOutcome, PolicyContext
from cfqa_edge.policies.table import ReplayArrays


def replay_context(arr: ReplayArrays, i: int, *, frame_idx: int, node_id: int = 0, metric_s: float = 0.0,
                   throughput_bps: float | None = None, time_left_s: float = math.inf, queue_frames: int = 0,
                   previous_rate_point: int | None = None, rng: np.random.Generator | None = None,
                   feature: np.ndarray | None = None) -> PolicyContext:
    """The context of image row ``i`` of ``arr`` as frame ``frame_idx`` of node ``node_id``.

    ``feature``: the image's original feature when known (the build folder keeps them), for
    policies that look at cheap statistics of it.
    """
    col = {rp: r for r, rp in enumerate(arr.rate_points)}
    metrics = arr.metrics

    def encode(rp: int) -> EncodeOutcome:
        r = col[rp]
        return EncodeOutcome(rp, int(arr.bytes[i, r] + arr.meta_bytes[i, r]), float(arr.encode_s[i, r]),
                             {m: float(v[i, r]) for m, v in metrics.items()}, float(arr.decode_s[i, r]))

    def judge(rp: int) -> float:
        return float(arr.output_change[i, col[rp]])

    return PolicyContext(
        node_id=node_id, frame_idx=frame_idx, task=arr.task, codec=arr.codec, ladder=arr.rate_points, now_s=0.0,
        time_left_s=time_left_s, throughput_bps=throughput_bps, queue_frames=queue_frames,
        previous_rate_point=previous_rate_point, rng=rng if rng is not None else np.random.default_rng(frame_idx),
        encode=encode, metric_s=metric_s, judge=judge, feature=feature,
    )
