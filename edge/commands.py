"""``cfqa edge ...``: one subcommand module per entry of ``_MODULES``, each exposing ``register(esub)``."""
from __future__ import annotations

import argparse
import importlib

_MODULES: tuple[str, ...] = (
    "cfqa_edge.run_cmd",
    "cfqa_edge.export_cmd",
)
_TOP_LEVEL: tuple[str, ...] = ("cfqa_edge.features_cmd",)


def register(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser("edge", help="the edge side: feature extraction, encoding, sending to the cloud")
    esub = edge.add_subparsers(dest="edge_command", metavar="ACTION")
    esub.required = True
    for name in _MODULES:
        importlib.import_module(name).register(esub)
    # Top-level commands owned by the edge package.
    for name in _TOP_LEVEL:
        importlib.import_module(name).register(sub)
