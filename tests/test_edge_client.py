"""Edge client pieces that need no server: targets for round-robin, backoff, retry classification."""
from __future__ import annotations

import random
import time

import grpc
import pytest

from cfqa_core.errors import DataError
from cfqa_edge.client import RETRYABLE, CloudClient, RetryPolicy, channel_target
from cfqa_proto import cfqa_v1_pb2 as pb
from tests.support.serving import free_port


def test_targets() -> None:
    assert channel_target(["127.0.0.1:5001"]) == "ipv4:127.0.0.1:5001"
    assert channel_target(["127.0.0.1:5001", "127.0.0.1:5002"]) == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert channel_target(["[::1]:7000", "[::1]:7001"]) == "ipv6:[::1]:7000,[::1]:7001"
    assert channel_target(["cloud.example:443"]) == "dns:///cloud.example:443"
    assert channel_target(["localhost:1", "localhost:2"]).startswith(("ipv4:", "ipv6:"))
    with pytest.raises(DataError, match="HOST:PORT"):
        channel_target(["no-port"])
    with pytest.raises(DataError, match="mix IPv4 and IPv6"):
        channel_target(["127.0.0.1:1", "[::1]:2"])


def test_backoff_is_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    delays = [[policy.delay(n, rng) for _ in range(200)] for n in range(8)]
    for n, ds in enumerate(delays):
        cap = min(1.0, 0.1 * 2**n)
        assert all(0.5 * cap <= d <= cap for d in ds)
        assert max(ds) - min(ds) > 0.3 * cap  # jittered, not lockstep
    assert max(delays[-1]) <= 1.0
    assert RetryPolicy(jitter=0.0).delay(3) == pytest.approx(1.6)
    with pytest.raises(DataError):
        RetryPolicy(initial_s=2.0, max_s=1.0)


def test_retryable_codes() -> None:
    assert grpc.StatusCode.UNAVAILABLE in RETRYABLE
    assert grpc.StatusCode.INVALID_ARGUMENT not in RETRYABLE
    assert grpc.StatusCode.UNAUTHENTICATED not in RETRYABLE


def test_send_to_nothing_gives_up_with_reason() -> None:
    port = free_port()  # nothing listens here
    with CloudClient([f"127.0.0.1:{port}"], timeout_s=2) as client:
        out = client.send(pb.InferRequest(model_id="m"), RetryPolicy(initial_s=0.01, max_s=0.02, max_attempts=4))
        assert not out.ok and out.code == "UNAVAILABLE" and out.attempts == 4
        assert "gave up after 4 attempts" in out.message
        start = time.monotonic()
        out = client.send(pb.InferRequest(model_id="m"), RetryPolicy(initial_s=0.05, max_s=0.1),
                          give_up_at=start + 0.5, rng=random.Random(1))
        assert not out.ok and out.code == "UNAVAILABLE" and "frame expired" in out.message
        assert out.attempts >= 2 and time.monotonic() - start < 3
