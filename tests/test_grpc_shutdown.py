"""SIGTERM on a real server process: new calls are refused, the call in flight is finished, exit 0."""
from __future__ import annotations

import queue
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cfqa_core.codecs as codecs
from cfqa_core.models import load_model
from cfqa_edge.backends import TorchBackend
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto import cfqa_v1_pb2_grpc as pb_grpc
from cfqa_proto.convert import load_codecs, payload_from_encoded
from tests.support.serving import ServerProcess, scene_images, test_model_spec

load_codecs()


@pytest.fixture(scope="module")
def spec() -> str:
    return test_model_spec()


@pytest.fixture(scope="module")
def request_msg(spec) -> pb.InferRequest:
    torch.set_num_threads(1)
    model = load_model(spec)
    backend = TorchBackend(model, 4)
    feature = backend.features(scene_images(1)[0], ("cls",))["cls"]
    enc = codecs.get_codec("hevc").encode(feature, 20, value_range=backend.value_range("cls"))
    req = pb.InferRequest(node_id="n", model_id=model.meta.name, split_block=4)
    req.payloads.append(payload_from_encoded("cls", enc))
    return req


def _refusing(target: str) -> bool:
    """True once the server no longer takes new calls."""
    with grpc.insecure_channel(target) as ch:
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return True
        return status != health_pb2.HealthCheckResponse.SERVING


def test_sigterm_finishes_the_stream_in_flight(spec, request_msg) -> None:
    with ServerProcess(["--model", spec, "--grace", "60"]) as srv:
        outbox: queue.Queue = queue.Queue()

        def frames():
            while (item := outbox.get()) is not None:
                yield item

        with grpc.insecure_channel(srv.target) as channel:
            answers = pb_grpc.SplitInferenceStub(channel).InferStream(frames(), timeout=120)

            def send(frame_id: int) -> pb.InferResponse:
                msg = pb.InferRequest()
                msg.CopyFrom(request_msg)
                msg.frame_id = frame_id
                outbox.put(msg)
                return next(answers)

            assert send(1).results[0].top_k
            srv.terminate()
            deadline = time.monotonic() + 20
            while not _refusing(srv.target):
                assert time.monotonic() < deadline, "server still takes new calls after SIGTERM"
                time.sleep(0.1)
            for frame_id in (2, 3, 4):  # the stream opened before SIGTERM goes on
                resp = send(frame_id)
                assert resp.frame_id == frame_id and not resp.HasField("error") and resp.results[0].top_k
            assert srv.proc.poll() is None, "server exited with a call in flight"
            outbox.put(None)
            assert list(answers) == []
        assert srv.wait(30) == 0
    log = srv.log_path.read_text()
    assert "stopping" in log and "Traceback" not in log
