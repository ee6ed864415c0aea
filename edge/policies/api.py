"""The rate-control policy interface: what a policy sees, may do and returns.

A policy picks a rate point for each frame. It sees a :class:`PolicyContext`
(node state, throughput estimate, deadline budget, the codec's ladder and,
in the live setting, the feature itself) and may trial-encode at any rate
point with ``ctx.encode(rate_point)``. Every trial is counted and costs edge
time: the encode, plus -- when the policy *assesses* the result -- the local
decode and the quality metric (``assess=False`` encodes without scoring, e.g.
to learn the size of a bitstream). It returns a :class:`Decision`.

The same context shape serves three settings:

- replay (the simulator, the offline evaluation): ``encode`` looks the
  outcome up in the benchmark table;
- live (the edge client): :class:`cfqa_edge.policies.live.LiveContext` runs the
  real codec, decoder and metric and keeps the bitstream that is sent;
- oracle runs: ``judge(rate_point)`` returns how far the cloud's output moves
  from the uncompressed output at a rate point (:mod:`cfqa_core.fidelity`);
  only the ``oracle`` policy uses it.

Policies are duck-typed: any object with ``name`` and ``decide(ctx)`` works;
an optional ``observe(feedback)`` receives a :class:`Feedback` once a frame's
result is back. One policy instance serves one node (policies keep state).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from cfqa_core.errors import PolicyError

_NO_METRICS: Mapping[str, float] = {}


class EncodeOutcome(NamedTuple):
    """The result of encoding one frame at one rate point (on the edge)."""

    rate_point: int
    nbytes: int
    encode_s: float
    metrics: Mapping[str, float]
    decode_s: float = 0.0  # local decode needed to score it (0 when unknown)


class Decision(NamedTuple):
    """A policy's choice for one frame."""

    rate_point: int
    encodes: int           # trial encodes performed (>= 1)
    edge_time_s: float     # encode (+ decode + metric when assessed) time those trials took on the edge
    metric: float = math.nan   # the guiding metric's value at ``rate_point``
    met_target: bool | None = None  # whether the policy's target was reached (None: no target)
    reason: str | None = None  # why the target was missed or a fallback was taken


class Feedback(NamedTuple):
    """What a node learns about a frame once its result is back from the cloud."""

    frame_idx: int
    rate_point: int
    nbytes: int
    throughput_bps: float
    latency_s: float
    deadline_met: bool


class PolicyContext:
    """Everything a policy may look at for one frame, plus counted trial encodes.

    ``encode(rate_point)`` returns an :class:`EncodeOutcome`; ``metric_s`` is
    the edge time of one metric evaluation, charged (with the outcome's
    ``decode_s``) the first time a rate point is assessed. ``judge`` maps a
    rate point to the change of the task output (0 = unchanged), for oracles.
    """

    __slots__ = (
        "node_id", "frame_idx", "task", "codec", "ladder", "now_s", "time_left_s",
        "throughput_bps", "queue_frames", "previous_rate_point", "rng", "feature",
        "encodes", "edge_time_s", "_encode", "_metric_s", "_judge", "_cache", "_assessed", "_bare",
    )

    def __init__(
        self,
        *,
        node_id: int,
        frame_idx: int,
        task: str,
        codec: str,
        ladder: tuple[int, ...],
        now_s: float,
        time_left_s: float,
        throughput_bps: float | None,
        queue_frames: int,
        previous_rate_point: int | None,
        rng: np.random.Generator,
        encode: Callable[[int], EncodeOutcome],
        metric_s: float = 0.0,
        judge: Callable[[int], float] | None = None,
        feature: np.ndarray | None = None,
    ) -> None:
        self.node_id = node_id
        self.frame_idx = frame_idx
        self.task = task
        self.codec = codec
        self.ladder = tuple(ladder)           # highest quality first
        self.now_s = now_s
        self.time_left_s = time_left_s        # until this frame's deadline
        self.throughput_bps = throughput_bps  # harmonic mean of recent transfers (None: no sample yet)
        self.queue_frames = queue_frames      # frames waiting on this node besides this one
        self.previous_rate_point = previous_rate_point
        self.rng = rng
        self.feature = feature                # the frame's feature (live only; None in replay)
        self.encodes = 0
        self.edge_time_s = 0.0
        self._encode = encode
        self._metric_s = metric_s
        self._judge = judge
        self._cache: dict[int, EncodeOutcome] = {}
        self._assessed: set[int] = set()
        self._bare: dict[int, EncodeOutcome] = {}  # unassessed views of cached outcomes (built once)

    def reset(
        self,
        *,
        frame_idx: int,
        now_s: float,
        time_left_s: float,
        throughput_bps: float | None,
        queue_frames: int,
        previous_rate_point: int | None,
        feature: np.ndarray | None = None,
    ) -> PolicyContext:
        """Reuse this context for the next frame of the same node; returns it.

        Node, task, codec, ladder, rng, metric time and the encode/judge
        callables stay; the frame's state is replaced and no trial is left.
        A simulator deciding a million frames saves building a context (and
        its dict and set) per frame this way.
        """
        self.frame_idx = frame_idx
        self.now_s = now_s
        self.time_left_s = time_left_s
        self.throughput_bps = throughput_bps
        self.queue_frames = queue_frames
        self.previous_rate_point = previous_rate_point
        self.feature = feature
        self.encodes = 0
        self.edge_time_s = 0.0
        self._cache.clear()
        self._assessed.clear()
        self._bare.clear()
        return self

    # ---- trial encodes ----------------------------------------------------------------
    def encode(self, rate_point: int, *, assess: bool = True) -> EncodeOutcome:
        """Trial-encode at ``rate_point`` (counted once; repeated calls are free).

        With ``assess`` the bitstream is also decoded locally and scored, and
        the outcome carries ``metrics``; without it ``metrics`` is empty.
        """
        if rate_point not in self._cache:
            if rate_point not in self.ladder:
                raise PolicyError(f"rate point {rate_point} is not on the {self.codec} ladder {self.ladder}")
            out = self._encode(rate_point)
            self.encodes += 1
            self.edge_time_s += out.encode_s
            self._cache[rate_point] = out
        if assess and rate_point not in self._assessed:
            scored, seconds = self._assess(self._cache[rate_point])
            self._cache[rate_point] = scored
            self._assessed.add(rate_point)
            self.edge_time_s += seconds
        if rate_point in self._assessed:
            return self._cache[rate_point]
        bare = self._bare.get(rate_point)
        if bare is None:
            out = self._cache[rate_point]
            # Calling the class is several times cheaper than namedtuple._replace.
            bare = (EncodeOutcome(out.rate_point, out.nbytes, out.encode_s, _NO_METRICS, out.decode_s)
                    if type(out) is EncodeOutcome else out._replace(metrics=_NO_METRICS))
            self._bare[rate_point] = bare
        return bare

    def _assess(self, out: EncodeOutcome) -> tuple[EncodeOutcome, float]:
        """Decode and score ``out``; returns the scored outcome and the edge seconds it took.

        In replay the metrics are already in the outcome: only their time is charged.
        """
        return out, getattr(out, "decode_s", 0.0) + self._metric_s

    def spend(self, seconds: float) -> None:
        """Charge other edge work of the policy (e.g. statistics of the feature) to this frame."""
        self.edge_time_s += max(float(seconds), 0.0)

    def encoded(self, rate_point: int) -> EncodeOutcome | None:
        """The trial encode at ``rate_point`` if one was made."""
        return self._cache.get(rate_point)

    def assessed(self, rate_point: int) -> bool:
        return rate_point in self._assessed

    # ---- oracle access ----------------------------------------------------------------
    @property
    def can_judge(self) -> bool:
        return self._judge is not None

    def judge(self, rate_point: int) -> float:
        """The output change at ``rate_point`` (the task heads at the edge, or a table; oracles only).

        Charges the trial encode and the local decode of that rate point.
        """
        if self._judge is None:
            raise PolicyError("this context cannot judge task outcomes (the oracle needs the task heads or a table)")
        out = self.encode(rate_point, assess=False)
        if rate_point not in self._assessed:
            self.edge_time_s += getattr(out, "decode_s", 0.0)
        return float(self._judge(rate_point))

    def decision(self, rate_point: int, metric: float = math.nan, met_target: bool | None = None,
                 reason: str | None = None) -> Decision:
        """A :class:`Decision` for ``rate_point`` with this context's counts (encodes it if needed)."""
        self.encode(rate_point, assess=False)
        return Decision(rate_point, self.encodes, self.edge_time_s, metric, met_target, reason)


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(self, ctx: PolicyContext) -> Decision: ...


def as_decision(obj: Any, ctx: PolicyContext) -> Decision:
    """Normalise a policy's return value; the chosen rate point is encoded if it was not."""
    if type(obj) is Decision and obj.rate_point in ctx._cache and obj.encodes == ctx.encodes:
        return obj  # built by ctx.decision(): already consistent
    try:
        rate_point = int(obj.rate_point)
    except (AttributeError, TypeError, ValueError):
        raise PolicyError(f"policy returned {obj!r}, which has no integer rate_point") from None
    ctx.encode(rate_point, assess=False)
    metric = getattr(obj, "metric", math.nan)
    met = getattr(obj, "met_target", None)
    reason = getattr(obj, "reason", None)
    return Decision(
        rate_point,
        max(int(getattr(obj, "encodes", ctx.encodes)), ctx.encodes),
        max(float(getattr(obj, "edge_time_s", ctx.edge_time_s)), ctx.edge_time_s),
        math.nan if metric is None else float(metric),
        None if met is None else bool(met),
        None if reason is None else str(reason),
    )
