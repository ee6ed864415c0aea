"""Policies on a real feature: the live context and the ``cfqa edge run`` adapter.

:class:`LiveContext` is a :class:`~cfqa_edge.policies.api.PolicyContext` whose trial
encodes run the real codec (``cfqa_core.codecs``), whose assessments decode
locally and score with ``cfqa_core.metrics``, with measured times (the edge's
per-frame functions, :mod:`cfqa_edge.frame`), and which
keeps every :class:`~cfqa_core.codecs.base.EncodedFeature` so that the chosen
bitstream is exactly what gets sent (:meth:`LiveContext.chosen`).

:class:`RunnerPolicy` adapts any registered policy to the edge runner's
``decide(feature, codec, *, task, value_range, bit_depth)`` protocol.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cfqa_core.codecs.base import EncodedFeature, FeatureCodec
from cfqa_core.errors import PolicyError
from cfqa_edge.frame import assess, trial_encode
from cfqa_edge.policies.api import Decision, EncodeOutcome, PolicyContext, as_decision


class LiveContext(PolicyContext):
    """A policy context over one real feature: real encodes, local decodes and metric scores."""

    __slots__ = ("codec_impl", "value_range", "bit_depth", "metric_names", "bitstreams", "_feature_shape", "split")

    def __init__(
        self,
        feature: np.ndarray,
        codec: FeatureCodec,
        value_range: Any,
        metric: str | Sequence[str] | None,
        *,
        task: str,
        bit_depth: int = 10,
        ladder: tuple[int, ...] | None = None,
        node_id: int = 0,
        frame_idx: int = 0,
        now_s: float = 0.0,
        time_left_s: float = math.inf,
        throughput_bps: float | None = None,
        queue_frames: int = 0,
        previous_rate_point: int | None = None,
        judge: Callable[[int], float] | None = None,
        rng: np.random.Generator | None = None,
        split: int | None = None,
    ) -> None:
        super().__init__(
            node_id=node_id, frame_idx=frame_idx, task=task, codec=codec.name,
            ladder=tuple(ladder if ladder is not None else codec.ladder), now_s=now_s, time_left_s=time_left_s,
            throughput_bps=throughput_bps, queue_frames=queue_frames, previous_rate_point=previous_rate_point,
            rng=rng if rng is not None else np.random.default_rng(0), encode=self._real_encode, judge=judge,
            feature=np.asarray(feature, dtype=np.float32),
        )
        self.codec_impl = codec
        self.split = split  # the block the feature comes from (task-aware metrics such as ``proxy`` need it)
        self.value_range = value_range
        self.bit_depth = bit_depth
        self.metric_names = [metric] if isinstance(metric, str) else list(metric or ())
        self.bitstreams: dict[int, EncodedFeature] = {}
        if self.metric_names:
            from cfqa_core.metrics import get_metric

            for name in self.metric_names:
                get_metric(name)  # unknown metric: fail before any encode

    def _real_encode(self, rate_point: int) -> EncodeOutcome:
        enc, seconds = trial_encode(self.codec_impl, self.feature, rate_point, value_range=self.value_range,
                                    bit_depth=self.bit_depth)
        self.bitstreams[rate_point] = enc
        return EncodeOutcome(rate_point, enc.nbytes + enc.meta_bytes, seconds, {})

    def _assess(self, out: EncodeOutcome) -> tuple[EncodeOutcome, float]:
        a = assess(self.codec_impl, self.bitstreams[out.rate_point], self.feature, self.metric_names,
                   task=self.task, value_range=self.value_range, split=self.split)
        return out._replace(metrics=a.metrics, decode_s=a.decode_s), a.seconds

    def chosen(self, decision: Decision) -> EncodedFeature:
        """The encoded feature of the decision's rate point (the bitstream to send)."""
        if decision.rate_point not in self.bitstreams:
            self.encode(decision.rate_point, assess=False)
        return self.bitstreams[decision.rate_point]


def decision_record(policy: str, decision: Decision, metric_name: str | None) -> dict[str, Any]:
    """The JSON-ready record of a decision (NaN metric -> None)."""
    metric = None if math.isnan(decision.metric) else round(float(decision.metric), 8)
    return {
        "policy": policy, "rate_point": int(decision.rate_point), "encodes": int(decision.encodes),
        "edge_time_ms": round(1e3 * decision.edge_time_s, 3), "metric": metric,
        "metric_name": metric_name or "", "met_target": decision.met_target, "reason": decision.reason,
    }


class RunnerPolicy:
    """A registered policy behind the edge runner's ``decide(feature, codec, ...)`` protocol.

    One policy instance per task (each keeps its own warm start). The edge has
    no link feedback here, so link-aware policies plan with a constant
    ``throughput_mbps`` and ``deadline_s`` when given.
    """

    def __init__(self, name: str, params: dict[str, Any], throughput_mbps: float | None = None,
                 deadline_s: float | None = None) -> None:
        from cfqa_edge.policies.registry import get_policy

        self.name = name
        self.params = params
        self.throughput_bps = None if throughput_mbps is None else float(throughput_mbps) * 1e6
        self.deadline_s = math.inf if deadline_s is None else float(deadline_s)
        self._policies: dict[str, Any] = {}
        self._frames: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        get_policy(name, **params)  # validate now, not on the first frame
        self._get = get_policy

    def _policy(self, task: str) -> Any:
        if task not in self._policies:
            self._policies[task] = self._get(self.name, **self.params)
        return self._policies[task]

    def decide(self, feature: np.ndarray, codec: FeatureCodec, *, task: str, value_range: Any,
               bit_depth: int, split: int | None = None) -> tuple[EncodedFeature, dict[str, Any]]:
        policy = self._policy(task)
        metric = getattr(policy, "metric", None) or getattr(getattr(policy, "params", None), "metric", None)
        ladder = tuple(codec.ladder)
        if getattr(policy, "plans", True) is None and hasattr(policy, "rate_point"):
            # A fixed rate point off the codec's ladder (``--rate-point 12``) is still a rate point the codec takes.
            ladder = tuple(sorted({*ladder, int(policy.rate_point(ladder))}))
        ctx = LiveContext(feature, codec, value_range, metric, task=task, bit_depth=bit_depth, split=split,
                          ladder=ladder,
                          frame_idx=self._frames.get(task, 0), time_left_s=self.deadline_s,
                          throughput_bps=self.throughput_bps, previous_rate_point=self._previous.get(task))
        decision = as_decision(policy.decide(ctx), ctx)
        self._frames[task] = ctx.frame_idx + 1
        self._previous[task] = decision.rate_point
        return ctx.chosen(decision), decision_record(self.name, decision, metric)


def runner_factory(name: str) -> Callable[[dict[str, Any]], RunnerPolicy]:
    """``factory(options) -> RunnerPolicy`` for :func:`cfqa_edge.runner.build_policy` (options may be strings)."""

    def factory(options: dict[str, Any]) -> RunnerPolicy:
        opts = {k: v for k, v in options.items() if v is not None}
        rate_point = opts.pop("rate_point", None)
        if rate_point is not None:
            if name != "fixed":
                raise PolicyError(f"--rate-point is a parameter of the fixed policy, not of '{name}'")
            opts["rate_point"] = rate_point
        throughput = opts.pop("throughput_mbps", None)
        deadline = opts.pop("deadline_s", None)
        return RunnerPolicy(name, opts, throughput, deadline)

    return factory
