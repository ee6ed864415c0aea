"""Dynamic batching: frames with the same model, split and tasks share one forward pass, results unchanged."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cfqa_cloud.batching import BatchingConfig, DynamicBatcher
from cfqa_cloud.engine import InferenceEngine, InferenceRequest, TaskPayload
from cfqa_core.errors import DataError
from cfqa_core.task_names import TASKS
from cfqa_proto.convert import load_codecs
from tests.support.serving import encoded_frames

load_codecs()


def _concurrently(fn, args: list) -> list:
    """Call ``fn`` on every arg from its own thread, all released at once."""
    barrier = threading.Barrier(len(args))

    def call(a):
        barrier.wait()
        return fn(a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


# ---- the batcher alone -------------------------------------------------------------------------
def test_batches_group_by_key_up_to_the_size_limit() -> None:
    seen: list[tuple[str, list[int]]] = []

    def run(key, items):
        seen.append((key, list(items)))
        return [(key, i * 10) for i in items]

    # A long delay: every item of a key is queued before its batch is due.
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_delay_s=1.0))
    try:
        args = [("a" if i % 3 else "b", i) for i in range(9)]
        results = _concurrently(lambda a: batcher(*a), args)
    finally:
        batcher.close()
    assert results == [(k, i * 10) for k, i in args]
    for key, items in seen:
        assert all(("a" if i % 3 else "b") == key for i in items)  # keys never mix
        assert 1 <= len(items) <= 4
    assert sorted(i for _, items in seen for i in items) == list(range(9))
    # 6 'a' items need two batches at least, 3 'b' items one; a full batch of 4 goes without waiting.
    assert sum(k == "a" for k, _ in seen) >= 2 and sum(k == "b" for k, _ in seen) >= 1
    assert batcher.stats.items == 9 and batcher.stats.batches == len(seen)
    assert any(len(items) == 4 for k, items in seen if k == "a")


def test_a_lone_item_runs_after_its_delay_and_errors_reach_every_caller() -> None:
    started: list[float] = []

    def run(key, items):
        started.append(time.perf_counter())
        if key == "bad":
            raise ValueError("broken batch")
        return list(items)

    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=8, max_delay_s=0.2))
    try:
        t0 = time.perf_counter()
        assert batcher("ok", 7) == 7
        assert started[0] - t0 >= 0.2  # it waited for company, no longer than needed to return
        futures = [batcher.submit("bad", i) for i in range(3)]
        for f in futures:
            with pytest.raises(ValueError, match="broken batch"):
                f.result()
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("ok", 1)


def test_config_is_checked() -> None:
    for kw in ({"max_batch_size": 0}, {"max_delay_s": -1.0}, {"workers": 0}):
        with pytest.raises(ValueError):
            BatchingConfig(**kw)


# ---- in the engine -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frames(model):
    """Encoded cls+seg+dpt features of 5 scenes at splits 4 and 6."""
    return encoded_frames(model, 5, start=40, rate_point=8)


def _req(model, split, encoded, tasks) -> InferenceRequest:
    return InferenceRequest(model.meta.name, split, [TaskPayload(t, encoded[t]) for t in tasks], top_k=3)


def _assert_same(a, b) -> None:
    for pa, pb in zip(a.predictions, b.predictions, strict=True):
        assert pa.task == pb.task
        if pa.task == "cls":
            assert [c for c, _, _ in pa.top_k] == [c for c, _, _ in pb.top_k]
            np.testing.assert_allclose([s for *_, s in pa.top_k], [s for *_, s in pb.top_k], rtol=1e-4, atol=1e-6)
        elif pa.task == "seg":
            # Batched GEMMs may round differently in the last bit; an argmax tie may flip a pixel.
            assert (pa.mask == pb.mask).mean() > 0.999
        else:
            np.testing.assert_allclose(pa.depth, pb.depth, rtol=0, atol=1e-4)


def test_batched_results_equal_single_frame_results(model, engine, frames) -> None:
    batched = InferenceEngine({model.meta.name: model}, max_batch_size=8, max_batch_delay_s=1.0)
    try:
        reqs = [_req(model, split, enc, TASKS) for split in (4, 6) for enc in frames[split]]
        reqs += [_req(model, 4, enc, ("cls",)) for enc in frames[4]]
        got = _concurrently(batched.infer, reqs)
        stats = batched.batch_stats()
    finally:
        batched.close()
    for req, res in zip(reqs, got):
        _assert_same(res, engine.infer(req))
        assert res.model_version == model.meta.version and res.compute_s > 0
    # Three keys (split 4 all tasks, split 6 all tasks, split 4 cls): 15 frames in at least 3 batches,
    # each frame reporting the size of the batch it ran in.
    assert stats["items"] == 15 and 3 <= stats["batches"] < 15
    sizes = [r.batch_size for r in got]
    assert max(sizes) > 1 and all(1 <= s <= 5 for s in sizes)
    assert sum(1 / s for s in sizes) == pytest.approx(stats["batches"])
    assert batched.frames_computed == 15


def test_one_bad_frame_does_not_fail_its_batch(model, engine, frames) -> None:
    batched = InferenceEngine({model.meta.name: model}, max_batch_size=4, max_batch_delay_s=0.5)
    try:
        checked = [batched.validate(_req(model, 4, enc, ("cls",))) for enc in frames[4][:3]]
        feats = [batched.decode(c) for c in checked]
        feats[1] = [np.full_like(feats[1][0], np.nan)]
        out = batched._compute_batch(batched.batch_key(checked[0]),
                                     [(c, f, time.perf_counter()) for c, f in zip(checked, feats)])
    finally:
        batched.close()
    assert isinstance(out[1][0], DataError) and "NaN" in str(out[1][0])
    for i in (0, 2):
        preds = out[i][0]
        want = engine.compute(checked[i], feats[i])
        assert [c for c, _, _ in preds[0].top_k] == [c for c, _, _ in want[0].top_k]


def test_batching_off_by_default(engine) -> None:
    assert engine.batcher is None and engine.batch_stats() == {}
