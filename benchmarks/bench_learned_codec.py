"""Speed and rate of the learned hyperprior codecs, ONNX Runtime path vs torch path.

For every shipped learned codec (or ``--codecs``), task shape (embedded model:
cls (1,145,128), seg (2,145,128), dpt (2,4,145,128)) and rate point: encode
and decode wall time (median of ``--repeat`` runs), bytes, BPFP and MSE, for
the torch-free ONNX Runtime backend and the torch backend. Features are the
embedded backbone's on ``bench`` scenes when its weights are installed,
otherwise synthetic DINOv2-like features (the ``source`` field says which).

Writes benchmarks/results/learned_codec.json and learned_codec.md. Run niced:
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_learned_codec.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cfqa_core.codecs.learned import SHIPPED, LearnedCodec, truncate  # noqa: E402
from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, synthetic_feature  # noqa: E402
from cfqa_core.packing import feature_range  # noqa: E402
from cfqa_core.task_names import TASKS  # noqa: E402


def _features(model: str, n: int) -> tuple[dict[str, list[np.ndarray]], dict, str]:
    """(features per task, value range per task, source description)."""
    try:
        from cfqa_core.data.dataset import load_split
        from cfqa_core.inference import extract_features
        from cfqa_core.models import load_model

        m = load_model(model)
        feats, ranges = {}, {}
        for task in TASKS:
            scenes = load_split("bench", n, task=task)
            feats[task] = list(extract_features(m, task, scenes.images))
            ranges[task] = m.meta.feature_ranges.get(task) or feature_range(feats[task], "percentile")
        return feats, ranges, f"model '{model}' on {n} bench scenes per task"
    except Exception as exc:  # no weights or no torch: synthetic stand-ins, labelled as such
        print(f"using synthetic features ({exc})", file=sys.stderr)
        feats = {t: [synthetic_feature(EMBEDDED_SHAPES[t], seed=i) for i in range(n)] for t in TASKS}
        ranges = {t: feature_range(feats[t], "percentile", q=0.01) for t in TASKS}
        return feats, ranges, "synthetic DINOv2-like features"


def _median_ms(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), out


def run(codec_names: list[str], backends: list[str], model: str, n: int, repeat: int, threads: int) -> dict:
    feats, ranges, source = _features(model, n)
    if "torch" in backends:
        import torch

        torch.set_num_threads(threads)  # the torch path uses the process-wide pool
    rows = []
    jobs = [(c, b) for c in codec_names for b in backends]
    for name, backend in tqdm(jobs, desc="codecs"):
        codec = LearnedCodec(backend=backend, threads=threads, name=name)
        ok, reason = codec.availability()
        if not ok:
            rows.append({"codec": name, "backend": backend, "skipped": reason})
            continue
        f0 = feats["cls"][0]
        codec.decode(codec.encode(f0, 0, value_range=ranges["cls"]))  # load sessions / warm up
        for task in TASKS:
            for k in codec.ladder:
                enc_ms, dec_ms, nbytes, bpfp, mse = [], [], [], [], []
                for f in feats[task]:
                    e_ms, enc = _median_ms(lambda: codec.encode(f, k, value_range=ranges[task]), repeat)
                    d_ms, rec = _median_ms(lambda: codec.decode(enc), repeat)
                    enc_ms.append(e_ms)
                    dec_ms.append(d_ms)
                    nbytes.append(enc.nbytes)
                    bpfp.append(enc.bpfp)
                    mse.append(float(np.mean((rec - truncate(f, ranges[task])) ** 2)))
                rows.append({
                    "codec": name, "backend": backend, "task": task, "shape": list(feats[task][0].shape),
                    "rate_point": int(k), "lambda": codec.lambdas[k],
                    "encode_ms": round(statistics.median(enc_ms), 2),
                    "decode_ms": round(statistics.median(dec_ms), 2),
                    "bytes": round(float(np.mean(nbytes)), 1), "bpfp": round(float(np.mean(bpfp)), 5),
                    "mse": float(np.mean(mse)),
                })
    return {
        "benchmark": "learned_codec",
        "source": source,
        "images_per_task": n,
        "repeat": repeat,
        "threads": threads,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "rows": rows,
    }


def _same_bitstreams(report: dict) -> dict[str, float]:
    """Per codec, the largest relative byte difference between the two backends (0 = same sizes)."""
    out: dict[str, float] = {}
    by_key = {}
    for r in report["rows"]:
        if "skipped" not in r:
            by_key.setdefault((r["codec"], r["task"], r["rate_point"]), {})[r["backend"]] = r["bytes"]
    for (codec, _, _), sizes in by_key.items():
        if len(sizes) == 2:
            a, b = sizes.values()
            out[codec] = max(out.get(codec, 0.0), abs(a - b) / max(a, b))
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Learned codec benchmark",
        "",
        f"Features: {report['source']}; median of {report['repeat']} runs per image, "
        f"{report['threads']} inference thread(s); machine: {report['machine']['cpu_count']} CPUs.",
        "",
        "| codec | backend | task | k | lambda | bytes | BPFP | MSE | encode ms | decode ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['codec']} | {r['backend']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['codec']} | {r['backend']} | {r['task']} | {r['rate_point']} | {r['lambda']:g} | {r['bytes']:.0f} | "
            f"{r['bpfp']:.4f} | {r['mse']:.3e} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
        )
    diffs = _same_bitstreams(report)
    if diffs:
        lines += ["", "Largest relative difference in bytes between the ONNX and torch paths:", ""]
        lines += [f"- {c}: {d:.2%}" for c, d in diffs.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", nargs="+", default=sorted(SHIPPED))
    ap.add_argument("--backends", nargs="+", default=["onnx", "torch"], choices=["onnx", "torch"])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=4, help="images per task")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    report = run(args.codecs, args.backends, args.model, args.n, args.repeat, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learned_codec.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "learned_codec.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
