"""The rate plans a package ships: fitted on the calibration half of a benchmark table only.

The simulator's replay mode draws its frames from the evaluation half
(:func:`evaluation_images`), so a shipped plan never runs on an image it was
fitted on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cfqa_core.accounting import DEFAULT_TARGET_SUCCESS
from cfqa_edge.policies.plan import RatePlans
from cfqa_sim.ratecontrol.fit import fit_plan
from cfqa_sim.ratecontrol.replay import load_frame, replay_arrays, tasks_and_codecs


def calibration_images(n: int) -> np.ndarray:
    """Positions (in image-id order) of the calibration half: even positions."""
    return np.arange(0, n, 2)


def evaluation_images(n: int) -> np.ndarray:
    """Positions (in image-id order) of the evaluation half: odd positions."""
    return np.arange(1, n, 2)


def table_split(table: str | Path) -> int | None:
    """The split block of a build's features: the model's last block (the paper's protocol), if known."""
    import json

    build = Path(table) if Path(table).is_dir() else Path(table).parent
    try:
        model = json.loads((build / "build.json").read_text())["config"]["model"]
    except (OSError, ValueError, KeyError):
        model = "embedded"
    if model != "embedded":
        return None
    meta = Path(__file__).resolve().parents[2] / "cfqa_core" / "weights" / "embedded" / "meta.json"
    return int(json.loads(meta.read_text())["config"]["depth"])


def fit_shipped_plans(table: str | Path, out: str | Path, *, tasks: Sequence[str] | None = None,
                      codecs: Sequence[str] | None = None, metric: str = "proxy",
                      target: float = DEFAULT_TARGET_SUCCESS,
                      tolerance: Mapping[str, float] | None = None, timing: str | Path | None = None,
                      throughput_mbps: float = 5.0, deadline_s: float = 1.0) -> RatePlans:
    """Fit one plan per (task, codec) on the calibration half and write them to ``out``.

    With a timing profile, plans are fitted for frames that must also arrive within ``deadline_s``
    on a ``throughput_mbps`` link (edge encode, decode and metric times from the profile).
    """
    from cfqa_sim.ratecontrol.fit import Deadline

    profile = None
    if timing is not None:
        from cfqa_sim.timing import TimingProfile

        profile = TimingProfile.load(timing)
    frame = load_frame(table)
    plans = {}
    for task, present in tasks_and_codecs(frame).items():
        if tasks and task not in tasks:
            continue
        for codec in present:
            if codecs and codec not in codecs:
                continue
            arr = replay_arrays(frame, task, codec)
            cal = calibration_images(arr.n_images)
            sent = arr.bytes + arr.meta_bytes
            deadline = None
            if profile is not None:
                arr = profile.apply(arr)
                deadline = Deadline(arr.encode_s[cal], arr.decode_s[cal], profile.metric_s(metric, task),
                                    throughput_mbps * 1e6, deadline_s)
            plans[(task, codec)] = fit_plan(task, codec, arr.rate_points, metric, arr.metric(metric)[cal],
                                            arr.output_change[cal], sent[cal], target=target, tolerance=tolerance,
                                            deadline=deadline)
    split = table_split(table)
    for plan in plans.values():
        plan.fitted["split"] = split
    result = RatePlans(plans, {"table": str(table), "half": "calibration (even image positions)", "split": split,
                               "timing": None if timing is None else str(timing),
                               "link": None if timing is None else {"throughput_mbps": throughput_mbps,
                                                                    "deadline_s": deadline_s},
                               "target_success": target, "tolerance": dict(tolerance or {})})
    result.save(out)
    return result
