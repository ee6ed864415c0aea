"""Timing profiles: what encoding, decoding and scoring cost on the edge, measured once, reused by replay.

A benchmark table records each row's encode and decode wall time as the
build measured it, on a machine busy with the build itself; replaying those
lets build noise decide which frame makes its deadline. A timing profile
instead holds, per codec x task (feature shape) x rate point, the median of
repeated measurements of one encode and one decode, and per metric x task
the median cost of one evaluation. Replay (``cfqa policies eval --timing``,
a scenario's ``timing.profile``) charges those.

The times charged are **CPU seconds** (the process's and its encoder
subprocesses'), which a loaded machine inflates far less than wall time;
the wall-clock medians are recorded beside them. The profile also keeps the
per-task backbone and cloud times the simulator already used
(``entries``).
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cfqa_core.errors import DataError
from cfqa_core.task_names import TASKS


def _cpu() -> float:
    """CPU seconds of this process (all threads, high resolution) and of its finished subprocesses."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _timed(fn, repeats: int) -> tuple[Any, float, float]:
    """(last result, median wall s, median CPU s) of ``repeats`` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return out, statistics.median(walls), statistics.median(cpus)


class TimingProfile:
    """A measured profile (see the module docstring); ``data`` is its JSON."""

    def __init__(self, data: dict[str, Any], source: str = "profile") -> None:
        self.data = data
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> TimingProfile:
        path = Path(path)
        try:
            return cls(json.loads(path.read_text()), str(path))
        except FileNotFoundError:
            raise DataError(f"timing profile not found: {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"timing profile {path} is unreadable: {exc}") from None

    @property
    def has_codecs(self) -> bool:
        return bool(self.data.get("codecs"))

    def _cell(self, codec: str, task: str) -> dict[str, Any]:
        try:
            return self.data["codecs"][codec][task]
        except KeyError:
            raise DataError(f"{self.source}: no timing for codec '{codec}' on task '{task}' "
                            "(measure it with 'cfqa timing profile')") from None

    def codec_times(self, codec: str, task: str, rate_points: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(encode s, decode s) per rate point (CPU medians)."""
        cell = self._cell(codec, task)
        enc, dec = [], []
        for rp in rate_points:
            entry = cell.get(str(int(rp)))
            if entry is None:
                raise DataError(f"{self.source}: no timing for {codec}/{task} at rate point {rp}")
            enc.append(float(entry["encode_cpu_s"]))
            dec.append(float(entry["decode_cpu_s"]))
        return np.asarray(enc), np.asarray(dec)

    def apply(self, arr):
        """``arr`` (ReplayArrays) with its encode/decode times replaced by this profile's medians."""
        enc, dec = self.codec_times(arr.codec, arr.task, arr.rate_points)
        shape = arr.encode_s.shape
        return replace(arr, encode_s=np.broadcast_to(enc, shape).copy(), decode_s=np.broadcast_to(dec, shape).copy())

    def metric_s(self, metric: str, task: str) -> float:
        try:
            return float(self.data["metrics"][metric][task])
        except KeyError:
            raise DataError(f"{self.source}: no timing for metric '{metric}' on task '{task}'") from None


def measure_profile(build: str | Path, *, codecs: Sequence[str], tasks: Sequence[str] = TASKS,
                    metrics: Sequence[str] = ("proxy", "cosine"), images: int = 2, repeats: int = 3,
                    ladder: str = "operating", progress: bool = True) -> dict[str, Any]:
    """Measure a profile on the originals of a ``cfqa dataset build`` folder."""
    from tqdm import tqdm

    import cfqa_core.codecs as registry
    from cfqa_core.benchmark.table.originals import load_originals
    from cfqa_core.codecs.ladders import ladder_of

    build = Path(build)
    out: dict[str, Any] = {"machine": {"platform": platform.platform(), "processor": platform.machine()},
                           "method": f"median of {repeats} runs on {images} original(s) per task; CPU seconds "
                                     "(process + encoder subprocesses) are charged, wall seconds recorded",
                           "codecs": {}, "metrics": {}}
    originals = {}
    for task in tasks:
        orig = load_originals(task, build / "originals" / f"{task}.npz")
        if orig is None:
            raise DataError(f"no originals of {task} in {build} (run 'cfqa dataset build' first)")
        originals[task] = orig
    jobs = []
    for name in codecs:
        codec = registry.get_codec(name)
        codec.require_available()
        for task in tasks:
            if codec.tasks is not None and task not in codec.tasks:
                continue
            jobs += [(name, codec, task, rp) for rp in ladder_of(codec, ladder)]
    for name, codec, task, rp in tqdm(jobs, desc="timing", disable=not progress):
        orig = originals[task]
        rows = []
        for i in range(min(images, len(orig.ids))):
            f = orig.features[i]
            enc, wall_e, cpu_e = _timed(lambda: codec.encode(f, rp, value_range=orig.value_range), repeats)
            _, wall_d, cpu_d = _timed(lambda: codec.decode(enc), repeats)
            rows.append((wall_e, cpu_e, wall_d, cpu_d))
        med = np.median(np.asarray(rows), axis=0)
        out["codecs"].setdefault(name, {}).setdefault(task, {})[str(int(rp))] = {
            "encode_s": round(float(med[0]), 6), "encode_cpu_s": round(float(med[1]), 6),
            "decode_s": round(float(med[2]), 6), "decode_cpu_s": round(float(med[3]), 6),
            "shape": list(orig.features[0].shape)}
    for metric in metrics:
        for task, orig in originals.items():
            _, cpu = metric_seconds(metric, task, orig.features[0], max(repeats, 15))
            out["metrics"].setdefault(metric, {})[task] = round(float(cpu), 7)
    return out


def metric_seconds(metric: str, task: str, feature: np.ndarray, repeats: int = 15) -> tuple[float, float]:
    """(median wall s, median CPU s) of one evaluation of ``metric`` on ``feature`` against a noisy copy."""
    from cfqa_core.metrics import compute_metrics

    f = np.asarray(feature, dtype=np.float32)
    fhat = f + np.random.default_rng(0).normal(0, 0.05 * float(f.std()), f.shape).astype(np.float32)
    lo, hi = float(f.min()), float(f.max()) + 1e-6
    _, wall, cpu = _timed(lambda: compute_metrics([metric], f, fhat, task=task, value_range=(lo, hi)), repeats)
    return wall, cpu
