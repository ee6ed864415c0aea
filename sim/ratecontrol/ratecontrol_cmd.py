"""Offline rate-control commands on the benchmark table.

``cfqa policies eval|fit|list`` (policies at equal accuracy, rate plans),
``cfqa timing profile`` and ``cfqa calibrate`` (metric thresholds that keep a
task's accuracy drop within a tolerance: raw-threshold targets; the rate plans
that ``cfqa-target`` runs by default come from ``cfqa policies fit``).
"""
from __future__ import annotations

import argparse
import json
import sys

from cfqa_core.task_names import TASKS


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _tolerance(text: str) -> dict[str, float]:
    """``seg=0.02,dpt=0.03`` -> {task: value}."""
    out = {}
    for item in _csv(text):
        task, sep, value = item.partition("=")
        try:
            out[task.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected task=value, got '{item}'") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected task=value, got '{item}'")
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True, help="benchmark table.parquet or its build folder")
    p.add_argument("--task", type=_csv, default=None, help="comma list of tasks (default: all in the table)")
    p.add_argument("--codec", type=_csv, default=None, help="comma list of codecs (default: all in the table)")
    p.add_argument("--metric", default="proxy", help="CFQA metric the plans steer by (default: %(default)s)")
    p.add_argument("--target-success", type=float, default=0.99,
                   help="success rate the matched fixed rung and the plans must reach (default: %(default)s)")
    p.add_argument("--tolerance", type=_tolerance, default={},
                   help="output tolerances, e.g. seg=0.02,dpt=0.02 (cls: 0 = top-1 unchanged)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")


def register(sub: argparse._SubParsersAction) -> None:
    pol = sub.add_parser("policies", help="rate-control policies: evaluate them at equal accuracy, fit rate plans")
    psub = pol.add_subparsers(dest="policies_command", metavar="ACTION")
    psub.required = True

    p = psub.add_parser("eval", help="bytes per captured frame and success rate of each policy on held-out images")
    _common(p)
    p.add_argument("--policies", type=_csv, default=None,
                   help="comma list of name[:key=value...] (default: fixed-matched,cfqa-target,hybrid,bandwidth,"
                        "oracle; fixed-matched and oracle are always added)")
    p.add_argument("--throughput-mbps", type=float, default=5.0,
                   help="constant link for deadlines and budgets (default: %(default)s Mbit/s)")
    p.add_argument("--deadline-s", type=float, default=1.0, help="time from capture to result per frame")
    p.add_argument("--timing", default=None, help="timing profile JSON (default: the table's measured times)")
    p.add_argument("--metric-ms", type=float, default=None, help="edge cost of one metric evaluation")
    p.add_argument("--out", default=None, help="folder for report.md, results.json, rate_success.png, plans/")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    f = psub.add_parser("fit", help="fit the rate plans cfqa-target and hybrid run, on the calibration half")
    _common(f)
    f.add_argument("--out", required=True, help="rate plan file to write (JSON)")
    f.add_argument("--timing", default=None,
                   help="timing profile: fit for frames that must also arrive in time on the link below")
    f.add_argument("--throughput-mbps", type=float, default=5.0, help="link of the deadline (with --timing)")
    f.add_argument("--deadline-s", type=float, default=1.0, help="deadline per frame (with --timing)")
    f.set_defaults(func=_fit)

    ls = psub.add_parser("list", help="registered policies and their parameters")
    ls.set_defaults(func=_list)

    tim = sub.add_parser("timing", help="timing profiles: what encodes, decodes and metrics cost on this machine")
    tsub = tim.add_subparsers(dest="timing_command", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("profile", help="measure a timing profile on a build's originals (medians, CPU seconds)")
    t.add_argument("--build", required=True, help="a 'cfqa dataset build' folder")
    t.add_argument("--codecs", type=_csv, default=("hevc",), help="comma list (default: hevc)")
    t.add_argument("--tasks", type=_csv, default=TASKS)
    t.add_argument("--metrics", type=_csv, default=("proxy", "cosine"))
    t.add_argument("--images", type=int, default=2, help="originals per task (default: %(default)s)")
    t.add_argument("--repeats", type=int, default=3, help="runs per measurement (default: %(default)s)")
    t.add_argument("--base", default=None, help="an existing profile whose backbone/cloud entries are kept")
    t.add_argument("--out", required=True, help="profile JSON to write")
    t.set_defaults(func=_timing)

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
    from cfqa_sim.ratecontrol.evaluate import DEFAULT_POLICIES, EvalConfig, evaluate, flat_results, headline
    from cfqa_sim.ratecontrol.report import markdown

    cfg = EvalConfig(
        table=args.table, tasks=args.task, codecs=args.codec, policies=args.policies or DEFAULT_POLICIES,
        metric=args.metric, target_success=args.target_success, tolerance=args.tolerance,
        throughput_mbps=args.throughput_mbps, deadline_s=args.deadline_s,
        metric_s=None if args.metric_ms is None else args.metric_ms / 1e3, timing=args.timing,
        out=args.out, progress=not args.no_progress and not args.json,
    )
    report = evaluate(cfg)
    if args.json:
        print(json.dumps(flat_results(report), indent=2, default=float))
    else:
        print(markdown(report))
        for s in report["sections"]:
            print(headline(s), file=sys.stderr)
        if args.out:
            print(f"wrote {args.out}/report.md, results.json, rate_success.png, plans/", file=sys.stderr)
    return 0


def _fit(args: argparse.Namespace) -> int:
    from cfqa_sim.ratecontrol.shipped import fit_shipped_plans

    plans = fit_shipped_plans(args.table, args.out, tasks=args.task, codecs=args.codec, metric=args.metric,
                              target=args.target_success, tolerance=args.tolerance, timing=args.timing,
                              throughput_mbps=args.throughput_mbps, deadline_s=args.deadline_s)
    if args.json:
        print(json.dumps({f"{t}/{c}": p.to_json() for (t, c), p in plans.plans.items()}, indent=2))
    else:
        for (t, c), p in sorted(plans.plans.items()):
            steps = " -> ".join(str(s.rate_point)
                                + ("" if s.threshold is None else f" if {p.metric} <= {s.threshold:.4g}")
                                for s in p.steps)
            print(f"{t}/{c}: {steps}")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from cfqa_sim.ratecontrol.calibrate import calibrate
    from cfqa_sim.ratecontrol.replay import load_frame

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


def _list(args: argparse.Namespace) -> int:
    import cfqa_sim.ratecontrol.oracle  # noqa: F401  (registers the offline-only oracle)
    from cfqa_edge.policies import POLICIES

    for name in sorted(POLICIES):
        cls = POLICIES[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={f.default!r}" for k, f in cls.Params.model_fields.items())
        print(f"{name:12s} {doc}\n{'':12s} {params}")
    return 0


def _timing(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cfqa_core.errors import DataError
    from cfqa_sim.timing import measure_profile

    if args.images < 1 or args.repeats < 1:
        raise DataError("--images and --repeats must be at least 1")
    data = {}
    if args.base:
        try:
            data = json.loads(Path(args.base).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"--base {args.base}: {exc}") from None
    data.update(measure_profile(args.build, codecs=args.codecs, tasks=args.tasks, metrics=args.metrics,
                                images=args.images, repeats=args.repeats))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0
