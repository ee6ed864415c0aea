"""Fit rate plans on calibration images: the cheapest probe-then-fall-back rule that reaches a target.

For one (task, codec), given per calibration image and rung the bytes, the
CFQA metric and whether the cloud's output stays within tolerance, every
two-step plan (probe rung ``p``, threshold ``t``, fall-back rung ``q`` of
higher quality) and every single rung is scored exactly: an image is sent at
``p`` when its metric there is ``<= t``, else at ``q``. The plan with the
fewest bytes per frame whose success rate reaches the target wins; a single
rung (the matched fixed rung) is always a candidate, so a plan is never
costlier than matched fixed on the images it was fitted on. When no single
rung reaches the target, the plan must reach the best single rung's success.

With a :class:`Deadline` (edge seconds per encode and decode, the metric's
cost, a link and a deadline) a frame also has to be on time: a probe that
falls back pays both encodes, so a plan whose fall-back makes frames late
loses to a cheaper-to-run one (e.g. on a slow encoder).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cfqa_core.accounting import DEFAULT_TARGET_SUCCESS, matched_fixed_rung, rung_success
from cfqa_edge.policies.plan import PlanStep, RatePlan


@dataclass(frozen=True)
class Deadline:
    """Edge times ([images, rungs] encode and decode seconds, one metric evaluation) and the link."""

    encode_s: np.ndarray
    decode_s: np.ndarray
    metric_s: float
    throughput_bps: float
    deadline_s: float

    def on_time(self, edge_s: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        return edge_s + nbytes * 8.0 / self.throughput_bps <= self.deadline_s + 1e-12


def plan_outcome(metric: np.ndarray, probe: int, threshold: float, fallback: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen rung per image, encodes per image) of a two-step plan on [images, rungs] metric values."""
    accept = np.isfinite(metric[:, probe]) & (metric[:, probe] <= threshold)
    return np.where(accept, probe, fallback), np.where(accept, 1, 2)


def fit_plan(task: str, codec: str, ladder: tuple[int, ...], metric_name: str, metric: np.ndarray,
             change: np.ndarray, nbytes: np.ndarray, *, target: float = DEFAULT_TARGET_SUCCESS,
             tolerance: Mapping[str, float] | None = None, deadline: Deadline | None = None) -> RatePlan:
    """The cheapest plan of at most two steps reaching ``target`` on these [images, rungs] arrays."""
    ok = rung_success(task, change, tolerance)
    b = np.asarray(nbytes, dtype=np.float64)
    m = np.asarray(metric, dtype=np.float64)
    n, rungs = ok.shape
    fixed = matched_fixed_rung(task, change, nbytes, target=target, tolerance=tolerance)
    fixed_ok = ok if deadline is None else ok & deadline.on_time(deadline.encode_s, b)
    best = (b[:, fixed].mean(), None, None, fixed, fixed_ok[:, fixed].mean())
    # When no single rung reaches the target, a plan must at least match the best rung's success.
    goal = min(target, float(fixed_ok[:, fixed].mean()))
    for p in range(rungs):
        values = m[:, p]
        cands = np.unique(values[np.isfinite(values)])
        if cands.size == 0:
            continue
        # accept[i, k]: image i is sent at the probe under threshold cands[k].
        accept = values[:, None] <= cands[None, :]
        ok_probe, ok_after = ok[:, p], ok
        if deadline is not None:
            probe_s = deadline.encode_s[:, p] + deadline.decode_s[:, p] + deadline.metric_s
            ok_probe = ok[:, p] & deadline.on_time(probe_s, b[:, p])
            ok_after = ok & deadline.on_time(probe_s[:, None] + deadline.encode_s, b)
        for q in range(p):
            succ = np.where(accept, ok_probe[:, None], ok_after[:, q:q + 1]).mean(axis=0)
            cost = np.where(accept, b[:, p:p + 1], b[:, q:q + 1]).mean(axis=0)
            good = np.flatnonzero(succ >= goal - 1e-12)
            if good.size:
                k = good[np.argmin(cost[good])]
                if cost[k] < best[0] - 1e-9:
                    best = (cost[k], p, float(cands[k]), q, succ[k])
    cost, probe, threshold, fallback, success = best
    steps = ((PlanStep(int(ladder[fallback])),) if probe is None else
             (PlanStep(int(ladder[probe]), threshold), PlanStep(int(ladder[fallback]))))
    fitted = {"target_success": target, "images": int(n), "success_on_fit": round(float(success), 4),
              "bytes_per_frame_on_fit": round(float(cost), 1),
              "matched_fixed_rate_point": int(ladder[fixed]),
              "matched_fixed_bytes_on_fit": round(float(b[:, fixed].mean()), 1)}
    return RatePlan(task, codec, metric_name, steps, fitted)
