"""The cloud: ``k`` servers in front of one FIFO queue."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy


class Cloud:
    """Serves decode + inference requests first come, first served; tracks busy server-seconds.

    The queue is kept by hand rather than with ``simpy.Resource``: the same
    discipline with one event per request instead of three (this is the
    simulator's hot path at a thousand nodes).
    """

    def __init__(self, env: simpy.Environment, servers: int) -> None:
        self.env = env
        self.servers = servers
        self.idle = servers
        self.queue: deque[tuple[float, Callable[[float, float], None]]] = deque()
        self.busy_s = 0.0

    def submit(self, service_s: float, done: Callable[[float, float], None]) -> None:
        """Queue a request needing ``service_s``; ``done(start_s, end_s)`` runs once served."""
        if self.idle:
            self.idle -= 1
            self._start(service_s, done)
        else:
            self.queue.append((service_s, done))

    def _start(self, service_s: float, done: Callable[[float, float], None]) -> None:
        began = self.env.now
        self.env.timeout(service_s).callbacks.append(lambda _ev: self._finish(began, service_s, done))

    def _finish(self, began: float, service_s: float, done: Callable[[float, float], None]) -> None:
        self.busy_s += service_s
        if self.queue:
            self._start(*self.queue.popleft())
        else:
            self.idle += 1
        done(began, self.env.now)
