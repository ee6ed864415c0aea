"""The project's DINOv2 backbone against Hugging Face ``transformers.Dinov2Model``, same weights, same input.

A ``Dinov2Model`` with seeded random weights is saved as a real local HF
folder and loaded by the project's own loader (``backbone_from_hf_folder``),
so both sides hold identical weights; outputs (final-normed tokens) are
compared and both forward passes timed at batch 1 and 8, in interleaved rounds
so that load from other processes hits both alike; torch on one thread. Wall
time and the CPU time of the calling thread are reported; ratio = ours / HF.

Configs: ``embedded`` (128 wide, 8 blocks, 4 heads, 168 px: the shipped
model's shape) and ``vit-s`` (DINOv2 ViT-S/14: 384 wide, 12 blocks, 6 heads, 224 px).

Writes benchmarks/results/backbone.json and backbone.md. Run niced, e.g.
``nice -n 10 python benchmarks/bench_backbone.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CONFIGS = {
    "embedded": dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, image_size=168),
    "vit-s": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224),
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def build(name: str, tmp: Path):
    """(HF model, ours) with identical weights."""
    import transformers

    from cfqa_core.models.checkpoint import backbone_from_hf_folder

    cfg = transformers.Dinov2Config(patch_size=14, layer_norm_eps=1e-6, **CONFIGS[name])
    hf = transformers.Dinov2Model(cfg)
    _randomise(hf, 0)
    hf.eval()
    folder = tmp / name
    hf.save_pretrained(folder)
    ours = backbone_from_hf_folder(folder).eval()
    return hf, ours


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return 1e3 * (time.perf_counter() - t0), 1e3 * (time.thread_time() - c0)


def compare(name: str, hf, ours, batch: int, rounds: int) -> dict:
    size = CONFIGS[name]["image_size"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    sides = {"ours": lambda: ours.forward_features(x), "hf": lambda: hf(pixel_values=x).last_hidden_state}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    with torch.inference_mode():
        diff = float((sides["ours"]() - sides["hf"]()).abs().max())
        for _ in range(rounds):
            for k, fn in sides.items():
                times[k].append(_timed(fn))
    row = {"config": name, "batch": batch, "rounds": rounds, "max_abs_diff": diff}
    for k, ts in times.items():
        row[f"{k}_wall_ms_median"] = round(statistics.median(w for w, _ in ts), 3)
        row[f"{k}_wall_ms_min"] = round(min(w for w, _ in ts), 3)
        row[f"{k}_cpu_ms_median"] = round(statistics.median(c for _, c in ts), 3)
    row["ratio_wall_median"] = round(row["ours_wall_ms_median"] / row["hf_wall_ms_median"], 4)
    row["ratio_wall_min"] = round(row["ours_wall_ms_min"] / row["hf_wall_ms_min"], 4)
    row["ratio_cpu_median"] = round(row["ours_cpu_ms_median"] / row["hf_cpu_ms_median"], 4)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="embedded,vit-s")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import transformers

    torch.set_num_threads(1)
    load0 = [round(v, 2) for v in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cfqa-backbone-") as t:
        for name in args.configs.split(","):
            hf, ours = build(name, Path(t))
            attn = getattr(hf.config, "_attn_implementation", "?")
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append({**compare(name, hf, ours, batch, args.rounds), "hf_attention": attn})
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "loadavg_start": load0,
                    "loadavg_end": [round(v, 2) for v in os.getloadavg()],
                    "note": "shared machine: other processes ran alongside"},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# Backbone vs Hugging Face Dinov2Model (same weights, same input)", "",
             f"torch {m['torch']}, transformers {m['transformers']}, 1 torch thread; {m['cpus']} CPUs shared with "
             f"other work (load average {m['loadavg_start']} at start, {m['loadavg_end']} at the end); "
             f"{args.rounds} interleaved rounds. Ratio = ours / HF (below 1: ours is faster).", "",
             "| config | batch | ours wall ms (median / min) | HF wall ms (median / min) | ratio wall (median / min) "
             "| ours CPU ms | HF CPU ms | ratio CPU | max abs diff | HF attention |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['batch']} | {r['ours_wall_ms_median']:.2f} / {r['ours_wall_ms_min']:.2f} "
                     f"| {r['hf_wall_ms_median']:.2f} / {r['hf_wall_ms_min']:.2f} | **{r['ratio_wall_median']:.3f}** "
                     f"/ {r['ratio_wall_min']:.3f} | {r['ours_cpu_ms_median']:.2f} | {r['hf_cpu_ms_median']:.2f} | "
                     f"**{r['ratio_cpu_median']:.3f}** | {r['max_abs_diff']:.2g} | {r['hf_attention']} |")
    (out / "backbone.md").write_text("\n".join(lines) + "\n")
    print((out / "backbone.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
