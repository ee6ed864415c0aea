"""What the link can carry before the deadline, and how many bytes each rate point will take.

Budget: ``safety x throughput x (time left - reserve - expected edge time) / 8``
minus the bytes still queued ahead of the frame on this node; the throughput
is the node's harmonic-mean estimate of recent transfers (as ABR clients do).

Bytes predictor: ``log bytes_f(i) = b_f + p_i`` -- a per-rung profile ``p``
(the calibration's median bytes per rung, else a halving every
``halving_step`` rate-point units, the rule of thumb of block codecs: 6 QP)
plus a per-frame level ``b_f`` predicted from the previous frame. Each trial
encode re-anchors the level on the frame itself; frames with two trials also
refine the profile.

:class:`LinkPlanner` keeps a node's link-side state for the ``bandwidth`` and
``hybrid`` policies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.calibration import load_calibration
from cfqa_edge.policies.registry import PolicyParams


class BytesModel:
    """Per-node predictor of a frame's bytes at each rung of the ladder."""

    def __init__(self, ladder: tuple[int, ...], prior_bytes: list[float] | None = None,
                 halving_step: float = 6.0, learn_rate: float = 0.2) -> None:
        xs = np.asarray(ladder, dtype=float)
        if prior_bytes is not None and len(prior_bytes) == len(ladder) and all(b > 0 for b in prior_bytes):
            self.profile = np.log(np.asarray(prior_bytes, dtype=float))
            self.level: float | None = 0.0  # the prior's own sizes until a frame is seen
        else:
            self.profile = -(xs - xs[0]) * math.log(2.0) / halving_step
            self.level = None
        self.learn_rate = learn_rate

    def predict(self, measured: dict[int, int] | None = None) -> np.ndarray | None:
        """Predicted bytes per rung (anchored on this frame's nearest measured rung if any)."""
        p = self.profile
        if measured:
            out = np.empty_like(p)
            for j in range(p.size):
                k = min(measured, key=lambda i: (abs(i - j), i))
                out[j] = math.log(max(measured[k], 1)) + p[j] - p[k]
            return np.exp(out)
        if self.level is None:
            return None
        return np.exp(self.level + p)

    def update(self, measured: dict[int, int]) -> None:
        """Learn from one frame's measured bytes per rung index."""
        if not measured:
            return
        idx = np.array(sorted(measured))
        lb = np.log(np.maximum([measured[i] for i in idx], 1))
        level = float(np.mean(lb - self.profile[idx]))
        if idx.size >= 2:
            self.profile[idx] += self.learn_rate * (lb - level - self.profile[idx])
            level = float(np.mean(lb - self.profile[idx]))
        self.level = level


@dataclass
class LinkBudget:
    """How a node turns its throughput estimate and deadline into a byte budget."""

    safety: float = 0.9                   # fraction of the estimated capacity to plan with
    reserve_s: float = 0.0                # time kept for cloud compute and the result's way back
    initial_throughput_bps: float | None = None  # used before the first transfer is measured

    def bytes(self, ctx: PolicyContext, expected_edge_s: float, queued_bytes: float) -> float | None:
        """The byte budget of this frame; None when there is no throughput estimate at all."""
        bps = ctx.throughput_bps if ctx.throughput_bps is not None else self.initial_throughput_bps
        if bps is None or not math.isfinite(ctx.time_left_s):
            return None if bps is None else math.inf
        seconds = max(ctx.time_left_s - self.reserve_s - expected_edge_s, 0.0)
        return max(self.safety * bps * seconds / 8.0 - queued_bytes, 0.0)


def highest_fitting(predicted: np.ndarray, budget: float, lo: int = 0) -> int | None:
    """The highest-quality index >= ``lo`` whose predicted bytes fit ``budget`` (None if none)."""
    for i in range(lo, predicted.size):
        if predicted[i] <= budget:
            return i
    return None


class LinkParams(PolicyParams):
    safety: float = Field(0.9, gt=0, le=1)
    reserve_s: float = Field(0.0, ge=0)
    initial_throughput_mbps: float | None = Field(None, gt=0)
    halving_step: float = Field(6.0, gt=0)   # prior: bytes halve every this many rate-point units
    max_encodes: int = Field(3, ge=1)
    calibration: str | None = None           # its median bytes per rung seed the bytes model


class LinkPlanner:
    """A node's link-side state: byte budget, bytes model, what it queued last."""

    def __init__(self, budget: LinkBudget, halving_step: float, max_encodes: int,
                 bytes_prior: dict[tuple[str, str], list[float]] | None = None) -> None:
        self.budget_rule = budget
        self.halving_step = halving_step
        self.max_encodes = max_encodes
        self.bytes_prior = bytes_prior or {}
        self.models: dict[tuple[str, str], BytesModel] = {}
        self.last_bytes = 0
        self.last_edge_s = 0.0

    def model(self, ctx: PolicyContext) -> BytesModel:
        key = (ctx.task, ctx.codec)
        if key not in self.models:
            self.models[key] = BytesModel(ctx.ladder, self.bytes_prior.get(key), self.halving_step)
        return self.models[key]

    def budget(self, ctx: PolicyContext) -> float | None:
        return self.budget_rule.bytes(ctx, self.last_edge_s, ctx.queue_frames * self.last_bytes)

    def measured(self, ctx: PolicyContext) -> dict[int, int]:
        return {i: out.nbytes for i, rp in enumerate(ctx.ladder) if (out := ctx.encoded(rp)) is not None}

    def ceiling(self, ctx: PolicyContext, budget: float | None, blind: int = 0) -> tuple[int, bool]:
        """(highest-quality index predicted to fit, whether anything is predicted to fit).

        ``blind`` is the answer while the frame size cannot be predicted yet.
        """
        if budget is None or math.isinf(budget):
            return 0, True
        predicted = self.model(ctx).predict(self.measured(ctx))
        if predicted is None:
            return blind, True
        i = highest_fitting(predicted, budget)
        return (len(ctx.ladder) - 1, False) if i is None else (i, True)

    def fit(self, ctx: PolicyContext, index: int, budget: float | None, assess: bool, upward: bool = True) -> int:
        """Settle on the highest quality whose real bytes fit ``budget``, starting at ``index``.

        Each encode re-anchors the bytes model on this frame; the next try is
        the highest quality predicted to fit between what is known to
        overshoot and what is known to fit (only below ``index`` unless
        ``upward``). Stops at the encode cap.
        """
        last = len(ctx.ladder) - 1
        if budget is None or math.isinf(budget):
            ctx.encode(ctx.ladder[index], assess=assess)
            return index
        top = 0 if upward else index
        fits: set[int] = set()
        over: set[int] = set()
        while True:
            (fits if ctx.encode(ctx.ladder[index], assess=assess).nbytes <= budget else over).add(index)
            a = max(over) + 1 if over else top
            b = min(fits) - 1 if fits else last
            predicted = self.model(ctx).predict(self.measured(ctx))
            options = [i for i in range(a, b + 1) if predicted[i] <= budget]
            if not fits and not options and b >= a:
                options = [b]  # nothing predicted to fit: the lowest quality left
            if not options or ctx.encodes >= self.max_encodes:
                break
            index = min(options)
        if fits:
            return min(fits)
        return max(over)  # nothing fitted within the encode cap: the cheapest tried

    def finish(self, ctx: PolicyContext, decision: Decision) -> Decision:
        """Learn from the frame's encodes and remember what was queued."""
        self.model(ctx).update(self.measured(ctx))
        self.last_bytes = ctx.encoded(decision.rate_point).nbytes
        self.last_edge_s = decision.edge_time_s
        return decision


def bytes_priors(calibration: str | None) -> dict[tuple[str, str], list[float]]:
    """Median bytes per rung of every (task, codec) in a calibration file."""
    if calibration is None:
        return {}
    cal = load_calibration(calibration)
    return {(t, c): curve.bytes_median for t, per in cal.curves.items() for c, curve in per.items()}


def make_planner(p: LinkParams) -> LinkPlanner:
    initial = None if p.initial_throughput_mbps is None else p.initial_throughput_mbps * 1e6
    return LinkPlanner(LinkBudget(p.safety, p.reserve_s, initial), p.halving_step, p.max_encodes,
                       bytes_priors(p.calibration))
