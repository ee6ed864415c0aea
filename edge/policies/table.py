"""The benchmark table as dense [image, rate point] arrays for policy replay.

Images are in ``image_id`` order (the fixed frame order of one node) and rate
points in ladder order (``rate_index`` 0 = highest quality). Bytes are the
bitstream alone (the paper's rate); ``meta_bytes`` (the decode sidecar) are
kept apart so that reports can add them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfqa_core.benchdata.schema import BASE_COLUMNS, KEY_COLUMNS, read_table
from cfqa_core.errors import DataError


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
