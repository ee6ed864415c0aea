"""Frame outcome providers: where the simulator gets what encoding a frame yields.

The simulator owns time (queues, link, deadlines); a provider owns content:
which images exist, what an encode at a rate point costs and produces, and
what the cloud's prediction scores. ``ReplayProvider`` looks everything up
in the benchmark table (no neural network at run time, so it scales to
thousands of nodes). A live provider runs the real backbone, codec and gRPC
call per frame and registers itself under ``"live"`` with
:func:`register_provider` from the module named in ``_LAZY_PROVIDERS``.

A provider may return ``None`` for a time (``extract``'s backbone seconds,
``InferOutcome.service_s``): the simulator then uses the scenario's timing
profile instead.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cfqa_core.errors import CfqaError, ScenarioError
from cfqa_edge.policies.api import EncodeOutcome, PolicyContext
from cfqa_sim.table import BenchmarkTable, CodecArrays

if TYPE_CHECKING:
    from cfqa_sim.scenario import LoadedScenario
    from cfqa_sim.timing import TimingProfile


class FrameRef(NamedTuple):
    """One captured frame: which node, its sequence number and its image."""

    node_id: int
    frame_idx: int
    task: str
    image_index: int  # position in ``provider.image_ids(task)``
    image_id: object


class InferOutcome(NamedTuple):
    """What the cloud's prediction from the decoded feature scores."""

    decode_s: float
    task_score: float
    gt_distortion: float
    uncompressed_score: float
    service_s: float | None = None  # measured cloud compute; None -> timing profile
    output_change: float = float("nan")  # change of the output from the uncompressed one (cfqa_core.fidelity)


class FrameOutcomeProvider(ABC):
    """The seam between the simulator and the content of frames."""

    @abstractmethod
    def image_ids(self, task: str) -> Sequence[object]:
        """The images a node of ``task`` can capture (indexed by ``FrameRef.image_index``)."""

    @abstractmethod
    def codecs(self, task: str) -> tuple[str, ...]:
        """Codec names available for ``task``."""

    @abstractmethod
    def ladder(self, task: str, codec: str) -> tuple[int, ...]:
        """Rate points of ``codec`` ordered from the highest quality to the lowest."""

    @abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """Names of the feature-quality metrics an ``EncodeOutcome`` carries."""

    def extract(self, frame: FrameRef) -> float | None:
        """Run the edge part of the model for ``frame``; seconds spent, or None."""
        return None

    @abstractmethod
    def encode(self, frame: FrameRef, codec: str, rate_point: int) -> EncodeOutcome:
        """Encode ``frame``'s feature with ``codec`` at ``rate_point`` (bytes = everything sent)."""

    can_judge: bool = False  # whether :meth:`judge` knows the output change (oracle policies)

    def judge(self, frame: FrameRef, codec: str, rate_point: int) -> float:
        """The output change at ``rate_point`` (:mod:`cfqa_core.fidelity`; only when ``can_judge``)."""
        raise NotImplementedError

    def policy_context(self, frame: FrameRef, codec: str, **state) -> PolicyContext:
        """The context a policy decides ``frame`` in.

        ``state`` is the node's view (``ladder``, ``now_s``, ``time_left_s``,
        ``throughput_bps``, ``queue_frames``, ``previous_rate_point``, ``rng``,
        ``metric_s``). Here trial encodes call :meth:`encode`; a live provider
        returns a context over the real feature instead
        (``cfqa_edge.policies.live.LiveContext``) and keeps the chosen bitstream
        for :meth:`infer`.
        """
        return ProviderContext(self, frame, codec, **state)

    def rebind_context(self, ctx: PolicyContext, frame: FrameRef) -> bool:
        """Point a context from :meth:`policy_context` at the node's next ``frame``.

        True when ``ctx`` was built by this provider for the same node (whose
        task and codec do not change); ``ctx.reset(...)`` then readies it for
        the frame. False when the caller must build a new context.
        """
        if type(ctx) is not ProviderContext or ctx.provider is not self or ctx.node_id != frame.node_id:
            return False
        ctx.frame = frame
        return True

    @abstractmethod
    def infer(self, frame: FrameRef, codec: str, rate_point: int) -> InferOutcome:
        """Decode on the cloud and score the prediction."""

    def rate_curve(self, task: str, codec: str) -> list[tuple[int, float, float]] | None:
        """(rate point, mean bytes, mean task score) over all images, for reports; None if unknown."""
        return None

    def close(self) -> None:
        """Release resources (models, channels)."""


class ProviderContext(PolicyContext):
    """A policy context whose trial encodes (and oracle judgements) ask a provider about ``frame``.

    One context serves all of a node's frames: :meth:`FrameOutcomeProvider.rebind_context`
    moves it to the next frame and :meth:`PolicyContext.reset` clears its trials,
    so the simulator builds no context, closure, dict or set per frame.
    """

    __slots__ = ("provider", "frame")

    def __init__(self, provider: FrameOutcomeProvider, frame: FrameRef, codec: str, **state) -> None:
        self.provider = provider
        self.frame = frame
        super().__init__(
            node_id=frame.node_id, frame_idx=frame.frame_idx, task=frame.task, codec=codec,
            encode=self._encode_frame, judge=self._judge_frame if provider.can_judge else None, **state,
        )

    def _encode_frame(self, rate_point: int) -> EncodeOutcome:
        return self.provider.encode(self.frame, self.codec, rate_point)

    def _judge_frame(self, rate_point: int) -> float:
        return self.provider.judge(self.frame, self.codec, rate_point)


class _CellMetrics(Mapping):
    """The metric values of one table cell, read on access (most policies read one)."""

    __slots__ = ("_arrays", "_i", "_r")

    def __init__(self, arrays: dict, i: int, r: int) -> None:
        self._arrays, self._i, self._r = arrays, i, r

    def __getitem__(self, name: str) -> float:
        return float(self._arrays[name][self._i, self._r])

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


class ReplayProvider(FrameOutcomeProvider):
    """Outcomes looked up in a :class:`BenchmarkTable` (pure array indexing)."""

    can_judge = True

    def __init__(self, table: BenchmarkTable, timing: TimingProfile | None = None) -> None:
        self.table = table
        self.timing = timing  # encode/decode times from a profile instead of the table's rows
        self._arrays: dict[tuple[str, str], CodecArrays] = {}  # hot-path cache of table.codec()
        self._ref: dict[str, np.ndarray] = {}

    def _codec(self, task: str, codec: str) -> CodecArrays:
        key = (task, codec)
        if key not in self._arrays:
            arrays = self.table.codec(task, codec)
            if self.timing is not None:
                try:
                    arrays = CodecArrays(self.timing.apply(arrays.arrays))
                except CfqaError as exc:
                    raise ScenarioError(f"timing.profile: {exc}") from None
            self._arrays[key] = arrays
        return self._arrays[key]

    def image_ids(self, task: str) -> Sequence[object]:
        ids, self._ref[task] = self.table.images(task)
        return ids

    def codecs(self, task: str) -> tuple[str, ...]:
        return tuple(self.table.pairs.get(task, ()))

    def ladder(self, task: str, codec: str) -> tuple[int, ...]:
        return self._codec(task, codec).rate_points

    def metric_names(self) -> tuple[str, ...]:
        return self.table.metric_names

    def encode(self, frame: FrameRef, codec: str, rate_point: int) -> EncodeOutcome:
        c = self._codec(frame.task, codec)
        i, r = frame.image_index, c.index[rate_point]
        arr = c.arrays
        return EncodeOutcome(rate_point, int(c.sent_bytes[i, r]), float(arr.encode_s[i, r]),
                             _CellMetrics(arr.metrics, i, r), float(arr.decode_s[i, r]))

    def judge(self, frame: FrameRef, codec: str, rate_point: int) -> float:
        c = self._codec(frame.task, codec)
        return float(c.arrays.output_change[frame.image_index, c.index[rate_point]])

    def infer(self, frame: FrameRef, codec: str, rate_point: int) -> InferOutcome:
        c = self._codec(frame.task, codec)
        i, r = frame.image_index, c.index[rate_point]
        arr = c.arrays
        return InferOutcome(float(arr.decode_s[i, r]), float(arr.task_score[i, r]),
                            float(arr.gt_distortion[i, r]), float(arr.ref_score[i]),
                            output_change=float(arr.output_change[i, r]))

    def rate_curve(self, task: str, codec: str) -> list[tuple[int, float, float]] | None:
        c = self._codec(task, codec)
        b = c.sent_bytes.mean(axis=0)
        score = c.arrays.task_score.mean(axis=0)
        return [(rp, float(b[i]), float(score[i])) for i, rp in enumerate(c.rate_points)]


ProviderFactory = Callable[["LoadedScenario"], FrameOutcomeProvider]
_PROVIDERS: dict[str, ProviderFactory] = {}
# Modes whose provider lives in a module imported on first use (it registers itself).
_LAZY_PROVIDERS: dict[str, str] = {"live": "cfqa_sim.live"}


def register_provider(mode: str, factory: ProviderFactory) -> None:
    """Make ``mode`` (a scenario's ``mode:``) build its provider with ``factory``."""
    _PROVIDERS[mode] = factory


def make_provider(loaded: LoadedScenario) -> FrameOutcomeProvider:
    """The provider for the scenario's mode (ScenarioError if none is available)."""
    mode = loaded.scenario.mode
    if mode not in _PROVIDERS and mode in _LAZY_PROVIDERS:
        try:
            importlib.import_module(_LAZY_PROVIDERS[mode])
        except ModuleNotFoundError as exc:
            if exc.name != _LAZY_PROVIDERS[mode]:
                raise
    if mode not in _PROVIDERS:
        raise ScenarioError(f"mode '{mode}': no frame-outcome provider is available in this install")
    return _PROVIDERS[mode](loaded)


def _replay_provider(loaded: LoadedScenario) -> ReplayProvider:
    """Replay of the scenario's table, with the timing profile's codec times when it has them."""
    from cfqa_sim.timing import TimingProfile

    data = loaded.timing_profile()
    timing = TimingProfile(data, str(loaded.scenario.timing.profile)) if data and data.get("codecs") else None
    return ReplayProvider(loaded.table(), timing)


register_provider("replay", _replay_provider)
