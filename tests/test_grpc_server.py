"""The gRPC server on loopback: answers, status codes, auth, TLS, limits, deadlines, streams, health."""
from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cfqa_core.codecs as codecs
from cfqa_cloud.server import ServerConfig, start_server
from cfqa_edge.backends import TorchBackend
from cfqa_edge.client import CloudClient
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto import cfqa_v1_pb2_grpc as pb_grpc
from cfqa_proto.convert import depth_from_png, load_codecs, mask_from_png, payload_from_encoded
from tests.support.serving import scene_images, self_signed_cert

load_codecs()

SPLIT = 6


@pytest.fixture(scope="module")
def payloads(model):
    backend = TorchBackend(model, SPLIT)
    feats = backend.features(scene_images(1, start=3)[0], ("cls", "seg", "dpt"))
    codec = codecs.get_codec("hevc")
    return {t: payload_from_encoded(t, codec.encode(f, 14, value_range=backend.value_range(t)))
            for t, f in feats.items()}


def make_request(model, payloads, tasks=("cls",), frame_id=1, **kw) -> pb.InferRequest:
    req = pb.InferRequest(node_id="test-node", frame_id=frame_id, model_id=model.meta.name,
                          model_version=model.meta.version, split_block=SPLIT, top_k=3)
    req.payloads.extend(payloads[t] for t in tasks)
    for k, v in kw.items():
        setattr(req, k, v)
    return req


@pytest.fixture()
def server(engine):
    running = start_server(ServerConfig(port=0, host="127.0.0.1", server_id="replica-a"), engine=engine)
    yield running
    running.stop(0).wait()


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SplitInferenceStub(channel)


def test_infer_all_tasks(model, payloads, server, stub) -> None:
    resp = stub.Infer(make_request(model, payloads, ("cls", "seg", "dpt"), frame_id=42), timeout=30)
    assert (resp.node_id, resp.frame_id, resp.server_id) == ("test-node", 42, "replica-a")
    assert resp.model_id == model.meta.name and resp.model_version == model.meta.version
    cls, seg, dpt = resp.results
    assert [r.task for r in resp.results] == ["cls", "seg", "dpt"]
    assert len(cls.top_k) == 3 and cls.top_k[0].score >= cls.top_k[1].score >= cls.top_k[2].score > 0
    assert 1 <= cls.top_k[0].class_id <= 10
    mask = mask_from_png(seg.mask_png)
    assert mask.shape == (seg.height, seg.width) == (model.image_size, model.image_size) and mask.max() <= 10
    depth = depth_from_png(dpt.depth_png)
    assert depth.shape == (model.image_size,) * 2 and 0 <= depth.min() <= depth.max() <= model.meta.max_depth
    t = resp.timings
    assert t.decode_ms > 0 and t.compute_ms > 0 and t.total_ms >= t.decode_ms + t.compute_ms and t.queue_ms >= 0
    assert server.servicer.stats["ok"] == 1


def _corrupt(p: pb.FeaturePayload) -> pb.FeaturePayload:
    q = pb.FeaturePayload()
    q.CopyFrom(p)
    q.bitstream = p.bitstream[: len(p.bitstream) // 2]
    return q


def _error_cases(model, payloads):
    """(name, request, expected status, message fragment)."""
    ok = make_request(model, payloads)
    cases = []

    def case(name, code, fragment, mutate):
        req = pb.InferRequest()
        req.CopyFrom(ok)
        mutate(req)
        cases.append((name, req, code, fragment))

    case("corrupt", grpc.StatusCode.INVALID_ARGUMENT, "corrupt bitstream",
         lambda r: r.payloads[0].CopyFrom(_corrupt(r.payloads[0])))
    case("shape", grpc.StatusCode.INVALID_ARGUMENT, "does not match model",
         lambda r: (setattr(r, "split_block", SPLIT + 2), r.payloads[0].CopyFrom(payloads["dpt"])))
    case("codec", grpc.StatusCode.INVALID_ARGUMENT, "unknown codec 'nocodec'",
         lambda r: setattr(r.payloads[0], "codec", "nocodec"))
    case("task", grpc.StatusCode.INVALID_ARGUMENT, "unknown task 'pose'",
         lambda r: setattr(r.payloads[0], "task", "pose"))
    case("dtype", grpc.StatusCode.INVALID_ARGUMENT, "dtype",
         lambda r: setattr(r.payloads[0], "dtype", "int8"))
    case("model", grpc.StatusCode.NOT_FOUND, "unknown model 'no-such-model'",
         lambda r: setattr(r, "model_id", "no-such-model"))
    case("version", grpc.StatusCode.FAILED_PRECONDITION, "pins",
         lambda r: setattr(r, "model_version", "0.0-other"))
    return ok, cases


def test_errors_have_status_codes_and_server_keeps_serving(model, payloads, server, stub) -> None:
    ok, cases = _error_cases(model, payloads)
    for name, req, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(req, timeout=30)
            pytest.fail(f"case {name}: no error")
        assert err.value.code() == code, name
        assert fragment in err.value.details(), (name, err.value.details())
        resp = stub.Infer(ok, timeout=30)  # still serving
        assert resp.results[0].top_k
    assert server.servicer.stats["error"] == len(cases)
    assert server.servicer.stats["ok"] == len(cases)


def test_stream_answers_in_order_with_in_band_errors(model, payloads, server, stub) -> None:
    ok, cases = _error_cases(model, payloads)
    bad = cases[0][1]
    reqs = []
    for i, r in enumerate([ok, bad, ok, ok]):
        q = pb.InferRequest()
        q.CopyFrom(r)
        q.frame_id = 100 + i
        reqs.append(q)
    answers = list(stub.InferStream(iter(reqs), timeout=60))
    assert [a.frame_id for a in answers] == [100, 101, 102, 103]
    assert [a.HasField("error") for a in answers] == [False, True, False, False]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "corrupt bitstream" in answers[1].error.message
    assert all(a.results[0].top_k for i, a in enumerate(answers) if i != 1)


def test_ping_and_health_and_reflection_listed(model, server, stub) -> None:
    ping = stub.Ping(pb.PingRequest(), timeout=5)
    assert ping.server_id == "replica-a" and model.meta.name in ping.model_ids
    assert "hevc" in ping.codecs and ping.server_time.seconds > 0
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "cfqa.v1.SplitInference"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_token_required(engine, model, payloads) -> None:
    running = start_server(ServerConfig(port=0, host="127.0.0.1", token="s3cret"), engine=engine)
    try:
        target = f"127.0.0.1:{running.port}"
        req = make_request(model, payloads)
        for token in (None, "wrong"):
            with CloudClient([target], token=token) as client:
                for call in (lambda: client.infer(req), lambda: client.ping(),
                             lambda: list(client.infer_stream([req]))):
                    with pytest.raises(grpc.RpcError) as err:
                        call()
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "bearer token" in err.value.details()
        with CloudClient([target], token="s3cret") as client:
            assert client.infer(req).results[0].top_k
            assert [a.frame_id for a in client.infer_stream([req])] == [req.frame_id]
        with grpc.insecure_channel(target) as ch:  # health stays open for probes
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0).wait()


def test_tls(engine, model, payloads, tmp_path) -> None:
    cert, key = self_signed_cert(tmp_path)
    running = start_server(ServerConfig(port=0, host="127.0.0.1", tls_cert=cert, tls_key=key, token="t"),
                           engine=engine)
    try:
        target = f"127.0.0.1:{running.port}"
        with CloudClient([target], tls_ca=cert, tls_server_name="localhost", token="t") as client:
            assert client.infer(make_request(model, payloads)).results[0].top_k
        with CloudClient([target], token="t", timeout_s=3) as plain:  # plaintext to a TLS port fails
            with pytest.raises(grpc.RpcError) as err:
                plain.ping()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        other, _ = self_signed_cert(tmp_path / "other")
        with CloudClient([target], tls_ca=other, tls_server_name="localhost", token="t", timeout_s=3) as bad:
            with pytest.raises(grpc.RpcError) as err:  # a certificate we do not trust
                bad.ping()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0).wait()


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_concurrency_limit_and_deadline(engine, model, payloads) -> None:
    running = start_server(ServerConfig(port=0, host="127.0.0.1", max_queue=1), engine=engine)
    servicer = running.servicer
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            req, req2, req3, req4 = (make_request(model, payloads, frame_id=i) for i in (11, 12, 13, 14))
            servicer.compute_slots.acquire()  # compute busy: the next call waits inside the handler
            held = True
            try:
                first = stub.Infer.future(req, timeout=30)
                deadline = time.monotonic() + 10
                while servicer.in_flight < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                with pytest.raises(grpc.RpcError) as err:
                    stub.Infer(req2, timeout=10)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert servicer.stats["rejected_busy"] == 1
                servicer.compute_slots.release()
                held = False
                assert first.result(timeout=30).results[0].top_k
                assert first.result().timings.queue_ms > 0
                # A call whose deadline passes while it waits for compute is never computed: its
                # handler gives up on its own (the slot is still held), counts an error, leaves the queue.
                servicer.compute_slots.acquire()
                held = True
                computed, errors, ok = engine.frames_computed, servicer.stats["error"], servicer.stats["ok"]
                with pytest.raises(grpc.RpcError) as err:
                    stub.Infer(req3, timeout=0.3)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert _wait_for(lambda: servicer.in_flight == 0 and servicer.stats["error"] == errors + 1)
                assert servicer.stats["ok"] == ok and engine.frames_computed == computed
                servicer.compute_slots.release()
                held = False
                assert servicer.compute_slots.acquire(blocking=False)  # the abandoned frame left no slot taken
                servicer.compute_slots.release()
                assert stub.Infer(req4, timeout=30).results[0].top_k  # and it keeps serving
            finally:
                if held:
                    servicer.compute_slots.release()
    finally:
        running.stop(0).wait()


def test_max_message_size(engine, model, payloads) -> None:
    running = start_server(ServerConfig(port=0, host="127.0.0.1", max_message_mb=0.01), engine=engine)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            big = make_request(model, payloads, ("cls", "seg", "dpt"))
            assert big.ByteSize() > 0.01 * 1024 * 1024
            with pytest.raises(grpc.RpcError) as err:
                stub.Infer(big, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.Ping(pb.PingRequest(), timeout=5).model_ids
    finally:
        running.stop(0).wait()
