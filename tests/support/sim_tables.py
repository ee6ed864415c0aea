"""Synthetic test data: a multi-task benchmark table and a tiny scenario.

TEST DATA ONLY: built from :func:`tests.support.policy_frames.synthetic_frame`
(plausible shapes, not measurements). Tests and the simulator's speed
benchmark use it when no real ``table.parquet`` (``cfqa dataset build``)
exists; never report accuracy figures from it.
"""
from __future__ import annotations

import numpy as np

from tests.support.policy_frames import QPS as SYNTHETIC_QPS

__all__ = ["SYNTHETIC_QPS", "synthetic_table", "tiny_scenario"]

_TASK_BYTES = {"cls": 9000.0, "seg": 16000.0, "dpt": 30000.0}
_REF_SCORE = {"cls": 1.0, "seg": 0.7, "dpt": 0.5}


def synthetic_table(*, images: int = 8, tasks: tuple[str, ...] = ("cls", "seg", "dpt"),
                    codecs: tuple[str, ...] = ("hevc",), seed: int = 0):
    """A pandas table in the benchmark schema: every task x codec on ``images`` images of random difficulty."""
    import pandas as pd

    from tests.support.policy_frames import synthetic_frame

    rng = np.random.default_rng(seed)
    frames = []
    for task in tasks:
        difficulty = rng.uniform(0.3, 3.0, images)
        for k, codec in enumerate(codecs):
            frames.append(synthetic_frame(difficulty, task=task, codec=codec, base_bytes=_TASK_BYTES[task],
                                          ref_score=_REF_SCORE[task], seed=seed + k))
    return pd.concat(frames, ignore_index=True)


def tiny_scenario(table: str, **fields) -> dict:
    """A small replay scenario (dict) on a constant 2 Mbit/s synthetic link; ``fields`` override keys."""
    data = {
        "name": "tiny",
        "mode": "replay",
        "seed": 7,
        "duration_s": 20.0,
        "drain_s": 10.0,
        "replay": {"table": str(table)},
        "links": {"up": {"trace": {"kind": "constant", "capacity_mbps": 2.0, "duration_s": 10.0},
                         "shared": True, "delay_ms": 10.0}},
        "nodes": [{"name": "cams", "count": 3, "link": "up", "task": "cls", "codec": "hevc",
                   "arrivals": {"kind": "poisson", "fps": 4.0}, "deadline_s": 0.5}],
        "policy": "hq",
        "baseline_policy": "hq",
        "policies": {"hq": {"name": "fixed", "params": {"index": 0, "metric": "cosine"}},
                     "lq": {"name": "fixed", "params": {"index": -1, "metric": "cosine"}}},
    }
    data.update(fields)
    return data
