"""The edge loop: image -> features up to the split -> rate-controlled encoding -> cloud.

A capture thread (the caller's) extracts and encodes each image and queues
the request (:mod:`edge.spool`); sender threads deliver the queue to the cloud
(:mod:`edge.client`), retrying transient failures until a frame is older than
``max_age_s``. Every frame ends as exactly one JSON line, ``"status":
"delivered"`` or ``"status": "dropped"`` with a ``reason``.

Rate control is a policy object (the seam for adaptive policies)::

    class RatePolicy(Protocol):
        name: str
        def decide(self, feature, codec, *, task, value_range, bit_depth) -> (EncodedFeature, dict)

``decide`` returns the encoded feature it chose and a JSON-ready record; the
keys ``metric`` (float) and ``metric_name`` are sent to the cloud as the
payload's quality score, and the whole record lands in the frame's output
line under ``payloads.<task>.policy``. Policies are built by name from
``POLICIES`` (``register_policy`` adds one); ``fixed`` codes every feature at
one QP.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cfqa_core.codecs.base import EncodedFeature, FeatureCodec, get_codec
from cfqa_core.errors import CfqaError, DataError, PolicyError
from edge.backends import FeatureBackend
from edge.client import CloudClient, RetryPolicy, SendOutcome
from edge.spool import SpoolFull, SpoolItem, SpoolQueue
from proto import cfqa_v1_pb2 as pb
from proto.convert import load_codecs, payload_from_encoded, result_summary

log = logging.getLogger("cfqa.edge")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class RatePolicy(Protocol):
    """Chooses the rate point of each feature (see the module docstring)."""

    name: str

    def decide(self, feature: np.ndarray, codec: FeatureCodec, *, task: str, value_range: Any,
               bit_depth: int) -> tuple[EncodedFeature, dict[str, Any]]: ...


@dataclass
class FixedQpPolicy:
    """Every feature at one QP (rate point)."""

    qp: int = 10
    name: str = "fixed"

    def decide(self, feature: np.ndarray, codec: FeatureCodec, *, task: str, value_range: Any,
               bit_depth: int) -> tuple[EncodedFeature, dict[str, Any]]:
        encoded = codec.encode(feature, self.qp, value_range=value_range, bit_depth=bit_depth)
        return encoded, {"qp": self.qp}


PolicyFactory = Callable[[dict[str, Any]], RatePolicy]
POLICIES: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``factory(options) -> RatePolicy`` available as ``cfqa edge run --policy name``."""
    if name in POLICIES and POLICIES[name] is not factory:
        raise PolicyError(f"policy '{name}' registered twice")
    POLICIES[name] = factory


def _fixed(options: dict[str, Any]) -> RatePolicy:
    if options.get("qp") is None:
        raise PolicyError("policy 'fixed' needs --qp")
    return FixedQpPolicy(int(options["qp"]))


register_policy("fixed", _fixed)


def build_policy(name: str, options: dict[str, Any]) -> RatePolicy:
    """A policy by name; policies of ``edge.policies`` register themselves when it is importable."""
    if name not in POLICIES:
        from edge.policies import POLICIES as EDGE_POLICIES
        from edge.policies.live import runner_factory

        if name in EDGE_POLICIES:
            return runner_factory(name)(options)
    if name not in POLICIES:
        raise PolicyError(f"unknown policy '{name}' (known: {', '.join(sorted(POLICIES))})")
    return POLICIES[name](options)


@dataclass
class RunConfig:
    """Settings of one ``cfqa edge run``."""

    cloud: list[str]
    tasks: tuple[str, ...] = ("cls",)
    codec: str = "hevc"
    bit_depth: int = 10
    node_id: str = field(default_factory=socket.gethostname)
    model_version: str = ""  # pin; empty: the version of the edge's model
    top_k: int = 5
    token: str | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    timeout_s: float = 10.0
    senders: int = 2
    memory_items: int = 32
    spool_dir: Path | None = None
    max_spool_mb: float = 1024.0
    max_age_s: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    first_frame_id: int = 0
    progress: bool = True


@dataclass
class RunSummary:
    frames: int = 0
    delivered: int = 0
    dropped: int = 0
    spilled: int = 0
    bytes_sent: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    e2e_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.e2e_ms) if self.e2e_ms else None
        return {
            "frames": self.frames, "delivered": self.delivered, "dropped": self.dropped,
            "spilled": self.spilled, "bytes_sent": self.bytes_sent, "drop_reasons": self.reasons,
            "e2e_ms_p50": None if lat is None else round(float(np.percentile(lat, 50)), 2),
            "e2e_ms_p99": None if lat is None else round(float(np.percentile(lat, 99)), 2),
        }


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` in name order (DataError if none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
    return files


def load_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (DataError if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image '{path.name}': {exc}") from None


class _Writer:
    """Thread-safe JSON-lines output plus the run summary."""

    def __init__(self, path: Path | None, summary: RunSummary) -> None:
        self._fh = open(path, "w") if path else None
        self._lock = threading.Lock()
        self.summary = summary

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            s = self.summary
            if record["status"] == "delivered":
                s.delivered += 1
                s.bytes_sent += int(record.get("bytes", 0))
                s.e2e_ms.append(record["latency_ms"]["e2e"])
            else:
                s.dropped += 1
                key = record.get("code") or "EDGE"
                s.reasons[key] = s.reasons.get(key, 0) + 1
            s.spilled += bool(record.get("spilled"))
            if self._fh:
                self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._fh.flush()

    def close(self) -> None:
        if self._fh:
            self._fh.close()


class EdgeRunner:
    """Runs the capture -> queue -> send pipeline over a folder of images."""

    def __init__(self, config: RunConfig, backend: FeatureBackend, policy: RatePolicy,
                 client: CloudClient | None = None) -> None:
        load_codecs()
        self.config = config
        self.backend = backend
        self.policy = policy
        self.codec = get_codec(config.codec)
        self.codec.require_available()
        for task in config.tasks:
            backend.value_range(task)  # fail now, not on the first frame
        self.client = client or CloudClient(
            config.cloud, token=config.token, tls_ca=config.tls_ca, tls_server_name=config.tls_server_name,
            timeout_s=config.timeout_s)
        self._owns_client = client is None
        self.queue = SpoolQueue(config.memory_items, config.spool_dir, int(config.max_spool_mb * 1024 * 1024))
        self.stop = threading.Event()

    # ---- capture side ------------------------------------------------------------------
    def build_request(self, frame_id: int, image: np.ndarray, name: str) -> tuple[pb.InferRequest, dict[str, Any]]:
        """Features, encoding and the wire request of one image, plus its output record so far."""
        cfg, info = self.config, self.backend.info
        capture_ns = time.time_ns()
        t0 = time.perf_counter()
        feats = self.backend.features(image, cfg.tasks)
        t1 = time.perf_counter()
        req = pb.InferRequest(node_id=cfg.node_id, frame_id=frame_id, model_id=info.name,
                              model_version=cfg.model_version or info.version,
                              split_block=self.backend.split, top_k=cfg.top_k)
        req.capture_time.FromNanoseconds(capture_ns)
        payloads: dict[str, Any] = {}
        for task in cfg.tasks:
            encoded, decision = self.policy.decide(feats[task], self.codec, task=task,
                                                   value_range=self.backend.value_range(task),
                                                   bit_depth=cfg.bit_depth)
            metric = decision.get("metric")
            req.payloads.append(payload_from_encoded(task, encoded, metric_score=metric,
                                                     metric_name=str(decision.get("metric_name", ""))))
            payloads[task] = {"codec": encoded.codec, "qp": int(encoded.rate_point), "bytes": encoded.nbytes,
                              "meta_bytes": encoded.meta_bytes, "bpfp": round(encoded.bpfp, 5),
                              "metric": metric, "policy": decision}
        t2 = time.perf_counter()
        record = {
            "frame_id": frame_id, "image": name, "node_id": cfg.node_id, "capture_ns": capture_ns,
            "split": self.backend.split, "backend": self.backend.name, "policy": self.policy.name,
            "tasks": list(cfg.tasks), "payloads": payloads,
            "bytes": sum(p["bytes"] for p in payloads.values()), "wire_bytes": req.ByteSize(),
            "qp": {t: p["qp"] for t, p in payloads.items()},
            "metric": {t: p["metric"] for t, p in payloads.items()},
            "latency_ms": {"extract": round(1e3 * (t1 - t0), 3), "encode": round(1e3 * (t2 - t1), 3)},
        }
        return req, record

    # ---- send side ---------------------------------------------------------------------
    def _finish(self, writer: _Writer, record: dict[str, Any], outcome: SendOutcome | None,
                reason: str | None = None) -> None:
        """Complete a frame's record (delivered with the cloud's answer, or dropped with a reason)."""
        if outcome is not None and outcome.ok:
            resp = outcome.response
            record.update(status="delivered", reason=None, code="OK", attempts=outcome.attempts,
                          server_id=resp.server_id)
            record["latency_ms"]["rpc"] = round(1e3 * outcome.rpc_s, 3)
            record["latency_ms"]["e2e"] = round(1e-6 * (time.time_ns() - record["capture_ns"]), 3)
            t = resp.timings
            record["cloud"] = {
                "model_id": resp.model_id, "model_version": resp.model_version,
                "timings_ms": {"queue": round(t.queue_ms, 3), "decode": round(t.decode_ms, 3),
                               "compute": round(t.compute_ms, 3), "total": round(t.total_ms, 3)},
                "results": [result_summary(r) for r in resp.results],
            }
        else:
            record.update(status="dropped", reason=reason or (outcome.message if outcome else "unknown"),
                          code=outcome.code if outcome else None,
                          attempts=outcome.attempts if outcome else 0)
        writer.write(record)

    def _send_loop(self, writer: _Writer, rng: random.Random) -> None:
        while (item := self.queue.get()) is not None:
            try:
                self._send_one(writer, item, rng)
            except Exception as exc:  # a bug must not make a frame vanish
                log.exception("sending frame %s failed", item.record.get("frame_id"))
                if item.record.get("status") is None:
                    self._finish(writer, item.record, None, f"edge error while sending: {exc}")

    def _send_one(self, writer: _Writer, item: SpoolItem, rng: random.Random) -> None:
        cfg = self.config
        record = item.record
        record["spilled"] = item.spilled
        if self.stop.is_set():
            self._finish(writer, record, None, "edge stopped before the frame was sent")
            return
        try:
            request = pb.InferRequest.FromString(item.payload)
        except Exception as exc:  # a damaged spool file
            self._finish(writer, record, None, f"unreadable spooled request: {exc}")
            return
        # Wall-clock times: spooled frames may come from an earlier run of the edge.
        now_ns = time.time_ns()
        record["latency_ms"]["queue"] = round(1e-6 * (now_ns - record.pop("queued_ns", now_ns)), 3)
        age_s = 1e-9 * (now_ns - record.get("capture_ns", now_ns))
        give_up_at = time.monotonic() + cfg.max_age_s - age_s
        outcome = self.client.send(request, cfg.retry, give_up_at=give_up_at, stop=self.stop, rng=rng)
        self._finish(writer, record, outcome)

    # ---- the loop ----------------------------------------------------------------------
    def run(self, images: Sequence[Path], out: Path | None = None) -> RunSummary:
        """Process ``images`` in order; every frame ends in ``out`` (JSON lines) and the summary."""
        cfg = self.config
        summary = RunSummary()
        writer = _Writer(out, summary)
        summary.frames += self.queue.recovered  # frames an earlier run left in the spool
        seed = hash((cfg.node_id, time.time_ns()))
        senders = [threading.Thread(target=self._send_loop, args=(writer, random.Random(seed + i)),
                                    name=f"cfqa-send-{i}", daemon=True) for i in range(max(1, cfg.senders))]
        for t in senders:
            t.start()
        try:
            from tqdm import tqdm

            for i, path in enumerate(tqdm(images, desc="edge", unit="frame", disable=not cfg.progress)):
                summary.frames += 1
                frame_id = cfg.first_frame_id + i
                try:
                    request, record = self.build_request(frame_id, load_image(path), path.name)
                except CfqaError as exc:
                    self._finish(writer, {"frame_id": frame_id, "image": path.name, "node_id": cfg.node_id,
                                          "latency_ms": {}}, None, f"edge: {exc}")
                    continue
                record["queued_ns"] = time.time_ns()
                try:
                    self.queue.put(SpoolItem(self.queue.next_seq(), request.SerializeToString(), record))
                except SpoolFull as exc:
                    record.pop("queued_ns", None)
                    record["spilled"] = False
                    self._finish(writer, record, None, f"edge queue full: {exc}")
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            self.queue.close()
            for t in senders:
                t.join()
            # Only if every sender died: what is left still ends as a record.
            while (item := self.queue.get(timeout=0)) is not None:
                self._finish(writer, item.record, None, "edge stopped before the frame was sent")
            writer.close()
            self.queue.cleanup()
            if self._owns_client:
                self.client.close()
        return summary
