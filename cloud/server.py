"""Build and run the gRPC cloud server: secure defaults, TLS, bearer token, health, metrics, hard grace.

Defaults are the safe ones: the server binds 127.0.0.1 unless told otherwise,
reflection is off, Ping reports a random instance name rather than the host
name, a bearer token is refused over plaintext on a public address, and a
peer address that fails authentication too often is locked out for a while.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cfqa_cloud.admission import AuthGuard
from cfqa_cloud.engine import InferenceEngine
from cfqa_cloud.metrics import CloudMetrics
from cfqa_cloud.service import SERVICE_NAME, ServiceLimits, SplitInferenceServicer, cap_message
from cfqa_core.errors import DataError

log = logging.getLogger("cfqa.cloud")
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Threads kept free of inference so that health checks and Ping answer under load.
SPARE_THREADS = 4
# Past the grace period the process exits even if a native decoder or a handler is stuck.
HARD_EXIT_MARGIN_S = 3.0
TOKEN_ENV = "CFQA_TOKEN"
# Set to 0 to run the model's cloud part eagerly instead of through its verified TorchScript
# traces (cfqa_cloud.engine.TracedForwards); the answers are the same either way, except dpt's
# in ONNX Runtime (float32 rounding of other kernels, ~1e-5 m; ``onnxruntime_forward``).
TRACED_ENV = "CFQA_TRACED_FORWARD"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def torch_threads_for(config: ServerConfig) -> int | None:
    """Intra-op threads to give torch: ``--torch-threads`` when set; with batching, the cores shared
    out among the batch workers (each batch then runs on cores of its own instead of every worker
    spreading over every core, which under load leaves OpenMP threads waiting on each other);
    None (torch's default) otherwise."""
    if config.torch_threads:
        return config.torch_threads
    if config.max_batch_size > 1:
        return max(1, usable_cores() // config.batch_workers)
    return None


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """How ``cfqa cloud serve`` runs."""

    port: int = 50051
    host: str = "127.0.0.1"
    models: tuple[str, ...] = ("embedded",)
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_queue: int = 16
    compute_slots: int | None = None  # default: max_batch_size x batch_workers (1 without batching)
    max_queue_delay_s: float = 2.0
    max_batch_size: int = 1  # > 1: dynamic batching in the engine (cfqa_cloud.batching)
    max_batch_delay_s: float = 0.002
    batch_workers: int = 1
    max_streams: int = 128
    max_streams_per_peer: int = 16
    stream_idle_s: float = 60.0
    max_message_mb: float = 16.0
    grace_s: float = 30.0
    server_id: str = ""  # default: a random instance name (never the host name)
    torch_threads: int | None = None
    reflection: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    auth_max_failures: int = 10
    auth_window_s: float = 60.0
    allow_plaintext_token: bool = False
    cache_entries: int = 4096
    cache_ttl_s: float = 600.0
    # The model's cloud part through verified TorchScript traces (default; $CFQA_TRACED_FORWARD=0: eager).
    traced_forward: bool = field(default_factory=lambda: os.environ.get(TRACED_ENV, "1").strip() != "0")
    # Dpt's traced part in ONNX Runtime when installed and within 1e-4 m of eager (off: torch, bit for bit).
    onnxruntime_forward: bool = True
    # Earlier names: ``max_concurrent`` sets ``max_queue``; ``workers`` is accepted and ignored
    # (handler threads are sized from the stream and queue limits).
    max_concurrent: int | None = None
    workers: int | None = None
    options: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_concurrent is not None:
            self.max_queue = self.max_concurrent
        if not 1 <= self.max_batch_size <= 1024 or not 1 <= self.batch_workers <= 64:
            raise DataError(f"max-batch-size must be in 1..1024 and batch-workers in 1..64, got "
                            f"{self.max_batch_size} and {self.batch_workers}")
        if not 0 <= self.max_batch_delay_s <= 1.0:  # also refuses NaN
            raise DataError(f"max-batch-delay must be in 0..1 s, got {self.max_batch_delay_s}")
        if self.compute_slots is None:
            # A batch forms only from frames that hold a compute slot at the same time.
            self.compute_slots = self.max_batch_size * self.batch_workers
        if not 0 <= self.port <= 65535:
            raise DataError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise DataError(f"metrics port must be in 0..65535, got {self.metrics_port}")
        for name, value, lo in (("max-queue", self.max_queue, 1), ("compute-slots", self.compute_slots, 1),
                                ("max-streams", self.max_streams, 0),
                                ("max-streams-per-peer", self.max_streams_per_peer, 0),
                                ("auth-max-failures", self.auth_max_failures, 1),
                                ("cache-entries", self.cache_entries, 0)):
            if not lo <= value <= 100_000:
                raise DataError(f"{name} must be in {lo}..100000, got {value}")
        for name, value in (("max-queue-delay", self.max_queue_delay_s), ("stream-idle", self.stream_idle_s),
                            ("grace", self.grace_s), ("max-message-mb", self.max_message_mb),
                            ("auth-window", self.auth_window_s), ("cache-ttl", self.cache_ttl_s)):
            if not 0 < value <= 86400:  # also refuses NaN
                raise DataError(f"{name} must be in (0, 86400], got {value}")
        if self.max_message_mb > 1024:
            raise DataError(f"max-message-mb must be at most 1024, got {self.max_message_mb}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise DataError("TLS needs both --tls-cert and --tls-key")
        if self.token is not None and not self.token.strip():
            raise DataError("the bearer token is empty")
        if self.public and self.token and not self.tls and not self.allow_plaintext_token:
            raise DataError(
                f"refusing a bearer token over plaintext on public address {self.host}: anyone on the path can "
                "read it; add --tls-cert/--tls-key (or --allow-plaintext-token on a trusted network)"
            )
        if not self.server_id:
            self.server_id = f"cfqa-{secrets.token_hex(4)}"

    @property
    def public(self) -> bool:
        return not is_loopback(self.host)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def handler_threads(self) -> int:
        """Every open stream holds a handler thread; so does every admitted frame of a unary call."""
        return self.max_streams + self.max_queue + SPARE_THREADS

    def limits(self) -> ServiceLimits:
        return ServiceLimits(
            max_queue=self.max_queue, compute_slots=self.compute_slots, max_queue_delay_s=self.max_queue_delay_s,
            max_streams=self.max_streams, max_streams_per_peer=self.max_streams_per_peer,
            stream_idle_s=self.stream_idle_s, cache_entries=self.cache_entries, cache_ttl_s=self.cache_ttl_s,
        )


def read_token(token_file: Path | None = None, env: str = TOKEN_ENV) -> str | None:
    """The bearer token from ``token_file`` (first line) or the environment variable ``env``, else None."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text()
        except OSError as exc:
            raise DataError(f"cannot read token file {token_file}: {exc.strerror}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise DataError(f"token file {token_file} is empty")
        return token
    return os.environ.get(env) or None


def security_warnings(config: ServerConfig) -> list[str]:
    """What an operator must hear about this configuration (empty when it is locked down)."""
    out = []
    if config.public and not (config.tls and config.token):
        missing = " and ".join(x for x, ok in (("TLS", config.tls), ("a bearer token", config.token)) if not ok)
        out.append(
            f"SECURITY WARNING: listening on public address {config.host} without {missing}: anyone who can "
            "reach this port can send frames" + ("" if config.tls else " and read every answer")
            + ". Use --tls-cert/--tls-key and --token-file (or $CFQA_TOKEN), or bind 127.0.0.1."
        )
    if config.token and not config.tls and config.public:
        out.append("SECURITY WARNING: the bearer token travels in plaintext (--allow-plaintext-token).")
    return out


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` (health checks exempt), per-peer failure limit."""

    def __init__(self, guard: AuthGuard, exempt_prefixes: Sequence[str] = (HEALTH_PREFIX,)) -> None:
        self.guard = guard
        self._exempt = tuple(exempt_prefixes)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or details.method.startswith(self._exempt):
            return handler
        return _guarded(handler, self.guard)


def _guarded(handler: grpc.RpcMethodHandler, guard: AuthGuard) -> grpc.RpcMethodHandler:
    """``handler`` behind the token check; the check needs the peer, which only the call context has."""

    def check(context: grpc.ServicerContext) -> None:
        refusal = guard.check(context.invocation_metadata(), context.peer())
        if refusal is not None:
            context.abort(refusal.code, refusal.message)

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream

        def ss(requests, context):
            check(context)
            yield from inner(requests, context)

        return grpc.stream_stream_rpc_method_handler(ss, **kw)
    if handler.request_streaming:
        inner_su = handler.stream_unary

        def su(requests, context):
            check(context)
            return inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(su, **kw)
    if handler.response_streaming:
        inner_us = handler.unary_stream

        def us(request, context):
            check(context)
            yield from inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(us, **kw)
    inner_uu = handler.unary_unary

    def uu(request, context):
        check(context)
        return inner_uu(request, context)

    return grpc.unary_unary_rpc_method_handler(uu, **kw)


@dataclass
class RunningServer:
    """A started server and the objects tests and the CLI need to reach."""

    server: grpc.Server
    port: int
    servicer: SplitInferenceServicer
    health: object
    config: ServerConfig
    metrics: CloudMetrics
    metrics_http: object | None = None
    executor: futures.ThreadPoolExecutor | None = None
    metrics_port: int | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop accepting calls; in-flight ones get ``grace`` seconds, then are cancelled."""
        self.stopping.set()
        self.health.enter_graceful_shutdown()  # every service reports NOT_SERVING
        done = self.server.stop(self.config.grace_s if grace is None else grace)

        def cleanup() -> None:
            done.wait()
            self.servicer.close()
            if self.metrics_http is not None:
                self.metrics_http.shutdown()
            if self.executor is not None:
                # Handlers still stuck in native code must not hold the process open.
                self.executor.shutdown(wait=False, cancel_futures=True)

        threading.Thread(target=cleanup, name="cfqa-stop", daemon=True).start()
        return done


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None:
        return None
    try:
        key = Path(config.tls_key).read_bytes()
        cert = Path(config.tls_cert).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    try:  # grpc only says "failed to bind" for a key that does not belong to the certificate
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as exc:
        raise DataError(f"TLS certificate {config.tls_cert} and key {config.tls_key} do not form a usable pair "
                        f"({exc.reason or exc})") from None
    return grpc.ssl_server_credentials([(key, cert)])


def start_server(config: ServerConfig, engine: InferenceEngine | None = None) -> RunningServer:
    """Load the models (unless ``engine`` is given), bind, and start serving."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    for warning in security_warnings(config):
        log.warning(warning)
    creds = _credentials(config)
    threads = config.torch_threads if engine is not None else torch_threads_for(config)
    if threads:
        import torch

        torch.set_num_threads(threads)
    engine = engine or InferenceEngine.from_specs(
        config.models, max_batch_size=config.max_batch_size, max_batch_delay_s=config.max_batch_delay_s,
        batch_workers=config.batch_workers, traced=config.traced_forward,
        onnxruntime=config.onnxruntime_forward)
    metrics = CloudMetrics()
    interceptors = []
    if config.token:
        guard = AuthGuard(config.token, config.auth_max_failures, config.auth_window_s,
                          on_reject=lambda reason: metrics.auth_rejections.labels(reason).inc())
        interceptors.append(AuthInterceptor(guard))
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *config.options,
    ]
    executor = futures.ThreadPoolExecutor(max_workers=config.handler_threads, thread_name_prefix="cfqa-rpc")
    server = grpc.server(executor, interceptors=interceptors, options=options,
                         maximum_concurrent_rpcs=config.handler_threads)
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise DataError(f"cannot listen on {address}: {cap_message(str(exc), 200)}") from None
    health_servicer = health.HealthServicer()
    stopping = threading.Event()

    def on_saturation(saturated: bool) -> None:
        # Health reports what a new call would meet: NOT_SERVING while the frame queue is full.
        if stopping.is_set():
            return
        status = health_pb2.HealthCheckResponse.NOT_SERVING if saturated else health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    servicer = SplitInferenceServicer(engine, config.limits(), config.server_id, metrics, on_saturation)
    server.add_generic_rpc_handlers((servicer.handlers(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    metrics_http = None
    metrics_port = None
    if config.metrics_port is not None:
        metrics_http = metrics.serve(config.metrics_port, config.metrics_host)
        metrics_port = metrics_http.server_port
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, servicer, health_servicer, config, metrics, metrics_http, executor,
                         metrics_port, stopping)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (unless $MALLOC_ARENA_MAX says otherwise); True when set.

    glibc gives busy threads arenas of their own and keeps their freed memory:
    with hundreds of handler threads the server's RSS grew by 250 MB over 2,000
    fuzzed requests, by 49 MB with two arenas. Must run before the threads start.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, arenas))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


def serve(config: ServerConfig, ready: Callable[[RunningServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then finish in-flight calls within ``grace_s`` and return 0.

    The grace period is a hard limit: calls still running when it ends are
    cancelled, and if the process is still busy ``HARD_EXIT_MARGIN_S`` later
    (a handler stuck in native code) it exits at once with status 0.
    """
    limit_malloc_arenas()
    running = start_server(config)
    stopped = threading.Event()

    def hard_exit() -> None:
        log.warning("grace period of %.1f s over with work still running: exiting now", config.grace_s)
        logging.shutdown()
        os._exit(0)

    def on_signal(signum: int, _frame) -> None:
        if stopped.is_set():
            return
        stopped.set()
        log.info("signal %d: stopping, %.1f s grace for in-flight calls", signum, config.grace_s)
        timer = threading.Timer(config.grace_s + HARD_EXIT_MARGIN_S, hard_exit)
        timer.daemon = True
        timer.start()
        running.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(running)
        running.server.wait_for_termination()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    close = getattr(running.servicer.engine, "close", None)
    if close is not None:
        close()  # batching threads
    return 0
