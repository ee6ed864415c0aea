"""Per-frame records kept as growable numpy columns (cheap to write in the hot loop).

Statuses: ``ok`` (result back within the deadline), ``late`` (back after
it), ``dropped`` (with a reason) and ``unfinished`` (still in flight when
the run stopped). Times are simulation seconds; NaN where a stage was never
reached.
"""
from __future__ import annotations

import numpy as np

STATUSES: tuple[str, ...] = ("unfinished", "ok", "late", "dropped")
UNFINISHED, OK, LATE, DROPPED = range(4)
DELIVERED_STATUSES = (OK, LATE)
DROP_REASONS: tuple[str, ...] = ("", "queue_full", "stale", "loss")
NO_DROP, QUEUE_FULL, STALE, LOSS = range(4)

_FLOAT = (
    "t_capture", "t_encode_start", "t_encode_done", "t_send_start", "t_send_done",
    "t_cloud_arrive", "t_cloud_start", "t_cloud_done", "t_result",
    "edge_s", "cloud_s", "metric", "task_score", "uncompressed_score", "gt_distortion", "output_change",
)
_INT = {
    "node": np.int32, "group": np.int16, "frame": np.int32, "image": np.int32, "link": np.int32,
    "bytes": np.int64, "wire_bytes": np.int64, "rate_point": np.int32, "encodes": np.int16,
    "met_target": np.int8, "status": np.int8, "drop_reason": np.int8,
}
_INT_DEFAULT = {"bytes": 0, "wire_bytes": 0, "rate_point": -1, "encodes": 0, "met_target": -1}


class FrameLog:
    """Columns indexed by frame row; ``add`` returns a new row's index."""

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.open = 0  # frames without a final status yet
        self.cols: dict[str, np.ndarray] = {}
        for name in _FLOAT:
            self.cols[name] = np.full(capacity, np.nan)
        for name, dtype in _INT.items():
            self.cols[name] = np.full(capacity, _INT_DEFAULT.get(name, 0), dtype=dtype)
        # Attribute access in the hot loop: one dict lookup fewer per write.
        self.__dict__.update(self.cols)

    def add(self, node: int, group: int, frame: int, image: int, link: int, t_capture: float) -> int:
        if self.n == self.cols["node"].size:
            self._grow()
        i = self.n
        self.n += 1
        self.open += 1
        self.node[i] = node
        self.group[i] = group
        self.frame[i] = frame
        self.image[i] = image
        self.link[i] = link
        self.t_capture[i] = t_capture
        return i

    def drop(self, i: int, reason: int) -> None:
        self.status[i] = DROPPED
        self.drop_reason[i] = reason
        self.open -= 1

    def finish(self, i: int, status: int) -> None:
        """Give a delivered frame its final status (``OK`` or ``LATE``)."""
        self.status[i] = status
        self.open -= 1

    def _grow(self) -> None:
        for name, col in self.cols.items():
            fill = np.nan if col.dtype.kind == "f" else _INT_DEFAULT.get(name, 0)
            self.cols[name] = np.concatenate([col, np.full(col.size, fill, dtype=col.dtype)])
        self.__dict__.update(self.cols)

    def columns(self) -> dict[str, np.ndarray]:
        """The filled part of every column."""
        return {name: col[: self.n] for name, col in self.cols.items()}
