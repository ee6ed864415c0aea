"""``cfqa train-metric``: train the learned CFQA metric on a benchmark build."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-metric",
        help="train the learned CFQA metric on a benchmark build (with a leave-one-codec-out test)",
        description="Reduce every (f, f^) pair of a build to cheap statistics, test a small MLP "
        "leave-one-codec-out against cosine, then fit it on every row and write model.npz, "
        "model.onnx and the leave-one-codec-out report.",
    )
    p.add_argument("--kind", choices=("learned", "proxy"), default="learned",
                   help="learned: the statistics MLP (needs --build); proxy: the task-aware proxy of the "
                   "cloud's head, distilled from the cloud's outputs on the train split (no build needed)")
    p.add_argument("--build", default=None, help="a 'cfqa dataset build' folder (table.parquet + caches)")
    p.add_argument("--splits", default="4,8", help="proxy: split blocks to distil (comma list)")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new folder under $XDG_DATA_HOME/cfqa/metrics, never the package)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per fit")
    p.add_argument("--folds", type=int, default=None, help="image folds of the leave-one-codec-out test")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_metric)


def _train_metric(args: argparse.Namespace) -> int:
    if args.kind == "proxy":
        return _train_proxy(args)
    if not args.build:
        from cfqa_core.errors import DataError

        raise DataError("--build is required for --kind learned")
    from cfqa_core.benchmark.learned_metric import MetricTrainConfig, train_metric
    from cfqa_core.userdirs import default_output

    overrides = {k: getattr(args, k) for k in ("steps", "folds", "seed") if getattr(args, k) is not None}
    out = Path(args.out) if args.out else default_output("metrics", "learned")
    result = train_metric(args.build, out, MetricTrainConfig(**overrides), progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print((Path(result["out"]) / "loco.md").read_text())
    print(f"metric written to {out}", file=sys.stderr)
    return 0


def _train_proxy(args: argparse.Namespace) -> int:
    from cfqa_core.errors import DataError
    from cfqa_core.training.train_proxy import ProxyTrainConfig, train_proxies
    from cfqa_core.userdirs import default_output

    try:
        splits = tuple(int(s) for s in args.splits.split(",") if s.strip())
    except ValueError:
        raise DataError(f"--splits must be a comma list of block numbers, got '{args.splits}'") from None
    cfg = ProxyTrainConfig(splits=splits, **({"seed": args.seed} if args.seed is not None else {}))
    out = Path(args.out or default_output("metrics", "proxy")) / "embedded.npz"
    result = train_proxies(cfg, out, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        fits = ", ".join(f"{f['task']}@{f['split']} R2 {f['r2_clean']:.3f}" for f in result["fit"])
        print(f"{result['out']}: {fits} ({result['seconds']:.0f} s)")
    print(f"proxy metric written to {out}; the shipped one is cfqa_core/weights/metrics/proxy/embedded.npz",
          file=sys.stderr)
    return 0
