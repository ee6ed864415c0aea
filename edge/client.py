"""gRPC client of the cloud: channel set-up (TLS, token, round-robin over replicas) and retries.

Several ``--cloud`` addresses become one channel whose target lists every
replica (``ipv4:10.0.0.1:50051,10.0.0.2:50051``) with the ``round_robin``
load-balancing policy, so adding a replica spreads the frames over it and a
replica that is down is skipped while another is up. Calls that fail with a
transient status are retried with capped exponential backoff and jitter.
"""
from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from cfqa_core.errors import DataError
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto import cfqa_v1_pb2_grpc as pb_grpc

# Worth another attempt: the cloud is down or restarting, overloaded, or slow this once.
RETRYABLE: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})
# gRPC reports a message over the size limit (either side's) as RESOURCE_EXHAUSTED, the code of an
# overloaded server; the same frame will be too large on every attempt.
_TOO_LARGE = ("larger than max", "message too large")


def is_retryable(code: grpc.StatusCode, message: str) -> bool:
    """True for a failure that another attempt of the same request may not repeat."""
    if code not in RETRYABLE:
        return False
    text = message.lower()
    return not (code == grpc.StatusCode.RESOURCE_EXHAUSTED and any(t in text for t in _TOO_LARGE))


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff before attempt n+1: ``min(max_s, initial_s * multiplier**n)``, scaled by a random factor in
    ``[1 - jitter, 1]`` so that nodes that lost the cloud together do not come back in lockstep."""

    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None  # None: until the frame is too old

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise DataError(f"invalid retry policy {self}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * (rng or random).random())


@dataclass
class SendOutcome:
    """How one frame's delivery ended."""

    response: pb.InferResponse | None
    code: str  # gRPC status name, "OK" when delivered
    message: str
    attempts: int
    rpc_s: float  # duration of the last attempt

    @property
    def ok(self) -> bool:
        return self.response is not None


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DataError(f"cloud address '{address}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def channel_target(addresses: Sequence[str]) -> str:
    """The gRPC target naming every replica (resolved to IP addresses when there are several)."""
    if not addresses:
        raise DataError("no cloud address given")
    if len(addresses) == 1:
        host, port = _split_host_port(addresses[0])
        return f"dns:///{host}:{port}" if not _is_ip(host) else _ip_target([(host, port)])
    resolved = []
    for address in addresses:
        host, port = _split_host_port(address)
        try:
            ip = host if _is_ip(host) else socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as exc:
            raise DataError(f"cannot resolve cloud host '{host}': {exc.strerror}") from None
        resolved.append((ip, port))
    return _ip_target(resolved)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _ip_target(pairs: Sequence[tuple[str, int]]) -> str:
    families = {ipaddress.ip_address(h).version for h, _ in pairs}
    if len(families) != 1:
        raise DataError("cloud addresses mix IPv4 and IPv6; use one family")
    if families == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in pairs)
    return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in pairs)


class CloudClient:
    """One channel to the cloud replicas; thread-safe."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_server_name: str | None = None,
        timeout_s: float = 10.0,
        max_message_mb: float = 16.0,
    ) -> None:
        self.addresses = list(addresses)
        self.target = channel_target(self.addresses)
        self.timeout_s = timeout_s
        size = int(max_message_mb * 1024 * 1024)
        self.max_message_bytes = size
        options: list[tuple[str, object]] = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.enable_retries", 0),  # retries are ours (below), with the frame's age in view
            # Reconnect quickly after the cloud comes back.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if tls_ca is not None:
            try:
                root = Path(tls_ca).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read TLS CA file {tls_ca}: {exc.strerror}") from None
            name = tls_server_name or _split_host_port(self.addresses[0])[0]
            options.append(("grpc.ssl_target_name_override", name))
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(root), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = pb_grpc.SplitInferenceStub(self.channel)

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def infer(self, request: pb.InferRequest, timeout: float | None = None) -> pb.InferResponse:
        """One unary call (raises ``grpc.RpcError``)."""
        return self.stub.Infer(request, timeout=timeout or self.timeout_s, metadata=self.metadata)

    def infer_stream(self, requests: Iterable[pb.InferRequest],
                     timeout: float | None = None) -> Iterator[pb.InferResponse]:
        """A stream of frames; one response per request, in order."""
        return self.stub.InferStream(iter(requests), timeout=timeout, metadata=self.metadata)

    def ping(self, timeout: float | None = None, wait_for_ready: bool = False) -> pb.PingResponse:
        return self.stub.Ping(pb.PingRequest(), timeout=timeout or self.timeout_s, metadata=self.metadata,
                              wait_for_ready=wait_for_ready)

    def send(
        self,
        request: pb.InferRequest,
        retry: RetryPolicy,
        *,
        give_up_at: float | None = None,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> SendOutcome:
        """Deliver ``request``, retrying transient failures until ``give_up_at`` (``time.monotonic``).

        Permanent failures (a message over the size limit, INVALID_ARGUMENT, ...) end at once with their reason.
        """
        size = request.ByteSize()
        if size > self.max_message_bytes:
            return SendOutcome(None, grpc.StatusCode.RESOURCE_EXHAUSTED.name,
                               f"message too large: {size} bytes over the {self.max_message_bytes}-byte limit; "
                               "not retried", 0, 0.0)
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                resp = self.infer(request)
                return SendOutcome(resp, "OK", "", attempt + 1, time.perf_counter() - t0)
            except grpc.RpcError as err:
                code, message = err.code(), err.details() or ""
            rpc_s = time.perf_counter() - t0
            attempt += 1
            if not is_retryable(code, message):
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    message = f"{message}; not retried"
                return SendOutcome(None, code.name, message, attempt, rpc_s)
            if retry.max_attempts is not None and attempt >= retry.max_attempts:
                return SendOutcome(None, code.name, f"gave up after {attempt} attempts: {message}", attempt, rpc_s)
            wait = retry.delay(attempt - 1, rng)
            if give_up_at is not None and time.monotonic() + wait > give_up_at:
                return SendOutcome(None, code.name, f"frame expired after {attempt} attempts: {message}",
                                   attempt, rpc_s)
            if stop is not None:
                if stop.wait(wait):
                    return SendOutcome(None, "CANCELLED", f"edge stopped after {attempt} attempts: {message}",
                                       attempt, rpc_s)
            else:
                time.sleep(wait)
