# Over 450 lines: a standalone script; its mutation catalogue and its run belong together.
"""Fuzz the gRPC cloud with mutated unary and streaming requests over every codec.

A ``cfqa cloud serve`` process on 127.0.0.1 serves the model. For each codec
(hevc, vvc, av1 and the learned hyperprior codecs) one real frame is encoded
from a rendered scene; every fuzzed request is one of those frames with one
mutation, sent as raw bytes through ``Infer`` or inside an ``InferStream``.

Mutations, by class:

* ``corrupt``: the bitstream or an integrity field no longer matches what was
  sent (bit flips, truncation, appended or overwritten bytes, wrong or missing
  CRC-32 or byte count, declared frame sizes or shape that the bitstream does
  not have). Every one must be refused: an OK here is an "OK for a corrupted
  payload".
* ``forged``: the bitstream is damaged and its CRC-32 and byte count are
  recomputed, as an attacker would; the server cannot tell this from a real
  frame except by what the decoder finds, so OK is allowed and counted apart.
* ``meta``: other fields changed (ranges, bit depth, rate point, codec and
  task names, codec_meta_json, model, split, top-k, ...); any answer but a
  crash, INTERNAL/UNKNOWN or no answer is acceptable.
* ``wire``: bytes that are not a valid InferRequest (random, truncated,
  bit-flipped serialisations).
* ``control`` / ``replay``: unmodified frames and exact repeats of answered
  ones, which must be answered OK (a repeat identically, from the cache).

Measured: crashes (server process exits), unanswered calls (no answer within
the deadline, or a stream frame without its answer), INTERNAL/UNKNOWN answers,
OKs for corrupted payloads, and the server's RSS before and after (VmRSS, and
the peak VmHWM). Targets: >= 10,000 requests, 0 crashes, 0 unanswered, 0 OK for
a corrupted payload, RSS growth <= 100 MB.

Writes benchmarks/results/fuzz_grpc.json and fuzz_grpc.md. Run niced, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fuzz_grpc.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cfqa_core.task_names import TASKS  # noqa: E402
from cfqa_proto import cfqa_v1_pb2 as pb  # noqa: E402
from cfqa_proto.convert import load_codecs, payload_from_encoded  # noqa: E402
from tests.support.serving import ServerProcess, scene_images, test_model_spec  # noqa: E402

SPLIT = 4
# (codec, task, rate point): every codec family the cloud decodes.
CODECS: tuple[tuple[str, str, int | None], ...] = (
    ("hevc", "cls", 20), ("vvc", "cls", 20), ("av1", "cls", None),
    ("hyperprior-cls", "cls", 5), ("hyperprior-seg", "seg", 5), ("hyperprior-dpt", "dpt", 7),
    ("hyperprior-multi", "cls", 5), ("mshyperprior-multi", "cls", 5),
)
CALL_TIMEOUT_S = 60.0
RSS_TARGET_MB = 100.0
BAD_CODES = {"INTERNAL", "UNKNOWN"}
UNANSWERED_CODES = {"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"}


# ---- mutations -------------------------------------------------------------------------


def _meta(p: pb.FeaturePayload) -> dict:
    return json.loads(p.codec_meta_json) if p.codec_meta_json else {}


def _set_meta(p: pb.FeaturePayload, meta: dict) -> None:
    p.codec_meta_json = json.dumps(meta, separators=(",", ":"))


def _forge(p: pb.FeaturePayload, data: bytes) -> None:
    """Replace the bitstream and make CRC-32 and byte count agree with it."""
    p.bitstream = data
    p.crc32 = zlib.crc32(data)
    meta = _meta(p)
    meta["bytes"] = len(data)
    _set_meta(p, meta)


def _flip(data: bytes, rng: random.Random, n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        i = rng.randrange(8 * len(out))
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def _damage(data: bytes, rng: random.Random) -> bytes:
    """A bitstream that differs from ``data``."""
    kind = rng.randrange(5)
    if kind == 0:
        out = _flip(data, rng, rng.choice((1, 1, 2, 8)))
    elif kind == 1:
        out = data[: rng.randrange(len(data))]
    elif kind == 2:
        out = data + rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        i = rng.randrange(len(data))
        n = rng.randint(1, 32)
        out = data[:i] + rng.randbytes(n) + data[i + n:]
    else:
        i = rng.randrange(len(data))
        out = data[:i] + b"\0" * rng.randint(1, 64) + data[i + 64:]
    return out if out != data else data + b"\1"


HOSTILE_JSON = (
    "[" * 5000 + "]" * 5000, '{"a":' + "9" * 5000 + "}", '{"a":"' + "x" * 20000 + '"}', '{"a":NaN}',
    '{"a":1e999}', "[]", "null", "{", '{"shape":[1]}', '{"bytes":-1}', '{"bytes":"12"}', '{"format":2}',
    '{"weights":"0000000000000000"}', '{"rate_point":1}', "\xff\xfe", '{"' + "k" * 300 + '":1}',
)


def mutate(req: pb.InferRequest, rng: random.Random, codec_names: list[str]) -> tuple[str, str]:
    """Mutate ``req`` in place; returns (class, mutation name)."""
    p = req.payloads[0]
    r = rng.random()
    if r < 0.40:  # corrupt: must be refused
        kind = rng.choice(("damage", "damage", "damage", "crc_cleared", "crc_wrong", "bytes_removed",
                           "bytes_wrong", "padded_size", "frame_size", "shape"))
        if kind == "damage":
            p.bitstream = _damage(p.bitstream, rng)
        elif kind == "crc_cleared":
            p.ClearField("crc32")
        elif kind == "crc_wrong":
            p.crc32 ^= rng.randint(1, 2**32 - 1)
        elif kind == "bytes_removed":
            meta = _meta(p)
            meta.pop("bytes", None)
            _set_meta(p, meta)
        elif kind == "bytes_wrong":
            meta = _meta(p)
            meta["bytes"] = meta.get("bytes", 0) + rng.choice((-1, 1, 1000, -10**6, 2**40))
            _set_meta(p, meta)
        elif kind == "padded_size":
            w, h = rng.choice(((8192, 8192), (p.padded_width + 64, p.padded_height), (p.padded_width,
                               p.padded_height + 8), (0, 0), (-64, 64), (2**31 - 1, 2**31 - 1), (65536, 64)))
            p.padded_width, p.padded_height = w, h
        elif kind == "frame_size":
            p.frame_width, p.frame_height = rng.choice(((p.frame_width + 1, p.frame_height), (8192, 8192),
                                                         (p.frame_width, 0), (-1, -1)))
        else:
            shape = list(p.shape)
            i = rng.randrange(len(shape))
            shape[i] = rng.choice((0, -1, shape[i] + 1, 2**31, 2**62, 8192))
            del p.shape[:]
            p.shape.extend(shape)
        return "corrupt", kind
    if r < 0.50:  # forged: damaged bitstream with matching CRC-32 and byte count
        _forge(p, _damage(p.bitstream, rng))
        return "forged", "forged_bitstream"
    if r < 0.90:  # other fields
        kind = rng.choice(("value_range", "bit_depth", "rate_point", "codec", "task", "dtype", "rounding",
                           "meta_json", "meta_json", "meta_value", "model", "version", "split", "top_k",
                           "node", "payloads", "range_axis", "metric", "empty_bitstream"))
        if kind == "value_range":
            lo, hi = rng.choice(((float("nan"), 1.0), (0.0, float("inf")), (5.0, -5.0), (1.0, 1.0),
                                 (-1e308, 1e308), (0.0, 1e-300), (-3.0, 3.0)))
            del p.value_range[:]
            for _ in range(rng.choice((1, 1, 2, 4, 5))):
                p.value_range.add(lo=lo, hi=hi)
        elif kind == "bit_depth":
            p.bit_depth = rng.choice((0, 1, 7, 9, 11, 12, 13, 16, 32, -1, 2**31 - 1))
        elif kind == "rate_point":
            p.rate_point = rng.choice((-1, 0, 9, 10, 51, 52, 2**31 - 1, -2**31))
        elif kind == "codec":
            p.codec = rng.choice((*codec_names, "", "nocodec", "c" * 20000, "hevc\0", "../../etc"))
        elif kind == "task":
            p.task = rng.choice(("cls", "seg", "dpt", "", "pose", "t" * 20000))
        elif kind == "dtype":
            p.dtype = rng.choice(("float16", "int8", "", "x" * 1000))
        elif kind == "rounding":
            p.rounding = rng.choice(("floor", "ceil", "", "r" * 500))
            p.layout = rng.choice(("stack", "tile", ""))
        elif kind == "meta_json":
            p.codec_meta_json = rng.choice(HOSTILE_JSON)
        elif kind == "meta_value":
            meta = _meta(p)
            if meta:
                key = rng.choice(sorted(meta))
                meta[key] = rng.choice((None, [], {}, "x", -1, 2**70, 1.5, [1, [2, [3]]], True))
            _set_meta(p, meta)
        elif kind == "model":
            req.model_id = rng.choice(("", "nope", "m" * 20000, "embedded\n"))
        elif kind == "version":
            req.model_version = rng.choice(("0", "v" * 5000))
        elif kind == "split":
            req.split_block = rng.choice((0, -1, 1, 3, 5, 8, 9, 2**31 - 1))
        elif kind == "top_k":
            req.top_k = rng.choice((-1, 0, 1, 10, 11, 1000, 2**31 - 1))
        elif kind == "node":
            req.node_id = rng.choice(("", "n" * 20000, "\x00"))
        elif kind == "payloads":
            choice = rng.randrange(3)
            if choice == 0:
                del req.payloads[:]
            elif choice == 1:
                req.payloads.add().CopyFrom(p)  # the same task twice
            else:
                for _ in range(20):
                    req.payloads.add().CopyFrom(p)
        elif kind == "range_axis":
            p.range_axis = rng.choice((-4, -3, -1, 0, 3, 2**31 - 1))
        elif kind == "metric":
            p.metric_score = rng.choice((float("nan"), float("inf"), -1e308))
            p.metric_name = "m" * rng.choice((0, 10, 5000))
        else:
            _forge(p, b"")
        return "meta", kind
    return "wire", "wire"  # handled by the caller on the serialised bytes


def wire_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 512))
    if kind == 1:
        return data[: rng.randrange(1, len(data))]
    if kind == 2:
        return _flip(data, rng, rng.choice((1, 4, 32)))
    if kind == 3:
        return b"\x3a\xff\xff\xff\xff\x0f" + data  # a payload field that claims 4 GB
    return b"\x0b" * rng.randint(10, 2000) + data  # deeply nested unknown groups


# ---- the run ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes, guarded by one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    unary: int = 0
    streamed: int = 0
    streams: int = 0
    codes: Counter = field(default_factory=Counter)
    by_class: dict = field(default_factory=dict)
    by_codec: Counter = field(default_factory=Counter)
    unanswered: int = 0
    internal: int = 0
    ok_corrupt: list = field(default_factory=list)
    ok_forged: int = 0
    ok_forged_by_codec: Counter = field(default_factory=Counter)
    control_failures: list = field(default_factory=list)
    replay_mismatch: int = 0
    stream_errors: Counter = field(default_factory=Counter)

    def record(self, cls: str, kind: str, codec: str, code: str, detail: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.codes[code] += 1
            self.by_codec[codec] += 1
            self.by_class.setdefault(cls, Counter())[code] += 1
            if code in UNANSWERED_CODES:
                self.unanswered += 1
            if code in BAD_CODES:
                self.internal += 1
            if code == "OK" and cls == "corrupt":
                self.ok_corrupt.append(f"{codec}/{kind}")
            if code == "OK" and cls == "forged":
                self.ok_forged += 1
                self.ok_forged_by_codec[codec] += 1
            if cls in ("control", "replay") and code != "OK":
                self.control_failures.append(f"{codec}/{cls}: {code} {detail[:120]}")


def prepare(spec: str) -> tuple[list[tuple[str, pb.InferRequest]], list[str]]:
    """One real encoded request per codec."""
    import torch

    import cfqa_core.codecs as codecs
    from cfqa_core.models import load_model
    from cfqa_edge.backends import TorchBackend

    torch.set_num_threads(1)
    load_codecs()
    model = load_model(spec)
    backend = TorchBackend(model, SPLIT)
    image = scene_images(1, start=11)[0]
    feats = backend.features(image, TASKS)
    bases, names = [], []
    for name, task, rp in CODECS:
        codec = codecs.get_codec(name)
        ok, why = codec.availability()
        if not ok:
            print(f"skip {name}: {why}", file=sys.stderr)
            continue
        enc = codec.encode(feats[task], codec.ladder[len(codec.ladder) // 2] if rp is None else rp,
                           value_range=backend.value_range(task))
        req = pb.InferRequest(node_id="fuzz", model_id=model.meta.name, split_block=SPLIT, top_k=3)
        req.payloads.append(payload_from_encoded(task, enc))
        bases.append((name, req))
        names.append(name)
    return bases, names


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"], fields["VmHWM"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="mutated requests in total (unary + streamed)")
    ap.add_argument("--stream-share", type=float, default=0.4, help="share of requests sent inside streams")
    ap.add_argument("--stream-len", type=int, default=20, help="frames per stream")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not 1 <= args.requests <= 1_000_000 or not 0 <= args.stream_share <= 1 or not 1 <= args.clients <= 64:
        ap.error("--requests in 1..1e6, --stream-share in [0, 1], --clients in 1..64")

    spec = test_model_spec()
    t_prep = time.perf_counter()
    bases, names = prepare(spec)
    prep_s = time.perf_counter() - t_prep
    access_log = Path(tempfile.mkstemp(prefix="fuzz-access-", suffix=".jsonl")[1])
    server_args = ["--model", spec, "--max-queue", "64", "--max-streams-per-peer", "64",
                   "--access-log", str(access_log), "--torch-threads", "1"]
    tally = Tally()
    crashes = 0
    rng_master = random.Random(args.seed)
    server_env = {"OMP_NUM_THREADS": "1", **dict(e.split("=", 1) for e in args.server_env)}
    srv = ServerProcess(server_args, env=server_env).start()
    channel = grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 64 << 20)])
    infer = channel.unary_unary("/cfqa.v1.SplitInference/Infer", response_deserializer=pb.InferResponse.FromString)
    stream = channel.stream_stream("/cfqa.v1.SplitInference/InferStream",
                                   response_deserializer=pb.InferResponse.FromString)
    # Warm-up: every codec once (loads the ONNX sessions), then the RSS baseline.
    answers: dict[str, pb.InferResponse] = {}
    warm_ids = {name: i + 1 for i, (name, _) in enumerate(bases)}
    for name, req in bases:
        msg = pb.InferRequest()
        msg.CopyFrom(req)
        msg.frame_id = warm_ids[name]
        answers[name] = infer(msg.SerializeToString(), timeout=CALL_TIMEOUT_S)
    rss_start, _ = rss_mb(srv.proc.pid)
    samples: list[float] = [rss_start]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(1.0):
            try:
                samples.append(rss_mb(srv.proc.pid)[0])
            except (OSError, KeyError):
                pass

    threading.Thread(target=sample, daemon=True).start()
    counter = iter(range(1000, 10**9))
    counter_lock = threading.Lock()

    def next_id() -> int:
        with counter_lock:
            return next(counter)

    def one(rng: random.Random) -> tuple[str, str, str, bytes, str]:
        """(class, mutation, codec, request bytes, base codec)."""
        name, base = bases[rng.randrange(len(bases))]
        msg = pb.InferRequest()
        msg.CopyFrom(base)
        r = rng.random()
        if r < 0.03:
            msg.frame_id = warm_ids[name]  # the warm-up frame again: answered from the cache
            return "replay", "replay", name, msg.SerializeToString(), name
        msg.frame_id = next_id()
        if r < 0.06:
            return "control", "control", name, msg.SerializeToString(), name
        cls, kind = mutate(msg, rng, names)
        data = msg.SerializeToString()
        if cls == "wire":
            data = wire_bytes(data, rng)
        return cls, kind, name, data, name

    def run_unary(seed: int) -> None:
        rng = random.Random(seed)
        cls, kind, name, data, _ = one(rng)
        try:
            resp = infer(data, timeout=CALL_TIMEOUT_S)
            code, detail = "OK", ""
            if cls == "replay" and resp != answers[name]:
                with tally.lock:
                    tally.replay_mismatch += 1
        except grpc.RpcError as err:
            code, detail = err.code().name, err.details() or ""
        tally.record(cls, kind, name, code, detail)
        with tally.lock:
            tally.unary += 1

    def run_stream(seed: int) -> None:
        rng = random.Random(seed)
        frames = [one(rng) for _ in range(args.stream_len)]
        got: list[pb.InferResponse] = []
        status = "OK"
        try:
            for resp in stream(iter([f[3] for f in frames]), timeout=CALL_TIMEOUT_S * 2):
                got.append(resp)
        except grpc.RpcError as err:
            status = err.code().name
        with tally.lock:
            tally.streams += 1
            tally.stream_errors[status] += 1
        for i, (cls, kind, name, _, _) in enumerate(frames):
            if i >= len(got):
                tally.record(cls, kind, name, "UNANSWERED_IN_STREAM" if status == "OK" else status)
                with tally.lock:
                    tally.unanswered += status == "OK"  # a missing answer on a stream that ended OK
                continue
            resp = got[i]
            code = grpc.StatusCode.OK.name
            if resp.HasField("error"):
                code = next((c.name for c in grpc.StatusCode if c.value[0] == resp.error.code), "UNKNOWN")
            elif cls == "replay" and resp != answers[name]:
                with tally.lock:
                    tally.replay_mismatch += 1
            tally.record(cls, kind, name, code, resp.error.message)
            with tally.lock:
                tally.streamed += 1

    n_stream_frames = int(args.requests * args.stream_share)
    n_streams = -(-n_stream_frames // args.stream_len)
    n_unary = max(0, args.requests - n_streams * args.stream_len)
    jobs = [("u", rng_master.randrange(2**31)) for _ in range(n_unary)]
    jobs += [("s", rng_master.randrange(2**31)) for _ in range(n_streams)]
    rng_master.shuffle(jobs)
    t0 = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(args.clients) as pool:
        futures = [pool.submit(run_unary if kind == "u" else run_stream, seed) for kind, seed in jobs]
        for f in futures:
            f.result()
            done += 1
            if srv.proc.poll() is not None:
                crashes += 1
                print(f"server exited with {srv.proc.returncode}; restarting", file=sys.stderr)
                srv = ServerProcess(server_args, port=srv.port, env=server_env).start()
            if done % 500 == 0:
                print(f"{done}/{len(jobs)} jobs, {tally.requests} requests, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    time.sleep(2.0)  # let the allocator settle before the last reading
    stop_sampling.set()
    alive = srv.proc.poll() is None
    rss_end, rss_peak = rss_mb(srv.proc.pid) if alive else (float("nan"), float("nan"))
    # A last control frame: the server still answers correctly after the run.
    name, base = bases[0]
    final = pb.InferRequest()
    final.CopyFrom(base)
    final.frame_id = next_id()
    final_ok = bool(infer(final.SerializeToString(), timeout=CALL_TIMEOUT_S).results) if alive else False
    channel.close()
    srv.terminate()
    exit_code = srv.wait(60)
    access_lines = sum(1 for _ in access_log.open())

    result = {
        "benchmark": "fuzz_grpc",
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "model": spec,
        "codecs": names,
        "seed": args.seed,
        "requests": tally.requests,
        "unary_requests": tally.unary,
        "stream_frames": tally.streamed,
        "streams": tally.streams,
        "stream_end_status": dict(tally.stream_errors),
        "wall_s": round(wall, 1),
        "prepare_s": round(prep_s, 1),
        "crashes": crashes,
        "unanswered": tally.unanswered,
        "internal_or_unknown": tally.internal,
        "ok_for_corrupted_payload": len(tally.ok_corrupt),
        "ok_for_corrupted_examples": tally.ok_corrupt[:20],
        "ok_for_forged_bitstream": tally.ok_forged,
        "ok_for_forged_by_codec": dict(tally.ok_forged_by_codec),
        "forged_total": sum(tally.by_class.get("forged", Counter()).values()),
        "control_failures": tally.control_failures[:20],
        "replay_mismatches": tally.replay_mismatch,
        "codes": dict(tally.codes),
        "codes_by_class": {k: dict(v) for k, v in tally.by_class.items()},
        "requests_by_codec": dict(tally.by_codec),
        "rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1), "max_sampled": round(max(samples), 1),
                   "peak_hwm": round(rss_peak, 1), "growth": round(rss_end - rss_start, 1),
                   "peak_growth": round(max(samples) - rss_start, 1)},
        "server_alive_after": alive,
        "server_answers_after": final_ok,
        "server_exit_code": exit_code,
        "access_log_lines": access_lines,
    }
    targets = {
        "requests >= 10000": tally.requests >= 10_000,
        "0 crashes": crashes == 0 and alive,
        "0 unanswered": tally.unanswered == 0,
        "0 INTERNAL/UNKNOWN": tally.internal == 0,
        "0 OK for a corrupted payload": not tally.ok_corrupt,
        f"RSS growth <= {RSS_TARGET_MB:.0f} MB": rss_end - rss_start <= RSS_TARGET_MB,
        "controls and replays OK": not tally.control_failures and tally.replay_mismatch == 0,
    }
    result["targets"] = targets
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz_grpc.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fuzz_grpc.md").write_text(markdown(result))
    access_log.unlink(missing_ok=True)
    print(json.dumps({k: result[k] for k in ("requests", "crashes", "unanswered", "internal_or_unknown",
                                             "ok_for_corrupted_payload", "rss_mb")}))
    return 0 if all(targets.values()) else 1


def markdown(r: dict) -> str:
    rss = r["rss_mb"]
    lines = [
        "# gRPC fuzzing",
        "",
        f"`python benchmarks/fuzz_grpc.py` (seed {r['seed']}): {r['requests']:,} mutated requests "
        f"({r['unary_requests']:,} unary `Infer`, {r['stream_frames']:,} frames in {r['streams']} `InferStream`s) "
        f"against a `cfqa cloud serve` process on 127.0.0.1, model `{Path(r['model']).name}`, "
        f"codecs {', '.join(r['codecs'])}; {r['wall_s']} s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| >= 10,000 requests | {r['requests']:,} | {'yes' if r['targets']['requests >= 10000'] else 'no'} |",
        f"| 0 crashes | {r['crashes']} (server alive after: {r['server_alive_after']}) | "
        f"{'yes' if r['targets']['0 crashes'] else 'no'} |",
        f"| 0 unanswered calls | {r['unanswered']} | {'yes' if r['targets']['0 unanswered'] else 'no'} |",
        f"| 0 INTERNAL/UNKNOWN | {r['internal_or_unknown']} | "
        f"{'yes' if r['targets']['0 INTERNAL/UNKNOWN'] else 'no'} |",
        f"| 0 OK for a corrupted payload | {r['ok_for_corrupted_payload']} | "
        f"{'yes' if r['targets']['0 OK for a corrupted payload'] else 'no'} |",
        f"| server RSS growth <= 100 MB | {rss['growth']:+.1f} MB ({rss['start']:.0f} -> {rss['end']:.0f} MB; "
        f"highest sample {rss['max_sampled']:.0f} MB) | {'yes' if r['targets']['RSS growth <= 100 MB'] else 'no'} |",
        f"| unmodified and repeated frames answered OK | {len(r['control_failures'])} failures, "
        f"{r['replay_mismatches']} replay mismatches | "
        f"{'yes' if r['targets']['controls and replays OK'] else 'no'} |",
        "",
        f"Forged bitstreams (damaged, CRC-32 and byte count recomputed) answered OK: {r['ok_for_forged_bitstream']} "
        f"of {r['forged_total']} ({', '.join(f'{k} {v}' for k, v in sorted(r['ok_for_forged_by_codec'].items()))}); "
        "a sender that recomputes the checksums is indistinguishable from a real frame except through what the "
        "decoder finds (the learned codecs also check a CRC of the decoded symbols).",
        "",
        "| class | answers |",
        "|---|---|",
    ]
    for cls, codes in sorted(r["codes_by_class"].items()):
        lines.append(f"| {cls} | " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items(), key=lambda x: -x[1]))
                     + " |")
    lines += ["", "Requests by codec: " + ", ".join(f"{k} {v}" for k, v in sorted(r["requests_by_codec"].items())),
              "", f"Streams ended: {r['stream_end_status']}. Access-log lines written: {r['access_log_lines']:,}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
