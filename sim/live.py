"""Live mode: every frame really runs through the backbone, the codec and gRPC.

The edge part of the model extracts the frame's feature, the policy's trial
encodes are real bitstreams decoded and scored on the edge, and the chosen
bitstream is sent over gRPC to a cloud server on loopback (started here
unless the scenario names one), whose task output is scored against ground
truth. Trial encodes, their local scoring, the request and the reading of the
answer are the edge's own per-frame functions (:mod:`cfqa_edge.frame`).
SimPy keeps the clock: compute times come from the scenario's timing profile,
not from wall clocks, so a run is reproducible while every byte and every task
output is real. Measured wall times are kept for the report.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from cfqa_core.errors import ScenarioError
from cfqa_sim.outcomes import EncodeOutcome, FrameOutcomeProvider, FrameRef, InferOutcome, register_provider

LIVE_METRICS: tuple[str, ...] = ("mse", "cosine", "cka", "proxy")
IMAGES_PER_TASK = 24


class LiveProvider(FrameOutcomeProvider):
    """Real model, codec and gRPC per frame; the timing profile for the clock."""

    def __init__(self, loaded) -> None:
        from cfqa_core.data.dataset import load_folder, load_split
        from cfqa_core.models import load_model

        s = loaded.scenario
        self.timing = s.timing
        from cfqa_edge.backends import TorchBackend

        self.model = load_model(s.live.model)
        self.model_name = s.live.model
        # The edge's own feature extraction and packing ranges (split: the last block, as the cloud runs).
        self.backend = TorchBackend(self.model, split=self.model.depth)
        tasks = sorted({g.task for g in s.nodes})
        if s.live.images:
            folder = load_folder(loaded.resolve(("live", "images"), s.live.images))
            self.scenes = {t: folder for t in tasks}
        else:
            # The val split: images no rate plan, proxy metric or benchmark table was fitted on.
            self.scenes = {t: load_split("val", IMAGES_PER_TASK) for t in tasks}
        self._features: dict[tuple[str, int], np.ndarray] = {}
        self._reference: dict[tuple[str, int], float] = {}
        self._reference_output: dict[tuple[str, int], object] = {}  # the uncompressed output, for output change
        self._encoded: dict[tuple[int, int, str, int], object] = {}
        self.wall = {"extract_s": 0.0, "encode_s": 0.0, "rpc_s": 0.0, "frames": 0}
        self._server = None
        address = s.live.server
        if address is None:
            address = self._start_cloud()
        from cfqa_edge.client import CloudClient

        self.client = CloudClient([address], timeout_s=30.0)

    def _start_cloud(self) -> str:
        from cfqa_cloud.engine import InferenceEngine
        from cfqa_cloud.server import ServerConfig, start_server

        engine = InferenceEngine({self.model_name: self.model})
        self._server = start_server(ServerConfig(port=0, host="127.0.0.1", models=(self.model_name,)), engine=engine)
        return f"127.0.0.1:{self._server.port}"

    # ---- what exists --------------------------------------------------------------------
    def image_ids(self, task: str) -> Sequence[object]:
        return self.scenes[task].ids

    def codecs(self, task: str) -> tuple[str, ...]:
        import cfqa_core.codecs as codecs

        return tuple(n for n in codecs.registered_names() if codecs.get_codec(n).availability()[0])

    def ladder(self, task: str, codec: str) -> tuple[int, ...]:
        from cfqa_core.codecs import get_codec

        return tuple(get_codec(codec).ladder)

    def metric_names(self) -> tuple[str, ...]:
        return LIVE_METRICS

    # ---- per frame ----------------------------------------------------------------------
    def _feature(self, task: str, index: int) -> np.ndarray:
        key = (task, index)
        if key not in self._features:
            from cfqa_core.inference import predict, task_score

            t0 = time.perf_counter()
            f = self.backend.features(self.scenes[task].images[index], [task])[task]
            self.wall["extract_s"] += time.perf_counter() - t0
            self._features[key] = f
            ref = predict(self.model, task, f[None])[0]
            self._reference[key] = task_score(ref, **self._gt(task, index), seg_classes=self.model.meta.seg_classes)
            self._reference_output[key] = ref
        return self._features[key]

    def _gt(self, task: str, index: int) -> dict:
        sc = self.scenes[task]
        if task == "cls" and sc.labels is None or task == "seg" and sc.masks is None \
                or task == "dpt" and sc.depths is None:
            raise ScenarioError(f"live images lack ground truth for task {task}")
        return {"label": None if sc.labels is None else int(sc.labels[index]),
                "mask": None if sc.masks is None else sc.masks[index],
                "depth": None if sc.depths is None else sc.depths[index]}

    def extract(self, frame: FrameRef) -> float | None:
        self._feature(frame.task, frame.image_index)
        return None  # the timing profile keeps the clock

    def _value_range(self, task: str, feature: np.ndarray):
        """The edge's packing range; a model without calibrated ranges packs each feature by its own."""
        from cfqa_core.errors import ModelError

        try:
            return self.backend.value_range(task)
        except ModelError:
            return [float(feature.min()), float(feature.max())]

    def encode(self, frame: FrameRef, codec: str, rate_point: int) -> EncodeOutcome:
        from cfqa_core.codecs import get_codec
        from cfqa_edge.frame import assess, trial_encode

        f = self._feature(frame.task, frame.image_index)
        c = get_codec(codec)
        vr = self._value_range(frame.task, f)
        enc, encode_s = trial_encode(c, f, rate_point, value_range=vr)
        scored = assess(c, enc, f, LIVE_METRICS, task=frame.task, value_range=vr)
        self.wall["encode_s"] += encode_s + scored.decode_s
        self._encoded[(frame.node_id, frame.frame_idx, codec, rate_point)] = enc
        return EncodeOutcome(rate_point, enc.nbytes + enc.meta_bytes, self.timing.edge_encode_s[frame.task],
                             scored.metrics, 0.0)

    def infer(self, frame: FrameRef, codec: str, rate_point: int) -> InferOutcome:
        from cfqa_core.distortion import semantic_distortion
        from cfqa_core.fidelity import output_change
        from cfqa_core.inference import TaskOutput, task_score
        from cfqa_edge.frame import infer_request, task_output_arrays
        from cfqa_proto.convert import payload_from_encoded

        key = (frame.node_id, frame.frame_idx, codec, rate_point)
        enc = self._encoded.pop(key, None)
        if enc is None:
            self.encode(frame, codec, rate_point)
            enc = self._encoded.pop(key)
        # Trial encodes of this frame at other rate points are not sent: free them.
        for k in [k for k in self._encoded if k[:2] == key[:2]]:
            del self._encoded[k]
        cls_classes = self.model.meta.cls_classes
        req = infer_request([payload_from_encoded(frame.task, enc)], node_id=str(frame.node_id),
                            frame_id=frame.frame_idx, model_id=self.model_name, split_block=self.model.depth,
                            top_k=max(1, cls_classes))
        t0 = time.perf_counter()
        resp = self.client.infer(req)
        self.wall["rpc_s"] += time.perf_counter() - t0
        self.wall["frames"] += 1
        out = TaskOutput(frame.task, **task_output_arrays(frame.task, resp.results[0], cls_classes))
        gt = self._gt(frame.task, frame.image_index)
        ref_score = self._reference[(frame.task, frame.image_index)]
        seg_classes = self.model.meta.seg_classes
        score = task_score(out, seg_classes=seg_classes, **gt)
        if frame.task == "cls":
            distortion = semantic_distortion(out, out, **gt)
        else:
            distortion = score - ref_score
        change = output_change(frame.task, out, self._reference_output[(frame.task, frame.image_index)])
        return InferOutcome(0.0, score, distortion, ref_score, None, output_change=change)

    def close(self) -> None:
        self.client.close()
        if self._server is not None:
            self._server.stop(grace=1.0).wait(5.0)
            self._server = None


register_provider("live", LiveProvider)
