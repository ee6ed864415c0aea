"""Idle InferStreams must not slow ``Infer``: p99 with 8 and 100 idle streams open against no streams.

A ``cfqa cloud serve`` process on 127.0.0.1 serves the model; one client
sends real HEVC cls frames as sequential unary ``Infer`` calls (every call a
new frame id, so nothing is answered from the idempotency cache). Rounds
interleave three conditions so that load from other processes hits all of
them alike: no stream open, 8 idle streams, 100 idle streams (each stream
has sent one frame, had it answered, and then sends nothing). Health is
checked while the streams are open.

Target: ``Infer`` p99 with 8 and with 100 idle streams <= 2 x the p99 with
none. The server runs with ``--max-streams-per-peer 128`` so that 100 streams
from one address are admitted rather than refused.

Writes benchmarks/results/grpc_idle.json and grpc_idle.md. Run niced, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_grpc_idle.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cfqa_proto import cfqa_v1_pb2 as pb  # noqa: E402
from cfqa_proto import cfqa_v1_pb2_grpc as pb_grpc  # noqa: E402
from cfqa_proto.convert import load_codecs, payload_from_encoded  # noqa: E402
from tests.support.serving import ServerProcess, scene_images, test_model_spec  # noqa: E402

SPLIT = 4
TARGET_FACTOR = 2.0
CONDITIONS = (0, 8, 100)


def prepare(spec: str, n: int) -> list[pb.InferRequest]:
    import torch

    import cfqa_core.codecs as codecs
    from cfqa_core.models import load_model
    from cfqa_edge.backends import TorchBackend

    torch.set_num_threads(1)
    load_codecs()
    model = load_model(spec)
    backend = TorchBackend(model, SPLIT)
    out = []
    for image in scene_images(n, start=40):
        feature = backend.features(image, ("cls",))["cls"]
        enc = codecs.get_codec("hevc").encode(feature, 20, value_range=backend.value_range("cls"))
        req = pb.InferRequest(node_id="idle-bench", model_id=model.meta.name, split_block=SPLIT)
        req.payloads.append(payload_from_encoded("cls", enc))
        out.append(req)
    return out


class IdleStreams:
    """``n`` open InferStreams that each sent one frame and now send nothing."""

    def __init__(self, stub: pb_grpc.SplitInferenceStub, n: int, first: pb.InferRequest, next_id) -> None:
        self.release = threading.Event()
        self.calls = []
        for _ in range(n):
            msg = pb.InferRequest()
            msg.CopyFrom(first)
            msg.frame_id = next_id()

            def frames(msg=msg):
                yield msg
                self.release.wait()

            call = stub.InferStream(frames(), timeout=3600)
            self.calls.append(call)
            first_answer = next(call)  # one at a time: the stream is open and its frame answered
            assert first_answer.results, f"a stream's first frame was refused: {first_answer.error.message}"

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            assert list(call) == []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=100, help="Infer calls per condition per round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 100 or not 10 <= args.calls <= 10_000:
        ap.error("--rounds in 1..100, --calls in 10..10000")
    spec = test_model_spec()
    requests = prepare(spec, 8)
    counter = iter(range(1, 10**9))
    lock = threading.Lock()

    def next_id() -> int:
        with lock:
            return next(counter)

    latencies: dict[int, list[float]] = {n: [] for n in CONDITIONS}
    health_status: dict[int, list[str]] = {n: [] for n in CONDITIONS}
    refused = 0
    server_args = ["--model", spec, "--max-streams", "256", "--max-streams-per-peer", "128",
                   "--stream-idle", "3600", "--access-log", "off", "--torch-threads", "1"]
    t0 = time.perf_counter()
    with ServerProcess(server_args, env={"OMP_NUM_THREADS": "1"}) as srv:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.SplitInferenceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)

            def call(i: int) -> float:
                msg = pb.InferRequest()
                msg.CopyFrom(requests[i % len(requests)])
                msg.frame_id = next_id()
                t = time.perf_counter()
                stub.Infer(msg, timeout=30)
                return time.perf_counter() - t

            for i in range(20):  # warm-up
                call(i)
            for _ in range(args.rounds):
                for n in CONDITIONS:
                    streams = IdleStreams(stub, n, requests[0], next_id) if n else None
                    try:
                        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                        health_status[n].append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                        for i in range(args.calls):
                            try:
                                latencies[n].append(call(i))
                            except grpc.RpcError as err:
                                refused += 1
                                print(f"Infer with {n} idle streams: {err.code().name} {err.details()}",
                                      file=sys.stderr)
                    finally:
                        if streams is not None:
                            streams.close()
    wall = time.perf_counter() - t0

    def stats(values: list[float]) -> dict:
        a = 1e3 * np.asarray(values)
        return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
                "p90_ms": round(float(np.percentile(a, 90)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
                "max_ms": round(float(a.max()), 2)}

    table = {str(n): stats(latencies[n]) for n in CONDITIONS}
    base = table["0"]["p99_ms"]
    ratios = {str(n): round(table[str(n)]["p99_ms"] / base, 3) for n in CONDITIONS if n}
    result = {
        "benchmark": "grpc_idle_streams",
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "model": spec, "rounds": args.rounds, "calls_per_condition_per_round": args.calls,
        "infer_latency": table, "p99_ratio_vs_no_streams": ratios, "health": health_status,
        "refused_calls": refused, "wall_s": round(wall, 1), "target_factor": TARGET_FACTOR,
        "target_met": refused == 0 and all(r <= TARGET_FACTOR for r in ratios.values())
        and all(s == "SERVING" for v in health_status.values() for s in v),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grpc_idle.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Infer latency with idle InferStreams open",
        "",
        f"`python benchmarks/bench_grpc_idle.py`: sequential unary `Infer` calls (HEVC cls frames, model "
        f"`{Path(spec).name}`) to a `cfqa cloud serve` process on 127.0.0.1, in {args.rounds} interleaved rounds "
        f"of {args.calls} calls per condition; {wall:.0f} s.",
        "",
        "| idle streams | calls | p50 ms | p90 ms | p99 ms | max ms | p99 / p99 without streams | health |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in CONDITIONS:
        t = table[str(n)]
        ratio = f"{ratios[str(n)]:.2f}" if n else "1"
        lines.append(f"| {n} | {t['n']} | {t['p50_ms']} | {t['p90_ms']} | {t['p99_ms']} | {t['max_ms']} | {ratio} | "
                     f"{', '.join(sorted(set(health_status[n])))} |")
    lines += ["", f"Target: p99 with 8 and 100 idle streams <= {TARGET_FACTOR:g} x p99 without, no call refused, "
              f"health SERVING: **{'met' if result['target_met'] else 'not met'}** ({refused} calls refused).", ""]
    (args.out / "grpc_idle.md").write_text("\n".join(lines))
    print(json.dumps({"p99_ms": {k: v["p99_ms"] for k, v in table.items()}, "ratios": ratios, "refused": refused}))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
