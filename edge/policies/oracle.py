"""``oracle``: the lowest rate whose task output is unchanged -- a bound, not a deployable policy.

It knows the true semantic distortion (the task heads run at the edge, or the
benchmark table says): scanning from the lowest quality upwards, it sends the
first rate point whose task damage (:mod:`edge.policies.accuracy`) is within
``tolerance`` (default: the task's "unchanged" tolerance -- cls: same top-1
decision; seg: 0.1 mIoU point; dpt: 0.1 % RMSE). When no rate point leaves
the output unchanged it sends the least damaged one (ties: the cheaper) and
says so. Needs a context that can judge (``ctx.judge``). Its decision's
``metric`` is the task damage at the chosen rate point.
"""
from __future__ import annotations

from pydantic import Field

from edge.policies.accuracy import UNCHANGED_TOLERANCE
from edge.policies.api import Decision, PolicyContext
from edge.policies.registry import PolicyParams, register_policy


class OracleParams(PolicyParams):
    tolerance: float | None = Field(None, ge=0)  # task damage counted as unchanged (task default if None)


@register_policy("oracle")
class OraclePolicy:
    """Minimal rate with an unchanged task output."""

    Params = OracleParams
    name = "oracle"

    def __init__(self, params: OracleParams | None = None) -> None:
        self.params = params or OracleParams()

    def decide(self, ctx: PolicyContext) -> Decision:
        tol = self.params.tolerance if self.params.tolerance is not None else UNCHANGED_TOLERANCE[ctx.task]
        damages: dict[int, float] = {}
        for i in range(len(ctx.ladder) - 1, -1, -1):
            damages[i] = ctx.judge(ctx.ladder[i])
            if damages[i] <= tol + 1e-12:
                return ctx.decision(ctx.ladder[i], damages[i], True)
        best = min(damages, key=lambda i: (damages[i], -i))
        return ctx.decision(ctx.ladder[best], damages[best], False,
                            f"output changed: no rate point leaves it unchanged; least damage {damages[best]:.3g} "
                            f"at {ctx.ladder[best]}")
