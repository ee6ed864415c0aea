"""The edge loop: image -> features up to the split -> rate-controlled encoding -> cloud.

A capture thread (the caller's) extracts and encodes each image and writes
the request to the write-ahead spool (:mod:`cfqa_edge.spool`) under a frame id
derived from the image (:func:`frame_id_of`); sender threads deliver the
queue to the cloud (:mod:`cfqa_edge.client`), retrying transient failures until a
frame is older than ``max_age_s``. Every frame ends as exactly one JSON line,
``"status": "delivered"`` or ``"status": "dropped"`` with a ``reason``, and
leaves the spool only after that line is written; a run that is killed is
resumed by the next run with the same spool and output.

Rate control is a policy object (the seam for adaptive policies)::

    class RatePolicy(Protocol):
        name: str
        def decide(self, feature, codec, *, task, value_range, bit_depth, split) -> (EncodedFeature, dict)

``decide`` returns the encoded feature it chose and a JSON-ready record; the
keys ``metric`` (float) and ``metric_name`` are sent to the cloud as the
payload's quality score, and the whole record lands in the frame's output
line under ``payloads.<task>.policy``. :func:`build_policy` builds any policy
of :mod:`cfqa_edge.policies` (the one rate-control system) from its name and
parameters (``fixed`` with ``--rate-point``, ``cfqa-target`` with the shipped rate
plans, ...).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cfqa_core.codecs.base import EncodedFeature, FeatureCodec, get_codec
from cfqa_core.errors import CfqaError, DataError, PolicyError
from cfqa_edge.backends import FeatureBackend
from cfqa_edge.client import CloudClient, RetryPolicy, SendOutcome
from cfqa_edge.frame import infer_request
from cfqa_edge.spool import SpoolFull, SpoolItem, SpoolQueue
from cfqa_proto import cfqa_v1_pb2 as pb
from cfqa_proto.convert import load_codecs, payload_from_encoded, result_summary

log = logging.getLogger("cfqa.edge")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
# Policies that need what only a replay or a simulation knows; the simulator registers them, a device never runs them.
OFFLINE_POLICIES: dict[str, str] = {
    "oracle": "it needs ground truth (the cloud's output at every rate point), which a device does not have",
}


class RatePolicy(Protocol):
    """Chooses the rate point of each feature (see the module docstring)."""

    name: str

    def decide(self, feature: np.ndarray, codec: FeatureCodec, *, task: str, value_range: Any,
               bit_depth: int, split: int | None = None) -> tuple[EncodedFeature, dict[str, Any]]: ...


def build_policy(name: str, options: dict[str, Any]) -> RatePolicy:
    """A policy of :mod:`cfqa_edge.policies` by name (``name[:key=value...]`` allowed), for this runner."""
    from cfqa_edge.policies.live import runner_factory
    from cfqa_edge.policies.registry import REGISTRY
    from cfqa_edge.policies.spec import parse_spec

    spec = parse_spec(name)
    if spec.name in OFFLINE_POLICIES:
        raise PolicyError(f"policy '{spec.name}' is offline-only: {OFFLINE_POLICIES[spec.name]}; "
                          f"use it in 'cfqa run' scenarios or 'cfqa policies eval'")
    REGISTRY.get(spec.name)  # an unknown name: the registry's one-line error, naming the known ones
    return runner_factory(spec.name)({**spec.params, **options})


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
    progress: bool = True
    fsync: bool = True  # spool files and output records reach the disk before a frame moves on


@dataclass
class RunSummary:
    """Counts of one run. ``frames`` are frames captured by this run or recovered from the spool;
    ``skipped`` images had ended in an earlier run (or are duplicates); ``pending`` frames stay in
    the spool for the next run (the edge was stopped)."""

    frames: int = 0
    delivered: int = 0
    dropped: int = 0
    spilled: int = 0
    skipped: int = 0
    recovered: int = 0
    pending: int = 0
    quarantined: int = 0
    bytes_sent: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    e2e_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.e2e_ms) if self.e2e_ms else None
        return {
            "frames": self.frames, "delivered": self.delivered, "dropped": self.dropped,
            "spilled": self.spilled, "skipped": self.skipped, "recovered": self.recovered,
            "pending": self.pending, "quarantined": self.quarantined,
            "bytes_sent": self.bytes_sent, "drop_reasons": self.reasons,
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


def frame_id_of(path: Path) -> int:
    """A frame id that is the same in every run: 63 bits of SHA-256 over the image's name and bytes.

    A restarted edge gives an image the id it had before, so it can tell which
    frames already ended and the cloud can recognise a resent frame.
    """
    h = hashlib.sha256(path.name.encode("utf-8", "surrogateescape") + b"\0")
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        pass  # unreadable: the capture records the error; the name alone keeps the id stable
    return int.from_bytes(h.digest()[:8], "big") >> 1


def finished_ids(path: Path | None) -> set[int]:
    """Frame ids with a final record (delivered or dropped) in an earlier run's JSON-lines output."""
    ids: set[int] = set()
    if path is None or not path.is_file():
        return ids
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash is not a final record
            if isinstance(rec, dict) and rec.get("status") in ("delivered", "dropped") \
                    and isinstance(rec.get("frame_id"), int):
                ids.add(rec["frame_id"])
    return ids


def load_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (DataError if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image '{path.name}': {exc}") from None


class _Writer:
    """Thread-safe JSON-lines output plus the run summary.

    The output is appended to, never truncated: a restarted edge continues the
    file of the run it resumes. Each record is flushed (and fsynced for a regular
    file) before its frame leaves the spool.
    """

    def __init__(self, path: Path | None, summary: RunSummary, fsync: bool = True) -> None:
        self._fh = None
        self._sync = False
        if path is not None:
            try:
                self._fh = open(path, "a")
            except OSError as exc:
                raise DataError(f"cannot open output {path}: {exc.strerror or exc}") from None
            self._sync = fsync and path.is_file()
            if path.is_file() and path.stat().st_size:
                with open(path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        self._fh.write("\n")  # end the line a crash tore, so the next record parses
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
                if self._sync:
                    os.fsync(self._fh.fileno())

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
        self.queue = SpoolQueue(config.memory_items, config.spool_dir, int(config.max_spool_mb * 1024 * 1024),
                                fsync=config.fsync)
        self.stop = threading.Event()

    # ---- capture side ------------------------------------------------------------------
    def build_request(self, frame_id: int, image: np.ndarray, name: str) -> tuple[pb.InferRequest, dict[str, Any]]:
        """Features, encoding and the wire request of one image, plus its output record so far."""
        cfg, info = self.config, self.backend.info
        capture_ns = time.time_ns()
        t0 = time.perf_counter()
        feats = self.backend.features(image, cfg.tasks)
        t1 = time.perf_counter()
        wire: list[pb.FeaturePayload] = []
        payloads: dict[str, Any] = {}
        for task in cfg.tasks:
            encoded, decision = self.policy.decide(feats[task], self.codec, task=task,
                                                   value_range=self.backend.value_range(task),
                                                   bit_depth=cfg.bit_depth, split=self.backend.split)
            metric = decision.get("metric")
            wire.append(payload_from_encoded(task, encoded, metric_score=metric,
                                             metric_name=str(decision.get("metric_name", ""))))
            payloads[task] = {"codec": encoded.codec, "rate_point": int(encoded.rate_point), "bytes": encoded.nbytes,
                              "meta_bytes": encoded.meta_bytes, "bpfp": round(encoded.bpfp, 5),
                              "metric": metric, "policy": decision}
        req = infer_request(wire, node_id=cfg.node_id, frame_id=frame_id, model_id=info.name,
                            model_version=cfg.model_version or info.version, split_block=self.backend.split,
                            top_k=cfg.top_k, capture_ns=capture_ns)
        t2 = time.perf_counter()
        record = {
            "frame_id": frame_id, "image": name, "node_id": cfg.node_id, "capture_ns": capture_ns,
            "split": self.backend.split, "backend": self.backend.name, "policy": self.policy.name,
            "tasks": list(cfg.tasks), "payloads": payloads,
            "bytes": sum(p["bytes"] for p in payloads.values()), "wire_bytes": req.ByteSize(),
            "rate_point": {t: p["rate_point"] for t, p in payloads.items()},
            "metric": {t: p["metric"] for t, p in payloads.items()},
            "latency_ms": {"extract": round(1e3 * (t1 - t0), 3), "encode": round(1e3 * (t2 - t1), 3)},
        }
        return req, record

    # ---- send side ---------------------------------------------------------------------
    def _finish(self, writer: _Writer, record: dict[str, Any], outcome: SendOutcome | None,
                reason: str | None = None, item: SpoolItem | None = None, code: str | None = None) -> None:
        """Complete a frame's record (delivered with the cloud's answer, or dropped with a reason),
        write it, then let the frame leave the spool."""
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
                          code=outcome.code if outcome else code,
                          attempts=outcome.attempts if outcome else 0)
        record.setdefault("latency_ms", {})
        writer.write(record)
        # Only now: a crash before this line resends the frame, one after it finds it finished.
        self.queue.finish(item, frame_id=record.get("frame_id"))

    def _send_loop(self, writer: _Writer, rng: random.Random) -> None:
        while (item := self.queue.get()) is not None:
            try:
                self._send_one(writer, item, rng)
            except Exception as exc:  # a bug must not make a frame vanish
                log.exception("sending frame %s failed", item.record.get("frame_id"))
                if item.record.get("status") is None:
                    self._finish(writer, item.record, None, f"edge error while sending: {exc}", item=item,
                                 code="INTERNAL")

    def _send_one(self, writer: _Writer, item: SpoolItem, rng: random.Random) -> None:
        cfg = self.config
        record = item.record
        record["spilled"] = item.spilled
        if item.damaged:
            with writer._lock:
                writer.summary.quarantined += 1
            self._finish(writer, record, None, f"quarantined: {item.damaged}", code="DATA_LOSS")
            return
        if self.queue.is_finished(item.frame_id):  # ended in an earlier run that died before deleting it
            self.queue.finish(item)
            with writer._lock:
                writer.summary.frames -= 1
                writer.summary.recovered -= 1
            return
        if self.stop.is_set():
            self._keep(writer)
            return
        try:
            request = pb.InferRequest.FromString(item.payload)
        except Exception as exc:  # a damaged spool file
            self.queue.quarantine(item, f"spool file of frame {item.frame_id} holds no request: {exc}")
            with writer._lock:
                writer.summary.quarantined += 1
            self._finish(writer, record, None, f"quarantined: unreadable spooled request: {exc}", item=item,
                         code="DATA_LOSS")
            return
        # Wall-clock times: spooled frames may come from an earlier run of the edge.
        now_ns = time.time_ns()
        record.setdefault("latency_ms", {})["queue"] = round(1e-6 * (now_ns - record.pop("queued_ns", now_ns)), 3)
        age_s = 1e-9 * (now_ns - record.get("capture_ns", now_ns))
        give_up_at = time.monotonic() + cfg.max_age_s - age_s
        outcome = self.client.send(request, cfg.retry, give_up_at=give_up_at, stop=self.stop, rng=rng)
        if not outcome.ok and outcome.code == "CANCELLED" and self.stop.is_set():
            self._keep(writer)  # stopped, not failed: the next run sends it
            return
        self._finish(writer, record, outcome, item=item)

    @staticmethod
    def _keep(writer: _Writer) -> None:
        """A frame stays in the spool for the next run."""
        with writer._lock:
            writer.summary.pending += 1

    # ---- the loop ----------------------------------------------------------------------
    def run(self, images: Sequence[Path], out: Path | None = None) -> RunSummary:
        """Process ``images`` in order; every frame ends in ``out`` (JSON lines) and the summary.

        Frames an earlier run left in the spool go first; images whose frame
        ended in an earlier run (with a final record in ``out``; journaled in
        the spool when ``out`` is not a regular file, e.g. stdout) are skipped,
        so a restart neither loses nor repeats a frame.
        """
        cfg = self.config
        summary = RunSummary()
        if out is not None and (out.is_file() or not out.exists()):
            # A regular output file is the ledger: deleting it starts afresh, appending to it resumes.
            self.queue.note_finished(finished_ids(out), replace=True)
        writer = _Writer(out, summary, fsync=cfg.fsync)
        summary.recovered = self.queue.recovered
        summary.frames += self.queue.recovered  # frames an earlier run left in the spool
        seed = hash((cfg.node_id, time.time_ns()))
        senders = [threading.Thread(target=self._send_loop, args=(writer, random.Random(seed + i)),
                                    name=f"cfqa-send-{i}", daemon=True) for i in range(max(1, cfg.senders))]
        for t in senders:
            t.start()
        seen: set[int] = set()
        try:
            from tqdm import tqdm

            for path in tqdm(images, desc="edge", unit="frame", disable=not cfg.progress):
                frame_id = frame_id_of(path)
                if frame_id in seen or self.queue.known(frame_id):
                    with writer._lock:
                        summary.skipped += 1
                    continue
                seen.add(frame_id)
                with writer._lock:
                    summary.frames += 1
                try:
                    request, record = self.build_request(frame_id, load_image(path), path.name)
                except CfqaError as exc:
                    self._finish(writer, {"frame_id": frame_id, "image": path.name, "node_id": cfg.node_id,
                                          "latency_ms": {}}, None, f"edge: {exc}", code="EDGE")
                    continue
                record["queued_ns"] = time.time_ns()
                try:
                    self.queue.put(SpoolItem(self.queue.next_seq(), request.SerializeToString(), record,
                                             frame_id=frame_id))
                except SpoolFull as exc:
                    record.pop("queued_ns", None)
                    record["spilled"] = False
                    self._finish(writer, record, None, f"edge spool full: {exc}", code="EDGE")
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            self.queue.close()
            for t in senders:
                t.join()
            # Only if every sender died: what is left stays in the spool for the next run.
            while (item := self.queue.get(timeout=0)) is not None:
                if item.damaged:
                    summary.quarantined += 1
                    self._finish(writer, item.record, None, f"quarantined: {item.damaged}", code="DATA_LOSS")
                else:
                    summary.pending += 1
            writer.close()
            self.queue.cleanup()
            if self._owns_client:
                self.client.close()
        return summary
