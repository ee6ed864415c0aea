"""Speed of the block feature codecs, and the wrappers' overhead over the bare encoders.

For every available codec, task shape (embedded model: cls 145x128, seg 290x128,
dpt 1160x128 frames) and QP: encode and decode wall time (median of
``--repeat`` runs), bytes, BPFP and MSE on synthetic DINOv2-like features.

Overhead: our ``encode()`` (quantise + pack + temp files + encoder + read back)
against the same encoder's own command line on the same packed frame, run as a
plain process (the way hyperfine times a command): ``hevc-x265`` vs ``x265``,
``vvc`` vs ``ffmpeg -c:v libvvenc``, ``av1`` vs ``ffmpeg -c:v libaom-av1``,
``hm``/``vtm`` vs the reference encoder's command line (when installed), and
the in-process ``hevc`` vs the ``x265`` command. Wrapper and bare runs are
interleaved so that load on the machine hits both alike; as load only ever
adds time, wall overhead compares the best run of each (hyperfine's "min"),
medians reported too; CPU overhead compares CPU seconds (all threads and child
processes), which contention does not inflate. Target: <= 10 %.

``--calibrate-av1`` measures the MSE of AV1 quantizers 1..16 against HEVC QP
2..20 on the dpt shape (how the ``av1`` ladder was chosen).

Encoder threads (``--threads``; ``--threads-only`` runs just this section and
updates the existing results): the encoders' default thread pools
(``threads=None``) against one thread per encode (``threads=1``: x265
``pools=1:frame-threads=1``, vvenc ``-threads 1``, the codecs' default), with
``--parallel`` encodes at once in separate processes as the dataset build
runs them; wall time per encode over the whole batch, CPU time per encode,
and whether every bitstream is identical.

Writes benchmarks/results/codecs.json and codecs.md. Run niced, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_codecs.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cfqa_core.codecs.av1  # noqa: E402,F401  (registers the block codecs)
import cfqa_core.codecs.hevc  # noqa: E402,F401
import cfqa_core.codecs.reference  # noqa: E402,F401
import cfqa_core.codecs.vvc  # noqa: E402,F401
from cfqa_core.codecs.base import get_codec  # noqa: E402
from cfqa_core.codecs.block import raw_frame_bytes  # noqa: E402
from cfqa_core.codecs.hevc import HevcX265CliCodec  # noqa: E402
from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, PAPER_SHAPES, synthetic_feature  # noqa: E402
from cfqa_core.codecs.vvc import yuv420_with_grey_chroma  # noqa: E402
from cfqa_core.packing import PackingParams, feature_range, pack  # noqa: E402

OVERHEAD_TARGET = 0.10


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu_seconds() - c0


def _median_times(fn, repeat: int) -> tuple[float, float]:
    runs = [_timed(fn) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def speed_rows(codecs, tasks, qps, repeat, shapes, progress) -> list[dict]:
    rows = []
    for name in codecs:
        codec = get_codec(name)
        for task in tasks:
            x = synthetic_feature(shapes[task], seed=1)
            vr = feature_range(x)
            points = qps if name != "hevc-lossless" else [0]
            for qp in points:
                enc = codec.encode(x, qp, value_range=vr)  # warm-up, and the stream to decode
                t_enc, c_enc = _median_times(lambda: codec.encode(x, qp, value_range=vr), repeat)
                t_dec, c_dec = _median_times(lambda: codec.decode(enc), repeat)
                dec = codec.decode(enc)
                rows.append({
                    "codec": name, "task": task, "shape": list(x.shape),
                    "frame": [enc.meta["height"], enc.meta["width"]], "qp": qp,
                    "bytes": enc.nbytes, "bpfp": round(enc.bpfp, 4),
                    "mse": float(np.mean((dec - x) ** 2)),
                    "encode_ms": round(1000 * t_enc, 2), "decode_ms": round(1000 * t_dec, 2),
                    "encode_cpu_ms": round(1000 * c_enc, 2), "decode_cpu_ms": round(1000 * c_dec, 2),
                })
                progress.update(1)
    return rows


def _bare_command(name: str, codec, frame: np.ndarray, qp: int, tmp: str) -> list[str]:
    """The encoder's own command line for ``frame``, its input written once into ``tmp``."""
    height, width = frame.shape
    src = os.path.join(tmp, "frame.raw")
    if name == "vvc":
        Path(src).write_bytes(yuv420_with_grey_chroma(frame, 10))
        return codec.command(src, os.path.join(tmp, "out.vvc"), width, height, qp)
    Path(src).write_bytes(raw_frame_bytes(frame, 10))
    if name in ("hm", "vtm"):
        return codec.encode_command(src, os.path.join(tmp, "out.bin"), width, height, qp, 10)
    if name == "av1":
        return codec.command(src, os.path.join(tmp, "out.obu"), width, height, qp, 10)
    cli = codec if isinstance(codec, HevcX265CliCodec) else HevcX265CliCodec(preset=codec.preset)
    return cli.command(src, os.path.join(tmp, "out.hevc"), width, height, qp, 10)


def overhead_rows(codecs, tasks, qp, repeat, progress) -> list[dict]:
    rows = []
    for name in codecs:
        codec = get_codec(name)
        for task in tasks:
            x = synthetic_feature(EMBEDDED_SHAPES[task], seed=2)
            vr = feature_range(x)
            frame = pack(x, PackingParams(vr), align=codec.align, min_size=codec.min_size).frame
            with tempfile.TemporaryDirectory(prefix="cfqa-bench-") as tmp:
                cmd = _bare_command(name, codec, frame, qp, tmp)

                def bare():
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

                def wrapped():
                    codec.encode(x, qp, value_range=vr)

                bare()
                wrapped()  # warm-up both (page cache, lazy imports)
                runs_bare, runs_wrap = [], []
                for _ in range(repeat):  # interleaved, so load drifts hit both
                    runs_bare.append(_timed(bare))
                    runs_wrap.append(_timed(wrapped))
            t_bare, t_wrap = [r[0] for r in runs_bare], [r[0] for r in runs_wrap]
            cpu_bare, cpu_wrap = [r[1] for r in runs_bare], [r[1] for r in runs_wrap]
            mb, mw = min(t_bare), min(t_wrap)
            medb, medw = statistics.median(t_bare), statistics.median(t_wrap)
            cb, cw = statistics.median(cpu_bare), statistics.median(cpu_wrap)
            rows.append({
                "codec": name, "task": task, "frame": list(frame.shape), "qp": qp,
                "bare_command": os.path.basename(cmd[0]), "bare_ms": round(1000 * mb, 2),
                "wrapper_ms": round(1000 * mw, 2), "overhead": round(mw / mb - 1.0, 4),
                "bare_median_ms": round(1000 * medb, 2), "wrapper_median_ms": round(1000 * medw, 2),
                "overhead_median": round(medw / medb - 1.0, 4),
                "bare_cpu_ms": round(1000 * cb, 2), "wrapper_cpu_ms": round(1000 * cw, 2),
                "overhead_cpu": round(cw / cb - 1.0, 4),
                "bare_ms_all": [round(1000 * t, 2) for t in t_bare],
                "wrapper_ms_all": [round(1000 * t, 2) for t in t_wrap],
            })
            progress.update(1)
    return rows


def _make_threaded(name: str, threads: int | None):
    from cfqa_core.codecs.hevc import HevcCodec
    from cfqa_core.codecs.vvc import VvcCodec

    return {"hevc": HevcCodec, "hevc-x265": HevcX265CliCodec, "vvc": VvcCodec}[name](threads=threads)


def _thread_job(job: tuple[str, int | None, str, int, int]) -> tuple[float, list[str]]:
    """(CPU seconds, bitstream digests) of ``n`` encodes in this worker process."""
    import hashlib

    name, threads, task, qp, n = job
    codec = _make_threaded(name, threads)
    x = synthetic_feature(EMBEDDED_SHAPES[task], seed=2)
    vr = feature_range(x)
    c0 = _cpu_seconds()
    digests = [hashlib.sha256(codec.encode(x, qp, value_range=vr).bitstream).hexdigest() for _ in range(n)]
    return _cpu_seconds() - c0, digests


def thread_rows(codecs, tasks, qp, parallel, per_worker, rounds, progress) -> list[dict]:
    """Default encoder thread pools vs one thread per encode, ``parallel`` encoding processes at once."""
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    variants = {"encoder default": None, "one thread": 1}
    with ProcessPoolExecutor(parallel) as pool:
        for name in codecs:
            for task in tasks:
                walls = {v: [] for v in variants}
                cpus = {v: [] for v in variants}
                digests: dict[str, set[str]] = {v: set() for v in variants}
                for v, t in variants.items():  # warm-up: imports, page cache
                    list(pool.map(_thread_job, [(name, t, task, qp, 1)] * parallel))
                for _ in range(rounds):  # interleaved
                    for v, t in variants.items():
                        t0 = time.perf_counter()
                        out = list(pool.map(_thread_job, [(name, t, task, qp, per_worker)] * parallel))
                        walls[v].append((time.perf_counter() - t0) / (parallel * per_worker))
                        cpus[v].append(sum(c for c, _ in out) / (parallel * per_worker))
                        for _, d in out:
                            digests[v].update(d)
                base, one = variants
                wb, wo = statistics.median(walls[base]), statistics.median(walls[one])
                cb, co = statistics.median(cpus[base]), statistics.median(cpus[one])
                rows.append({
                    "codec": name, "task": task, "qp": qp, "parallel": parallel, "per_worker": per_worker,
                    "rounds": rounds, "default_wall_ms": round(1e3 * wb, 2), "one_thread_wall_ms": round(1e3 * wo, 2),
                    "wall_ratio": round(wo / wb, 4), "default_cpu_ms": round(1e3 * cb, 2),
                    "one_thread_cpu_ms": round(1e3 * co, 2), "cpu_ratio": round(co / cb, 4),
                    "identical_bytes": len(digests[base] | digests[one]) == 1,
                })
                progress.update(1)
    return rows


def calibrate_av1(progress) -> dict:
    x = synthetic_feature(EMBEDDED_SHAPES["dpt"], seed=3)
    vr = feature_range(x)
    out: dict[str, dict[int, dict]] = {"hevc": {}, "av1": {}}
    for name, points in (("hevc", range(2, 21, 2)), ("av1", range(1, 17))):
        codec = get_codec(name)
        for q in points:
            enc = codec.encode(x, q, value_range=vr)
            out[name][q] = {"bytes": enc.nbytes, "mse": float(np.mean((codec.decode(enc) - x) ** 2))}
            progress.update(1)
    match = {}
    for qp, h in out["hevc"].items():
        best = min(out["av1"], key=lambda q: abs(np.log(out["av1"][q]["mse"] / h["mse"])))
        match[qp] = best
    return {"points": out, "av1_q_matching_hevc_qp": match}


def write_markdown(path: Path, result: dict) -> None:
    lines = ["# Block codec speed", "",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['loadavg']} "
             f"at start; synthetic DINOv2-like features; median of {result['config']['repeat']} runs.", ""]
    lines += ["## Encode / decode time", "",
              "Wall time (CPU time of all threads and child processes in brackets).", "",
              "| codec | task | frame | QP | bytes | BPFP | MSE | encode ms | decode ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(f"| {r['codec']} | {r['task']} | {r['frame'][0]}x{r['frame'][1]} | {r['qp']} | "
                     f"{r['bytes']} | {r['bpfp']:.3f} | {r['mse']:.4g} | {r['encode_ms']:.1f} "
                     f"({r['encode_cpu_ms']:.1f}) | {r['decode_ms']:.1f} ({r['decode_cpu_ms']:.1f}) |")
    lines += ["", f"## Wrapper overhead vs the encoder's own command line (target <= "
              f"{OVERHEAD_TARGET:.0%})", "",
              f"{result['config']['overhead_repeat']} interleaved runs each. Wall: best run (median "
              "in brackets). CPU: median CPU time of all threads and child processes, which load "
              "on the machine does not inflate.", "",
              "| codec | task | padded frame | QP | bare command | bare wall ms | wrapper wall ms "
              "| wall overhead | bare CPU ms | wrapper CPU ms | CPU overhead | within target (wall / CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["overhead"]:
        ok = " / ".join("yes" if v <= OVERHEAD_TARGET else "no" for v in (r["overhead"], r["overhead_cpu"]))
        lines.append(f"| {r['codec']} | {r['task']} | {r['frame'][0]}x{r['frame'][1]} | {r['qp']} | "
                     f"{r['bare_command']} | {r['bare_ms']:.1f} ({r['bare_median_ms']:.1f}) | "
                     f"{r['wrapper_ms']:.1f} ({r['wrapper_median_ms']:.1f}) | "
                     f"{100 * r['overhead']:+.1f} % ({100 * r['overhead_median']:+.1f} %) | "
                     f"{r['bare_cpu_ms']:.1f} | {r['wrapper_cpu_ms']:.1f} | {100 * r['overhead_cpu']:+.1f} % "
                     f"| {ok} |")
    if result.get("calibration"):
        cal = result["calibration"]
        lines += ["", "## AV1 quantizer matching HEVC QP (equal MSE, dpt shape)", "",
                  "| HEVC QP | HEVC MSE | AV1 q | AV1 MSE |", "|---|---|---|---|"]
        for qp, q in cal["av1_q_matching_hevc_qp"].items():
            # Keys are ints when fresh and strings when read back from codecs.json (--threads-only).
            hevc_pt = cal["points"]["hevc"].get(qp, cal["points"]["hevc"].get(str(qp)))
            av1_pt = cal["points"]["av1"].get(q, cal["points"]["av1"].get(str(q)))
            lines.append(f"| {qp} | {hevc_pt['mse']:.4g} | {q} | {av1_pt['mse']:.4g} |")
    if result.get("threads"):
        th = result["threads"]
        lines += ["", "## Encoder threads: the encoder's default pool vs one thread per encode", "",
                  f"{th[0]['parallel']} encoding processes at once (as the dataset build runs them), "
                  f"{th[0]['per_worker']} encodes each per round, {th[0]['rounds']} interleaved rounds; wall = "
                  "batch wall time / encodes; CPU = CPU time of all threads and child processes per encode. "
                  f"Load average {result.get('threads_loadavg', '?')} at the start (shared machine).", "",
                  "| codec | task | QP | default wall ms | one-thread wall ms | ratio | default CPU ms "
                  "| one-thread CPU ms | ratio | identical bytes |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in th:
            lines.append(f"| {r['codec']} | {r['task']} | {r['qp']} | {r['default_wall_ms']:.1f} | "
                         f"{r['one_thread_wall_ms']:.1f} | **{r['wall_ratio']:.3f}** | {r['default_cpu_ms']:.1f} | "
                         f"{r['one_thread_cpu_ms']:.1f} | **{r['cpu_ratio']:.3f}** | "
                         f"{'yes' if r['identical_bytes'] else 'NO'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default="hevc,hevc-x265,hevc-lossless,vvc,av1,hm,vtm")
    ap.add_argument("--tasks", default="cls,seg,dpt")
    ap.add_argument("--qps", default="2,10,20")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--overhead-qp", type=int, default=10)
    ap.add_argument("--overhead-repeat", type=int, default=15)
    ap.add_argument("--paper", action="store_true", help="also time hevc on the paper's ViT-g shapes")
    ap.add_argument("--calibrate-av1", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", action=argparse.BooleanOptionalAction, default=True,
                    help="time the encoders' default thread pools against one thread per encode")
    ap.add_argument("--threads-only", action="store_true",
                    help="run only the encoder-threads section and update the existing codecs.json/.md")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 2,
                    help="encoding processes at once in the threads section (default: one per core)")
    ap.add_argument("--threads-repeat", type=int, default=3, help="encodes per process per round")
    ap.add_argument("--threads-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    threaded = [c for c in ("hevc", "hevc-x265", "vvc") if c in args.codecs.split(",")]
    if args.threads_only:
        out = Path(args.out)
        result = json.loads((out / "codecs.json").read_text())
        usable = [c for c in threaded if get_codec(c).availability()[0]]
        result["threads_loadavg"] = [round(v, 2) for v in os.getloadavg()]
        with tqdm(total=len(usable) * len(args.tasks.split(",")), desc="encoder threads", unit="case") as bar:
            result["threads"] = thread_rows(usable, args.tasks.split(","), args.overhead_qp, args.parallel,
                                            args.threads_repeat, args.threads_rounds, bar)
        (out / "codecs.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(out / "codecs.md", result)
        for r in result["threads"]:
            print(f"threads {r['codec']:10s} {r['task']}: wall x{r['wall_ratio']:.3f}, CPU x{r['cpu_ratio']:.3f}, "
                  f"identical bytes: {r['identical_bytes']}")
        return 0

    available, skipped = [], {}
    for name in args.codecs.split(","):
        ok, reason = get_codec(name).availability()
        (available.append(name) if ok else skipped.__setitem__(name, reason))
    tasks = args.tasks.split(",")
    qps = [int(q) for q in args.qps.split(",")]
    over = [c for c in ("hevc-x265", "hevc", "vvc", "av1", "hm", "vtm") if c in available]
    total = (sum(len(tasks) * (1 if c == "hevc-lossless" else len(qps)) for c in available)
             + len(over) * len(tasks) + (26 if args.calibrate_av1 else 0)
             + (len(PAPER_SHAPES) if args.paper and "hevc" in available else 0))
    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg": [round(v, 2) for v in os.getloadavg()],
                    "python": platform.python_version()},
        "config": {"codecs": available, "skipped": skipped, "tasks": tasks, "qps": qps,
                   "repeat": args.repeat, "overhead_qp": args.overhead_qp,
                   "overhead_repeat": args.overhead_repeat},
    }
    with tqdm(total=total, desc="bench codecs", unit="case") as progress:
        result["speed"] = speed_rows(available, tasks, qps, args.repeat, EMBEDDED_SHAPES, progress)
        if args.paper and "hevc" in available:
            result["speed"] += speed_rows(["hevc"], list(PAPER_SHAPES), [10], 1, PAPER_SHAPES, progress)
        result["overhead"] = overhead_rows(over, tasks, args.overhead_qp, args.overhead_repeat, progress)
        if args.calibrate_av1 and {"hevc", "av1"} <= set(available):
            result["calibration"] = calibrate_av1(progress)
    if args.threads:
        usable = [c for c in threaded if c in available]
        result["threads_loadavg"] = [round(v, 2) for v in os.getloadavg()]
        with tqdm(total=len(usable) * len(tasks), desc="encoder threads", unit="case") as bar:
            result["threads"] = thread_rows(usable, tasks, args.overhead_qp, args.parallel, args.threads_repeat,
                                            args.threads_rounds, bar)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codecs.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "codecs.md", result)
    for r in result["overhead"]:
        print(f"overhead {r['codec']:10s} {r['task']}: wall {100 * r['overhead']:+.1f}% "
              f"(median {100 * r['overhead_median']:+.1f}%), CPU {100 * r['overhead_cpu']:+.1f}%")
    print(f"wrote {out / 'codecs.json'} and {out / 'codecs.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
