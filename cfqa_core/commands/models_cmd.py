"""``cfqa train``, ``cfqa models eval``, ``cfqa infer`` (``cfqa features`` is in ``cfqa_edge.features_cmd``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the embedded default model on synthetic scenes (CPU)")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new folder under $XDG_DATA_HOME/cfqa/models, never the package)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--low-res-fraction", type=float, default=None,
                   help="share of steps at the lower input size (progressive resizing)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the forward pass (faster on CPUs with AVX512-BF16)")
    p.add_argument("--init-from", default=None, help="continue training from a saved model folder")
    p.set_defaults(func=_train)

    models = sub.add_parser("models", help="inspect and evaluate models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    e = msub.add_parser("eval", help="task metrics against ground truth on a split")
    e.add_argument("--model", default="embedded")
    e.add_argument("--split", default="val", choices=["val", "bench", "train"])
    e.add_argument("--n", type=int, default=500, help="number of images")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)
    i = msub.add_parser("info", help="architecture and metadata of a model")
    i.add_argument("--model", default="embedded")
    i.set_defaults(func=_info)

    inf = sub.add_parser("infer", help="class, segmentation and depth for one image")
    inf.add_argument("image")
    inf.add_argument("--model", default="embedded")
    inf.add_argument("--out", default=None,
                     help="folder for colour-mapped seg/depth PNGs at the input's size, with the raw arrays (.npy)")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=_infer)


def _train(args: argparse.Namespace) -> int:
    import sys
    from dataclasses import fields

    from cfqa_core.training.train_model import TrainConfig, train
    from cfqa_core.userdirs import default_output

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    out = Path(args.out) if args.out else default_output("models", "embedded")
    report = train(TrainConfig(**overrides), out)
    print(json.dumps(report["metrics_val"], indent=2))
    print(f"model written to {out} (use it with --model {out})", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from cfqa_core.data.dataset import load_split
    from cfqa_core.evaluation import evaluate
    from cfqa_core.models import load_model

    model = load_model(args.model)
    scenes = load_split(args.split, args.n, task="cls" if args.split == "bench" else None, workers=2,
                        progress=not args.json)
    metrics = {"model": args.model, "split": args.split, **evaluate(model, scenes, progress=not args.json)}
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from cfqa_core.models import load_model

    model = load_model(args.model)
    info = {**model.meta.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "tokens": model.num_tokens}
    print(json.dumps(info, indent=2))
    return 0


def _infer(args: argparse.Namespace) -> int:
    import numpy as np

    from cfqa_core.data.dataset import read_image
    from cfqa_core.inference import extract_features, predict
    from cfqa_core.models import load_model

    image = read_image(args.image)
    model = load_model(args.model)
    cls = predict(model, "cls", extract_features(model, "cls", [image]))[0]
    probs = np.exp(cls.logits - cls.logits.max())
    probs /= probs.sum()
    names = model.meta.class_names
    top = np.argsort(-probs)[:5]
    result = {
        "image": str(args.image),
        "class_id": cls.top1,
        "class_name": names[cls.top1] if names else str(cls.top1),
        "top5": [{"class_id": int(i) + 1, "score": float(probs[i])} for i in top],
    }
    if args.out:
        seg = predict(model, "seg", extract_features(model, "seg", [image]))[0]
        dpt = predict(model, "dpt", extract_features(model, "dpt", [image]))[0]
        result.update(_write_dense_outputs(Path(args.out), Path(args.image).stem, image.shape[:2],
                                           seg.mask, dpt.depth, model.meta.class_names))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['class_name']} (class {result['class_id']}, p={result['top5'][0]['score']:.3f})")
        for key in ("seg_png", "seg_npy", "depth_png", "depth_npy"):
            if key in result:
                print(f"{key}: {result[key]}")
    return 0


def _write_dense_outputs(out: Path, stem: str, size_hw: tuple[int, int], mask, depth,
                         class_names: list[str] | None) -> dict:
    """Seg and depth at the input's size: colour PNGs for people, .npy arrays for programs.

    The model predicts at its own square input size; the mask is resized by
    nearest neighbour (class ids stay class ids), the depth bilinearly.
    """
    import numpy as np
    from PIL import Image

    from cfqa_core.colourmaps import colour_depth, colour_seg

    out.mkdir(parents=True, exist_ok=True)
    h, w = size_hw
    seg_ids = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
    depth_m = np.asarray(Image.fromarray(depth.astype(np.float32)).resize((w, h), Image.BILINEAR))
    seg_rgb, seg_legend = colour_seg(seg_ids, class_names)
    depth_rgb, depth_legend = colour_depth(depth_m)
    paths = {key: out / f"{stem}_{key.replace('_', '.')}" for key in ("seg_png", "seg_npy", "depth_png", "depth_npy")}
    Image.fromarray(seg_rgb).save(paths["seg_png"])
    np.save(paths["seg_npy"], seg_ids)
    Image.fromarray(depth_rgb).save(paths["depth_png"])
    np.save(paths["depth_npy"], depth_m.astype(np.float32))
    return {
        **{k: str(p) for k, p in paths.items()},
        "size": {"width": w, "height": h},
        "model_output_size": list(mask.shape),
        "seg_legend": seg_legend,
        "depth_legend": depth_legend,
        "depth_unit": "m",
    }
