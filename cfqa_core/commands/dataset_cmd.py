"""``cfqa dataset build``: the CFQA benchmark table."""
from __future__ import annotations

import argparse
import json
import sys

SMALL_PER_TASK = 10


def register(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("dataset", help="build the CFQA benchmark dataset")
    dsub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True
    b = dsub.add_parser("build", help="compress originals with every codec and score them (resumable)")
    b.add_argument("--out", required=True, help="build folder (table.parquet, shards, cached features)")
    b.add_argument("--small", action="store_true", help=f"{SMALL_PER_TASK} originals per task (minutes)")
    b.add_argument("--n-per-task", type=int, default=None, help="originals per task (default 100)")
    b.add_argument("--model", default="embedded")
    b.add_argument("--tasks", default="cls,seg,dpt")
    b.add_argument("--codecs", default=None, help="comma list (default: every available codec)")
    b.add_argument("--ladder", default="operating", choices=["operating", "paper"],
                   help="operating: task-lossless to task-broken (default); paper: the CFQA paper's QP 2..20")
    b.add_argument("--metrics", default=None,
                   help="comma list (default: mse,psnr,cosine,cosine_flat,cka; with the embedded model also "
                   "proxy,proxy_risk)")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run units on a Ray cluster (local if no address)")
    b.add_argument("--json", action="store_true", help="print the build summary as JSON")
    b.set_defaults(func=_build)


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _build(args: argparse.Namespace) -> int:
    from cfqa_core.benchmark.table.builder import BuildConfig, build
    from cfqa_core.benchmark.table.schema import default_metrics
    from cfqa_core.tasks import get_task

    tasks = _csv(args.tasks) or ()
    for t in tasks:
        get_task(t)
    n = args.n_per_task or (SMALL_PER_TASK if args.small else 100)
    cfg = BuildConfig(
        out=args.out, model=args.model, n_per_task=n, tasks=tasks, codecs=_csv(args.codecs),
        ladder=args.ladder, metrics=_csv(args.metrics) or default_metrics(args.model), workers=args.workers,
        use_ray=args.ray is not None, ray_address=args.ray or None, progress=not args.json,
    )
    result = build(cfg)
    summary = {"table": str(result.table_path), "rows": result.rows, "units_done": result.units_done,
               "units_cached": result.units_cached, "failures": len(result.failures),
               "seconds": round(result.seconds, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.table_path}: {result.rows} rows ({result.units_done} units built, "
              f"{result.units_cached} cached) in {result.seconds:.0f} s")
    for f in result.failures:
        print(f"failed: {f['task']}/{f['codec']}/image {f['image']}: {f['error']}", file=sys.stderr)
    if result.failures:
        print(f"cfqa dataset build: {len(result.failures)} unit(s) failed; the table lacks them", file=sys.stderr)
        return 1
    return 0
