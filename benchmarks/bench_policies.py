"""Rate-control policies: decision overhead in replay, and edge time on real encodes.

1. Replay overhead: microseconds of Python per ``decide`` (the simulator runs
   thousands of nodes) for every policy on a synthetic table (test data:
   speed only).
2. Live edge time: the benchmark's original features through the real HEVC
   codec, frame by frame, ``fixed`` at the matched QP and ``cfqa-target``
   (calibrated on the table, model search, feature statistic) interleaved on
   the same frames so machine load hits both alike. Edge time = measured
   encodes + local decodes + metric evaluations (what ``LiveContext``
   charges). Target: cfqa-target <= 1.3 x fixed.

Writes benchmarks/results/policies.json and policies.md.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_policies.py --table BUILD/table.parquet \
        [--task cls,seg] [--frames 20]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
EDGE_TIME_TARGET = 1.3


def replay_overhead(images: int = 200) -> list[dict]:
    from edge.policies import as_decision, get_policy
    from edge.policies.replay import replay_context
    from edge.policies.table import replay_arrays
    from edge.policies.testdata import synthetic_frame

    rng = np.random.default_rng(0)
    arr = replay_arrays(synthetic_frame(np.exp(rng.normal(0, 0.6, images))), "cls", "hevc")
    specs = {
        "fixed": {"index": 2},
        "cfqa-target": {"threshold": 0.999},
        "bandwidth": {},
        "hybrid": {"threshold": 0.999},
        "oracle": {},
    }
    rows = []
    for name, params in specs.items():
        policy = get_policy(name, **params)
        ctxs = [replay_context(arr, i, frame_idx=i, throughput_bps=40e3, time_left_s=1.0) for i in range(images)]
        t0 = time.perf_counter()
        encodes = 0
        for ctx in ctxs:
            encodes += as_decision(policy.decide(ctx), ctx).encodes
        wall = time.perf_counter() - t0
        rows.append({"policy": name, "decisions": images, "us_per_decision": round(1e6 * wall / images, 1),
                     "encodes_per_frame": round(encodes / images, 2)})
    return rows


def live_edge_time(table: Path, task: str, frames: int, tolerance: float, metric: str) -> dict:
    import cfqa_core.codecs as codecs
    from edge.policies import as_decision, get_policy
    from edge.policies.calibration import calibrate
    from edge.policies.evaluate import fixed_curve, load_originals, matched_fixed
    from edge.policies.live import LiveContext
    from edge.policies.table import load_frame, replay_arrays

    frame = load_frame(table)
    arr = replay_arrays(frame, task, "hevc")
    originals = load_originals(table if table.suffix == ".parquet" else table / "table.parquet", arr)
    if originals is None:
        raise SystemExit(f"no originals/{task}.npz next to {table}: build the table with 'cfqa dataset build'")
    with np.load(table.parent / "originals" / f"{task}.npz") as z:
        value_range = z["value_range"].tolist()
    m = matched_fixed(fixed_curve(arr), tolerance)
    qp = arr.rate_points[0 if m is None else m]
    codec = codecs.get_codec("hevc")
    with tempfile.TemporaryDirectory() as d:
        cal_path = Path(d) / "cal.json"
        calibrate(frame, metric, [task], ["hevc"], tolerance).save(cal_path)
        fixed = get_policy("fixed", rate_point=qp)
        target = get_policy("cfqa-target", calibration=str(cal_path), target_accuracy_drop=tolerance)
        rows = []
        for i in tqdm(range(min(frames, len(originals))), desc=f"live {task}", unit="frame"):
            f = originals[i]
            out = {}
            for label, policy in (("fixed", fixed), ("cfqa-target", target)):
                ctx = LiveContext(f, codec, value_range, metric, task=task, ladder=arr.rate_points, frame_idx=i)
                t0 = time.perf_counter()
                dec = as_decision(policy.decide(ctx), ctx)
                out[label] = (dec, time.perf_counter() - t0, ctx.chosen(dec).nbytes)
            rows.append(out)
    summary = {}
    for label in ("fixed", "cfqa-target"):
        decs = [r[label] for r in rows]
        summary[label] = {
            "edge_ms_per_frame": round(1e3 * statistics.mean(d.edge_time_s for d, _, _ in decs), 2),
            "wall_ms_per_frame": round(1e3 * statistics.mean(w for _, w, _ in decs), 2),
            "encodes_per_frame": round(statistics.mean(d.encodes for d, _, _ in decs), 2),
            "bytes_per_frame": round(statistics.mean(b for _, _, b in decs), 1),
        }
    ratio = summary["cfqa-target"]["edge_ms_per_frame"] / summary["fixed"]["edge_ms_per_frame"]
    return {"task": task, "frames": len(rows), "fixed_qp": int(qp), "metric": metric, "tolerance": tolerance,
            "policies": summary, "edge_time_ratio": round(ratio, 3), "target": EDGE_TIME_TARGET,
            "met": ratio <= EDGE_TIME_TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(ROOT / ".cache" / "bench-full" / "table.parquet"))
    parser.add_argument("--task", default="cls,seg")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--metric", default="cosine")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "replay_overhead": replay_overhead(),
        "live": [],
    }
    table = Path(args.table)
    if table.exists():
        for task in args.task.split(","):
            result["live"].append(live_edge_time(table, task, args.frames, args.tolerance, args.metric))
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["table"] = str(table) if table.exists() else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "policies.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Rate-control policies: speed", "",
             "## Decision overhead in replay (synthetic table, speed only)", "",
             "| policy | us/decision | encodes/frame |", "|---|---:|---:|"]
    lines += [f"| {r['policy']} | {r['us_per_decision']} | {r['encodes_per_frame']} |"
              for r in result["replay_overhead"]]
    lines += ["", f"## Edge time on real HEVC encodes (`{result['table']}`)", ""]
    if not result["live"]:
        lines.append("No benchmark table found: pass --table (built by `cfqa dataset build`).")
    for r in result["live"]:
        lines += [f"### {r['task']}: {r['frames']} frames, fixed QP {r['fixed_qp']}, cfqa-target calibrated to "
                  f"{r['tolerance']:g} ({r['metric']})", "",
                  "| policy | edge ms/frame | wall ms/frame | encodes/frame | bytes/frame |",
                  "|---|---:|---:|---:|---:|"]
        for label, p in r["policies"].items():
            lines.append(f"| {label} | {p['edge_ms_per_frame']} | {p['wall_ms_per_frame']} | "
                         f"{p['encodes_per_frame']} | {p['bytes_per_frame']} |")
        lines += ["", f"Edge time cfqa-target / fixed: **{r['edge_time_ratio']}** "
                      f"(target <= {r['target']}: {'met' if r['met'] else 'missed'}).", ""]
    lines.append(f"Load average: start {', '.join(f'{x:.2f}' for x in result['machine']['load_avg_start'])}, "
                 f"end {', '.join(f'{x:.2f}' for x in result['machine']['load_avg_end'])}.")
    (RESULTS / "policies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
