"""``cfqa train-codec``: train the learned hyperprior feature codecs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cfqa_core.task_names import TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-codec",
        help="train a learned hyperprior feature codec (or the whole shipped set) on CPU",
        description="Train a variable-rate hyperprior codec on features of the project's scenes, "
        "export it (ONNX + entropy tables) and measure real bitstreams on val scenes.",
    )
    p.add_argument("--task", default="multi", choices=[*TASKS, "multi"],
                   help="features to train on (multi: all three tasks)")
    p.add_argument("--variant", default="scale", choices=["scale", "meanscale"],
                   help="scale hyperprior (Balle 2018) or mean-scale hyperprior (Minnen 2018)")
    p.add_argument("--lambdas", type=float, nargs="+", default=None,
                   help="rate points (any order; the ladder runs from the largest lambda = best quality)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per codec")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n-train", type=int, default=None, help="train scenes whose features are used")
    p.add_argument("--n-val", type=int, default=None, help="val scenes for the measured rate/distortion")
    p.add_argument("--model", default=None, help="backbone: 'embedded' or a model folder")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shipped", action="store_true",
                   help="train every shipped codec (hyperprior-cls/seg/dpt/multi, mshyperprior-multi) "
                   "into --out and write the model card")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new folder under $XDG_DATA_HOME/cfqa/codecs, never the package)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_codec)


def _train_codec(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from cfqa_core.training.train_codec import CodecTrainConfig, train_codec, train_shipped
    from cfqa_core.userdirs import default_output

    overrides = {
        f.name: getattr(args, f.name) for f in fields(CodecTrainConfig) if getattr(args, f.name, None) is not None
    }
    if args.lambdas is not None:
        overrides["lambdas"] = tuple(args.lambdas)
    cfg = CodecTrainConfig(**overrides)
    progress = not args.quiet
    out = Path(args.out) if args.out else default_output("codecs", "shipped-set" if args.shipped else cfg.name)
    if args.shipped:
        metas = train_shipped(out, cfg, progress)
    else:
        metas = [train_codec(cfg, out, progress=progress)]
    summary = {m["name"]: {task: [(r["rate_point"], r["bpfp"], r["psnr_db"]) for r in rows]
                           for task, rows in m["rd"].items()} for m in metas}
    print(json.dumps(summary, indent=1))
    print(f"codec{'s' if args.shipped else ''} written to {out}", file=sys.stderr)
    return 0
