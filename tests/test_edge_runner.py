"""The edge loop against real servers on loopback: delivery, round-robin, outages, permanent errors."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cfqa_core.codecs as codecs
from cfqa_cloud.engine import InferenceEngine
from cfqa_cloud.server import ServerConfig, start_server
from cfqa_core.cli import main as cli_main
from cfqa_core.errors import PolicyError
from cfqa_core.models import load_model
from cfqa_edge.backends import TorchBackend
from cfqa_edge.client import RetryPolicy
from cfqa_edge.runner import EdgeRunner, RunConfig, build_policy, load_image
from cfqa_proto.convert import load_codecs
from tests.support.serving import free_port, test_model_spec, write_images

load_codecs()
SPLIT = 4
FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.3)


@pytest.fixture(scope="module")
def spec() -> str:
    return test_model_spec()


@pytest.fixture(scope="module")
def model(spec):
    torch.set_num_threads(1)
    return load_model(spec)


@pytest.fixture(scope="module")
def engine(model):
    return InferenceEngine({model.meta.name: model})


@pytest.fixture(scope="module")
def backend(model):
    return TorchBackend(model, SPLIT)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("frames"), 6)


def _server(engine, port=0, server_id=""):
    return start_server(ServerConfig(port=port, host="127.0.0.1", server_id=server_id), engine=engine)


def _config(targets, **kw) -> RunConfig:
    base = dict(cloud=targets, tasks=("cls",), progress=False, retry=FAST_RETRY, senders=2)
    base.update(kw)
    return RunConfig(**base)


def test_every_frame_delivered_with_its_record(engine, backend, images, tmp_path) -> None:
    srv = _server(engine, server_id="only")
    try:
        out = tmp_path / "frames.jsonl"
        runner = EdgeRunner(_config([f"127.0.0.1:{srv.port}"], tasks=("cls", "seg")), backend,
                            build_policy("fixed", {"rate_point": 10}))
        summary = runner.run(images, out)
    finally:
        srv.stop(0).wait()
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert summary.delivered == len(images) == len(lines) and summary.dropped == 0
    assert srv.servicer.stats["ok"] == len(images)
    assert sorted(r["image"] for r in lines) == [p.name for p in images]
    assert len({r["frame_id"] for r in lines}) == len(images)
    codec = codecs.get_codec("hevc")
    for rec in lines:
        assert rec["status"] == "delivered" and rec["code"] == "OK" and rec["server_id"] == "only"
        assert rec["rate_point"] == {"cls": 10, "seg": 10}
        # The bytes reported are the bytes of the bitstream the codec makes for this image.
        feats = backend.features(load_image(images[[p.name for p in images].index(rec["image"])]), ("cls", "seg"))
        for task in ("cls", "seg"):
            enc = codec.encode(feats[task], 10, value_range=backend.value_range(task))
            assert rec["payloads"][task]["bytes"] == enc.nbytes
        assert rec["bytes"] == sum(p["bytes"] for p in rec["payloads"].values()) < rec["wire_bytes"]
        cls, seg = rec["cloud"]["results"]
        assert cls["task"] == "cls" and len(cls["top_k"]) == 5
        assert sum(seg["mask"]["class_pixels"].values()) == backend.info.image_size ** 2
        assert rec["latency_ms"]["e2e"] >= rec["latency_ms"]["rpc"] > 0
        assert rec["cloud"]["timings_ms"]["compute"] > 0


def test_round_robin_over_two_replicas(engine, backend, images, tmp_path) -> None:
    a, b = _server(engine, server_id="a"), _server(engine, server_id="b")
    out = tmp_path / "frames.jsonl"
    try:
        runner = EdgeRunner(_config([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], senders=1),
                            backend, build_policy("fixed", {"rate_point": 20}))
        summary = runner.run(images, out)
    finally:
        a.stop(0).wait()
        b.stop(0).wait()
    assert summary.delivered == len(images)
    served = [json.loads(s)["server_id"] for s in out.read_text().splitlines()]
    assert set(served) == {"a", "b"}
    assert a.servicer.stats["ok"] == served.count("a") > 0
    assert b.servicer.stats["ok"] == served.count("b") > 0


def test_cloud_down_then_up_delivers_everything(engine, backend, images, tmp_path) -> None:
    port = free_port()
    config = _config([f"127.0.0.1:{port}"], memory_items=1, spool_dir=tmp_path / "spool", senders=1)
    runner = EdgeRunner(config, backend, build_policy("fixed", {"rate_point": 16}))
    out = tmp_path / "frames.jsonl"
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", runner.run(images, out)))
    thread.start()
    deadline = time.monotonic() + 120
    while runner.queue.spilled_total < 3:  # the cloud is down: frames pile up on disk
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    assert list((tmp_path / "spool").glob("*.frame"))
    srv = _server(engine, port=port)
    try:
        thread.join(120)
    finally:
        srv.stop(0).wait()
    summary = result["summary"]
    assert summary.delivered == len(images) and summary.dropped == 0 and summary.spilled >= 3
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["image"] for r in lines] == [p.name for p in images]  # one sender: FIFO kept
    assert lines[0]["attempts"] > 1
    assert not list((tmp_path / "spool").glob("*.frame"))


def test_permanent_error_drops_with_reason(engine, backend, images) -> None:
    srv = _server(engine)
    try:
        runner = EdgeRunner(_config([f"127.0.0.1:{srv.port}"], model_version="no-such-version"),
                            backend, build_policy("fixed", {"rate_point": 10}))
        summary = runner.run(images[:3])
    finally:
        srv.stop(0).wait()
    assert summary.delivered == 0 and summary.dropped == 3
    assert summary.reasons == {"FAILED_PRECONDITION": 3}


def test_unreachable_cloud_frames_expire_with_reason(backend, images, tmp_path) -> None:
    out = tmp_path / "frames.jsonl"
    runner = EdgeRunner(_config([f"127.0.0.1:{free_port()}"], max_age_s=1.0), backend,
                        build_policy("fixed", {"rate_point": 10}))
    start = time.monotonic()
    summary = runner.run(images[:3], out)
    assert time.monotonic() - start < 60
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert summary.dropped == 3 and len(lines) == 3
    assert all(r["status"] == "dropped" and r["code"] == "UNAVAILABLE" and "expired" in r["reason"]
               for r in lines)


def test_policy_seam_sends_the_metric(backend, images) -> None:
    class HalfQp:
        name = "test-per-task"

        def decide(self, feature, codec, *, task, value_range, bit_depth, split=None):
            assert split == SPLIT
            qp = 8 if task == "cls" else 30
            enc = codec.encode(feature, qp, value_range=value_range, bit_depth=bit_depth)
            return enc, {"metric": float(np.abs(feature).mean()), "metric_name": "mean-abs", "why": task}

    policy = HalfQp()
    runner = EdgeRunner(_config(["127.0.0.1:1"], tasks=("cls", "seg")), backend, policy)
    req, record = runner.build_request(5, load_image(images[0]), "x.png")
    runner.queue.close()
    assert [p.rate_point for p in req.payloads] == [8, 30]
    assert req.payloads[0].metric_name == "mean-abs" and req.payloads[0].metric_score > 0
    assert record["metric"]["cls"] == pytest.approx(req.payloads[0].metric_score)
    assert record["payloads"]["seg"]["policy"]["why"] == "seg"
    assert req.split_block == SPLIT and req.model_id == backend.info.name
    with pytest.raises(PolicyError, match="unknown policy"):
        build_policy("no-such-policy", {})
    with pytest.raises(PolicyError, match="unknown parameter 'bogus'"):
        build_policy("fixed:bogus=1", {})
    assert build_policy("fixed:rate_point=20", {}).params == {"rate_point": "20"}


def test_cli_edge_run(engine, spec, images, tmp_path, capsys) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz_broken.png").write_bytes(b"not a png")
    srv = _server(engine)
    out = tmp_path / "out.jsonl"
    try:
        rc = cli_main(["edge", "run", "--cloud", f"127.0.0.1:{srv.port}", "--images", str(folder),
                       "--policy", "fixed", "--qp", "12", "--split", str(SPLIT), "--model", spec,
                       "--task", "cls", "--task", "dpt", "--out", str(out), "--no-progress", "--threads", "1"])
    finally:
        srv.stop(0).wait()
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert rc == 3  # one frame dropped
    assert sorted(r["status"] for r in lines) == ["delivered"] * 3 + ["dropped"]
    broken = next(r for r in lines if r["image"] == "zz_broken.png")
    assert "cannot read image" in broken["reason"]
    assert all(r["rate_point"] == {"cls": 12, "dpt": 12} for r in lines if r["status"] == "delivered")
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["summary"]["delivered"] == 3
    assert cli_main(["edge", "run", "--cloud", "127.0.0.1:1", "--images", str(folder),
                     "--policy", "nope", "--model", spec]) == 2
