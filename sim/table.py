"""The benchmark table that replay mode reads, indexed for the simulator's hot loop.

The table is built by ``cfqa dataset build``; its columns are defined once in
:mod:`cfqa_core.benchmark.table.schema` and its dense ``[image, rate point]``
arrays per (task, codec) come from :func:`cfqa_sim.ratecontrol.replay.replay_arrays`
(rate points in ladder order, ``rate_index`` 0 = highest quality). This
module adds what the simulator needs on top: the bytes a frame puts on the
link (bitstream + decode sidecar), a rate point -> column map, and one image
set per task. A (task, codec) is indexed when first used, so a table still
being built serves the pairs that are complete.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.errors import CfqaError, ScenarioError
from cfqa_sim.ratecontrol.replay import ReplayArrays, load_frame, metric_columns, replay_arrays, tasks_and_codecs


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


class BenchmarkTable:
    """A benchmark table; ``codec(task, codec)`` gives its indexed arrays."""

    def __init__(self, frame, source: str = "table") -> None:
        if frame.empty:
            raise ScenarioError(f"{source}: the benchmark table has no rows")
        self.frame = frame
        self.source = source
        self.pairs: dict[str, list[str]] = tasks_and_codecs(frame)  # task -> codecs with rows
        self.metric_names: tuple[str, ...] = metric_columns(frame)
        self._arrays: dict[tuple[str, str], CodecArrays] = {}

    @classmethod
    def load(cls, path: str | Path, images: str = "all") -> BenchmarkTable:
        """Read a ``table.parquet`` or a build folder (ScenarioError if unusable).

        ``images="evaluation"`` keeps, per task, only the images at odd positions in image-id
        order: the half the shipped rate plans were not fitted on (:mod:`cfqa_sim.ratecontrol.shipped`).
        """
        try:
            frame = load_frame(path)
        except CfqaError as exc:
            raise ScenarioError(str(exc)) from None
        if images == "evaluation":
            keep = []
            for _, ids in frame.groupby("task")["image_id"]:
                ordered = np.sort(ids.unique())
                keep.extend(ordered[1::2].tolist())
            frame = frame[frame["image_id"].isin(set(keep))].reset_index(drop=True)
        elif images != "all":
            raise ScenarioError(f"replay.images must be 'evaluation' or 'all', got '{images}'")
        return cls(frame, source=str(path))

    def codec(self, task: str, codec: str) -> CodecArrays:
        """Arrays of ``task`` x ``codec`` (ScenarioError if absent or incomplete)."""
        key = (task, codec)
        if key not in self._arrays:
            if task not in self.pairs:
                raise ScenarioError(f"{self.source}: no rows for task '{task}' (has: {', '.join(self.pairs)})")
            if codec not in self.pairs[task]:
                raise ScenarioError(
                    f"{self.source}: no rows for codec '{codec}' on task '{task}' (has: {', '.join(self.pairs[task])})"
                )
            try:
                arrays = CodecArrays(replay_arrays(self.frame, task, codec))
            except CfqaError as exc:
                raise ScenarioError(f"{self.source}: {exc}") from None
            for (t, other), seen in self._arrays.items():
                if t == task and not np.array_equal(seen.arrays.image_ids, arrays.arrays.image_ids):
                    raise ScenarioError(f"{self.source}: task {task}: codecs {other} and {codec} "
                                        "cover different images")
            self._arrays[key] = arrays
        return self._arrays[key]

    def images(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, uncompressed score per image) of ``task``, from its first complete codec used."""
        for (t, _), arrays in self._arrays.items():
            if t == task:
                return arrays.arrays.image_ids, arrays.arrays.ref_score
        if task not in self.pairs:
            raise ScenarioError(f"{self.source}: no rows for task '{task}' (has: {', '.join(self.pairs)})")
        arrays = self.codec(task, self.pairs[task][0])
        return arrays.arrays.image_ids, arrays.arrays.ref_score
