"""Cost of the CFQA metrics per feature, against the codecs' encode cost.

For every registered metric and every task shape (the embedded model: cls
(1, 145, 128), seg (2, 145, 128), dpt (2, 4, 145, 128); the paper's DINOv2
ViT-g/14: cls (257, 1536), seg (2, 1370, 1536), dpt (2, 4, 1611, 1536)) this
times ``compute_metric`` (input checks included) on a synthetic DINOv2-like
feature and a noisy copy: best and median wall time and median CPU time of
``--repeat`` runs, single-threaded BLAS.

Target: metric cost <= 5 % of the encode cost. The encode times come from
``benchmarks/results/codecs.json`` (``bench_codecs.py``): for each codec, task
and shape found there, the mean encode time over its QPs; the ratio is
reported for every metric, judged on the metric's median CPU time: a metric
runs single-threaded, so its CPU time is what it takes on an idle core, while
its wall time on this shared 2-core machine also counts the time spent waiting
for a core (the ratio on the best wall time is reported next to it). Without
that file the ratios are left out and the output says so.

Writes benchmarks/results/metrics.json and metrics.md. Run niced, e.g.
``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_metrics.py``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads its BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cfqa_core.codecs.synthetic import EMBEDDED_SHAPES, PAPER_SHAPES, synthetic_feature  # noqa: E402
from cfqa_core.metrics import compute_metric, get_metric, metric_names  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.05


def time_metric(name: str, f: np.ndarray, fhat: np.ndarray, repeat: int, value_range,
                task: str = "cls") -> tuple[float, float, float, float]:
    """(best wall ms, median wall ms, median CPU ms, value) of ``repeat`` runs after one warm-up."""
    value = compute_metric(name, f, fhat, value_range=value_range, task=task)
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        compute_metric(name, f, fhat, value_range=value_range, task=task)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return 1000 * min(walls), 1000 * statistics.median(walls), 1000 * statistics.median(cpus), value


def speed_rows(metrics, shape_sets, repeats, progress) -> list[dict]:
    rows = []
    jobs = [(kind, task, shape) for kind, shapes in shape_sets.items() for task, shape in shapes.items()]
    bar = tqdm(total=len(jobs) * len(metrics), desc="metrics", unit="run", disable=not progress)
    for kind, task, shape in jobs:
        f = synthetic_feature(shape, seed=1)
        rng = np.random.default_rng(2)
        # A moderate codec-like error: about 5 % of the feature's spread.
        fhat = (f + rng.normal(0.0, 0.05 * float(f.std()), f.shape)).astype(np.float32)
        value_range = (float(f.min()), float(f.max()))
        for name in metrics:
            best, wall, cpu, value = time_metric(name, f, fhat, repeats[kind], value_range, task)
            rows.append({"metric": name, "set": kind, "task": task, "shape": list(shape),
                         "elements": int(f.size), "best_ms": round(best, 3), "wall_ms": round(wall, 3),
                         "cpu_ms": round(cpu, 3),
                         "repeat": repeats[kind], "value": float(value)})
            bar.update(1)
        del f, fhat
    bar.close()
    return rows


def encode_costs(path: Path) -> dict[tuple[str, str, tuple[int, ...]], float]:
    """{(codec, task, shape): mean encode ms over the QPs measured} from codecs.json."""
    data = json.loads(path.read_text())
    acc: dict[tuple[str, str, tuple[int, ...]], list[float]] = {}
    for r in data.get("speed", []):
        if "lossless" in r["codec"]:
            continue
        acc.setdefault((r["codec"], r["task"], tuple(r["shape"])), []).append(float(r["encode_ms"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def ratio_rows(rows: list[dict], costs) -> list[dict]:
    out = []
    for (codec, task, shape), enc in sorted(costs.items()):
        for r in rows:
            if r["task"] == task and tuple(r["shape"]) == shape:
                ratio = r["cpu_ms"] / enc
                out.append({"codec": codec, "task": task, "shape": list(shape), "metric": r["metric"],
                            "metric_cpu_ms": r["cpu_ms"], "metric_best_ms": r["best_ms"],
                            "encode_ms": round(enc, 2), "ratio": round(ratio, 5),
                            "ratio_wall": round(r["best_ms"] / enc, 5), "meets_target": ratio <= TARGET})
    return out


def markdown(result: dict) -> str:
    lines = ["# CFQA metric cost", "",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['loadavg']} at start; "
             "single-threaded BLAS; synthetic DINOv2-like features with a ~5 % error; "
             "best and median wall time, median CPU time of the runs (on a shared machine load "
             "inflates the median wall time).", "",
             "## Cost per feature", "",
             "| metric | set | task | shape | best ms | median ms | CPU ms | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        shape = "x".join(str(s) for s in r["shape"])
        lines.append(f"| {r['metric']} | {r['set']} | {r['task']} | {shape} | {r['best_ms']:.3f} | "
                     f"{r['wall_ms']:.3f} | {r['cpu_ms']:.3f} | {r['repeat']} |")
    lines += ["", f"## Against the encode cost (target: metric <= {TARGET:.0%} of encode)", ""]
    if not result["ratios"]:
        lines.append(result["ratio_note"])
    else:
        lines += [result["ratio_note"], "",
                  "| codec | task | shape | encode ms | metric | metric CPU ms | CPU / encode "
                  "| best wall / encode | <= 5 % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["ratios"]:
            shape = "x".join(str(s) for s in r["shape"])
            lines.append(f"| {r['codec']} | {r['task']} | {shape} | {r['encode_ms']:.1f} | {r['metric']} | "
                         f"{r['metric_cpu_ms']:.3f} | {100 * r['ratio']:.2f} % | {100 * r['ratio_wall']:.2f} % | "
                         f"{'yes' if r['meets_target'] else 'no'} |")
        worst = {}
        for r in result["ratios"]:
            worst[r["metric"]] = max(worst.get(r["metric"], 0.0), r["ratio"])
        lines += ["", "Worst CPU-time ratio per metric: " + ", ".join(
            f"{m} {100 * v:.2f} %{'' if v <= TARGET else ' (over target)'}" for m, v in sorted(worst.items())) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", help="comma list (default: every registered metric)")
    ap.add_argument("--repeat", type=int, default=20, help="runs per embedded-shape measurement")
    ap.add_argument("--paper-repeat", type=int, default=3, help="runs per paper-shape measurement")
    ap.add_argument("--no-paper", action="store_true", help="skip the ViT-g shapes")
    ap.add_argument("--codecs-json", default=str(RESULTS / "codecs.json"), help="encode times to compare with")
    ap.add_argument("--out", default=str(RESULTS), help="folder for metrics.json and metrics.md")
    args = ap.parse_args()

    metrics = args.metrics.split(",") if args.metrics else metric_names()
    for m in metrics:
        get_metric(m)
    shape_sets = {"embedded": EMBEDDED_SHAPES}
    repeats = {"embedded": args.repeat, "paper": args.paper_repeat}
    if not args.no_paper:
        shape_sets["paper"] = PAPER_SHAPES
    machine = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
               "python": platform.python_version(), "numpy": np.__version__}
    rows = speed_rows(metrics, shape_sets, repeats, progress=True)

    codecs_json = Path(args.codecs_json)
    if codecs_json.is_file():
        ratios = ratio_rows(rows, encode_costs(codecs_json))
        note = (f"Encode times: {codecs_json.name} (mean over its QPs per codec, task and shape; "
                "lossless variants left out); the target is judged on the metric's median CPU time (single-threaded: "
                "its time on an idle core), the ratio on its best wall time is shown too.")
        if not ratios:
            note = f"{codecs_json.name} has no encode time for the shapes measured here."
    else:
        ratios = []
        note = (f"No {codecs_json} (written by benchmarks/bench_codecs.py): the metric / encode ratio "
                "is not computed.")
    result = {"machine": machine, "config": {"metrics": metrics, "repeat": repeats, "sets": list(shape_sets)},
              "speed": rows, "ratios": ratios, "ratio_note": note, "target": TARGET}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "metrics.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
