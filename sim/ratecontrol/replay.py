"""Replay of the benchmark table: dense [image, rate point] arrays and policy contexts over them.

Images are in ``image_id`` order (the fixed frame order of one node) and rate
points in ladder order (``rate_index`` 0 = highest quality). Bytes are the
bitstream alone (the paper's rate); ``meta_bytes`` (the decode sidecar) are
kept apart so that reports can add them.

A trial encode of image ``i`` at a rate point is a lookup (no network, no
codec at run time): bytes sent (bitstream + decode sidecar), the measured
``encode_s`` and ``decode_s`` and every metric column; ``judge`` gives how far
the task output moved from the uncompressed one (:mod:`cfqa_core.fidelity`)
for the oracle. Offline only: the table holds ground truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfqa_core.benchmark.table.schema import BASE_COLUMNS, KEY_COLUMNS, read_table
from cfqa_core.errors import DataError
from cfqa_edge.policies.api import EncodeOutcome, PolicyContext


@dataclass
class ReplayArrays:
    """One (task, codec) of the table: every array is [n_images, n_rate_points] unless noted."""

    task: str
    codec: str
    image_ids: np.ndarray          # [n]
    rate_points: tuple[int, ...]   # ladder order
    bytes: np.ndarray
    meta_bytes: np.ndarray
    encode_s: np.ndarray
    decode_s: np.ndarray
    task_score: np.ndarray
    gt_distortion: np.ndarray
    output_change: np.ndarray      # change of the task output from the uncompressed one (cfqa_core.fidelity)
    ref_score: np.ndarray          # [n]
    metrics: dict[str, np.ndarray]
    feature_elements: int

    @property
    def n_images(self) -> int:
        return int(self.image_ids.size)

    def subset(self, rows: np.ndarray) -> ReplayArrays:
        """The same arrays restricted to image rows ``rows`` (order kept)."""
        pick = lambda a: a[rows]  # noqa: E731
        return ReplayArrays(
            self.task, self.codec, pick(self.image_ids), self.rate_points, pick(self.bytes), pick(self.meta_bytes),
            pick(self.encode_s), pick(self.decode_s), pick(self.task_score), pick(self.gt_distortion),
            pick(self.output_change), pick(self.ref_score), {k: pick(v) for k, v in self.metrics.items()},
            self.feature_elements,
        )

    def metric(self, name: str) -> np.ndarray:
        if name not in self.metrics:
            raise DataError(f"benchmark table has no metric column '{name}' (has: {', '.join(self.metrics)})")
        return self.metrics[name]


def metric_columns(frame) -> tuple[str, ...]:
    """Float columns outside the schema's base columns: the feature-quality metrics."""
    return tuple(c for c in frame.columns if c not in BASE_COLUMNS and frame[c].dtype.kind == "f")


def load_frame(path: str | Path):
    """Read a ``table.parquet`` (or its build folder) with the schema's column check."""
    return read_table(path)


def replay_arrays(frame, task: str, codec: str) -> ReplayArrays:
    """Dense arrays of ``task`` x ``codec`` (DataError if absent or incomplete)."""
    sel = frame[(frame["task"] == task) & (frame["codec"] == codec)]
    if sel.empty:
        have = sorted({f"{t}/{c}" for t, c in zip(frame["task"], frame["codec"])})
        raise DataError(f"benchmark table has no rows for {task}/{codec} (has: {', '.join(have)})")
    if sel.duplicated(list(KEY_COLUMNS)).any():
        row = sel[sel.duplicated(list(KEY_COLUMNS))].iloc[0]
        raise DataError(f"benchmark table has a duplicate row {tuple(row[c] for c in KEY_COLUMNS)}")
    ids = np.array(sorted(sel["image_id"].unique()))
    rps = np.sort(sel["rate_point"].unique())
    ii = np.searchsorted(ids, sel["image_id"].to_numpy())
    rr = np.searchsorted(rps, sel["rate_point"].to_numpy())
    filled = np.zeros((ids.size, rps.size), dtype=bool)
    filled[ii, rr] = True
    if not filled.all():
        i, r = np.argwhere(~filled)[0]
        raise DataError(f"benchmark table {task}/{codec}: no row for image {ids[i]!r} at rate point {rps[r]}")

    def grid(col: str, dtype=float) -> np.ndarray:
        out = np.empty(filled.shape, dtype=dtype)
        out[ii, rr] = sel[col].to_numpy(dtype=dtype)
        return out

    order = np.argsort(grid("rate_index").mean(axis=0), kind="stable")  # ladder order
    ref = sel.drop_duplicates("image_id").set_index("image_id")["ref_task_score"].reindex(ids).to_numpy(float)
    return ReplayArrays(
        task=task, codec=codec, image_ids=ids, rate_points=tuple(int(r) for r in rps[order]),
        bytes=grid("bytes", np.int64)[:, order], meta_bytes=grid("meta_bytes", np.int64)[:, order],
        encode_s=grid("encode_s")[:, order], decode_s=grid("decode_s")[:, order],
        task_score=grid("task_score")[:, order], gt_distortion=grid("gt_distortion")[:, order],
        output_change=grid("output_change")[:, order], ref_score=ref,
        metrics={m: grid(m)[:, order] for m in metric_columns(sel)},
        feature_elements=int(sel["feature_elements"].iloc[0]),
    )


def tasks_and_codecs(frame) -> dict[str, list[str]]:
    """``{task: [codecs]}`` present in the table."""
    out: dict[str, list[str]] = {}
    for (task, codec), _ in frame.groupby(["task", "codec"], sort=True):
        out.setdefault(str(task), []).append(str(codec))
    return out


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
