"""Train the learned hyperprior feature codecs on the project's own features (CPU).

Data: features of ``load_split("train", n)`` scenes extracted with the chosen
backbone for each task, truncated to the backbone's per-task range,
quantised to ``bit_depth`` bits and packed into padded frames exactly as the
codec does at inference (:mod:`cfqa_core.packing`); training samples random
row crops of those frames. Loss: CompressAI's rate-distortion objective
``lambda * 255^2 * MSE + bpp`` with one lambda per sample drawn from the
codec's ladder (all rate points share one network through gain units). Adam,
cosine learning rate, gradient clipping; reproducible from ``seed``.

After training the model is frozen and exported (:func:`export_codec`), then
measured with the real codec — bytes from the range coder, not likelihoods —
on ``load_split("val", n_val)`` features; the results go into ``codec.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cfqa_core.codecs.hyperprior import (
    STRIDE,
    HyperpriorConfig,
    RateDistortion,
    build_model,
    export_codec,
)
from cfqa_core.errors import DataError, ModelError
from cfqa_core.packing import PackingParams, feature_range, pack
from cfqa_core.tasks import TASKS

Range = Any  # (lo, hi) or ((lo, hi), ...) per slice
TASK_SETS: dict[str, tuple[str, ...]] = {"cls": ("cls",), "seg": ("seg",), "dpt": ("dpt",), "multi": TASKS}
PREFIX = {"scale": "hyperprior", "meanscale": "mshyperprior"}
# Ordered from highest quality to lowest: ten rate points, geometric from 2 to 0.002, as the
# benchmark's ten QPs per block codec (the FCM-LM DINOv2 lambdas, 0.0005 .. 0.12, as a guide).
DEFAULT_LAMBDAS: tuple[float, ...] = (2.0, 0.928, 0.431, 0.2, 0.0928, 0.0431, 0.02, 0.00928, 0.00431, 0.002)
# The shipped set: (variant, task) -> codec name.
SHIPPED_SET: tuple[tuple[str, str], ...] = (
    ("scale", "cls"),
    ("scale", "seg"),
    ("scale", "dpt"),
    ("scale", "multi"),
    ("meanscale", "multi"),
)


def codec_name(variant: str, task: str) -> str:
    """Registry name of a codec: ``hyperprior-cls``, ``mshyperprior-multi``, ..."""
    if variant not in PREFIX:
        raise ModelError(f"unknown variant '{variant}' (known: {', '.join(PREFIX)})")
    if task not in TASK_SETS:
        raise DataError(f"unknown codec task '{task}' (known: {', '.join(TASK_SETS)})")
    return f"{PREFIX[variant]}-{task}"


@dataclass
class CodecTrainConfig:
    """Everything that determines a trained codec."""

    task: str = "multi"  # cls | seg | dpt | multi
    variant: str = "scale"  # scale | meanscale
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    steps: int = 2000
    batch: int = 8
    crop: int = 64  # rows of a training crop (frames are tokens x channels, full width)
    max_width: int = 256  # wider frames (large backbones) are cropped in width too
    lr: float = 2e-3
    min_lr: float = 5e-5
    warmup: int = 30
    clip: float = 1.0
    n_train: int = 192
    n_val: int = 16
    model: str = "embedded"
    bit_depth: int = 10
    N: int = 48
    M: int = 64
    Nh: int = 32
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        codec_name(self.variant, self.task)
        self.lambdas = tuple(sorted((float(v) for v in self.lambdas), reverse=True))
        if self.steps < 1 or self.batch < 1 or self.n_train < 1 or self.n_val < 1:
            raise DataError("steps, batch, n_train and n_val must be positive")
        if self.crop < STRIDE or self.crop % STRIDE:
            raise DataError(f"crop must be a positive multiple of {STRIDE}, got {self.crop}")

    @property
    def name(self) -> str:
        return codec_name(self.variant, self.task)

    def network(self) -> HyperpriorConfig:
        return HyperpriorConfig(variant=self.variant, N=self.N, M=self.M, Nh=self.Nh, lambdas=self.lambdas)


@dataclass
class FeatureData:
    """Packed training frames and raw validation features, per task."""

    frames: dict[str, list[np.ndarray]]  # uint16 padded frames
    val: dict[str, np.ndarray]  # (n, *feature_shape) float32
    ranges: dict[str, Range]
    bit_depth: int
    source: dict[str, Any] = field(default_factory=dict)


def _as_range(vr: Any) -> Range:
    """A (lo, hi) pair, or a tuple of pairs (one per dpt block), as plain floats."""
    arr = np.asarray(vr, dtype=np.float64)
    if arr.shape == (2,):
        return (float(arr[0]), float(arr[1]))
    return tuple((float(lo), float(hi)) for lo, hi in arr.reshape(-1, 2))


def _model_digest(model) -> str:
    h = hashlib.sha256(json.dumps(model.meta.to_dict(), sort_keys=True).encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cached_features(model, digest: str, task: str, split: str, n: int, progress: bool) -> np.ndarray:
    """Features of the first ``n`` scenes of ``split``, cached on disk per backbone digest."""
    from cfqa_core.data.dataset import cache_dir, load_split
    from cfqa_core.inference import extract_features

    path = cache_dir() / "codec-features" / f"{digest}-{split}-{task}-{n}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never reused
    scenes = load_split(split, n, workers=1, progress=progress)
    feats = extract_features(model, task, scenes.images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats


def prepare_data(
    model_name: str, tasks: tuple[str, ...], n_train: int, n_val: int, bit_depth: int = 10, progress: bool = True
) -> FeatureData:
    """Extract features of train/val scenes for ``tasks`` and pack the training frames."""
    from cfqa_core.models import load_model

    model = load_model(model_name)
    digest = _model_digest(model)
    frames, vals, ranges = {}, {}, {}
    for task in tqdm(tasks, desc="features", disable=not progress):
        feats = _cached_features(model, digest, task, "train", n_train, progress)
        vr = model.meta.feature_ranges.get(task)
        if vr is None:  # a foreign backbone without recorded ranges: clip 0.01 % outliers
            vr = feature_range(list(feats), "percentile", q=0.01)
        ranges[task] = _as_range(vr)
        params = PackingParams(ranges[task], bit_depth)
        frames[task] = [pack(f, params, align=STRIDE).frame for f in feats]
        vals[task] = _cached_features(model, digest, task, "val", n_val, progress)
    source = {
        "model": str(model_name),
        "model_digest": digest,
        "train_scenes": n_train,
        "val_scenes": n_val,
        "split": "train (fit) / val (measured)",
    }
    return FeatureData(frames, vals, ranges, bit_depth, source)


def sample_batch(
    data: FeatureData, tasks: tuple[str, ...], rng: np.random.Generator, batch: int, crop: int, max_width: int
) -> torch.Tensor:
    """Random row crops (full width up to ``max_width``) of random frames of random tasks, in [0, 1]."""
    scale = np.float32((1 << data.bit_depth) - 1)
    out = []
    for _ in range(batch):
        frames = data.frames[tasks[rng.integers(len(tasks))]]
        frame = frames[rng.integers(len(frames))]
        h, w = frame.shape
        r0 = int(rng.integers(0, h - crop + 1)) if h > crop else 0
        cw = min(w, max_width)
        c0 = int(rng.integers(0, w - cw + 1)) if w > cw else 0
        out.append(frame[r0 : r0 + crop, c0 : c0 + cw].astype(np.float32) / scale)
    return torch.from_numpy(np.stack(out)[:, None])


def _lr_at(step: int, cfg: CodecTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def fit(cfg: CodecTrainConfig, data: FeatureData, progress: bool = True):
    """Train one variable-rate network; returns (model, loss log)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tasks = TASK_SETS[cfg.task]
    model = build_model(cfg.network())
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = RateDistortion(cfg.lambdas)
    log = []
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        x = sample_batch(data, tasks, rng, cfg.batch, cfg.crop, cfg.max_width)
        index = torch.from_numpy(rng.integers(0, len(cfg.lambdas), cfg.batch))
        loss = criterion(model(x, index), x, index)
        if not torch.isfinite(loss):
            raise ModelError(f"training {cfg.name} diverged at step {step} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.append({"step": step, **{k: round(v, 6) for k, v in criterion.terms.items()}})
            bar.set_postfix(bpp=f"{criterion.terms['bpp']:.3f}", mse=f"{criterion.terms['mse']:.2e}")
    return model, log


def measure(folder: Path, data: FeatureData, tasks: tuple[str, ...], progress: bool = True) -> dict[str, list[dict]]:
    """Real bytes and distortion of the exported codec per task and rate point (ONNX path)."""
    from cfqa_core.codecs.learned import LearnedCodec, range_span, truncate

    codec = LearnedCodec.from_folder(folder, backend="onnx")
    results: dict[str, list[dict]] = {}
    for task in tasks:
        feats = data.val[task]
        vr = data.ranges[task]
        peak = range_span(vr)
        rows = []
        for k in tqdm(codec.ladder, desc=f"measure {task}", disable=not progress, leave=False):
            bpfp, mse, enc_s, dec_s = [], [], [], []
            for f in feats:
                enc = codec.encode(f, k, value_range=vr, bit_depth=data.bit_depth)
                t0 = time.perf_counter()
                rec = codec.decode(enc)
                dec_s.append(time.perf_counter() - t0)
                enc_s.append(enc.encode_s)
                bpfp.append(enc.bpfp)
                mse.append(float(np.mean((rec - truncate(f, vr)) ** 2)))
            m = float(np.mean(mse))
            rows.append({
                "rate_point": int(k),
                "lambda": codec.lambdas[k],
                "bpfp": round(float(np.mean(bpfp)), 5),
                "mse": m,
                "psnr_db": round(10 * math.log10(peak**2 / max(m, 1e-20)), 3),
                "encode_ms": round(1000 * float(np.median(enc_s)), 2),
                "decode_ms": round(1000 * float(np.median(dec_s)), 2),
            })
        results[task] = rows
    return results


def train_codec(
    cfg: CodecTrainConfig, out_dir: str | Path, data: FeatureData | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train, export into ``out_dir`` and measure; returns the codec.json content."""
    tasks = TASK_SETS[cfg.task]
    t0 = time.time()
    if data is None:
        data = prepare_data(cfg.model, tasks, cfg.n_train, cfg.n_val, cfg.bit_depth, progress)
    missing = [t for t in tasks if t not in data.frames]
    if missing:
        raise DataError(f"training data lacks features of {', '.join(missing)}")
    t_data = time.time() - t0
    model, log = fit(cfg, data, progress)
    t_train = time.time() - t0 - t_data
    out_dir = Path(out_dir)
    info = {
        "name": cfg.name,
        "task": cfg.task,
        "trained_on": list(tasks),
        "value_ranges": {t: data.ranges[t] for t in tasks},
        "data": data.source,
        "training": {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "data_seconds": round(t_data, 1),
            "train_seconds": round(t_train, 1),
            "final": log[-1],
            "torch": torch.__version__,
            "loss_log": log,
        },
    }
    meta = export_codec(model, out_dir, info)
    meta["rd"] = measure(out_dir, data, tasks, progress)
    (out_dir / "codec.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def train_shipped(
    out_root: str | Path, base: CodecTrainConfig | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Train every shipped codec (sharing one feature extraction) and write the model card."""
    base = base or CodecTrainConfig()
    out_root = Path(out_root)
    data = prepare_data(base.model, TASKS, base.n_train, base.n_val, base.bit_depth, progress)
    metas = []
    for variant, task in SHIPPED_SET:
        cfg = CodecTrainConfig(**{**asdict(base), "variant": variant, "task": task})
        metas.append(train_codec(cfg, out_root / cfg.name, data, progress))
    write_model_card(out_root, metas)
    return metas


def _command(tr: dict[str, Any]) -> str:
    """The ``cfqa train-codec --shipped`` line that reproduces a training config."""
    defaults = asdict(CodecTrainConfig())
    parts = ["cfqa train-codec --shipped --out cfqa_core/weights/codecs"]  # without --out: the user's data folder
    for key in ("steps", "batch", "lr", "n_train", "n_val", "model", "seed"):
        if tr.get(key) != defaults[key]:
            parts.append(f"--{key.replace('_', '-')} {tr[key]}")
    if tuple(tr.get("lambdas", ())) != defaults["lambdas"]:
        parts.append("--lambdas " + " ".join(f"{v:g}" for v in tr["lambdas"]))
    return " ".join(parts)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _saturation_note(metas: list[dict[str, Any]]) -> str:
    """How little the top of the ladder (k 3 -> 0) adds in PSNR for its rate, Cls/Seg rows."""
    tops, gains, rates = [], [], []
    for m in metas:
        for task, rows in m["rd"].items():
            by_k = {r["rate_point"]: r for r in rows}
            if task == "dpt" or 0 not in by_k or 3 not in by_k:
                continue
            tops.append(by_k[0]["psnr_db"])
            gains.append(by_k[0]["psnr_db"] - by_k[3]["psnr_db"])
            rates.append(by_k[0]["bpfp"] / max(by_k[3]["bpfp"], 1e-9))
    if not tops:
        return "- Limit: the transforms saturate at the top of the ladder (no Cls/Seg measurements here):"
    return (f"- Limit: the transforms saturate at the top of the ladder (Cls/Seg: {min(tops):.1f} to "
            f"{max(tops):.1f} dB PSNR at k = 0; k 3 -> 0 adds {min(gains):.2f} to {max(gains):.2f} dB for "
            f"{min(rates):.1f} to {max(rates):.1f}x the rate), so the highest lambdas differ mostly in rate:")


def write_model_card(out_root: str | Path, metas: list[dict[str, Any]]) -> Path:
    """``README.md`` next to the codec folders: architecture, command, data, measured rate/distortion."""
    out_root = Path(out_root)
    first = metas[0]
    tr = first["training"]
    cfg = first["config"]
    sizes = {m["name"]: folder_size(out_root / m["name"]) for m in metas}
    lines = [
        "# Learned feature codecs (hyperprior)",
        "",
        "Scale hyperprior (Ballé et al. 2018) and mean-scale hyperprior (Minnen et al. 2018, no",
        "context model) coding a DINOv2 feature as one 1-channel frame (tokens x channels per",
        "slice, slices stacked), truncated to the task's range, quantised to",
        f"{tr['bit_depth']} bits and normalised to [0, 1], padded by edge replication to a multiple of 64.",
        "",
        "## Architecture",
        "",
        f"- g_a / g_s: 4 conv 5x5 stride-2 layers with GDN / IGDN, N = {cfg['N']}, latent M = {cfg['M']};",
        f"- h_a / h_s: conv 3x3 + 2 conv 5x5 stride-2 (ReLU; LeakyReLU for mean-scale), Nh = {cfg['Nh']};",
        "- factorised prior on z (range-coded with tabulated per-channel PMFs), Gaussian",
        "  conditional on y (scales rounded up to a 64-level log table 0.11..256; means for mean-scale);",
        "- variable rate with gain units (Cui et al. 2021): one network per codec, one",
        "  per-channel gain on y and z (and its inverse) per lambda. Rate point k is lambda index k,",
        "  0 = highest quality.",
        "- Files: `g_a/h_a/h_s/g_s.onnx` (dynamic H/W, float16 conv weights), `tables.npz`",
        "  (prior PMFs, gains, scale table), `codec.json` (config, training, measurements).",
        "",
        "## Training",
        "",
        f"- Data: features of the backbone `{first['data']['model']}` (digest `{first['data']['model_digest']}`)",
        f"  on {first['data']['train_scenes']} `train` scenes; measured on {first['data']['val_scenes']} `val` scenes.",
        f"- Loss: lambda * 255^2 * MSE + bpp, Adam, lr {tr['lr']} (cosine to {tr['min_lr']}), "
        f"{tr['steps']} steps of {tr['batch']} crops of {tr['crop']} rows, seed {tr['seed']}.",
        f"- Command: `{_command(tr)}` (all five codecs; "
        f"{sum(m['training']['train_seconds'] for m in metas) / 60:.1f} min of training "
        f"with {tr['threads']} CPU threads).",
        _saturation_note(metas),
        "  a feature frame has no spatial correlation along its channel axis for 5x5 convolutions",
        "  to exploit, and a 48-channel network trained for minutes on CPU is far from converged.",
        "",
        "## Measured rate and distortion (real bitstreams, ONNX Runtime path)",
        "",
        "MSE in feature units against the truncated original; PSNR relative to the task's range",
        "(mean width of the four per-block ranges for dpt).",
        "",
        "| codec | task | k | lambda | BPFP | MSE | PSNR (dB) | enc ms | dec ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in metas:
        for task, rows in m["rd"].items():
            for r in rows:
                lines.append(
                    f"| {m['name']} | {task} | {r['rate_point']} | {r['lambda']:g} | {r['bpfp']:.4f} | "
                    f"{r['mse']:.3e} | {r['psnr_db']:.2f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
                )
    lines += [
        "",
        "## Per codec",
        "",
        "| codec | trained on | steps | train s | final train bpp | files (bytes) |",
        "|---|---|---|---|---|---|",
    ]
    for m in metas:
        t = m["training"]
        lines.append(
            f"| {m['name']} | {', '.join(m['trained_on'])} | {t['steps']} | {t['train_seconds']:.0f} | "
            f"{t['final']['bpp']:.3f} | {sizes[m['name']]:,} |"
        )
    lines += [f"| total | | | | | {sum(sizes.values()):,} |", ""]
    path = out_root / "README.md"
    path.write_text("\n".join(lines))
    return path
