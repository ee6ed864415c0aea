"""The benchmark table that replay mode reads, indexed for the simulator's hot loop.

The table is built by ``cfqa dataset build``; its columns are defined once in
:mod:`cfqa_core.benchdata.schema` and its dense ``[image, rate point]``
arrays per (task, codec) come from :func:`edge.policies.table.replay_arrays`
(rate points in ladder order, ``rate_index`` 0 = highest quality). This
module adds what the simulator needs on top: one image set per task, the
bytes a frame puts on the link (bitstream + decode sidecar) and a rate point
-> column map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.errors import CfqaError, ScenarioError
from edge.policies.table import ReplayArrays, load_frame, metric_columns, replay_arrays, tasks_and_codecs


@dataclass
class CodecArrays:
    """One (task, codec) of the table, plus the simulator's lookups."""

    arrays: ReplayArrays
    sent_bytes: np.ndarray = field(init=False)        # [image, rate point]: bitstream + sidecar
    index: dict[int, int] = field(init=False)         # rate point -> column

    def __post_init__(self) -> None:
        self.sent_bytes = self.arrays.bytes + self.arrays.meta_bytes
        self.index = {rp: i for i, rp in enumerate(self.arrays.rate_points)}

    @property
    def rate_points(self) -> tuple[int, ...]:
        return self.arrays.rate_points


@dataclass
class TaskArrays:
    image_ids: np.ndarray
    uncompressed: np.ndarray  # ref_task_score: the uncompressed feature's score per image
    codecs: dict[str, CodecArrays]


@dataclass
class BenchmarkTable:
    tasks: dict[str, TaskArrays]
    metric_names: tuple[str, ...]
    source: str = "table"

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkTable:
        """Read and index a ``table.parquet`` or a build folder (ScenarioError if unusable)."""
        try:
            frame = load_frame(path)
        except CfqaError as exc:
            raise ScenarioError(str(exc)) from None
        return cls.from_frame(frame, source=str(path))

    @classmethod
    def from_frame(cls, frame, source: str = "table") -> BenchmarkTable:
        """Index a DataFrame in the benchmark schema (ScenarioError if incomplete)."""
        if frame.empty:
            raise ScenarioError(f"{source}: the benchmark table has no rows")
        tasks: dict[str, TaskArrays] = {}
        try:
            for task, codecs in tasks_and_codecs(frame).items():
                arrays = {c: CodecArrays(replay_arrays(frame, task, c)) for c in codecs}
                first = next(iter(arrays.values())).arrays
                for codec, arr in arrays.items():
                    if not np.array_equal(arr.arrays.image_ids, first.image_ids):
                        raise ScenarioError(
                            f"{source}: task {task}: codec {codec} covers other images than {first.codec}"
                        )
                tasks[task] = TaskArrays(first.image_ids, first.ref_score, arrays)
        except ScenarioError:
            raise
        except CfqaError as exc:
            raise ScenarioError(f"{source}: {exc}") from None
        return cls(tasks, metric_columns(frame), source)

    def task(self, task: str) -> TaskArrays:
        if task not in self.tasks:
            raise ScenarioError(f"{self.source}: no rows for task '{task}' (has: {', '.join(self.tasks)})")
        return self.tasks[task]

    def codec(self, task: str, codec: str) -> CodecArrays:
        arrays = self.task(task).codecs
        if codec not in arrays:
            raise ScenarioError(
                f"{self.source}: no rows for codec '{codec}' on task '{task}' (has: {', '.join(arrays)})"
            )
        return arrays[codec]
