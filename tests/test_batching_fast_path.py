"""The engine's traced forward answers exactly as the eager model, alone and in batches; what it cannot
reproduce runs eagerly; the server sizes torch's threads to the batch workers."""
from __future__ import annotations

import importlib.util
import sys
import threading

import numpy as np
import pytest
import torch

from cfqa_cloud.engine import ONNX_TOLERANCE, InferenceEngine, InferenceRequest, TaskPayload, TracedForwards
from cfqa_cloud.server import ServerConfig, torch_threads_for, usable_cores
from cfqa_core.task_names import TASKS
from cfqa_core.tasks import make_views
from cfqa_proto.convert import load_codecs
from tests.support.depth_reference import channels_first_depth
from tests.support.serving import encoded_frames, scene_images

load_codecs()
_HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def frames(model):
    """Encoded cls+seg+dpt features of 6 scenes at splits 4 and 6."""
    return encoded_frames(model, 6, start=70, rate_point=12)


@pytest.fixture(scope="module")
def engines(model):
    models = {model.meta.name: model}
    return InferenceEngine(models), InferenceEngine(models, traced=False)


def _req(model, split, encoded, tasks=TASKS) -> InferenceRequest:
    return InferenceRequest(model.meta.name, split, [TaskPayload(t, encoded[t]) for t in tasks], top_k=5)


def _assert_identical(a, b, depth_atol: float = 0.0) -> None:
    """Bit for bit: class ids, labels and float scores; masks; depth maps (to ``depth_atol`` metres if given)."""
    for pa, pb in zip(a, b, strict=True):
        assert pa.task == pb.task
        assert pa.top_k == pb.top_k
        for x, y, atol in ((pa.mask, pb.mask, 0.0), (pa.depth, pb.depth, depth_atol)):
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and x.shape == y.shape
                assert np.array_equal(x, y) if atol == 0.0 else float(np.abs(x - y).max()) <= atol


def _dpt_atol(engine, model, split: int) -> float:
    """What the engine's dpt answers may differ by from the eager model's: 0 traced, float32 rounding in ORT."""
    runtime = engine._forwards[id(model)].runtimes.get(("dpt", split), "torch")
    return ONNX_TOLERANCE if runtime == "onnxruntime" else 0.0


def test_single_frames_are_answered_exactly_as_by_the_eager_model(model, engines, frames) -> None:
    traced, eager = engines
    for split in (4, 6):
        traced.warm("dpt", split)
        for enc in frames[split]:
            req = _req(model, split, enc)
            _assert_identical(traced.infer(req).predictions, eager.infer(req).predictions,
                              depth_atol=_dpt_atol(traced, model, split))
    forwards = traced._forwards[id(model)]
    assert forwards.traced("cls", 4) and forwards.traced("seg", 6) and forwards.traced("dpt", 4)
    assert forwards.runtimes[("cls", 4)] == forwards.runtimes[("seg", 6)] == "torch"
    assert forwards.runtimes[("dpt", 4)] == ("onnxruntime" if _HAS_ORT else "torch")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_batches_are_answered_exactly_as_the_same_eager_batches(model, engines, frames, n) -> None:
    traced, eager = engines
    for split, tasks in ((4, ("cls",)), (6, ("cls", "seg")), (4, ("dpt",)), (6, ("seg", "dpt"))):
        checked = [traced.validate(_req(model, split, enc, tasks)) for enc in frames[split][:n]]
        features = [traced.decode(c) for c in checked]
        traced.warm("dpt", split)
        got = traced._compute_many(checked, features)
        want = eager._compute_many(checked, features)
        for a, b in zip(got, want, strict=True):
            _assert_identical(a, b, depth_atol=_dpt_atol(traced, model, split))


def test_threads_sharing_a_trace_get_the_eager_answers(model) -> None:
    forwards = TracedForwards(model)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(b, model.num_tokens, model.backbone.cfg.embed_dim, generator=gen) for b in range(1, 9)]
    with torch.inference_mode():
        want = [model.cloud_predict("cls", x, 4) for x in inputs]
    got: dict[int, list] = {}
    barrier = threading.Barrier(2)

    def run(k: int) -> None:
        barrier.wait()
        with torch.inference_mode():
            got[k] = [forwards.cloud_predict("cls", x, 4) for x in (inputs if k else inputs[::-1])]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert forwards.traced("cls", 4)
    assert all(torch.equal(a, b) for a, b in zip(got[1], want, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(got[0], want[::-1], strict=True))


class _Stub(torch.nn.Module):
    """The little of a SplitModel that TracedForwards reads; ``cloud_predict`` misbehaves as told."""

    depth, num_tokens = 4, 5

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.fc = torch.nn.Linear(8, 3)
        self.backbone = type("B", (), {"cfg": type("C", (), {"embed_dim": 8})()})()
        self.eager_calls = 0

    def cloud_predict(self, task: str, feature: torch.Tensor, split: int | None = None) -> torch.Tensor:
        if not torch.jit.is_tracing():
            self.eager_calls += 1
        out = self.fc(feature.mean(dim=1))
        if self.mode == "noisy":  # not reproducible: a trace can never match
            return out + torch.rand_like(out)
        if self.mode == "branch" and float(feature.sum()) > 0:  # a data-dependent branch the trace bakes in
            return out * 2
        if self.mode == "untraceable" and torch.jit.is_tracing():
            raise RuntimeError("cannot trace this")
        return out


@pytest.mark.parametrize("mode", ["noisy", "branch", "untraceable"])
def test_a_forward_the_trace_does_not_reproduce_runs_eagerly(mode) -> None:
    stub = _Stub(mode)
    forwards = TracedForwards(stub)
    x = torch.ones(2, 5, 8)
    with torch.inference_mode():
        forwards.cloud_predict("cls", x, 2)
        assert not forwards.traced("cls", 2)
        before = stub.eager_calls
        forwards.cloud_predict("cls", x, 2)
    assert stub.eager_calls == before + 1  # the model itself answered


def test_a_faithful_stub_is_traced_and_a_task_not_listed_is_not() -> None:
    stub = _Stub("plain")
    forwards = TracedForwards(stub)
    x = torch.randn(3, 5, 8)
    with torch.inference_mode():
        assert torch.equal(forwards.cloud_predict("cls", x, 2), stub.cloud_predict("cls", x, 2))
        assert forwards.traced("cls", 2)
        calls = stub.eager_calls
        forwards.cloud_predict("cls", x, 2)
        assert stub.eager_calls == calls  # the trace answered
    assert not TracedForwards(stub, tasks=("cls", "seg")).traced("dpt", 2)


def test_engine_without_traces_calls_the_model(model) -> None:
    assert InferenceEngine({model.meta.name: model}, traced=False)._forwards == {}
    both = InferenceEngine({model.meta.name: model, "alias": model})
    assert len(both._forwards) == 1  # one set of traces per model object


def test_torch_threads_are_shared_out_among_the_batch_workers(monkeypatch) -> None:
    cores = usable_cores()
    assert cores >= 1
    assert torch_threads_for(ServerConfig()) is None  # no batching: torch's own default, as before
    assert torch_threads_for(ServerConfig(torch_threads=3, max_batch_size=8)) == 3
    assert torch_threads_for(ServerConfig(max_batch_size=8, batch_workers=1)) == cores
    assert torch_threads_for(ServerConfig(max_batch_size=8, batch_workers=cores)) == 1
    assert torch_threads_for(ServerConfig(max_batch_size=8, batch_workers=cores + 5)) == 1
    monkeypatch.delenv("CFQA_TRACED_FORWARD", raising=False)
    assert ServerConfig().traced_forward
    monkeypatch.setenv("CFQA_TRACED_FORWARD", "0")
    assert not ServerConfig().traced_forward


def test_cloud_serve_eager_turns_the_traces_off(monkeypatch) -> None:
    from cfqa_cloud.commands import server_config
    from cfqa_core.cli import build_parser

    monkeypatch.delenv("CFQA_TRACED_FORWARD", raising=False)
    parser = build_parser()
    assert server_config(parser.parse_args(["cloud", "serve"]), None).traced_forward
    eager = server_config(parser.parse_args(["cloud", "serve", "--eager", "--max-batch-size", "4"]), None)
    assert not eager.traced_forward and eager.max_batch_size == 4
    assert server_config(parser.parse_args(["cloud", "serve"]), None).onnxruntime_forward
    torch_only = server_config(parser.parse_args(["cloud", "serve", "--no-onnxruntime"]), None)
    assert torch_only.traced_forward and not torch_only.onnxruntime_forward


def test_traces_build_in_the_background_and_warm_waits_for_them(model, frames) -> None:
    engine = InferenceEngine({model.meta.name: model})
    forwards = engine._forwards[id(model)]
    req = _req(model, 4, frames[4][0], ("cls",))
    first = engine.infer(req)  # answered at once (eagerly) while the cls trace of split 4 builds
    assert engine.warm("cls", 4) == {model.meta.name: True} and forwards.traced("cls", 4)
    _assert_identical(engine.infer(req).predictions, first.predictions)
    assert engine.warm("dpt", 4) == {model.meta.name: True}
    assert InferenceEngine({model.meta.name: model}, traced=False).warm("cls", 4) == {model.meta.name: False}


def test_traced_dpt_is_the_bin_scores_trace_then_the_depth_and_matches_the_definition(model) -> None:
    """dpt runs traced up to the bin scores; its depth equals the channels-first definition on the same levels."""
    forwards = TracedForwards(model, onnx_tasks=())
    assert forwards.traced("dpt", 4) and forwards.runtimes[("dpt", 4)] == "torch"
    feature = _dpt_feature(model, 4)
    with torch.inference_mode():
        got = forwards.cloud_predict("dpt", feature, 4)
        assert torch.equal(got, model.cloud_predict("dpt", feature, 4))
        assert torch.equal(got, model.dpt_depth(model.dpt_scores(feature, 4)))
        want = _definition_depth(model, feature, 4)
    assert got.shape == want.shape == (4, model.image_size, model.image_size)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5)
    assert float(got.std()) > 0.05


def _definition_depth(model, feature: torch.Tensor, split: int) -> torch.Tensor:
    """The channels-first depth definition on the model's own final-normed levels of ``feature``."""
    levels = model._head_inputs("dpt", feature, split)
    return channels_first_depth(model.dpt_head, levels, model.grid(), (model.image_size, model.image_size))


def _dpt_feature(model, split: int) -> torch.Tensor:
    """Real tokens (random ones give flat logits): the edge's dpt feature of two scenes' views, as if decoded."""
    gen = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        pixels = torch.from_numpy(np.concatenate([make_views("dpt", im, model.image_size)
                                                  for im in scene_images(2, start=40)]))
        feature = model.edge_feature(pixels, "dpt", split)
        return feature + 0.01 * torch.randn(feature.shape, generator=gen)


@pytest.mark.skipif(not _HAS_ORT, reason="onnxruntime is not installed")
def test_dpt_in_onnxruntime_matches_the_eager_model_and_the_definition(model) -> None:
    forwards = TracedForwards(model)
    assert forwards.traced("dpt", 4) and forwards.runtimes[("dpt", 4)] == "onnxruntime"
    for n_views in (4, 6):  # other batch sizes than the exported one
        feature = torch.cat([_dpt_feature(model, 4)] * (n_views // 4) + [_dpt_feature(model, 4)[: n_views % 4]])
        with torch.inference_mode():
            got = forwards.cloud_predict("dpt", feature, 4)
            eager = model.cloud_predict("dpt", feature, 4)
            want = _definition_depth(model, feature, 4)
        assert got.shape == eager.shape == (n_views, model.image_size, model.image_size)
        diff = float((got - eager).abs().max())
        assert 0.0 < diff <= 2e-5  # float32 rounding of other kernels, far inside ONNX_TOLERANCE
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=4e-5)


@pytest.mark.skipif(not _HAS_ORT, reason="onnxruntime is not installed")
def test_dpt_stays_in_torch_without_onnxruntime_or_when_its_answers_differ(model, monkeypatch) -> None:
    assert InferenceEngine({model.meta.name: model}, onnxruntime=False).warm("dpt", 6) == {model.meta.name: True}
    monkeypatch.setattr("cfqa_cloud.engine.ONNX_TOLERANCE", -1.0)  # no answer is close enough
    forwards = TracedForwards(model)
    assert forwards.traced("dpt", 6) and forwards.runtimes[("dpt", 6)] == "torch"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    forwards = TracedForwards(model)
    assert forwards.traced("dpt", 6) and forwards.runtimes[("dpt", 6)] == "torch"
    feature = _dpt_feature(model, 6)
    with torch.inference_mode():
        assert torch.equal(forwards.cloud_predict("dpt", feature, 6), model.cloud_predict("dpt", feature, 6))
