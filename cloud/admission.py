"""What the cloud admits and remembers: the frame queue, open streams, failed logins, answered frames.

* :class:`FrameQueue`: every frame (unary call or stream message) is admitted
  on its own: at most ``capacity`` frames are admitted at once (waiting or
  computing), and a frame that waits longer than ``max_delay_s`` for one of
  the ``slots`` compute slots is refused; both refusals are
  RESOURCE_EXHAUSTED, which a client retries.
* :class:`StreamRegistry`: caps open streams in total and per peer address
  and ends streams that stay idle.
* :class:`AuthGuard`: constant-time token check with a per-peer limit on
  failed attempts.
* :class:`ResponseCache`: answers a repeated ``(node_id, frame_id)`` with the
  same request content from memory instead of recomputing (bounded in entries
  and bytes, least recently used first, entries expire).
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

log = logging.getLogger("cfqa.cloud")


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ('ipv4:1.2.3.4:5678' -> '1.2.3.4', 'ipv6:[::1]:5' -> '::1')."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer


class Refusal(Exception):
    """A frame or call refused with a gRPC status; ``reason`` labels the metric."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


# ---- frames ----------------------------------------------------------------------------


class FrameQueue:
    """Bounded admission in front of ``slots`` compute slots (see the module docstring)."""

    def __init__(self, capacity: int, slots: int, max_delay_s: float,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.capacity = capacity
        self.max_delay_s = max_delay_s
        self.slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.admitted = 0  # waiting or computing
        self.waiting = 0
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.admitted, self.waiting)

    @property
    def full(self) -> bool:
        return self.admitted >= self.capacity

    def enter(self) -> None:
        """Admit one frame or raise Refusal(RESOURCE_EXHAUSTED)."""
        with self._lock:
            if self.admitted >= self.capacity:
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"server busy: {self.capacity} frames queued or in progress", "queue_full")
            self.admitted += 1
            self.waiting += 1
            self._changed()

    def wait_slot(self, deadline_s: float | None) -> float:
        """Take a compute slot within the queue-delay limit and ``deadline_s``; returns the wait in seconds."""
        t0 = time.perf_counter()
        budget = self.max_delay_s if deadline_s is None else min(self.max_delay_s, max(0.0, deadline_s))
        got = self.slots.acquire(timeout=budget)
        waited = time.perf_counter() - t0
        with self._lock:
            self.waiting -= 1
            self._changed()
        if got:
            return waited
        if deadline_s is not None and deadline_s <= self.max_delay_s:
            raise Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a compute slot",
                          "deadline")
        raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"server busy: no compute slot within the {self.max_delay_s:g} s queue-delay limit",
                      "queue_delay")

    def release_slot(self) -> None:
        self.slots.release()

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1
            self._changed()


# ---- streams ---------------------------------------------------------------------------


@dataclass
class _Stream:
    peer: str
    context: grpc.ServicerContext
    last_active: float
    busy: bool = False


def cancel_with_status(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End a call from another thread with ``code`` and ``message`` (plain CANCELLED if grpc hides the call)."""
    try:
        from grpc._cython import cygrpc

        # grpcio's server context keeps the core call here; cancelling it with a status
        # delivers the reason to the client, which context.cancel() cannot.
        context._rpc_event.call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), message)
    except Exception:
        context.cancel()


class StreamRegistry:
    """Open InferStream calls: total and per-peer caps, idle timeout enforced by one watchdog thread."""

    def __init__(self, max_streams: int, max_per_peer: int, idle_timeout_s: float,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self.idle_timeout_s = idle_timeout_s
        self._streams: dict[int, _Stream] = {}
        self._per_peer: dict[str, int] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._on_change = on_change
        self._stop = threading.Event()
        self.idle_closed = 0
        self._watchdog = threading.Thread(target=self._watch, name="cfqa-stream-idle", daemon=True)
        self._watchdog.start()

    def open(self, peer: str, context: grpc.ServicerContext) -> int:
        """Register a stream or raise Refusal(RESOURCE_EXHAUSTED)."""
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"server busy: {self.max_streams} streams open", "stream_cap")
            if self._per_peer.get(peer, 0) >= self.max_per_peer:
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.max_per_peer} streams already open from this address", "peer_stream_cap")
            self._next += 1
            self._streams[self._next] = _Stream(peer, context, time.monotonic())
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            n = len(self._streams)
        if self._on_change:
            self._on_change(n)
        return self._next

    def busy(self, sid: int, busy: bool) -> None:
        """Mark a stream as computing (never idle) or waiting for its next frame."""
        with self._lock:
            s = self._streams.get(sid)
            if s is not None:
                s.busy = busy
                s.last_active = time.monotonic()

    def close(self, sid: int) -> None:
        with self._lock:
            s = self._streams.pop(sid, None)
            if s is None:
                return
            left = self._per_peer[s.peer] - 1
            if left:
                self._per_peer[s.peer] = left
            else:
                del self._per_peer[s.peer]
            n = len(self._streams)
        if self._on_change:
            self._on_change(n)

    @property
    def open_count(self) -> int:
        return len(self._streams)

    def _watch(self) -> None:
        period = min(1.0, max(0.05, self.idle_timeout_s / 4))
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = [(sid, s) for sid, s in self._streams.items()
                        if not s.busy and now - s.last_active > self.idle_timeout_s]
            for sid, s in idle:
                self.idle_closed += 1
                cancel_with_status(s.context, grpc.StatusCode.UNAVAILABLE,
                                   f"stream closed after {self.idle_timeout_s:g} s without a frame; open a new one")
                self.close(sid)

    def stop(self) -> None:
        self._stop.set()


# ---- authentication --------------------------------------------------------------------


class AuthGuard:
    """Bearer-token check with at most ``max_failures`` failed attempts per peer address per ``window_s``."""

    def __init__(self, token: str, max_failures: int = 10, window_s: float = 60.0,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._on_reject = on_reject

    def _recent(self, host: str, now: float) -> deque[float]:
        q = self._failures.setdefault(host, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def check(self, metadata, peer: str) -> Refusal | None:
        """None when the call may proceed, else the Refusal to answer with."""
        host = peer_host(peer)
        now = time.monotonic()
        with self._lock:
            recent = self._recent(host, now)
            if len(recent) >= self.max_failures:
                retry = self.window_s - (now - recent[0])
                refusal = Refusal(grpc.StatusCode.UNAUTHENTICATED,
                                  f"too many failed authentications from this address; retry in {retry:.0f} s",
                                  "locked_out")
            else:
                got = next((v for k, v in metadata or () if k == "authorization"), None)
                if got is not None and hmac.compare_digest(got if isinstance(got, bytes) else got.encode(),
                                                           self._expected):
                    return None
                recent.append(now)
                if len(self._failures) > 10000:  # forget the oldest addresses rather than grow without bound
                    self._failures.pop(next(iter(self._failures)))
                refusal = Refusal(grpc.StatusCode.UNAUTHENTICATED,
                                  "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
                                  "bad_token")
        if self._on_reject:
            self._on_reject(refusal.reason)
        return refusal


# ---- answered frames -------------------------------------------------------------------


class ResponseCache:
    """Answers of recent frames by ``(node_id, frame_id)``, checked against a digest of the request content."""

    def __init__(self, max_entries: int = 4096, ttl_s: float = 600.0, max_bytes: int = 64 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.nbytes = 0
        self._entries: OrderedDict[tuple[str, int], tuple[float, bytes, bytes]] = OrderedDict()
        self._pending: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.conflicts = 0

    def claim(self, key: tuple[str, int], digest: bytes, wait_s: float) -> bytes | None:
        """The cached answer (serialized) for ``key``, or None after making the caller its computer.

        A caller that gets None must call :meth:`finish`. When the same key is being
        computed by another call, wait for it (up to ``wait_s``) rather than compute twice.
        """
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    stamp, got_digest, answer = entry
                    if time.monotonic() - stamp > self.ttl_s:
                        self.nbytes -= len(self._entries.pop(key)[2])
                    elif got_digest == digest:
                        self._entries.move_to_end(key)
                        self.hits += 1
                        return answer
                    else:
                        # Same frame id, different content: compute it and remember the new answer.
                        self.conflicts += 1
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pending.wait(remaining):
                with self._lock:
                    if key not in self._pending:
                        self._pending[key] = threading.Event()
                        return None
                # Still computing elsewhere past our wait: compute ourselves without owning the key.
                return None

    def finish(self, key: tuple[str, int], digest: bytes, answer: bytes | None) -> None:
        """Store ``answer`` (None: the frame failed, nothing to remember) and wake waiters."""
        with self._lock:
            if answer is not None and self.max_entries > 0 and len(answer) <= self.max_bytes:
                old = self._entries.pop(key, None)
                if old is not None:
                    self.nbytes -= len(old[2])
                self._entries[key] = (time.monotonic(), digest, answer)
                self.nbytes += len(answer)
                while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
                    self.nbytes -= len(self._entries.popitem(last=False)[1][2])
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._entries)
