"""``cfqa train``, ``cfqa models eval``, ``cfqa infer`` (``cfqa features`` is in ``edge.features_cmd``)."""
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
    inf.add_argument("--out", default=None, help="folder for seg/depth PNGs")
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
    from PIL import Image

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
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        seg = predict(model, "seg", extract_features(model, "seg", [image]))[0]
        dpt = predict(model, "dpt", extract_features(model, "dpt", [image]))[0]
        stem = Path(args.image).stem
        Image.fromarray(seg.mask).save(out / f"{stem}_seg.png")
        mm = np.clip(dpt.depth * 1000.0, 0, 65535).astype(np.uint16)  # millimetres, 16-bit
        Image.fromarray(mm).save(out / f"{stem}_depth.png")
        result["seg_png"] = str(out / f"{stem}_seg.png")
        result["depth_png"] = str(out / f"{stem}_depth.png")
        result["depth_unit"] = "mm"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['class_name']} (class {result['class_id']}, p={result['top5'][0]['score']:.3f})")
        for key in ("seg_png", "depth_png"):
            if key in result:
                print(f"{key}: {result[key]}")
    return 0
