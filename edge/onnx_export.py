"""Export the edge part of a model (patch embedding + blocks 1..k) to ONNX, one graph per split.

A graph ``edge_split{k}.onnx`` takes ``pixels`` (batch x 3 x S x S, float32,
dynamic batch) and outputs ``block_{b}`` (batch x T x D) for the split block
and the depth-head blocks below it (see ``cfqa_edge.backends.split_outputs``).
``meta.json`` beside the graphs holds the model's name, version, geometry and
feature ranges so that the torch-free edge needs nothing else.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from cfqa_core.errors import DataError
from cfqa_edge.backends import ONNX_META_FILE, ModelInfo, onnx_file, split_outputs

DEFAULT_OPSET = 17


def _edge_module(model, blocks: Sequence[int]):
    import torch

    class EdgePart(torch.nn.Module):
        """Tokens after each of ``blocks`` (pre-norm), as a tuple."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = model.backbone

        def forward(self, pixels: torch.Tensor):
            return tuple(self.backbone.intermediate(pixels, list(blocks)))

    return EdgePart().eval()


def export_edge(model, split: int, out_dir: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``edge_split{split}.onnx`` (+ update ``meta.json``) into ``out_dir``; return the graph path."""
    import torch

    if not 1 <= split <= model.depth:
        raise DataError(f"split block {split} outside 1..{model.depth}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = split_outputs(split, model.depth)
    names = [f"block_{b}" for b in blocks]
    dummy = torch.zeros(2, 3, model.image_size, model.image_size)
    path = onnx_file(out, split)
    dynamic = {"pixels": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    # The TorchScript exporter: seconds per graph (the dynamo one takes ten times longer here) and
    # exact for this architecture. Its tracer warns about the shape checks, which are constant
    # for the fixed image size the graph is exported at.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the exporter is pinned with torch
        torch.onnx.export(_edge_module(model, blocks), (dummy,), str(path), input_names=["pixels"],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    meta_path = out / ONNX_META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    info = ModelInfo.from_model(model).to_dict()
    if meta.get("model", info) != info:
        meta = {}  # another model was exported here before: its graphs are stale
        for old in out.glob("edge_split*.onnx"):
            if old != path:
                old.unlink()
    meta["model"] = info
    meta["opset"] = opset
    meta.setdefault("splits", {})[str(split)] = {"file": path.name, "outputs": names}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return path
