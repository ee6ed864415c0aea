"""Prometheus metrics and JSON access logs of the cloud server.

Every server owns its own registry (tests run several servers in one
process); ``--metrics-port`` exposes it over HTTP for Prometheus. Without
``prometheus_client`` installed the metrics are no-ops and asking for a
metrics port is an error.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from cfqa_core.errors import DataError

access_log = logging.getLogger("cfqa.cloud.access")

# Frame latencies of the embedded model run from ~5 ms (cls) to seconds under load.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
MAX_LABEL_CHARS = 32


class _Null:
    """Stands in for any metric when prometheus_client is absent."""

    def labels(self, *args: Any, **kwargs: Any) -> _Null:
        return self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def label(value: str, known: frozenset[str] | None = None) -> str:
    """A bounded label value: request-supplied strings must not create unbounded series."""
    if known is not None:
        return value if value in known else "other"
    return value[:MAX_LABEL_CHARS] or "none"


class CloudMetrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry = None
            null = _Null()
            self.requests = self.latency = self.in_flight = self.queue_depth = null
            self.open_streams = self.admission_rejections = self.auth_rejections = self.replays = null
            return
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("cfqa_requests", "Frames and calls answered, by method, status, codec and task",
                                     ["method", "code", "codec", "task"], registry=r)
        self.latency = prom.Histogram("cfqa_request_duration_seconds", "Handler entry to answer, per frame",
                                      ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = prom.Gauge("cfqa_in_flight_frames", "Frames admitted: queued or computing", registry=r)
        self.queue_depth = prom.Gauge("cfqa_queue_depth", "Frames waiting for a compute slot", registry=r)
        self.open_streams = prom.Gauge("cfqa_open_streams", "InferStream calls open", registry=r)
        self.admission_rejections = prom.Counter("cfqa_admission_rejections", "Frames or streams refused, by reason",
                                                 ["reason"], registry=r)
        self.auth_rejections = prom.Counter("cfqa_auth_rejections", "Calls refused by the token check, by reason",
                                            ["reason"], registry=r)
        self.replays = prom.Counter("cfqa_idempotent_replays", "Repeated (node_id, frame_id) answered from the cache",
                                    registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the HTTP exposition on ``host:port``; returns the HTTP server (``shutdown()`` stops it)."""
        if self.registry is None:
            raise DataError("--metrics-port needs the prometheus_client package (pip install 'cfqa-edgecloud[full]')")
        import prometheus_client as prom

        try:
            started = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise DataError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        return started[0] if isinstance(started, tuple) else started


def log_access(**fields: Any) -> None:
    """One JSON line per answered call or stream frame on the ``cfqa.cloud.access`` logger."""
    if access_log.isEnabledFor(logging.INFO):
        fields = {"ts": round(time.time(), 3), **fields}
        access_log.info(json.dumps(fields, separators=(",", ":"), default=str))
