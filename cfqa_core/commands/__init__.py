"""Subcommands owned by cfqa_core; each module exposes ``register(sub)``."""
from __future__ import annotations

import importlib

_MODULES = (
    "cfqa_core.commands.models_cmd",
    "cfqa_core.commands.dataset_cmd",
    "cfqa_core.commands.bench_cmd",
    "cfqa_core.commands.codec_cmd",
    "cfqa_core.commands.train_codec_cmd",
    "cfqa_core.commands.train_metric_cmd",
)


def register(sub) -> None:
    for name in _MODULES:
        importlib.import_module(name).register(sub)
