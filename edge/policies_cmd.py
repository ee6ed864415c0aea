"""``cfqa calibrate``: metric thresholds that keep a task's accuracy drop within a tolerance (raw-threshold targets).

Rate plans, the default of ``cfqa-target``, are fitted by ``cfqa policies fit`` (:mod:`cfqa_sim.ratecontrol`)."""
from __future__ import annotations

import argparse
import json
import sys


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="learn the metric threshold that keeps a task's accuracy within a tolerance")
    c.add_argument("--table", required=True, help="benchmark table.parquet or its build folder")
    c.add_argument("--metric", default="cosine")
    c.add_argument("--task", type=_csv, default=None, help="comma list of tasks (default: all in the table)")
    c.add_argument("--codec", type=_csv, default=None, help="comma list of codecs (default: all in the table)")
    c.add_argument("--tolerance", type=float, default=1.0,
                   help="accuracy drop allowed vs uncompressed (cls/seg points, dpt %% RMSE)")
    c.add_argument("--rule", choices=["isotonic", "monotone", "loosest"], default="isotonic",
                   help="how noisy drops pick the loosest threshold (default: %(default)s)")
    c.add_argument("--out", default=None, help="write the calibration file (thresholds.json) here")
    c.add_argument("--json", action="store_true", help="print the calibration as JSON")
    c.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from cfqa_edge.policies.calibration import calibrate
    from cfqa_edge.policies.table import load_frame

    frame = load_frame(args.table)
    cal = calibrate(frame, args.metric, list(args.task) if args.task else None,
                    list(args.codec) if args.codec else None, args.tolerance, source=str(args.table),
                    rule=args.rule)
    data = cal.to_json()
    if args.out:
        cal.save(args.out)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    sign = ">=" if cal.higher_is_better else "<="
    print(f"{'task':5s} {'codec':10s} {'threshold':>14s} {'drop':>8s}  unit (tolerance {cal.tolerance:g})")
    for task, per_codec in data["tasks"].items():
        for codec, e in per_codec.items():
            if not e["reachable"]:
                thr = "unreachable"
            elif e["always_best_rate"]:
                thr = "best rate"
            else:
                thr = f"{sign} {e['threshold']:.6g}"
            drop = "–" if e["accuracy_drop"] is None else f"{e['accuracy_drop']:.3g}"
            print(f"{task:5s} {codec:10s} {thr:>14s} {drop:>8s}  {e['unit']}")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
