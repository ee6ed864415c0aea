"""Rate plans: the calibrated probe-then-fall-back rule that ``cfqa-target`` runs by default.

A plan for one (task, codec) is a short list of steps. Each step but the last
encodes at its rate point, decodes locally and scores the result with the
plan's CFQA metric; the frame is sent there when the metric is within the
step's threshold, else the next step is tried. The last step is sent without
scoring. A two-step plan therefore costs one encode for frames the metric
clears at the cheap rung and two for the others:

    {"metric": "proxy", "steps": [{"rate_point": 35, "threshold": 0.42}, {"rate_point": 23}]}

Plans are fitted offline on calibration images (``cfqa policies fit``, in
:mod:`cfqa_sim.ratecontrol.fit`) to reach a target success rate at the fewest
bytes; the package ships the plans of the embedded model
(``edge/policies/plans/embedded.json``). This module only loads and runs them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfqa_core.errors import PolicyError

PLANS_DIR = Path(__file__).resolve().parent / "plans"
DEFAULT_PLANS = PLANS_DIR / "embedded.json"


@dataclass(frozen=True)
class PlanStep:
    rate_point: int
    threshold: float | None = None   # None: the last step, sent without scoring


@dataclass(frozen=True)
class RatePlan:
    """The steps of one (task, codec) and what they were fitted for."""

    task: str
    codec: str
    metric: str
    steps: tuple[PlanStep, ...]
    fitted: dict[str, Any] = field(default_factory=dict)   # target, tolerance, images, success, ...

    def __post_init__(self) -> None:
        if not self.steps:
            raise PolicyError(f"rate plan {self.task}/{self.codec} has no steps")
        for s in self.steps[:-1]:
            if s.threshold is None or not math.isfinite(s.threshold):
                raise PolicyError(f"rate plan {self.task}/{self.codec}: every step but the last needs a "
                                  "finite threshold")

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "fitted": self.fitted,
                "steps": [{"rate_point": s.rate_point, **({} if s.threshold is None else {"threshold": s.threshold})}
                          for s in self.steps]}


@dataclass
class RatePlans:
    """Plans keyed by (task, codec), with where they came from."""

    plans: dict[tuple[str, str], RatePlan]
    source: dict[str, Any] = field(default_factory=dict)

    def get(self, task: str, codec: str, where: str = "") -> RatePlan:
        try:
            return self.plans[(task, codec)]
        except KeyError:
            have = ", ".join(f"{t}/{c}" for t, c in sorted(self.plans)) or "none"
            raise PolicyError(f"no rate plan for {task}/{codec}{where} (have: {have}); "
                              "fit one with 'cfqa policies fit'") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"source": self.source, "plans": {}}
        for (task, codec), plan in sorted(self.plans.items()):
            data["plans"].setdefault(task, {})[codec] = plan.to_json()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PLANS) -> RatePlans:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"rate plan file not found: {path}")
        try:
            data = json.loads(path.read_text())
            plans = {}
            for task, per_codec in data["plans"].items():
                for codec, p in per_codec.items():
                    steps = tuple(PlanStep(int(s["rate_point"]), None if s.get("threshold") is None
                                           else float(s["threshold"])) for s in p["steps"])
                    plans[(task, codec)] = RatePlan(task, codec, str(p["metric"]), steps, dict(p.get("fitted", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(f"rate plan file {path} is malformed: {str(exc).splitlines()[0]}") from None
        return cls(plans, dict(data.get("source", {})))


def run_plan(ctx, plan: RatePlan):
    """Walk the plan's steps on one frame; returns the context's Decision."""
    fitted_split, split = plan.fitted.get("split"), getattr(ctx, "split", None)
    if fitted_split is not None and split is not None and int(split) != int(fitted_split):
        raise PolicyError(f"rate plan {plan.task}/{plan.codec} was fitted on features after block {fitted_split}; "
                          f"this edge sends block {split}: fit plans on a table of that split "
                          f"('cfqa policies fit'), or send block {fitted_split}")
    for step in plan.steps[:-1]:
        if step.rate_point not in ctx.ladder:
            raise PolicyError(f"rate plan {plan.task}/{plan.codec}: rate point {step.rate_point} is not on the "
                              f"ladder {ctx.ladder}")
        out = ctx.encode(step.rate_point)
        value = out.metrics.get(plan.metric, math.nan)
        if math.isfinite(value) and value <= step.threshold:
            return ctx.decision(step.rate_point, value, True)
    last = plan.steps[-1].rate_point
    if last not in ctx.ladder:
        raise PolicyError(f"rate plan {plan.task}/{plan.codec}: rate point {last} is not on the ladder {ctx.ladder}")
    return ctx.decision(last, math.nan, None,
                        None if len(plan.steps) == 1 else "fallback: the metric rejected the cheaper rungs")
