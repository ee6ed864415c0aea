"""``cfqa features``: tokens after block K as .npy, through ONNX Runtime when an export is present.

With ``--backend auto`` (the default) the first run exports the model's edge
graph for that block into the user cache (``cfqa_edge.export_cache``); every later
run reads it with ONNX Runtime and never imports torch, so the command starts
in a fraction of the time torch alone takes to import.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfqa_core.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("features", help="tokens after block K (before the final norm) as .npy")
    f.add_argument("input", help="an image, or a .npy of preprocessed pixels N x 3 x H x W float32")
    f.add_argument("--model", default="embedded", help="'embedded' or a local path (HF folder, .pth)")
    f.add_argument("--block", type=int, required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto (default): ONNX Runtime on --onnx-dir or on the model's export in the user "
                        "cache (made once at first use), so later runs start without torch")
    f.add_argument("--onnx-dir", default=None, help="folder written by 'cfqa edge export'")
    f.set_defaults(func=_features)


def _read_pixels(src: Path, image_size: int | None):
    """Pixels N x 3 x S x S float32 from a .npy, or the cls view of an image at ``image_size``."""
    import numpy as np

    if src.suffix == ".npy":
        if not src.is_file():
            raise DataError(f"input not found: {src}")
        pixels = np.load(src)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.dtype != np.float32:
            raise DataError(f"{src}: expected float32 pixels N x 3 x H x W, got {pixels.dtype} {pixels.shape}")
        return pixels
    from cfqa_core.data.dataset import read_image
    from cfqa_core.tasks import make_views

    return make_views("cls", read_image(src), image_size)


def _features_onnx(args: argparse.Namespace, src: Path):
    """Tokens through ONNX Runtime, or None when the graph cannot take this input (other pixel size)."""
    from cfqa_edge.backends import OnnxBackend, make_backend

    backend = make_backend("onnx" if args.onnx_dir else "auto", model=args.model, split=args.block,
                           onnx_dir=args.onnx_dir)
    if not isinstance(backend, OnnxBackend):
        return None  # no ONNX Runtime here
    size = backend.info.image_size
    pixels = _read_pixels(src, size)
    if pixels.shape[-2:] != (size, size):
        if args.backend == "onnx":
            raise DataError(f"{src}: the edge graph takes {size} x {size} pixels, got {pixels.shape[-2:]}")
        return None
    return backend.run_blocks(pixels, [args.block])[0]


def _features(args: argparse.Namespace) -> int:
    import numpy as np

    src = Path(args.input)
    tokens = _features_onnx(args, src) if args.backend != "torch" else None
    if tokens is None:
        import torch

        from cfqa_core.models import load_model

        model = load_model(args.model)
        pixels = _read_pixels(src, model.image_size)
        with torch.inference_mode():
            tokens = model.backbone.forward_until(torch.from_numpy(pixels), args.block).numpy()
    np.save(args.out, tokens.astype(np.float32))
    print(f"{args.out}: {tokens.shape} float32 (block {args.block}, pre-norm)", file=sys.stderr)
    return 0
