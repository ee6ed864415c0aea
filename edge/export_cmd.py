"""``cfqa edge export``: ONNX graphs of the edge part of a model."""
from __future__ import annotations

import argparse


def register(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser("export", help="export the edge part (blocks 1..K) to ONNX for the torch-free edge")
    p.add_argument("--split", type=int, action="append", required=True,
                   help="split block K (repeatable: one graph per split)")
    p.add_argument("--model", default="embedded", help="'embedded' or a model folder")
    p.add_argument("--out", default=None,
                   help="output folder (graphs + meta.json; default: the model's folder in the user cache, "
                        "which 'cfqa features' and 'cfqa edge run' use without --onnx-dir)")
    p.add_argument("--opset", type=int, default=None)
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from cfqa_core.models import load_model
    from cfqa_edge.export_cache import cached_export_dir
    from cfqa_edge.onnx_export import DEFAULT_OPSET, export_edge

    out = args.out or cached_export_dir(args.model)
    model = load_model(args.model)
    for split in args.split:
        path = export_edge(model, split, out, opset=args.opset or DEFAULT_OPSET)
        print(f"split {split}: {path}")
    return 0
