"""The cloud's work, free of any network code: decode, de-quantise, run the rest, run the heads.

``InferenceEngine.infer(InferenceRequest) -> InferenceResult`` is what the gRPC
servicer calls after converting the wire message; tests and benchmarks call it
directly. ``validate`` does every cheap check (model, version, split, task,
codec, shape) so that a bad request is refused before it waits for compute.

With ``max_batch_size > 1`` the engine batches dynamically (``cfqa_cloud.batching``):
each caller of ``run`` decodes its own payloads, then frames with the same
model, split and task set that arrive within ``max_batch_delay_s`` of each
other run the remaining blocks and heads once, as one batch.

The remaining blocks and the head run as a TorchScript trace of
``SplitModel.cloud_predict`` per (task, split) (:class:`TracedForwards`),
where the trace returns exactly what the eager model returns: the whole
forward then runs in C++ with the GIL released, where an eager forward takes
the GIL back between each of its ~100 operators and waits for it behind every
Python thread of the server (gRPC handlers, decoders); the Python of the
module calls goes too. For dpt the trace covers the blocks up to the depth-bin
scores and the per-pixel depth runs eagerly after it; that traced part then runs
in ONNX Runtime when it is installed and agrees with the eager model to float32
rounding (``ONNX_TOLERANCE``). Anything the trace cannot reproduce bit for bit
runs eagerly.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cfqa_cloud.batching import BatchingConfig, DynamicBatcher, describe
from cfqa_core.codecs.base import EncodedFeature, FeatureCodec, get_codec
from cfqa_core.errors import CfqaError, CodecError, DataError, ModelError
from cfqa_core.models.split_model import SplitModel
from cfqa_core.tasks import TASKS, feature_shape
from cfqa_proto.convert import load_codecs

log = logging.getLogger("cfqa.cloud")
DEFAULT_TOP_K = 5
# Tasks whose cloud forward is traced (when the trace matches the eager output). For dpt the trace
# ends at the depth-bin scores (``SplitModel.dpt_scores``): the per-pixel depth after them loops over
# groups of images and checks the logits' range, which a trace would freeze to the traced batch.
TRACED_TASKS: tuple[str, ...] = ("cls", "seg", "dpt")
# Tasks whose traced part runs in ONNX Runtime instead, when it is installed and its answers are
# within ONNX_TOLERANCE of the eager model's: its kernels are ~6 % faster than torch's on the four
# blocks of a dpt request, at float32 rounding (~1e-5 m of depth), not bit for bit.
ONNX_TASKS: tuple[str, ...] = ("dpt",)
ONNX_TOLERANCE = 1e-4  # max abs difference from the eager output (metres of depth for dpt)
# Probe batch sizes a trace must reproduce exactly before it is used: the traced size and others,
# each run several times (TorchScript optimises a graph after its first runs).
_PROBE_SIZES = (2, 1, 3, 5)
_PROBE_RUNS = 3
_ONNX_OPSET = 17
# Traces are built in a background thread while requests are served, where warnings.catch_warnings
# would swap the filters of every thread: narrow process-wide filters instead. torch.jit.trace and the
# TorchScript ONNX exporter are deprecated in favour of torch.compile/export, which would generate other
# kernels (other roundings); the tracer's shape warnings on the project's model code are covered by the
# engine's own shape checks before any call and by the probes.
for _message, _module in ((r"`torch\.jit\.trace(_method)?` is deprecated", ""),
                          (r"You are using the legacy TorchScript-based ONNX export", ""),
                          (r"The feature will be removed", r"torch\.onnx")):
    warnings.filterwarnings("ignore", message=_message, category=DeprecationWarning, module=_module)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"cfqa_core\.models(\.|$)")


class UnknownModelError(ModelError):
    """The request names a model this server does not serve (gRPC NOT_FOUND)."""


class ModelVersionError(ModelError):
    """The request pins a model version other than the one served (gRPC FAILED_PRECONDITION)."""


class RequestError(DataError):
    """A malformed request: bad split, task, shape or payload set (gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class TaskPayload:
    """One task's compressed feature as received."""

    task: str
    encoded: EncodedFeature
    metric_score: float | None = None


@dataclass
class InferenceRequest:
    """Everything the cloud needs for one frame."""

    model_id: str
    split: int
    payloads: list[TaskPayload]
    model_version: str = ""
    node_id: str = ""
    frame_id: int = 0
    top_k: int = 0


@dataclass
class TaskPrediction:
    """One task's output: ``top_k`` [(class_id, label, prob)] (cls), ``mask`` (seg) or ``depth`` in metres (dpt)."""

    task: str
    top_k: list[tuple[int, str, float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None


@dataclass
class InferenceResult:
    model_id: str
    model_version: str
    predictions: list[TaskPrediction]
    decode_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 1  # frames computed together with this one (itself included)
    batch_wait_s: float = 0.0  # time between decode and the start of its batch


@dataclass(frozen=True)
class _Checked:
    """A validated request: its model and codecs resolved."""

    request: InferenceRequest
    model: SplitModel
    codecs: tuple[FeatureCodec, ...]


def load_models(specs: Sequence[str]) -> dict[str, SplitModel]:
    """Load models by name or path; each is served under its meta name and under the spec given."""
    from cfqa_core.models import load_model

    models: dict[str, SplitModel] = {}
    for spec in specs:
        model = load_model(spec)
        models[model.meta.name] = model
        models.setdefault(str(spec), model)
    return models


def _softmax_top_k(logits: np.ndarray, k: int, names: Sequence[str]) -> list[tuple[int, str, float]]:
    z = logits.astype(np.float64) - float(np.max(logits))
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")[: max(1, k)]
    # Head index i is object class i + 1 (class 0 is the background of seg).
    return [(int(i) + 1, names[i + 1] if i + 1 < len(names) else str(i + 1), float(p[i])) for i in order]


class TracedForwards:
    """``cloud_predict(task, feature, split)`` of one model through a TorchScript trace per (task, split).

    Duck-types the model for :func:`cfqa_core.inference.predict`. The trace of
    a (task, split) is built on a background thread from its first call (the
    eager model answers meanwhile, so no request waits the 0.3 s a build takes)
    and kept only if it returns
    exactly (``torch.equal``) the eager output on seeded probe batches of
    several sizes, each run several times; otherwise, for tasks outside
    ``tasks``, or when tracing fails, the model's eager ``cloud_predict``
    answers. Shapes are checked by the engine before any call (the trace
    skips the model's own check). A trace shares the model's parameters.

    For the tasks of ``onnx_tasks`` a settled trace is then exported to ONNX and,
    when ONNX Runtime answers the probes within ``ONNX_TOLERANCE`` of the eager
    model, runs there instead (``runtimes`` tells which); it holds a copy of the
    weights it was built with.
    """

    def __init__(self, model: SplitModel, tasks: Sequence[str] = TRACED_TASKS,
                 onnx_tasks: Sequence[str] = ONNX_TASKS) -> None:
        self.model = model
        self.tasks = frozenset(tasks)
        self.onnx_tasks = frozenset(onnx_tasks) & self.tasks
        self.runtimes: dict[tuple[str, int], str] = {}  # settled: "torch" or "onnxruntime" for the traced ones
        self._fns: dict[tuple[str, int], Callable | None] = {}   # settled: the trace, or None for eager
        self._building: dict[tuple[str, int], threading.Thread] = {}
        self._lock = threading.Lock()

    def cloud_predict(self, task: str, feature, split: int | None = None):
        split = self.model.depth if split is None else split
        fn = self._fns.get((task, split))
        if fn is None:
            if (task, split) not in self._fns:
                self._start_build(task, split)
            return self.model.cloud_predict(task, feature, split)
        return fn(feature)

    def traced(self, task: str, split: int) -> bool:
        """Whether (task, split) runs traced (starts the build if not tried yet and waits for it)."""
        self._start_build(task, split)
        with self._lock:
            builder = self._building.get((task, split))
        if builder is not None:
            builder.join()
        return self._fns[(task, split)] is not None

    def _start_build(self, task: str, split: int) -> None:
        key = (task, split)
        with self._lock:
            if key in self._fns or key in self._building:
                return
            # Not a daemon: an interpreter exiting mid-build waits for it rather than abort inside torch.
            builder = threading.Thread(target=self._build, args=key, name=f"cfqa-trace-{task}-{split}")
            self._building[key] = builder
        builder.start()

    def _build(self, task: str, split: int) -> None:
        fn = self._trace(task, split) if task in self.tasks else None
        runtime = "torch"
        if fn is not None and task in self.onnx_tasks:
            in_onnx = _onnxruntime_forward(self.model, task, split)
            if in_onnx is not None:
                fn, runtime = in_onnx, "onnxruntime"
        with self._lock:
            self._fns[(task, split)] = fn
            if fn is not None:
                self.runtimes[(task, split)] = runtime
            del self._building[(task, split)]

    def _trace(self, task: str, split: int) -> Callable | None:
        model = self.model
        if not hasattr(torch, "jit") or not hasattr(torch.jit, "trace"):
            return None

        probes = _probes(model, task, split)
        try:
            with torch.inference_mode():
                traced = torch.jit.trace(_TracedPart(model, task, split), probes[0], check_trace=False)
                fn = traced if task != "dpt" else _then_depth(traced, model)
                for _ in range(_PROBE_RUNS):
                    for x in probes:
                        if not torch.equal(fn(x), model.cloud_predict(task, x, split)):
                            log.info("%s at split %d runs eagerly: its trace does not reproduce the eager output",
                                     task, split)
                            return None
        except Exception as exc:  # noqa: BLE001 - any failure to trace or run the trace: the eager model answers
            log.info("%s at split %d runs eagerly: tracing failed (%s: %s)", task, split, type(exc).__name__,
                     str(exc).splitlines()[0][:200] if str(exc) else "")
            return None
        return fn


class _TracedPart(torch.nn.Module):
    """What a trace or an ONNX graph records of a (task, split): ``cloud_predict``, or ``dpt_scores`` for dpt."""

    def __init__(self, model: SplitModel, task: str, split: int) -> None:
        super().__init__()
        self.model, self.task, self.split = model, task, split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "dpt":
            return self.model.dpt_scores(x, self.split)
        return self.model.cloud_predict(self.task, x, self.split)


def _probes(model: SplitModel, task: str, split: int) -> list[torch.Tensor]:
    """Seeded random features of (task, split), one batch per probe size."""
    tail = feature_shape(task, split, model.depth, model.num_tokens, model.backbone.cfg.embed_dim)[1:]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn((b, *tail), generator=gen) for b in _PROBE_SIZES]


def _then_depth(scores: Callable, model: SplitModel) -> Callable:
    """``model.dpt_depth`` after ``dpt_scores`` (its trace or its ONNX graph): the whole dpt forward."""
    def forward(x):
        return model.dpt_depth(scores(x))

    return forward


def _onnxruntime_forward(model: SplitModel, task: str, split: int) -> Callable | None:
    """The traced part of (task, split) exported to ONNX and run by ONNX Runtime, or None.

    None when onnxruntime is not installed, the export or the session fails, or the
    answers on the probe batches differ from the eager model's by more than
    ``ONNX_TOLERANCE``. The session runs on the caller's thread with torch's intra-op
    thread count, without spinning, and without ONNX Runtime's memory arena (which
    would keep the peak of every concurrent call for the life of the process) or
    its per-call memory pattern.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import io

    probes = _probes(model, task, split)
    try:
        graph = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(_TracedPart(model, task, split), (probes[0],), graph, input_names=["feature"],
                              output_names=["out"], dynamic_axes={"feature": {0: "n"}, "out": {0: "n"}},
                              opset_version=_ONNX_OPSET, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False  # one block per call for all of a call's tensors: 8 calls, +60 MB peak
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

        def part(x):
            return torch.from_numpy(session.run(None, {"feature": np.ascontiguousarray(x.numpy())})[0])

        fn = _then_depth(part, model) if task == "dpt" else part
        with torch.inference_mode():
            for x in probes:
                got, want = fn(x), model.cloud_predict(task, x, split)
                if got.shape != want.shape or not bool((got - want).abs().max() <= ONNX_TOLERANCE):
                    log.info("%s at split %d runs in torch: ONNX Runtime's answers differ from the eager model's",
                             task, split)
                    return None
    except Exception as exc:  # noqa: BLE001 - any failure to export or run: the torch trace answers
        log.info("%s at split %d runs in torch: ONNX Runtime failed (%s: %s)", task, split, type(exc).__name__,
                 str(exc).splitlines()[0][:200] if str(exc) else "")
        return None
    return fn


class InferenceEngine:
    """Serves one or more loaded ``SplitModel``s; thread-safe (models are only read).

    ``max_batch_size`` > 1 switches dynamic batching on: up to that many frames
    with the same model, split and task set are computed together, the first
    waiting at most ``max_batch_delay_s`` for the others; ``batch_workers``
    batches run at once. The default (1) computes each frame on the caller's thread.
    ``traced`` (default on) runs the model's cloud part through :class:`TracedForwards`;
    ``onnxruntime`` (default on) lets it run the traced part of dpt in ONNX Runtime.
    """

    def __init__(self, models: Mapping[str, SplitModel], *, default_top_k: int = DEFAULT_TOP_K,
                 max_batch_size: int = 1, max_batch_delay_s: float = 0.002, batch_workers: int = 1,
                 traced: bool = True, onnxruntime: bool = True) -> None:
        if not models:
            raise ModelError("the inference engine needs at least one model")
        load_codecs()
        self.models = dict(models)
        # One set of traces per model object (a model is served under two names).
        self._forwards: dict[int, TracedForwards] = {}
        if traced:
            onnx_tasks = ONNX_TASKS if onnxruntime else ()
            for model in self.models.values():
                self._forwards.setdefault(id(model), TracedForwards(model, onnx_tasks=onnx_tasks))
        self.default_top_k = default_top_k
        self._lock = threading.Lock()
        self.frames_computed = 0
        self.batcher: DynamicBatcher | None = None
        if max_batch_size > 1:
            config = BatchingConfig(max_batch_size, max_batch_delay_s, batch_workers)
            self.batcher = DynamicBatcher(self._compute_batch, config, name="cfqa-batch")

    def close(self) -> None:
        """Finish queued batches and stop the batching threads (no-op without batching)."""
        if self.batcher is not None:
            self.batcher.close()

    def batch_stats(self) -> dict[str, object]:
        """Items, batches, mean batch size and the batch-size histogram (empty without batching)."""
        return describe(self.batcher.stats) if self.batcher is not None else {}

    @classmethod
    def from_specs(cls, specs: Sequence[str], **kwargs) -> InferenceEngine:
        return cls(load_models(specs), **kwargs)

    def warm(self, task: str, split: int) -> dict[str, bool]:
        """Build the traces of (task, split) now and wait for them; whether each served model runs it traced.

        Otherwise a trace is built in the background from the first request that
        needs it (that request and those during the build run eagerly).
        """
        return {name: (self._forwards[id(m)].traced(task, split) if id(m) in self._forwards else False)
                for name, m in self.models.items()}

    def model_versions(self) -> dict[str, str]:
        """{model id: version} of the models served under their own names."""
        return {name: m.meta.version for name, m in self.models.items() if name == m.meta.name}

    # ---- checks ------------------------------------------------------------------------
    def validate(self, req: InferenceRequest) -> _Checked:
        """Resolve the model and codecs and check every payload's shape (no decoding)."""
        if not req.model_id:
            raise RequestError("request names no model (model_id is empty)")
        model = self.models.get(req.model_id)
        if model is None:
            raise UnknownModelError(f"unknown model '{req.model_id}' (served: {', '.join(sorted(self.models))})")
        if req.model_version and req.model_version != model.meta.version:
            raise ModelVersionError(
                f"model '{req.model_id}' is version {model.meta.version}, request pins {req.model_version}"
            )
        if not 1 <= req.split <= model.depth:
            raise RequestError(f"split block {req.split} outside 1..{model.depth} of model '{req.model_id}'")
        if not req.payloads:
            raise RequestError("request carries no task payload")
        seen: set[str] = set()
        codecs = []
        for p in req.payloads:
            if p.task not in TASKS:
                raise RequestError(f"unknown task '{p.task}' (known: {', '.join(TASKS)})")
            if p.task in seen:
                raise RequestError(f"task '{p.task}' appears twice in one request")
            seen.add(p.task)
            if not model.has_head(p.task):
                raise RequestError(f"model '{req.model_id}' has no {p.task} head")
            want = feature_shape(p.task, req.split, model.depth, model.num_tokens, model.backbone.cfg.embed_dim)
            got = tuple(int(s) for s in p.encoded.meta.get("shape", ()))
            if got != want:
                raise RequestError(
                    f"{p.task} feature shape {got} does not match model '{req.model_id}' "
                    f"at split {req.split} (expected {want})"
                )
            codec = get_codec(p.encoded.codec)
            codec.require_available()
            codecs.append(codec)
        return _Checked(req, model, tuple(codecs))

    # ---- work --------------------------------------------------------------------------
    def decode(self, checked: _Checked) -> list[np.ndarray]:
        """Decoded float32 features, one per payload (CodecError on a corrupt bitstream)."""
        out = []
        for p, codec in zip(checked.request.payloads, checked.codecs):
            try:
                feature = codec.decode(p.encoded)
            except CodecError as exc:
                raise CodecError(f"{p.task} payload: {exc}") from None
            except CfqaError:
                raise
            except BaseException as exc:  # a decoder library choking on garbage; native panics are BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                    raise
                raise CodecError(f"{p.task} payload: corrupt {p.encoded.codec} bitstream ({exc})") from None
            want = tuple(p.encoded.meta["shape"])
            if feature.shape != want or not np.isfinite(feature).all():
                raise CodecError(f"{p.task} payload: decoded feature is {feature.shape}, not a finite {want}")
            out.append(np.asarray(feature, dtype=np.float32))
        return out

    def compute(self, checked: _Checked, features: Sequence[np.ndarray]) -> list[TaskPrediction]:
        """Remaining blocks and heads for each decoded feature (this frame alone)."""
        return self._compute_many([checked], [features])[0]

    def _compute_many(self, checked: Sequence[_Checked], features: Sequence[Sequence[np.ndarray]],
                      ) -> list[list[TaskPrediction]]:
        """Predictions of frames sharing model, split and task order: one forward pass per task."""
        from cfqa_core.inference import predict

        first = checked[0].request
        model, n = checked[0].model, len(checked)
        forward = self._forwards.get(id(model), model)
        tasks = [p.task for p in first.payloads]
        preds: list[list[TaskPrediction]] = [[] for _ in range(n)]
        for i, task in enumerate(tasks):
            stacked = np.stack([f[i] for f in features])
            views = stacked.shape[1]
            # One chunk for the whole batch: the point is one forward pass over all frames.
            outs = predict(forward, task, stacked, first.split, batch=max(32, n * views))
            for j, (c, out) in enumerate(zip(checked, outs)):
                if task == "cls":
                    k = c.request.top_k or self.default_top_k
                    preds[j].append(TaskPrediction("cls", top_k=_softmax_top_k(out.logits, k, model.meta.class_names)))
                elif task == "seg":
                    preds[j].append(TaskPrediction("seg", mask=out.mask))
                else:
                    preds[j].append(TaskPrediction("dpt", depth=out.depth))
        return preds

    @staticmethod
    def batch_key(checked: _Checked) -> tuple:
        """Frames with equal keys can share a batch: same model object, split and tasks in order."""
        req = checked.request
        return (id(checked.model), req.split, tuple(p.task for p in req.payloads))

    def _compute_batch(self, key: tuple, items: Sequence[tuple[_Checked, list[np.ndarray], float]],
                       ) -> list[tuple[list[TaskPrediction] | Exception, float, int, float]]:
        """Batcher callback: (predictions or the frame's own error, compute s, batch size, wait s) per frame."""
        t0 = time.perf_counter()
        checked = [c for c, _, _ in items]
        try:
            preds: list = self._compute_many(checked, [f for _, f, _ in items])
        except Exception:  # noqa: BLE001 - one bad frame must not fail the others: compute alone
            preds = []
            for c, f, _ in items:
                try:
                    preds.append(self.compute(c, f))
                except Exception as exc:  # noqa: BLE001 - returned to that frame's caller
                    preds.append(exc)
        dt = time.perf_counter() - t0
        return [(p, dt, len(items), t0 - t_ready) for p, (_, _, t_ready) in zip(preds, items)]

    def run(self, checked: _Checked) -> InferenceResult:
        """Decode and compute a validated request (batched with others when batching is on)."""
        t0 = time.perf_counter()
        features = self.decode(checked)
        t1 = time.perf_counter()
        batch, wait = 1, 0.0
        if self.batcher is None:
            preds = self.compute(checked, features)
            compute_s = time.perf_counter() - t1
        else:
            out, compute_s, batch, wait = self.batcher(self.batch_key(checked), (checked, features, t1))
            if isinstance(out, Exception):
                raise out
            preds = out
        with self._lock:
            self.frames_computed += 1
        meta = checked.model.meta
        return InferenceResult(checked.request.model_id, meta.version, preds, decode_s=t1 - t0,
                               compute_s=compute_s, batch_size=batch, batch_wait_s=wait)

    def infer(self, req: InferenceRequest) -> InferenceResult:
        """Validate, decode and compute one request."""
        return self.run(self.validate(req))
