"""``hybrid``: ``cfqa-target``, but never above what the link can carry in time.

The byte budget (as ``bandwidth``) caps the highest quality the target search
may use. When the target would need more than the link carries, the frame
goes out at the best quality that fits with ``met_target=False`` and the
reason ("link budget ..."). Without a throughput estimate it is plain ``cfqa-target``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from pydantic import Field

from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.cfqa_target import CfqaTargetPolicy, TargetParams, fallback_decision, frame_statistic
from cfqa_edge.policies.link import LinkParams, make_planner
from cfqa_edge.policies.plan import PlanStep, run_plan
from cfqa_edge.policies.registry import register_policy


class HybridParams(TargetParams, LinkParams):
    max_encodes: int = Field(4, ge=1)  # total trial encodes of the search and the budget fit


@register_policy("hybrid")
class HybridPolicy(CfqaTargetPolicy):
    """The CFQA target within the link budget."""

    Params = HybridParams
    name: ClassVar[str]  # set by register_policy

    def __init__(self, params: HybridParams) -> None:
        super().__init__(params)
        self.planner = make_planner(params)

    def decide(self, ctx: PolicyContext) -> Decision:
        planner = self.planner
        budget = planner.budget(ctx)
        ceiling, _ = planner.ceiling(ctx, budget)
        if self.plans is not None:
            return planner.finish(ctx, self._plan_within(ctx, ceiling))
        resolved = self.resolver.resolve(ctx.task, ctx.codec, ctx.ladder)
        if resolved.target is None:
            if resolved.always_best and ceiling > 0:
                best_fit = ctx.ladder[ceiling]
                return planner.finish(ctx, ctx.decision(best_fit, met_target=False, reason=(
                    f"link budget: the tolerance needs the highest quality; {best_fit} is the best that fits")))
            return planner.finish(ctx, fallback_decision(ctx, resolved, ceiling))
        search = self.search_for(ctx, resolved)
        stat = frame_statistic(ctx, self.params.feature_stat and search.mode == "model")
        res = search.find(ctx, resolved.target, lo=ceiling, stat=stat)
        if not res.met and ceiling > 0:
            # The ceiling came from a predicted frame size; re-plan on the bytes this frame really takes.
            refined, _ = planner.ceiling(ctx, budget)
            if refined < ceiling and ctx.encodes < self.params.max_encodes:
                ceiling = refined
                res = search.find(ctx, resolved.target, lo=ceiling, stat=stat, learn=False)
        index = planner.fit(ctx, res.index, budget, assess=True, upward=False)
        rp = ctx.ladder[index]
        value = ctx.encode(rp).metrics.get(resolved.target.metric, res.metric)
        met = resolved.target.meets(value)
        reason = res.reason
        if not met and (ceiling > 0 or index != res.index):
            nbytes = ctx.encoded(rp).nbytes
            if nbytes > budget:
                reason = f"link budget: nothing fits {budget:.0f} bytes; {rp} sent ({nbytes} bytes)"
            else:
                reason = (f"link budget: {rp} is the highest quality that fits {budget:.0f} bytes "
                          f"({nbytes} sent), {resolved.target.metric} {value:.6g} (needs {resolved.target.describe()})")
        return planner.finish(ctx, ctx.decision(rp, value, met, reason))

    def _plan_within(self, ctx: PolicyContext, ceiling: int) -> Decision:
        """The rate plan with its probe capped at the best quality the link budget carries.

        Only a rung the metric has cleared is sent degraded: a capped probe that fails the
        metric falls back to the plan's own safe rung (which may then arrive late), never to an
        unverified cheaper one -- a frame on time with a changed output is a failure too.
        """
        plan = self.plans.get(ctx.task, ctx.codec)
        ceiling = min(max(ceiling, 0), len(ctx.ladder) - 1)
        steps = list(plan.steps)
        probe = steps[0]
        # A one-step plan has no metric check to clear a cheaper rung with: it is not degraded.
        capped = len(steps) > 1 and probe.rate_point in ctx.ladder and ctx.ladder.index(probe.rate_point) < ceiling
        if capped:
            steps[0] = PlanStep(ctx.ladder[ceiling], probe.threshold)
        decision = run_plan(ctx, replace(plan, steps=tuple(steps)))
        if capped:
            return decision._replace(reason=f"link budget: probe capped at {ctx.ladder[ceiling]}, the best quality "
                                            "predicted to fit")
        return decision
