"""``cfqa policies eval|list`` and ``cfqa calibrate``: rate-control policies on the benchmark table."""
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
    pol = sub.add_parser("policies", help="rate-control policies: list them, evaluate them on the benchmark table")
    psub = pol.add_subparsers(dest="policies_command", metavar="ACTION")
    psub.required = True

    p = psub.add_parser("eval", help="bytes, accuracy, encodes and edge time of each policy (no network)")
    p.add_argument("--table", required=True, help="benchmark table.parquet or its build folder")
    p.add_argument("--task", type=_csv, default=None, help="comma list of tasks (default: all in the table)")
    p.add_argument("--codec", type=_csv, default=None, help="comma list of codecs (default: all in the table)")
    p.add_argument("--policies", type=_csv, default=None,
                   help="comma list of name[:key=value...] (default: fixed,cfqa-target,bandwidth,hybrid,oracle)")
    p.add_argument("--metric", default="cosine", help="CFQA metric the adaptive policies steer by")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="accuracy drop allowed vs uncompressed (cls/seg points, dpt %% RMSE)")
    p.add_argument("--throughput-mbps", type=float, default=0.5, help="constant link of bandwidth/hybrid")
    p.add_argument("--deadline-s", type=float, default=1.0, help="time left per frame for bandwidth/hybrid")
    p.add_argument("--folds", type=int, default=2, help="cross-fitted calibration folds (1: in-sample)")
    p.add_argument("--rule", choices=["isotonic", "monotone", "loosest"], default="isotonic",
                   help="calibration rule for thresholds and the calibrated fixed QP (default: %(default)s)")
    p.add_argument("--metric-ms", type=float, default=None,
                   help="edge cost of one metric evaluation (default: measured on the task's feature shape)")
    p.add_argument("--out", default=None, help="folder for report.md, results.json, rate_accuracy.png")
    p.add_argument("--json", action="store_true", help="print one JSON object per task, codec and policy")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    ls = psub.add_parser("list", help="registered policies and their parameters")
    ls.set_defaults(func=_list)

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


def _eval(args: argparse.Namespace) -> int:
    from edge.policies.evaluate import DEFAULT_POLICIES, EvalConfig, evaluate, flat_results, markdown

    cfg = EvalConfig(
        table=args.table, tasks=args.task, codecs=args.codec, policies=args.policies or DEFAULT_POLICIES,
        metric=args.metric,
        tolerance=args.tolerance, throughput_mbps=args.throughput_mbps, deadline_s=args.deadline_s,
        folds=args.folds, rule=args.rule, metric_s=None if args.metric_ms is None else args.metric_ms / 1e3,
        out=args.out, progress=not args.no_progress and not args.json,
    )
    report = evaluate(cfg)
    if args.json:
        print(json.dumps(flat_results(report), indent=2, default=float))
    else:
        print(markdown(report))
        if args.out:
            print(f"wrote {args.out}/report.md, results.json, rate_accuracy.png", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from edge.policies import POLICIES

    for name in sorted(POLICIES):
        cls = POLICIES[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={f.default!r}" for k, f in cls.Params.model_fields.items())
        print(f"{name:12s} {doc}\n{'':12s} {params}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from edge.policies.calibration import calibrate
    from edge.policies.table import load_frame

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
