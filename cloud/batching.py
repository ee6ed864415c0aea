"""Dynamic batching in the manner of Triton's dynamic batcher: same-key items wait briefly to run together.

Callers ``submit(key, item)`` from many threads and block on the returned
future. Worker threads take the key whose oldest item has waited longest and
run up to ``max_batch_size`` of its items in one call of ``run_batch``, as
soon as that many are queued or the oldest has waited ``max_delay_s``. Items
with different keys never share a batch; a key with a full batch does not
wait for its delay.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchingConfig:
    """``max_batch_size`` items at most per batch; the oldest waits at most ``max_delay_s``;
    ``workers`` batches run at once."""

    max_batch_size: int = 8
    max_delay_s: float = 0.002
    workers: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {self.max_delay_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class _Pending(Generic[T]):
    item: T
    future: Future
    t_submit: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters since start: items and batches run, and a histogram {batch size: batches}."""

    items: int = 0
    batches: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher(Generic[T, R]):
    """Groups items by key and runs ``run_batch(key, items) -> results`` (one result per item, in order)."""

    def __init__(self, run_batch: Callable[[Hashable, Sequence[T]], Sequence[R]], config: BatchingConfig,
                 name: str = "batcher") -> None:
        self.run_batch = run_batch
        self.config = config
        self._queues: dict[Hashable, deque[_Pending[T]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(config.workers)]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, item: T) -> Future:
        """Queue ``item``; the future holds its result (or the exception its batch raised)."""
        pending = _Pending(item, Future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queues.setdefault(key, deque()).append(pending)
            self._cond.notify()
        return pending.future

    def __call__(self, key: Hashable, item: T) -> R:
        """Submit and wait for the result."""
        return self.submit(key, item).result()

    def close(self) -> None:
        """Run what is queued, then stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _take(self) -> tuple[Hashable, list[_Pending[T]]] | None:
        """Block until a batch is due; pop and return it (None once closed and drained)."""
        cfg = self.config
        with self._cond:
            while True:
                if not self._queues:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                # A full batch goes at once; otherwise the key whose oldest item has waited
                # longest goes first, when that item's delay is up (no key starves).
                oldest = lambda k: self._queues[k][0].t_submit  # noqa: E731
                full = [k for k, q in self._queues.items() if len(q) >= cfg.max_batch_size]
                key = min(full or self._queues, key=oldest)
                queue = self._queues[key]
                due = queue[0].t_submit + cfg.max_delay_s
                now = time.perf_counter()
                if not full and now < due and not self._closed:
                    self._cond.wait(due - now)
                    continue
                batch = [queue.popleft() for _ in range(min(cfg.max_batch_size, len(queue)))]
                if not queue:
                    del self._queues[key]
                return key, batch

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, batch = taken
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.run_batch(key, [p.item for p in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch of {len(live)} returned {len(results)} results")
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for p in live:
                    p.future.set_exception(exc)
            else:
                for p, r in zip(live, results):
                    p.future.set_result(r)
            with self._cond:
                self.stats.items += len(live)
                self.stats.batches += 1
                self.stats.sizes[len(live)] = self.stats.sizes.get(len(live), 0) + 1

    def pending(self) -> int:
        """Items queued and not yet taken into a batch."""
        with self._cond:
            return sum(len(q) for q in self._queues.values())


def describe(stats: BatchStats) -> dict[str, Any]:
    """JSON-ready counters."""
    return {"items": stats.items, "batches": stats.batches, "mean_batch": round(stats.mean_batch, 3),
            "sizes": {str(k): v for k, v in sorted(stats.sizes.items())}}
