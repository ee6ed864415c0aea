"""Edge nodes: frame arrivals, encode with a policy, a bounded queue, the uplink.

A node is three stages:

- arrivals (:class:`Arrivals`): frames arrive at precomputed times (fixed
  fps or Poisson) with precomputed images; a frame finding ``queue_frames``
  frames already held by the node is dropped (``queue_full``).
- the encoder: one frame at a time, runs the edge part of the model and the
  policy (whose trial encodes cost edge time), then queues the bitstream.
- the sender: one transfer at a time on the node's link; each transfer's
  throughput feeds the harmonic-mean estimator the policy sees.

Arrivals, the encoder and the sender are advanced by event callbacks (as
the cloud) rather than processes: a process costs a wake-up event and a
resume per frame at each stage, and a thousand nodes for an hour is about a
million such frames. For the same reason a node keeps one policy context
and resets it per frame, binds its stage callbacks once (the frame in the
encoder and the one on the link wait on the node, one of each at a time),
and its estimator keeps the inverses it sums. A
frame whose deadline has passed before it is encoded or sent is dropped
(``stale``) when ``drop_stale`` is set. The cloud's result returns after
the link's propagation delay.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

from cfqa_edge.policies.api import Decision, Feedback, PolicyContext, as_decision
from cfqa_sim.cloud import Cloud
from cfqa_sim.link import Delivery, Link
from cfqa_sim.outcomes import FrameOutcomeProvider, FrameRef
from cfqa_sim.records import LATE, LOSS, OK, QUEUE_FULL, STALE, FrameLog


@dataclass(frozen=True)
class NodeSpec:
    """One node's resolved configuration."""

    node_id: int
    group: int
    task: str
    codec: str
    ladder: tuple[int, ...]
    deadline_s: float
    queue_frames: int
    drop_stale: bool
    estimator_window: int
    initial_bps: float | None
    backbone_s: float   # edge model time per frame (profile; a provider may measure instead)
    cloud_s: float      # cloud model time per frame (profile; a provider may measure instead)
    metric_s: float     # one quality-metric evaluation on the edge


class ThroughputEstimator:
    """Harmonic mean of the last ``window`` transfer throughputs (as ABR clients)."""

    def __init__(self, window: int, initial_bps: float | None = None) -> None:
        self.samples: deque[float] = deque(maxlen=window)
        self.initial_bps = initial_bps
        # The inverses, summed in C on each sample: the same additions in the same order
        # as summing 1/s over the window, so the estimate is bit-identical.
        self._inverses: deque[float] = deque(maxlen=window)
        self._estimate = initial_bps

    def add(self, bps: float) -> None:
        if bps > 0:
            self.samples.append(bps)
            self._inverses.append(1.0 / bps)
            self._estimate = len(self._inverses) / sum(self._inverses)

    @property
    def estimate_bps(self) -> float | None:
        return self._estimate


class EdgeNode:
    """State shared by one node's processes."""

    def __init__(
        self,
        env: simpy.Environment,
        spec: NodeSpec,
        *,
        link: Link,
        link_index: int,
        cloud: Cloud,
        provider: FrameOutcomeProvider,
        policy,
        log: FrameLog,
        rng: np.random.Generator,
    ) -> None:
        self.env = env
        self.spec = spec
        self.link = link
        self.link_index = link_index
        self.cloud = cloud
        self.provider = provider
        self.policy = policy
        self.observe = getattr(policy, "observe", None)
        # Providers that keep the default ``extract`` measure nothing: skip the call per frame.
        self.extract = None if type(provider).extract is FrameOutcomeProvider.extract else provider.extract
        self.log = log
        self.rng = rng
        self.image_ids = provider.image_ids(spec.task)
        self.estimator = ThroughputEstimator(spec.estimator_window, spec.initial_bps)
        # Queued frames carry their deadline (capture + deadline_s) as a float: no log read to test staleness.
        self.to_encode: deque[tuple[int, FrameRef, float]] = deque()
        self.to_send: deque[tuple[int, FrameRef, int, int, float]] = deque()
        self.drop_stale = spec.drop_stale
        self.held = 0            # frames on the node, not yet on the link
        self.busy_s = 0.0        # edge compute time spent
        self.previous_rate_point: int | None = None
        self.encoding = False    # the encoder stage is busy
        self.sending = False     # a transfer of this node is on the link
        self._ctx: PolicyContext | None = None  # reused for every frame the provider allows
        # The frame in the encoder and the one on the link (one each at a time) wait here, and
        # their completions call methods bound once: no closure or bound method per frame.
        self._in_encoder: tuple = ()
        self._on_link: tuple = ()
        self._encoded_cb = self._encoded
        self._sent_cb = self._sent

    # -- stages -------------------------------------------------------------------------

    def capture(self, frame_idx: int, image_index: int) -> None:
        """A frame arrives: hold it or drop it when the node's queue is full."""
        spec, now = self.spec, self.env.now
        row = self.log.add(spec.node_id, spec.group, frame_idx, image_index, self.link_index, now)
        if self.held >= spec.queue_frames:
            self.log.drop(row, QUEUE_FULL)
            return
        self.held += 1
        self.to_encode.append((row, FrameRef(spec.node_id, frame_idx, spec.task, image_index,
                                             self.image_ids[image_index]), now + spec.deadline_s))
        if not self.encoding:
            self._encode_next()

    def _encode_next(self) -> None:
        """Start encoding the oldest held frame that is not stale."""
        log = self.log
        env = self.env
        now = env.now
        while self.to_encode:
            row, frame, deadline = self.to_encode.popleft()
            if self.drop_stale and now >= deadline:
                log.drop(row, STALE)
                self.held -= 1
                continue
            log.t_encode_start[row] = now
            decision, edge_s, nbytes = self._decide(frame, deadline, now)
            self.encoding = True
            self._in_encoder = (row, frame, decision, edge_s, nbytes, deadline)
            env.timeout(edge_s).callbacks.append(self._encoded_cb)
            return
        self.encoding = False

    def _decide(self, frame: FrameRef, deadline: float, now: float) -> tuple[Decision, float, int]:
        """Run the policy at ``now`` for a frame due back by ``deadline``; returns (decision, edge seconds, bytes)."""
        spec = self.spec
        time_left_s = deadline - now
        ctx = self._ctx
        if ctx is not None and self.provider.rebind_context(ctx, frame):
            ctx.reset(
                frame_idx=frame.frame_idx, now_s=now, time_left_s=time_left_s,
                throughput_bps=self.estimator.estimate_bps, queue_frames=len(self.to_send),
                previous_rate_point=self.previous_rate_point,
            )
        else:
            ctx = self._ctx = self.provider.policy_context(
                frame,
                spec.codec,
                ladder=spec.ladder,
                now_s=now,
                time_left_s=time_left_s,
                throughput_bps=self.estimator.estimate_bps,
                queue_frames=len(self.to_send),
                previous_rate_point=self.previous_rate_point,
                rng=self.rng,
                metric_s=spec.metric_s,
            )
        backbone = None if self.extract is None else self.extract(frame)
        decision = as_decision(self.policy.decide(ctx), ctx)
        edge_s = (spec.backbone_s if backbone is None else backbone) + decision.edge_time_s
        return decision, edge_s, ctx.encoded(decision.rate_point).nbytes

    def _encoded(self, _ev: simpy.Event) -> None:
        row, frame, decision, edge_s, nbytes, deadline = self._in_encoder
        log = self.log
        self.busy_s += edge_s
        log.t_encode_done[row] = self.env.now
        log.edge_s[row] = edge_s
        log.rate_point[row] = decision.rate_point
        log.bytes[row] = nbytes
        log.encodes[row] = decision.encodes
        log.metric[row] = decision.metric
        log.met_target[row] = -1 if decision.met_target is None else int(decision.met_target)
        self.previous_rate_point = decision.rate_point
        self.to_send.append((row, frame, decision.rate_point, nbytes, deadline))
        if not self.sending:
            self._send_next()
        self._encode_next()

    def _send_next(self) -> None:
        """Put the oldest encoded frame that is not stale on the link."""
        now = self.env.now
        while self.to_send:
            row, frame, rate_point, nbytes, deadline = self.to_send.popleft()
            self.held -= 1
            if self.drop_stale and now >= deadline:
                self.log.drop(row, STALE)
                continue
            self.log.t_send_start[row] = now
            self.sending = True
            self._on_link = (row, frame, rate_point, nbytes)
            self.link.transfer(nbytes, self._sent_cb)
            return
        self.sending = False

    def _sent(self, delivery: Delivery) -> None:
        row, frame, rate_point, nbytes = self._on_link
        log = self.log
        log.t_send_done[row] = delivery.done_s
        log.wire_bytes[row] = delivery.wire_bytes
        elapsed = delivery.done_s - delivery.start_s
        bps = nbytes * 8.0 / elapsed if elapsed > 0 else 0.0
        self.estimator.add(bps)
        if delivery.lost:
            log.drop(row, LOSS)
        else:
            self.env.timeout(delivery.arrive_s - self.env.now).callbacks.append(
                lambda _ev: self._deliver(row, frame, rate_point, bps)
            )
        self._send_next()

    def _deliver(self, row: int, frame: FrameRef, rate_point: int, throughput_bps: float) -> None:
        """The bitstream reached the cloud: decode, infer, return the result."""
        log, spec, env = self.log, self.spec, self.env
        log.t_cloud_arrive[row] = env.now
        out = self.provider.infer(frame, spec.codec, rate_point)
        service = out.decode_s + (spec.cloud_s if out.service_s is None else out.service_s)
        log.cloud_s[row] = service
        log.task_score[row] = out.task_score
        log.uncompressed_score[row] = out.uncompressed_score
        log.gt_distortion[row] = out.gt_distortion
        log.output_change[row] = out.output_change

        def done(start: float, end: float) -> None:
            log.t_cloud_start[row] = start
            log.t_cloud_done[row] = end
            t_result = end + self.link.delay_s
            log.t_result[row] = t_result
            latency = t_result - log.t_capture[row]
            met = latency <= spec.deadline_s
            log.finish(row, OK if met else LATE)
            if self.observe is not None:
                self.observe(Feedback(frame.frame_idx, rate_point, int(log.bytes[row]), throughput_bps, latency, met))

        self.cloud.submit(service, done)


class Arrivals:
    """Frames arrive at ``times`` showing ``images`` (indices into the provider's images).

    Each arrival's event schedules the next after the frame is captured, in the
    order a process would (capture, then the next timeout), without a process.
    """

    __slots__ = ("env", "node", "times", "images", "k", "_cb")

    def __init__(self, env: simpy.Environment, node: EdgeNode, times: np.ndarray, images: np.ndarray) -> None:
        self.env = env
        self.node = node
        self.times: list[float] = times.tolist()
        self.images: list[int] = images.tolist()
        self.k = 0
        self._cb = self._arrive  # bound once, not per arrival
        if self.times:
            env.timeout(self.times[0] - env.now).callbacks.append(self._cb)

    def _arrive(self, _ev: simpy.Event) -> None:
        k = self.k
        self.node.capture(k, self.images[k])
        self.k = k = k + 1
        if k < len(self.times):
            env = self.env
            env.timeout(self.times[k] - env.now).callbacks.append(self._cb)
