"""An uplink driven by a trace: processor sharing over delivery opportunities.

Every opportunity of the trace carries ``MTU_BYTES``; the transfers active at
that moment share it equally (fluid processor sharing, as a fair bottleneck
queue). The link keeps one "virtual bytes" counter ``v``: the bytes each
active transfer has received so far. A transfer of ``B`` bytes joining at
``v0`` completes when ``v`` reaches ``v0 + B``, so the next completion is an
index into the trace, not a per-packet event. "The opportunity at now" comes
from a :class:`~cfqa_sim.traces.TraceCursor` that resumes from the link's previous answer (its
clock only moves forward) instead of searching the whole trace each time.
Nothing accumulates while the link is idle or down: opportunities then are
lost, as on a real link.

Loss (``loss_rate`` per packet) has two documented modes:

- ``retransmit`` (default, gRPC runs over TCP): each lost packet is sent
  again and consumes opportunities; a transfer that lost any packet reaches
  the far end one extra round trip (2 x delay) later.
- ``drop`` (datagram transport): the whole frame is lost when any of its
  packets is; it still occupies the link for its full size.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator
from typing import NamedTuple

import numpy as np
import simpy

from cfqa_sim.traces import MTU_BYTES, Trace

LOSS_MODES: tuple[str, ...] = ("retransmit", "drop")
_EPS_BYTES = 1e-6


class Delivery(NamedTuple):
    """What the sender learns when its transfer has left the link."""

    wire_bytes: int     # bytes that crossed the link, retransmissions included
    start_s: float      # when the transfer joined the link
    done_s: float       # when its last byte left (sender free again)
    arrive_s: float     # when it reaches the far end (propagation, retransmission penalty)
    lost: bool          # dropped by loss in ``drop`` mode


class Link:
    """A trace-driven uplink shared fairly by the transfers active on it."""

    def __init__(
        self,
        env: simpy.Environment,
        trace: Trace,
        *,
        name: str = "link",
        delay_s: float = 0.0,
        loss_rate: float = 0.0,
        loss_mode: str = "retransmit",
        offset_s: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"unknown loss mode {loss_mode!r}")
        self.env = env
        self.trace = trace
        self.name = name
        self.delay_s = delay_s
        self.loss_rate = loss_rate
        self.loss_mode = loss_mode
        self.offset_s = offset_s  # trace time = simulation time + offset
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._cursor = trace.cursor()
        self._index = self._cursor.index_at  # bound once: called on every arrival
        self.up = True
        self.wire_bytes = 0
        self._v = 0.0
        self._next = self._index(offset_s)  # next unused opportunity (global index)
        # heap of (finish v, seq, completion callback, wire bytes, start time, lost, arrival penalty)
        self._active: list[tuple] = []
        self._seq = 0
        # The one pending completion timer and the opportunities it hands out; a timer that is
        # no longer ``_timer`` was superseded by an arrival or an outage. Its callback is bound
        # once here rather than a closure per timer.
        self._timer: simpy.Event | None = None
        self._timer_k = 0
        self._on_timer = self._complete

    # -- public -----------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Transfers currently sharing the link."""
        return len(self._active)

    def transfer(self, nbytes: int, on_done: Callable[[Delivery], None] | None = None) -> simpy.Event | None:
        """Send ``nbytes``. Without ``on_done`` returns an event whose value is the
        :class:`Delivery` (``yield link.transfer(n)`` in a process); with it, calls
        ``on_done(delivery)`` instead (one event fewer, for the simulator's hot path).
        """
        now = self.env.now
        if self.loss_rate > 0.0:
            wire, lost, penalty = self._apply_loss(int(nbytes))
        else:
            wire, lost, penalty = int(nbytes), False, 0.0
        done = on_done
        ev = None
        if done is None:
            ev = self.env.event()
            done = ev.succeed
        if self._active:
            self._advance(now)
        else:
            # Idle: opportunities since the last transfer were lost; start at the next one from now.
            j = self._index(now + self.offset_s)
            if j > self._next:
                self._next = j
        heapq.heappush(self._active, (self._v + wire, self._seq, done, wire, now, lost, penalty))
        self._seq += 1
        self._schedule()
        return ev

    def set_up(self, up: bool) -> None:
        """Start (``False``) or end (``True``) an outage at the current time."""
        now = self.env.now
        if up == self.up:
            return
        self._advance(now)
        self.up = up
        if up:
            self._next = max(self._next, self._index_at(now))
        self._schedule()

    # -- internals --------------------------------------------------------------------

    def _index_at(self, t_s: float) -> int:
        return self._index(t_s + self.offset_s)

    def _apply_loss(self, nbytes: int) -> tuple[int, bool, float]:
        if self.loss_rate <= 0.0 or nbytes <= 0:
            return nbytes, False, 0.0
        packets = math.ceil(nbytes / MTU_BYTES)
        if self.loss_mode == "drop":
            lost = self.rng.random() < 1.0 - (1.0 - self.loss_rate) ** packets
            return nbytes, bool(lost), 0.0
        resent = int(self.rng.negative_binomial(packets, 1.0 - self.loss_rate))
        return nbytes + resent * MTU_BYTES, False, (2.0 * self.delay_s if resent else 0.0)

    def _advance(self, now: float) -> None:
        """Hand the opportunities strictly before ``now`` to the active transfers."""
        if not self._active or not self.up:
            return
        k = self._index(now + self.offset_s) - self._next
        if k > 0:
            self._v += k * MTU_BYTES / len(self._active)
            self._next += k

    def _schedule(self) -> None:
        active = self._active
        if not active or not self.up:
            self._timer = None
            return
        remaining = active[0][0] - self._v
        k = max(1, math.ceil((remaining * len(active) - _EPS_BYTES) / MTU_BYTES))
        at = self._cursor.time_s(self._next + k - 1) - self.offset_s
        env = self.env
        now = env.now
        timer = env.timeout(at - now if at > now else 0.0)
        self._timer, self._timer_k = timer, k
        timer.callbacks.append(self._on_timer)

    def _complete(self, timer: simpy.Event) -> None:
        if timer is not self._timer:
            return  # superseded by an arrival or an outage
        k = self._timer_k
        now = self.env.now
        active = self._active
        self._v += k * MTU_BYTES / len(active)
        self._next += k
        finished = []
        while active and active[0][0] - self._v <= _EPS_BYTES:
            _, _, done, wire, start, lost, penalty = heapq.heappop(active)
            self.wire_bytes += wire
            finished.append((done, Delivery(wire, start, now, now + self.delay_s + penalty, lost)))
        if active:
            self._schedule()
        else:
            self._timer = None  # what _schedule does with nothing to schedule
        for done, delivery in finished:  # after rescheduling: a callback may start a new transfer
            done(delivery)


def outage_process(env: simpy.Environment, links: list[Link], start_s: float, duration_s: float) -> Generator:
    """Take ``links`` down at ``start_s`` for ``duration_s`` (a scheduled outage)."""
    yield env.timeout(start_s)
    for link in links:
        link.set_up(False)
    yield env.timeout(duration_s)
    for link in links:
        link.set_up(True)
