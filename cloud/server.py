"""Build and run the gRPC cloud server: TLS, bearer token, health, reflection, graceful stop."""
from __future__ import annotations

import hmac
import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cfqa_core.errors import DataError
from cloud.engine import InferenceEngine
from cloud.service import SERVICE_NAME, ServiceLimits, SplitInferenceServicer
from proto import cfqa_v1_pb2_grpc as pb_grpc

log = logging.getLogger("cfqa.cloud")
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Threads kept free of inference so that health checks and Ping answer under load.
SPARE_THREADS = 2


@dataclass
class ServerConfig:
    """How ``cfqa cloud serve`` runs."""

    port: int = 50051
    host: str = "[::]"
    models: tuple[str, ...] = ("embedded",)
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 8
    max_concurrent: int | None = None  # default: workers
    compute_slots: int = 1
    max_message_mb: float = 16.0
    grace_s: float = 30.0
    server_id: str = ""
    torch_threads: int | None = None
    options: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise DataError(f"workers must be >= 1, got {self.workers}")
        if self.max_concurrent is None:
            self.max_concurrent = self.workers
        if not 1 <= self.max_concurrent <= self.workers:
            raise DataError(f"max-concurrent must be in 1..workers ({self.workers}), got {self.max_concurrent}")
        if self.compute_slots < 1:
            raise DataError(f"compute-slots must be >= 1, got {self.compute_slots}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise DataError("TLS needs both --tls-cert and --tls-key")
        if self.max_message_mb <= 0:
            raise DataError(f"max-message-mb must be > 0, got {self.max_message_mb}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` (health checks exempt)."""

    def __init__(self, token: str, exempt_prefixes: Sequence[str] = (HEALTH_PREFIX,)) -> None:
        self._expected = f"Bearer {token}".encode()
        self._exempt = tuple(exempt_prefixes)

    def _authorised(self, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(got, self._expected)
        return False

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or details.method.startswith(self._exempt):
            return handler
        if self._authorised(details.invocation_metadata):
            return handler
        return _deny_like(handler, "missing or wrong bearer token (metadata 'authorization: Bearer <token>')")


def _deny_like(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts UNAUTHENTICATED."""

    def deny(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


@dataclass
class RunningServer:
    """A started server and the objects tests and the CLI need to reach."""

    server: grpc.Server
    port: int
    servicer: SplitInferenceServicer
    health: object
    config: ServerConfig

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()  # every service reports NOT_SERVING
        return self.server.stop(self.config.grace_s if grace is None else grace)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None:
        return None
    try:
        key = Path(config.tls_key).read_bytes()
        cert = Path(config.tls_cert).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)])


def start_server(config: ServerConfig, engine: InferenceEngine | None = None) -> RunningServer:
    """Load the models (unless ``engine`` is given), bind, and start serving."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    engine = engine or InferenceEngine.from_specs(config.models)
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *config.options,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers + SPARE_THREADS, thread_name_prefix="cfqa-rpc"),
        interceptors=interceptors,
        options=options,
    )
    address = f"{config.host}:{config.port}"
    creds = _credentials(config)
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise DataError(f"cannot listen on {address}: {exc}") from None
    server_id = config.server_id or f"{socket.gethostname()}:{port}"
    limits = ServiceLimits(max_concurrent=int(config.max_concurrent), compute_slots=config.compute_slots)
    servicer = SplitInferenceServicer(engine, limits, server_id)
    pb_grpc.add_SplitInferenceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, servicer, health_servicer, config)


def serve(config: ServerConfig, ready: Callable[[RunningServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then finish in-flight calls (up to ``grace_s``) and return 0."""
    running = start_server(config)
    stopped = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        if stopped.is_set():
            return
        stopped.set()
        log.info("signal %d: stopping, %.0f s grace for in-flight calls", signum, config.grace_s)
        running.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(running)
        running.server.wait_for_termination()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0

