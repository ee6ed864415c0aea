"""Edge crash safety against a real loopback server: resume without loss or duplicate, quarantine,
permanent errors dropped at once."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from cfqa_cloud.server import ServerConfig, start_server
from cfqa_edge.backends import TorchBackend
from cfqa_edge.client import CloudClient, RetryPolicy, is_retryable
from cfqa_edge.runner import EdgeRunner, RunConfig, build_policy, frame_id_of, load_image
from cfqa_edge.spool import JOURNAL, QUARANTINE, SUFFIX, SpoolItem, SpoolQueue, spool_name
from cfqa_proto.convert import load_codecs
from tests.support.serving import free_port, write_images

load_codecs()
SPLIT = 4
FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.2)


@pytest.fixture(scope="module")
def backend(model):
    return TorchBackend(model, SPLIT)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("frames"), 5)


def _server(engine, port=0, **kw):
    return start_server(ServerConfig(port=port, host="127.0.0.1", **kw), engine=engine)


def _runner(backend, target: str, spool: Path, **kw) -> EdgeRunner:
    cfg = dict(cloud=[target], tasks=("cls",), progress=False, retry=FAST_RETRY, senders=2, memory_items=2,
               spool_dir=spool, node_id="edge-test")
    cfg.update(kw)
    return EdgeRunner(RunConfig(**cfg), backend, build_policy("fixed", {"rate_point": 12}))


def _records(out: Path) -> list[dict]:
    recs = []
    for line in out.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            pass
    return recs


def _computed(srv) -> int:
    return srv.servicer.stats["ok"]


def test_frame_ids_are_stable_and_content_bound(images, tmp_path) -> None:
    ids = [frame_id_of(p) for p in images]
    assert ids == [frame_id_of(p) for p in images] and len(set(ids)) == len(ids)
    assert all(0 <= i < 2**63 for i in ids)
    copy = tmp_path / images[0].name
    shutil.copy(images[0], copy)
    assert frame_id_of(copy) == ids[0]  # same name, same bytes: the same frame wherever it lies
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert frame_id_of(copy) != ids[0]


def test_stopped_edge_resumes_without_loss_or_duplicate(engine, backend, images, tmp_path) -> None:
    spool, out = tmp_path / "spool", tmp_path / "frames.jsonl"
    port = free_port()
    # Run 1: the cloud is down; every frame is captured into the spool, then the edge stops.
    first = _runner(backend, f"127.0.0.1:{port}", spool)
    first.stop.set()  # as on Ctrl-C: senders keep frames for the next run
    s1 = first.run(images, out)
    assert s1.frames == 5 and s1.pending == 5 and s1.delivered == s1.dropped == 0
    assert len(list(spool.glob(f"*{SUFFIX}"))) == 5 and out.read_text() == ""
    saved = {p.name: p.read_bytes() for p in spool.glob(f"*{SUFFIX}")}
    # A crash tore the output file's last line; the next run must not glue its first record to it.
    out.write_text('{"frame_id": 12, "status": "deliv')
    srv = _server(engine, port=port)
    try:
        # Run 2: the frames come from the spool; the images are not captured again.
        second = _runner(backend, f"127.0.0.1:{port}", spool)
        s2 = second.run(images, out)
        assert (s2.recovered, s2.frames, s2.skipped, s2.delivered, s2.dropped) == (5, 5, 5, 5, 0)
        assert _computed(srv) == 5
        assert not list(spool.glob(f"*{SUFFIX}"))
        recs = _records(out)
        assert len(out.read_text().splitlines()) == 6 and len(recs) == 5  # the torn line stays, separate
        assert sorted(r["frame_id"] for r in recs) == sorted(frame_id_of(p) for p in images)
        assert all(r["status"] == "delivered" and r["spilled"] for r in recs)
        assert sorted((spool / JOURNAL).read_text().split()) == sorted(str(r["frame_id"]) for r in recs)
        # Run 3: a crash between writing a record and deleting its spool file left one file behind.
        name = sorted(saved)[2]
        (spool / name).write_bytes(saved[name])
        (spool / JOURNAL).unlink()  # only the output file knows; it is enough
        third = _runner(backend, f"127.0.0.1:{port}", spool)
        s3 = third.run(images + [images[0]], out)
        assert (s3.frames, s3.skipped, s3.delivered, s3.recovered) == (0, 6, 0, 0)
        assert _computed(srv) == 5 and len(_records(out)) == 5  # nothing resent, nothing appended
        assert not (spool / name).exists()
        # Run 4: the output file is the ledger; without it every image is a new frame again.
        out.unlink()
        s4 = _runner(backend, f"127.0.0.1:{port}", spool).run(images, out)
        assert (s4.frames, s4.skipped, s4.delivered) == (5, 0, 5) and len(_records(out)) == 5
    finally:
        srv.stop(0).wait()


def test_damaged_spool_file_is_quarantined_and_the_rest_delivered(engine, backend, images, tmp_path) -> None:
    spool, out = tmp_path / "spool", tmp_path / "frames.jsonl"
    port = free_port()
    first = _runner(backend, f"127.0.0.1:{port}", spool)
    first.stop.set()
    assert first.run(images[:4], out).pending == 4
    files = sorted(spool.glob(f"*{SUFFIX}"))
    files[1].write_bytes(files[1].read_bytes()[:20])  # torn inside the header
    # A valid header in front of bytes that are no request.
    blob = files[2].read_bytes()
    n = int.from_bytes(blob[:4], "big")
    files[2].write_bytes(blob[:4 + n] + b"\xff" * 40)
    (spool / f"not-a-frame{SUFFIX}").write_bytes(b"x")
    srv = _server(engine, port=port)
    try:
        summary = _runner(backend, f"127.0.0.1:{port}", spool, senders=1).run(images, out)
        # The images of the damaged frames are captured again, in this run or the next.
        again = _runner(backend, f"127.0.0.1:{port}", spool, senders=1).run(images, out)
    finally:
        srv.stop(0).wait()
    recs = _records(out)
    quarantined = [r for r in recs if r.get("quarantined")]
    delivered = [r for r in recs if r["status"] == "delivered"]
    assert summary.quarantined == len(quarantined) == 3 and again.quarantined == 0
    assert all(r["status"] == "dropped" and r["code"] == "DATA_LOSS" and r["frame_id"] is None
               and Path(r["quarantined"]).is_file() for r in quarantined)
    assert sum("unreadable spooled request" in r["reason"] for r in quarantined) == 1
    assert sum("header length" in r["reason"] for r in quarantined) == 1
    # The sender survived every damaged file: every image is delivered, exactly once.
    assert sorted(r["image"] for r in delivered) == [p.name for p in images]
    assert len({r["frame_id"] for r in delivered}) == 5 and _computed(srv) == 5
    assert summary.delivered + again.delivered == 5 and again.skipped >= 3
    assert len(list((spool / QUARANTINE).glob(f"*{SUFFIX}"))) == 3
    assert not list(spool.glob(f"*{SUFFIX}"))


def test_message_too_large_is_dropped_at_once(engine, backend, images, tmp_path) -> None:
    # The server takes at most 1 KB; an HEVC cls frame is larger.
    srv = _server(engine, max_message_mb=1 / 1024)
    try:
        out = tmp_path / "frames.jsonl"
        runner = _runner(backend, f"127.0.0.1:{srv.port}", tmp_path / "spool", max_age_s=60.0)
        start = time.monotonic()
        summary = runner.run(images[:2], out)
        assert time.monotonic() - start < 20
    finally:
        srv.stop(0).wait()
    recs = _records(out)
    assert summary.dropped == 2 and summary.reasons == {"RESOURCE_EXHAUSTED": 2}
    assert all(r["attempts"] == 1 and "larger than max" in r["reason"] and "not retried" in r["reason"]
               for r in recs)
    # The client's own limit: refused before anything is sent.
    runner2 = _runner(backend, f"127.0.0.1:{free_port()}", tmp_path / "spool2")
    request, _ = runner2.build_request(1, load_image(images[0]), images[0].name)
    runner2.queue.close()
    with CloudClient(["127.0.0.1:1"], max_message_mb=1 / 1024) as client:
        outcome = client.send(request, FAST_RETRY)
    assert (outcome.ok, outcome.code, outcome.attempts) == (False, "RESOURCE_EXHAUSTED", 0)
    assert f"{request.ByteSize()} bytes over the 1024-byte limit" in outcome.message
    assert is_retryable(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: 8 calls in progress")
    assert not is_retryable(grpc.StatusCode.INVALID_ARGUMENT, "corrupt bitstream")


def test_invalid_argument_is_dropped_at_once(engine, backend, images, tmp_path) -> None:
    srv = _server(engine)
    try:
        runner = _runner(backend, f"127.0.0.1:{srv.port}", tmp_path / "spool")
        request, record = runner.build_request(frame_id_of(images[0]), load_image(images[0]), images[0].name)
        request.payloads[0].bitstream = request.payloads[0].bitstream[: len(request.payloads[0].bitstream) // 2]
        with CloudClient([f"127.0.0.1:{srv.port}"]) as client:
            outcome = client.send(request, FAST_RETRY)
        runner.queue.close()
    finally:
        srv.stop(0).wait()
    assert (outcome.ok, outcome.code, outcome.attempts) == (False, "INVALID_ARGUMENT", 1)


def test_spool_item_survives_with_its_record(tmp_path) -> None:
    # The record written with the frame is the record read back after a restart.
    q = SpoolQueue(spool_dir=tmp_path)
    q.put(SpoolItem(q.next_seq(), b"req", {"image": "a.png", "capture_ns": 5, "latency_ms": {"extract": 1.5}},
                    frame_id=42))
    q._journal.close()
    q._lock_fh.close()
    again = SpoolQueue(spool_dir=tmp_path)
    again.close()
    item = again.get(timeout=1)
    assert item.path.name == spool_name(0, 42) and item.payload == b"req"
    assert item.record == {"image": "a.png", "capture_ns": 5, "latency_ms": {"extract": 1.5}}


def test_without_an_output_file_the_journal_is_the_ledger(engine, backend, images, tmp_path, capsys) -> None:
    srv = _server(engine)
    try:
        target = f"127.0.0.1:{srv.port}"
        first = _runner(backend, target, tmp_path / "spool").run(images[:2], Path("/dev/stdout"))
        second = _runner(backend, target, tmp_path / "spool").run(images[:3], Path("/dev/stdout"))
    finally:
        srv.stop(0).wait()
    assert (first.delivered, second.delivered, second.skipped) == (2, 1, 2)
    assert _computed(srv) == 3
    assert len((tmp_path / "spool" / JOURNAL).read_text().split()) == 3
