"""``oracle``: the lowest rate whose task output is unchanged -- a bound, not a deployable policy.

It knows how far the cloud's output moves from the uncompressed output at
each rate point (:mod:`cfqa_core.fidelity`; the benchmark table says, or
the simulator's live mode asks the cloud): scanning from the lowest quality upwards, it
sends the first rate point whose output change is within ``tolerance``
(default: the task's output tolerance -- cls: same top-1; seg: <= 2 % of
pixels relabelled; dpt: RMSE <= 2 % of the mean depth). It never prefers a
rung because compression happened to move the output closer to ground
truth. When no rate point is within tolerance it sends the least changed
one (ties: the cheaper) and says so. Needs a context that can judge
(``ctx.judge``). Its decision's ``metric`` is the output change at the
chosen rate point.

Offline only: the simulator (replay and live modes) and ``cfqa policies eval``
import this module, which registers ``oracle`` in :mod:`cfqa_edge.policies`;
the edge runtime never does and refuses the name
(:data:`cfqa_edge.runner.OFFLINE_POLICIES`).
"""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cfqa_core.fidelity import tolerance_for
from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.registry import PolicyParams, register_policy


class OracleParams(PolicyParams):
    tolerance: float | None = Field(None, ge=0)  # output change allowed (cfqa_core.fidelity default if None)


@register_policy("oracle")
class OraclePolicy:
    """Minimal rate with an unchanged task output."""

    Params = OracleParams
    name: ClassVar[str]  # set by register_policy

    def __init__(self, params: OracleParams | None = None) -> None:
        self.params = params or OracleParams()

    def decide(self, ctx: PolicyContext) -> Decision:
        tol = self.params.tolerance if self.params.tolerance is not None else tolerance_for(ctx.task)
        damages: dict[int, float] = {}
        for i in range(len(ctx.ladder) - 1, -1, -1):
            damages[i] = ctx.judge(ctx.ladder[i])
            if damages[i] <= tol + 1e-12:
                return ctx.decision(ctx.ladder[i], damages[i], True)
        best = min(damages, key=lambda i: (damages[i], -i))
        return ctx.decision(ctx.ladder[best], damages[best], False,
                            f"output changed: no rate point keeps it within tolerance; "
                            f"least change {damages[best]:.3g} at {ctx.ladder[best]}")
