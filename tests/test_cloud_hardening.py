# Over 450 lines: the real payloads and server fixtures are shared by every hostile-input, admission and auth case.
"""The cloud server under hostile input and load: real servers on loopback, real codecs, real bytes."""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
import zlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cfqa_core.codecs as codecs
from cfqa_cloud.server import ServerConfig, security_warnings, start_server
from cfqa_core.codecs import entropy
from cfqa_core.errors import DataError
from cfqa_edge.backends import TorchBackend
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto import cfqa_v1_pb2_grpc as pb_grpc
from cfqa_proto.convert import load_codecs, payload_from_encoded
from tests.support.serving import scene_images

load_codecs()
SPLIT = 4
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def feature(model):
    backend = TorchBackend(model, SPLIT)
    return backend.features(scene_images(1, start=5)[0], ("cls",))["cls"], backend.value_range("cls")


@pytest.fixture(scope="module")
def hevc_payload(feature) -> pb.FeaturePayload:
    f, vr = feature
    return payload_from_encoded("cls", codecs.get_codec("hevc").encode(f, 20, value_range=vr))


@pytest.fixture(scope="module")
def learned_payload(feature) -> pb.FeaturePayload:
    f, vr = feature
    return payload_from_encoded("cls", codecs.get_codec("hyperprior-cls").encode(f, 5, value_range=vr))


def request(model, payload: pb.FeaturePayload, frame_id: int = 1, node: str = "n1") -> pb.InferRequest:
    req = pb.InferRequest(node_id=node, frame_id=frame_id, model_id=model.meta.name, split_block=SPLIT, top_k=3)
    req.payloads.append(payload)
    return req


def mutated(req: pb.InferRequest, fn) -> pb.InferRequest:
    out = pb.InferRequest()
    out.CopyFrom(req)
    fn(out.payloads[0])
    return out


def with_bitstream(p: pb.FeaturePayload, data: bytes) -> None:
    """Replace the bitstream and make bytes and CRC agree with it (an attacker's consistent lie)."""
    p.bitstream = data
    p.crc32 = zlib.crc32(data)
    extras = json.loads(p.codec_meta_json or "{}")
    extras["bytes"] = len(data)
    p.codec_meta_json = json.dumps(extras)


@pytest.fixture()
def server(engine):
    running = start_server(ServerConfig(port=0, max_queue=4, stream_idle_s=30), engine=engine)
    yield running
    running.stop(0).wait()


@pytest.fixture()
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def infer_error(stub, req, timeout: float = 30.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(req, timeout=timeout)
    return err.value


# ---- bounded allocations and native failures -------------------------------------------------


def test_declared_sizes_must_match_the_shape(model, server, channel, hevc_payload, learned_payload) -> None:
    stub = pb_grpc.SplitInferenceStub(channel)
    for payload in (learned_payload, hevc_payload):
        for w, h in ((8192, 8192), (payload.padded_width + 64, payload.padded_height)):
            req = mutated(request(model, payload), lambda p: (setattr(p, "padded_width", w),
                                                              setattr(p, "padded_height", h)))
            t0 = time.perf_counter()
            err = infer_error(stub, req)
            assert err.code() == INVALID and "which does not match shape" in err.details(), err.details()
            assert time.perf_counter() - t0 < 5.0
    assert stub.Infer(request(model, learned_payload, frame_id=9), timeout=30).results[0].top_k


def test_hevc_picture_larger_than_declared_is_refused_before_allocation(model, server, channel, hevc_payload,
                                                                       feature) -> None:
    """A stream whose SPS says 1024x1024 under metadata of the real frame size: FFmpeg refuses it."""
    import numpy as np

    big = codecs.get_codec("hevc")._encode_frame(np.full((1024, 1024), 300, np.uint16), 30, 10)
    req = mutated(request(model, hevc_payload), lambda p: with_bitstream(p, big))
    err = infer_error(pb_grpc.SplitInferenceStub(channel), req)
    assert err.code() == INVALID and "larger than the 19456 samples" in err.details(), err.details()


def test_learned_zero_latent_range_is_invalid_argument_not_a_hang(model, server, channel, learned_payload) -> None:
    z, y, _ = entropy.unpack_strings(learned_payload.bitstream)
    data = entropy.write_varint(len(z)) + entropy.write_varint(0) + z + y
    req = mutated(request(model, learned_payload), lambda p: with_bitstream(p, data))
    err = infer_error(pb_grpc.SplitInferenceStub(channel), req, timeout=20)
    assert err.code() == INVALID and "latent range 0" in err.details()


def test_constriction_panic_becomes_codec_error(learned_payload) -> None:
    """The coder's PanicException derives from BaseException; the decoder must still turn it into CodecError."""
    import constriction
    import numpy as np

    from cfqa_core.errors import CodecError

    with pytest.raises(BaseException) as raw:  # what constriction does with a degenerate range
        constriction.stream.queue.RangeDecoder(np.array([1, 2], np.uint32)).decode(
            constriction.stream.model.QuantizedGaussian(0, 0), np.zeros(4), np.ones(4))
    assert not isinstance(raw.value, Exception)
    err = entropy.native_failure(raw.value, "y string")
    assert isinstance(err, CodecError) and "PanicException" in str(err)


def test_crc_and_bytes_are_required_and_checked(model, server, channel, hevc_payload) -> None:
    stub = pb_grpc.SplitInferenceStub(channel)
    base = request(model, hevc_payload)
    no_crc = mutated(base, lambda p: p.ClearField("crc32"))
    err = infer_error(stub, no_crc)
    assert err.code() == INVALID and "crc32" in err.details()

    def drop_bytes(p):
        extras = json.loads(p.codec_meta_json)
        del extras["bytes"]
        p.codec_meta_json = json.dumps(extras)

    err = infer_error(stub, mutated(base, drop_bytes))
    assert err.code() == INVALID and "bytes" in err.details()
    ok_flips = 0
    for i in range(20):  # single-bit flips over the whole stream, CRC left as sent
        bit = (i * 7919) % (8 * len(hevc_payload.bitstream))

        def flip(p, bit=bit):
            data = bytearray(p.bitstream)
            data[bit // 8] ^= 1 << (bit % 8)
            p.bitstream = bytes(data)

        try:
            stub.Infer(mutated(base, flip), timeout=30)
            ok_flips += 1
        except grpc.RpcError as e:
            assert e.code() == INVALID and "CRC-32" in e.details()
    assert ok_flips == 0


# ---- parsing and messages ------------------------------------------------------------------


def test_unparsable_protobuf_and_hostile_meta_json(model, server, channel, hevc_payload) -> None:
    raw = channel.unary_unary("/cfqa.v1.SplitInference/Infer")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert err.value.code() == INVALID and "not a valid cfqa.v1.InferRequest" in err.value.details()
    stub = pb_grpc.SplitInferenceStub(channel)
    for meta, fragment in (("[" * 5000 + "]" * 5000, "codec_meta_json"),
                           ('{"x": ' + "9" * 5000 + "}", "codec_meta_json"),
                           ('{"x": "' + "a" * 20000 + '"}', "codec_meta_json")):
        err = infer_error(stub, mutated(request(model, hevc_payload),
                                        lambda p, m=meta: setattr(p, "codec_meta_json", m)))
        assert err.code() == INVALID and fragment in err.details() and len(err.details()) <= 512


def test_long_names_are_capped_in_status_messages(model, server, channel, hevc_payload) -> None:
    stub = pb_grpc.SplitInferenceStub(channel)
    req = request(model, hevc_payload)
    req.model_id = "m" * 20000
    err = infer_error(stub, req)
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) <= 512
    req = mutated(request(model, hevc_payload), lambda p: setattr(p, "codec", "c" * 20000))
    err = infer_error(stub, req)
    assert err.code() == INVALID and "unknown codec" in err.details() and len(err.details()) <= 512


def test_bad_frames_stay_inside_the_stream(model, server, channel, hevc_payload) -> None:
    good = request(model, hevc_payload, frame_id=1)
    nested = mutated(request(model, hevc_payload, frame_id=2), lambda p: setattr(p, "codec_meta_json", "[" * 9000))
    no_crc = mutated(request(model, hevc_payload, frame_id=3), lambda p: p.ClearField("crc32"))
    frames = [good.SerializeToString(), b"\xff\xff\xff", nested.SerializeToString(), no_crc.SerializeToString(),
              request(model, hevc_payload, frame_id=5).SerializeToString()]
    raw = channel.stream_stream("/cfqa.v1.SplitInference/InferStream",
                                response_deserializer=pb.InferResponse.FromString)
    answers = list(raw(iter(frames), timeout=60))
    assert [a.HasField("error") for a in answers] == [False, True, True, True, False]
    assert [a.frame_id for a in answers] == [1, 0, 2, 3, 5]
    assert all(a.error.code == INVALID.value[0] for a in answers[1:4])
    assert answers[4].results[0].top_k


# ---- admission, streams, health ------------------------------------------------------------


def test_idle_streams_do_not_block_infer_and_health_stays_honest(engine, model, hevc_payload) -> None:
    running = start_server(ServerConfig(port=0, max_queue=2, max_queue_delay_s=3.0, stream_idle_s=30), engine=engine)
    target = f"127.0.0.1:{running.port}"
    stop = threading.Event()

    def never():
        stop.wait()
        return
        yield  # a request iterator that sends nothing until the test ends

    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            calls = [stub.InferStream(never(), timeout=60) for _ in range(8)]
            deadline = time.monotonic() + 10
            while running.servicer.streams.open_count < 8 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.servicer.streams.open_count == 8
            for i in range(3):
                assert stub.Infer(request(model, hevc_payload, frame_id=100 + i), timeout=10).results[0].top_k
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            # Saturate the queue: health turns NOT_SERVING, then SERVING again once it drains.
            running.servicer.compute_slots.acquire()
            try:
                futures = [stub.Infer.future(request(model, hevc_payload, frame_id=200 + i), timeout=10)
                           for i in range(2)]
                deadline = time.monotonic() + 5
                while running.servicer.in_flight < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                err = infer_error(stub, request(model, hevc_payload, frame_id=300))
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queued" in err.details()
            finally:
                running.servicer.compute_slots.release()
            assert all(f.result().results[0].top_k for f in futures)  # admitted frames are answered
            running.servicer.compute_slots.acquire()
            try:  # a frame that waits past the queue-delay limit is refused, not left waiting
                t0 = time.monotonic()
                err = infer_error(stub, request(model, hevc_payload, frame_id=400), timeout=20)
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "3 s queue-delay limit" in err.details()
                assert 2.9 < time.monotonic() - t0 < 8
            finally:
                running.servicer.compute_slots.release()
            deadline = time.monotonic() + 5
            while running.servicer.in_flight and time.monotonic() < deadline:
                time.sleep(0.01)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            stop.set()
            for c in calls:
                assert list(c) == []
    finally:
        stop.set()
        running.stop(0).wait()


def test_stream_idle_timeout_and_per_peer_cap(engine, model, hevc_payload) -> None:
    running = start_server(ServerConfig(port=0, stream_idle_s=0.5, max_streams_per_peer=2), engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            outbox: queue.Queue = queue.Queue()

            def frames():
                while (item := outbox.get()) is not None:
                    yield item

            answers = stub.InferStream(frames(), timeout=30)
            outbox.put(request(model, hevc_payload, frame_id=1))
            assert next(answers).results[0].top_k
            other = stub.InferStream(frames(), timeout=30)
            deadline = time.monotonic() + 5
            while running.servicer.streams.open_count < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as err:  # a third stream from the same address
                list(stub.InferStream(iter([request(model, hevc_payload, frame_id=2)]), timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "from this address" in err.value.details()
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                next(answers)  # nothing sent for 0.5 s: the server closes the stream
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "without a frame" in err.value.details()
            assert time.monotonic() - t0 < 5
            with pytest.raises(grpc.RpcError):
                next(other)
            outbox.put(None)
            # The client sees the error before the server's handler has unwound: wait for it to release the slots.
            deadline = time.monotonic() + 10
            while running.servicer.streams.open_count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert running.servicer.streams.open_count == 0
    finally:
        running.stop(0).wait()


# ---- idempotency ---------------------------------------------------------------------------


def test_repeated_frame_is_answered_from_the_cache(engine, model, server, channel, hevc_payload) -> None:
    stub = pb_grpc.SplitInferenceStub(channel)
    req = request(model, hevc_payload, frame_id=77, node="edge-7")
    before = engine.frames_computed
    first = stub.Infer(req, timeout=30)
    again = stub.Infer(req, timeout=30)
    streamed = list(stub.InferStream(iter([req]), timeout=30))[0]
    restamped = request(model, hevc_payload, frame_id=77, node="edge-7")
    restamped.capture_time.GetCurrentTime()  # resent after a restart: new stamp, same frame
    restamped.payloads[0].metric_score = 0.5
    assert stub.Infer(restamped, timeout=30) == first
    assert engine.frames_computed == before + 1
    assert again == first and streamed == first
    assert server.servicer.stats["replayed"] == 3
    other_node = request(model, hevc_payload, frame_id=77, node="edge-8")
    stub.Infer(other_node, timeout=30)
    changed = request(model, hevc_payload, frame_id=77, node="edge-7")
    changed.top_k = 1
    assert len(stub.Infer(changed, timeout=30).results[0].top_k) == 1  # same id, new content: computed
    assert engine.frames_computed == before + 3


# ---- authentication and secure defaults ----------------------------------------------------


def test_failed_authentications_lock_the_address_out(engine, model, hevc_payload) -> None:
    running = start_server(ServerConfig(port=0, token="right", auth_max_failures=3, auth_window_s=30,
                                        metrics_port=0), engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            good = [("authorization", "Bearer right")]
            assert stub.Ping(pb.PingRequest(), metadata=good, timeout=5).model_ids
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Ping(pb.PingRequest(), metadata=[("authorization", "Bearer guess")], timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:  # now even the right token is refused
                stub.Ping(pb.PingRequest(), metadata=good, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "too many failed" in err.value.details()
        text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()
        assert 'cfqa_auth_rejections_total{reason="bad_token"} 3.0' in text
        assert 'cfqa_auth_rejections_total{reason="locked_out"} 1.0' in text
    finally:
        running.stop(0).wait()


def test_secure_defaults(engine) -> None:
    import socket

    cfg = ServerConfig()
    assert cfg.host == "127.0.0.1" and not cfg.reflection and not cfg.public
    assert socket.gethostname() not in cfg.server_id
    assert security_warnings(cfg) == []
    warn = security_warnings(ServerConfig(host="0.0.0.0"))
    assert len(warn) == 1 and "without TLS and a bearer token" in warn[0]
    with pytest.raises(DataError, match="plaintext on public address"):
        ServerConfig(host="0.0.0.0", token="t")
    assert ServerConfig(host="0.0.0.0", token="t", allow_plaintext_token=True).token == "t"
    with pytest.raises(DataError, match="port must be in 0..65535"):
        ServerConfig(port=99999)
    running = start_server(ServerConfig(port=0), engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            ping = pb_grpc.SplitInferenceStub(ch).Ping(pb.PingRequest(), timeout=5)
            assert ping.server_id == running.config.server_id and socket.gethostname() not in ping.server_id
            reflect = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
            with pytest.raises(grpc.RpcError) as err:
                list(reflect(iter([b""]), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop(0).wait()


def test_token_file_and_cli_errors(tmp_path) -> None:
    import subprocess
    import sys

    from cfqa_cloud.server import read_token

    (tmp_path / "tok").write_text("s3cret\n")
    assert read_token(tmp_path / "tok") == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        read_token(tmp_path / "empty")
    for args, fragment in ((["--port", "99999"], "port must be in 0..65535"),
                           (["--bind", "0.0.0.0", "--token-file", str(tmp_path / "tok")], "plaintext on public"),
                           (["--grace", "inf"], "seconds must be in")):
        proc = subprocess.run([sys.executable, "-m", "cfqa_core.cli", "cloud", "serve", "--model", "nonexistent",
                               *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_grace_period_is_a_hard_limit(model, hevc_payload) -> None:
    """SIGTERM with --grace 1 and streams left open by their clients: the process is gone within seconds."""
    from tests.support.serving import ServerProcess, test_model_spec

    with ServerProcess(["--model", test_model_spec(), "--grace", "1", "--access-log", "off"]) as srv:
        stop = threading.Event()

        def held():
            yield request(model, hevc_payload, frame_id=1)
            stop.wait(60)

        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            streams = [stub.InferStream(held(), timeout=60) for _ in range(3)]
            assert all(next(s).results[0].top_k for s in streams)
            t0 = time.monotonic()
            srv.terminate()
            assert srv.wait(30) == 0
            elapsed = time.monotonic() - t0
            stop.set()
        assert elapsed < 1 + 3 + 2, f"exit took {elapsed:.1f} s with --grace 1"


# ---- observability -------------------------------------------------------------------------


def test_metrics_and_access_log(engine, model, hevc_payload, caplog) -> None:
    running = start_server(ServerConfig(port=0, metrics_port=0), engine=engine)
    try:
        with caplog.at_level(logging.INFO, logger="cfqa.cloud.access"):
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.SplitInferenceStub(ch)
                stub.Infer(request(model, hevc_payload, frame_id=1), timeout=30)
                infer_error(stub, mutated(request(model, hevc_payload, frame_id=2), lambda p: p.ClearField("crc32")))
        text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()
        assert 'cfqa_requests_total{code="OK",codec="hevc",method="Infer",task="cls"} 1.0' in text
        assert 'cfqa_requests_total{code="INVALID_ARGUMENT",codec="hevc",method="Infer",task="cls"} 1.0' in text
        assert 'cfqa_request_duration_seconds_count{method="Infer"} 2.0' in text
        assert "cfqa_in_flight_frames 0.0" in text and "cfqa_queue_depth 0.0" in text
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cfqa.cloud.access"]
        assert [(x["frame"], x["code"]) for x in lines] == [(1, "OK"), (2, "INVALID_ARGUMENT")]
        assert lines[0]["peer"] == "127.0.0.1" and lines[0]["codec"] == "hevc" and lines[0]["ms"] > 0
        assert "crc32" in lines[1]["error"]
    finally:
        running.stop(0).wait()


def test_response_cache_is_bounded_in_entries_and_bytes() -> None:
    from cfqa_cloud.admission import ResponseCache

    cache = ResponseCache(max_entries=3, max_bytes=10)
    for i in range(5):
        assert cache.claim(("n", i), b"d", 1.0) is None
        cache.finish(("n", i), b"d", b"x" * 4)
    assert (len(cache), cache.nbytes) == (2, 8)
    assert cache.claim(("n", 4), b"d", 1.0) == b"xxxx"
    assert cache.claim(("n", 4), b"other request", 1.0) is None  # same id, other bytes: recompute
    cache.finish(("n", 4), b"other request", None)
    assert cache.claim(("n", 0), b"d", 1.0) is None  # evicted


def test_batching_server_gives_a_batch_its_compute_slots(model, hevc_payload) -> None:
    """With --max-batch-size 4 the queue lets four frames into the engine at once, so they share a batch."""
    from cfqa_cloud.engine import InferenceEngine

    engine = InferenceEngine({model.meta.name: model}, max_batch_size=4, max_batch_delay_s=0.5)
    config = ServerConfig(port=0, max_batch_size=4, max_batch_delay_s=0.5)
    assert config.compute_slots == 4
    running = start_server(config, engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            futures = [stub.Infer.future(request(model, hevc_payload, frame_id=500 + i), timeout=30) for i in range(4)]
            answers = [f.result() for f in futures]
        assert [a.frame_id for a in answers] == [500, 501, 502, 503] and all(a.results[0].top_k for a in answers)
        stats = engine.batch_stats()
        assert stats["items"] == 4 and stats["batches"] < 4
    finally:
        running.stop(0).wait()
        engine.close()


def test_tls_key_of_another_certificate_is_a_clear_error(engine, tmp_path) -> None:
    from tests.support.serving import self_signed_cert

    cert, _ = self_signed_cert(tmp_path / "a")
    _, other_key = self_signed_cert(tmp_path / "b")
    with pytest.raises(DataError, match="do not form a usable pair"):
        start_server(ServerConfig(port=0, tls_cert=cert, tls_key=other_key), engine=engine)


def test_idempotency_cache_can_be_turned_off(engine, model, hevc_payload) -> None:
    running = start_server(ServerConfig(port=0, cache_entries=0), engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            before = engine.frames_computed
            req = request(model, hevc_payload, frame_id=600)
            stub.Infer(req, timeout=30)
            stub.Infer(req, timeout=30)
            assert engine.frames_computed == before + 2 and running.servicer.stats["replayed"] == 0
    finally:
        running.stop(0).wait()


def test_more_payloads_than_tasks_are_refused_before_conversion(model, server, channel, hevc_payload) -> None:
    req = request(model, hevc_payload)
    for _ in range(999):
        req.payloads.add().CopyFrom(hevc_payload)
    err = infer_error(pb_grpc.SplitInferenceStub(channel), req)
    assert err.code() == INVALID and "1000 payloads; at most one per task (3)" in err.details()
