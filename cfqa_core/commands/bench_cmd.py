"""``cfqa bench``: the CFQA PLCC/SROCC benchmark of quality metrics on a benchmark table.

    cfqa bench --table BUILD/table.parquet [--paper-table PAPER/table.parquet] [--out REPORT]
               [--metrics mse,cosine,cka] [--fidelity] [--json]
    cfqa bench --from-seed CFQA_DATASET [--out DIR] [--json]

``--table`` reads a table from ``cfqa dataset build``; ``--from-seed`` first
ingests the reference dataset's released layout (original and compressed
``.npy`` features with ground-truth distortions, see ``cfqa_core.benchmark.seed_ingest``),
computing the metrics on every pair, and writes that table to ``OUT/table.parquet``.
With ``--json`` one JSON object keyed ``"codec/task/metric"`` is printed, each
``{plcc, plcc_ci, srocc, srocc_ci, n}`` with 95 % bootstrap intervals over
originals (with ``--paper-table``: ``{"table": {...}, "paper_table": {...}}``;
files are written only when ``--out`` is given); otherwise the report
(report.md/.html/.json, CSVs, plots) is written and its summary printed.
``--paper-table`` reports a second table (the paper's QP 2-20 ladder) beside
the first; each table's ladder is named from its build's ``build.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cfqa_core.errors import DataError

SEED_METRICS: tuple[str, ...] = ("mse", "psnr", "cosine", "cosine_flat", "cka", "cka_seed")


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DataError(f"empty list '{text}'")
    return items


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="CFQA benchmark: PLCC/SROCC of quality metrics vs semantic distortion")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", help="benchmark table (table.parquet or its build folder)")
    src.add_argument("--from-seed", metavar="PATH",
                     help="the reference CFQA dataset folder (org_feat/, compressed_feat/)")
    p.add_argument("--paper-table", metavar="PATH",
                   help="a second table on the paper's ladder, reported beside --table")
    p.add_argument("--fidelity", action="store_true",
                   help="also correlate the metrics with output_change (label-free fidelity view)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    p.add_argument("--out", help="report folder (default: TABLE_DIR/report, or PATH/cfqa_bench for --from-seed)")
    p.add_argument("--metrics", help="comma list of metric columns (default: every registered metric in the table)")
    p.add_argument("--codecs", help="--from-seed only: comma list of codec folders (default: all)")
    p.add_argument("--tasks", help="--from-seed only: comma list of tasks (default: cls,seg,dpt)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true",
                   help="print {codec/task/metric: {plcc, plcc_ci, srocc, srocc_ci, n}} as JSON")
    p.set_defaults(func=_cmd_bench)


def _load_table(args):
    from cfqa_core.benchmark.table.schema import read_table

    path = Path(args.table)
    table = read_table(path)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "report"
    return table, out, str(path)


def ladder_name(path: str | Path, default: str) -> str:
    """The ladder a table was built on, from its build folder's build.json (``default`` if not recorded)."""
    path = Path(path)
    build = (path if path.is_dir() else path.parent) / "build.json"
    try:
        name = json.loads(build.read_text()).get("config", {}).get("ladder")
    except (OSError, ValueError, AttributeError):
        return default
    return str(name) if name else default


def _json_results(results: dict) -> dict:
    keep = ("plcc", "plcc_ci", "srocc", "srocc_ci", "n")
    return {k: {f: v[f] for f in keep} for k, v in results.items()}


def _ingest(args, metrics):
    from cfqa_core.benchmark.seed_ingest import SEED_LOG_METRICS, ingest_seed, write_ingest_summary

    root = Path(args.from_seed)
    if not root.is_dir():
        raise DataError(f"seed dataset folder not found: {root}")
    wanted = list(metrics or SEED_METRICS)
    computed = [m for m in wanted if m not in SEED_LOG_METRICS]  # seed_* columns come from the logs
    out = Path(args.out) if args.out else root / "cfqa_bench"
    table = ingest_seed(root, computed, tasks=_csv(args.tasks), codecs=_csv(args.codecs), progress=not args.json,
                        cache_dir=out / "seed_cache" if (args.out or not args.json) else None)
    if args.out or not args.json:
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "table.parquet", index=False)
        write_ingest_summary(table, out, root)
    if metrics:
        return table, out, str(root), wanted
    logged = [c for c in SEED_LOG_METRICS if c in table.columns and table[c].notna().any()]
    return table, out, str(root), [*wanted, *logged]


def _cmd_bench(args) -> int:
    from cfqa_core.benchmark.bootstrap import RESAMPLES, SEED
    from cfqa_core.benchmark.protocol import refuse_in_sample, resolve_metrics
    from cfqa_core.benchmark.report import build_report

    metrics = _csv(args.metrics)  # checked against the registry and the table's columns below
    refuse_in_sample(metrics or ())
    resamples = RESAMPLES if args.resamples is None else args.resamples
    if resamples < 1000:
        raise DataError(f"--resamples must be at least 1000 for a 95 % interval, got {resamples}")
    seed = SEED if args.seed is None else args.seed
    paper_table = None
    ladder = "seed" if args.from_seed else "operating"
    if args.table:
        if args.codecs or args.tasks:
            raise DataError("--codecs/--tasks apply to --from-seed only")
        table, out, source = _load_table(args)
        ladder = ladder_name(args.table, "operating")
    else:
        if args.paper_table:
            raise DataError("--paper-table applies to --table only")
        table, out, source, metrics = _ingest(args, metrics)
    metrics = resolve_metrics(table, metrics)
    if args.paper_table:
        from cfqa_core.benchmark.table.schema import read_table

        paper_table = read_table(args.paper_table)
    kw = dict(source=source, make_plots=not args.no_plots, ladder=ladder, paper_table=paper_table,
              paper_source=str(args.paper_table or ""),
              paper_ladder=ladder_name(args.paper_table, "paper") if args.paper_table else "paper",
              fidelity=args.fidelity, resamples=resamples, seed=seed)

    report = build_report(table, out if (args.out or not args.json) else None, metrics, **kw)
    if args.json:
        results = _json_results(report.results)
        if report.paper is not None:
            results = {"table": results, "paper_table": _json_results(report.paper.results)}
        print(json.dumps(results))
        return 0
    for line in report.headline:
        print(f"- {line}")
    print()
    print(report.table_markdown)
    print()
    for v in report.verdicts:
        print(f"- {v.claim}: {v.status}. {v.detail}")
    print(f"\nreport: {out / 'report.md'}")
    return 0
