"""``bandwidth``: the highest quality whose bytes fit what the link carries before the deadline.

No metric: the policy predicts each rung's bytes (:class:`~cfqa_edge.policies.link.BytesModel`),
encodes the highest quality predicted to fit the budget and, when the real
bitstream overshoots (or leaves room for a better rung), re-plans on the
frame's real size and encodes again (every encode counted, up to ``max_encodes``).
"""
from __future__ import annotations

from typing import ClassVar

from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.link import LinkParams, make_planner
from cfqa_edge.policies.registry import register_policy


@register_policy("bandwidth")
class BandwidthPolicy:
    """ABR-style: the highest quality the throughput estimate carries in the time left."""

    Params = LinkParams
    name: ClassVar[str]  # set by register_policy

    def __init__(self, params: LinkParams) -> None:
        self.params = params
        self.planner = make_planner(params)

    def decide(self, ctx: PolicyContext) -> Decision:
        planner = self.planner
        budget = planner.budget(ctx)
        if budget is None:
            rp = ctx.ladder[-1]
            return planner.finish(ctx, ctx.decision(rp, reason="no throughput estimate: lowest quality"))
        index, _ = planner.ceiling(ctx, budget, blind=len(ctx.ladder) // 2)
        index = planner.fit(ctx, index, budget, assess=False)
        nbytes = ctx.encode(ctx.ladder[index], assess=False).nbytes
        reason = None if nbytes <= budget else f"over budget: {nbytes} bytes, budget {budget:.0f}"
        return planner.finish(ctx, ctx.decision(ctx.ladder[index], reason=reason))
