"""``cfqa-target``: the lowest rate whose compressed feature meets a CFQA metric target.

The edge encodes, decodes locally, scores the result with the metric and
moves along the ladder (Figure 1 right of the CFQA paper: re-encode at a
higher rate when the score is too low). By default (no parameters) it runs the
calibrated rate plans shipped for the embedded model (:mod:`cfqa_edge.policies.plan`:
probe a cheap rung, score it with the task-aware ``proxy`` metric, fall back
to a safe rung; at most two encodes), or the plans of ``plan=FILE``. It can
instead chase a raw metric value (``threshold=0.995``) or a task accuracy
(``target_accuracy_drop=1.0`` with a ``calibration`` file from ``cfqa
calibrate``), resolved per task and codec, with a search
(:mod:`cfqa_edge.policies.search`) that keeps the mean number of encodes low.

An unreachable target is not an error: the frame goes out at the highest
quality with ``met_target=False`` and the reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from cfqa_core.errors import PolicyError
from cfqa_edge.policies.api import Decision, PolicyContext
from cfqa_edge.policies.calibration import Calibration, load_calibration
from cfqa_edge.policies.metric_target import MetricTarget, make_target
from cfqa_edge.policies.plan import DEFAULT_PLANS, RatePlans, run_plan
from cfqa_edge.policies.registry import PolicyParams, register_policy
from cfqa_edge.policies.search import TargetSearch, feature_statistic

DEFAULT_METRIC = "cosine"


class TargetParams(PolicyParams):
    metric: str | None = None                      # default: the calibration's metric, else cosine
    threshold: float | None = None                 # a raw metric target ...
    target_accuracy_drop: float | None = Field(None, ge=0)  # ... or a task accuracy target (needs calibration)
    calibration: str | None = None                 # file written by `cfqa calibrate`
    plan: str | None = None                        # rate plans (default: the shipped ones when no target is given)
    higher_is_better: bool | None = None           # for metrics outside the registry
    metric_range: tuple[float, float] | None = None
    search: Literal["model", "bisect", "exhaustive"] = "model"
    max_encodes: int = Field(4, ge=1)
    margin: float = Field(0.0, ge=0)               # distortion headroom of predicted rungs (model search)
    learn_rate: float = Field(0.2, gt=0, le=1)
    offset_smoothing: float = Field(0.5, gt=0, le=1)
    feature_stat: bool = True                      # predict the first trial from a cheap feature statistic
    stat_memory: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_target(self) -> TargetParams:
        if self.threshold is not None and self.target_accuracy_drop is not None:
            raise ValueError("give at most one of threshold or target_accuracy_drop")
        if self.plan is not None and (self.threshold is not None or self.target_accuracy_drop is not None):
            raise ValueError("plan replaces threshold and target_accuracy_drop: give one of the three")
        if self.target_accuracy_drop is not None and self.calibration is None:
            raise ValueError("target_accuracy_drop needs a calibration file")
        return self


@dataclass
class ResolvedTarget:
    """The target for one (task, codec): a metric target, or always the best rate, or unreachable."""

    target: MetricTarget | None
    always_best: bool = False
    unreachable: str | None = None
    metric_prior: list[float] | None = None   # median metric per rung (calibration)
    bytes_prior: list[float] | None = None    # median bytes per rung (calibration)


class TargetResolver:
    """Turns a policy's target parameters into per-(task, codec) metric targets."""

    def __init__(self, params: TargetParams) -> None:
        self.params = params
        self.calibration: Calibration | None = load_calibration(params.calibration) if params.calibration else None
        cal_metric = self.calibration.metric if self.calibration else None
        if params.metric and cal_metric and params.metric != cal_metric:
            raise PolicyError(f"metric '{params.metric}' differs from the calibration's '{cal_metric}'")
        self.metric = params.metric or cal_metric or DEFAULT_METRIC
        hib = params.higher_is_better
        if hib is None and self.calibration is not None:
            hib = self.calibration.higher_is_better
        self._fixed = (make_target(self.metric, params.threshold, hib, params.metric_range)
                       if params.threshold is not None else None)
        self._hib = hib
        self._cache: dict[tuple[str, str], ResolvedTarget] = {}

    def resolve(self, task: str, codec: str, ladder: tuple[int, ...]) -> ResolvedTarget:
        key = (task, codec)
        if key not in self._cache:
            self._cache[key] = self._resolve(task, codec, ladder)
        return self._cache[key]

    def _resolve(self, task: str, codec: str, ladder: tuple[int, ...]) -> ResolvedTarget:
        curve = self.calibration.curve(task, codec) if self.calibration is not None else None
        priors = {}
        if curve is not None and tuple(curve.rate_points) == tuple(ladder):  # priors only fit their own ladder
            priors = {"metric_prior": curve.metric_median, "bytes_prior": curve.bytes_median}
        if self._fixed is not None:
            return ResolvedTarget(self._fixed, **priors)
        drop = self.params.target_accuracy_drop
        thr = curve.threshold_for(drop)
        if thr is None:
            return ResolvedTarget(None, unreachable=(
                f"unreachable: accuracy target of {task}/{codec}: drops {curve.best_rate_drop:.3g} "
                f"even at the highest quality (target {drop:g})"), **priors)
        if not math.isfinite(thr):
            return ResolvedTarget(None, always_best=True, **priors)
        return ResolvedTarget(make_target(self.metric, thr, self._hib, self.params.metric_range), **priors)


def make_search(params: TargetParams, resolved: ResolvedTarget) -> TargetSearch:
    """A node's search, seeded with the calibration's metric profile when it has one."""
    profile = None
    if resolved.target is not None and resolved.metric_prior is not None:
        d = [resolved.target.distortion(v) for v in resolved.metric_prior]
        if all(math.isfinite(x) for x in d):
            profile = np.asarray(d) - d[0]
    return TargetSearch(params.search, params.max_encodes, params.margin, profile,
                        params.learn_rate, params.offset_smoothing, params.stat_memory)


def frame_statistic(ctx: PolicyContext, enabled: bool) -> float | None:
    """The frame's feature statistic when the context carries the feature (its time is charged)."""
    if not enabled or ctx.feature is None:
        return None
    t0 = time.perf_counter()
    value = feature_statistic(ctx.feature)
    ctx.spend(time.perf_counter() - t0)
    return value


def fallback_decision(ctx: PolicyContext, resolved: ResolvedTarget, index: int = 0) -> Decision:
    """Targets that need no search: always the best rate, or an unreachable accuracy target."""
    rp = ctx.ladder[index]
    if resolved.always_best:
        return ctx.decision(rp, met_target=True, reason="calibrated: the tolerance needs the highest quality")
    return ctx.decision(rp, met_target=False, reason=resolved.unreachable)


@register_policy("cfqa-target")
class CfqaTargetPolicy:
    """Reach a metric threshold at the lowest rate."""

    Params = TargetParams
    name: ClassVar[str]  # set by register_policy

    def __init__(self, params: TargetParams) -> None:
        self.params = params
        self.plans: RatePlans | None = None
        self.resolver: TargetResolver | None = None
        if params.threshold is None and params.target_accuracy_drop is None:
            self.plans = RatePlans.load(params.plan or DEFAULT_PLANS)
            metrics = {p.metric for p in self.plans.plans.values()}
            if params.metric is not None and metrics != {params.metric}:
                raise PolicyError(f"metric '{params.metric}' differs from the rate plans' {sorted(metrics)}")
            self._plan_metric = sorted(metrics)[0] if metrics else DEFAULT_METRIC
        else:
            self.resolver = TargetResolver(params)
        self._searches: dict[tuple[str, str], TargetSearch] = {}

    @property
    def metric(self) -> str:
        return self._plan_metric if self.resolver is None else self.resolver.metric

    def search_for(self, ctx: PolicyContext, resolved: ResolvedTarget) -> TargetSearch:
        key = (ctx.task, ctx.codec)
        if key not in self._searches:
            self._searches[key] = make_search(self.params, resolved)
        return self._searches[key]

    def decide(self, ctx: PolicyContext) -> Decision:
        if self.plans is not None:
            return run_plan(ctx, self.plans.get(ctx.task, ctx.codec))
        resolved = self.resolver.resolve(ctx.task, ctx.codec, ctx.ladder)
        if resolved.target is None:
            return fallback_decision(ctx, resolved)
        search = self.search_for(ctx, resolved)
        stat = frame_statistic(ctx, self.params.feature_stat and search.mode == "model")
        res = search.find(ctx, resolved.target, stat=stat)
        return ctx.decision(ctx.ladder[res.index], res.metric, res.met, res.reason)
