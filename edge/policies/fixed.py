"""``fixed``: every frame at one rate point (the paper's setting) -- the baseline.

One encode per frame and nothing else: no local decode, no metric, unless
``metric`` names one to report (then it is computed and its time charged).
``matched=true`` (the ``fixed-matched`` policy) takes, per task and codec, the
matched fixed rung of the rate plans (default: the shipped ones): the
cheapest single rung that reached the target success rate on the plans'
calibration images -- the baseline every saving is measured against.
"""
from __future__ import annotations

import math
from typing import ClassVar

from pydantic import model_validator

from cfqa_core.errors import PolicyError
from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.registry import PolicyParams, register_policy


class FixedParams(PolicyParams):
    rate_point: int | None = None  # a rate point of the ladder (a QP for block codecs)
    index: int = 0                 # ladder position when no rate point is given (0 = best, -1 = lowest)
    metric: str | None = None      # a metric to compute and report (not to steer by)
    matched: bool = False          # the rate plans' matched fixed rung per task and codec
    plan: str | None = None        # rate plan file for ``matched`` (default: the shipped plans)

    @model_validator(mode="after")
    def _one_rate(self) -> FixedParams:
        if self.matched and self.rate_point is not None:
            raise ValueError("matched takes the rung from the rate plans: give no rate_point")
        return self


@register_policy("fixed")
class FixedPolicy:
    """Always the same rate point."""

    Params = FixedParams
    name: ClassVar[str]  # set by register_policy

    def __init__(self, params: FixedParams | None = None) -> None:
        self.params = params or FixedParams()
        self.plans = None
        if self.params.matched:
            from cfqa_edge.policies.plan import DEFAULT_PLANS, RatePlans

            self.plans = RatePlans.load(self.params.plan or DEFAULT_PLANS)

    def matched_rate_point(self, task: str, codec: str) -> int:
        """The plans' matched fixed rung of (task, codec)."""
        plan = self.plans.get(task, codec)
        if "matched_fixed_rate_point" not in plan.fitted:
            raise PolicyError(f"rate plan {task}/{codec} records no matched fixed rung")
        return int(plan.fitted["matched_fixed_rate_point"])

    def rate_point(self, ladder: tuple[int, ...]) -> int:
        p = self.params
        if p.rate_point is not None:
            return p.rate_point
        if not -len(ladder) <= p.index < len(ladder):
            raise PolicyError(f"fixed: index {p.index} outside the ladder {ladder}")
        return ladder[p.index]

    def decide(self, ctx: PolicyContext) -> Decision:
        rp = self.matched_rate_point(ctx.task, ctx.codec) if self.plans is not None else self.rate_point(ctx.ladder)
        out = ctx.encode(rp, assess=self.params.metric is not None)
        value = out.metrics.get(self.params.metric, math.nan) if self.params.metric else math.nan
        return ctx.decision(rp, value)
