"""Training-step speed of the embedded model (what bounds `cfqa train`'s quality in 45 minutes).

Times `train_step` (forward of the three heads, backward, AdamW) on one batch
of random pixels at the two resolutions of progressive resizing, in float32
and in bfloat16 autocast, with the model's attention as shipped (explicit
matmuls under bfloat16 on CPU) and with PyTorch's fused
scaled_dot_product_attention forced in its place. Also reports the wall time
the default TrainConfig's step schedule implies.

Writes benchmarks/results/train_step.json and train_step.md.

    PYTHONPATH=. python benchmarks/bench_train_step.py [--repeats 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


@contextmanager
def _fused_attention():
    """Route the model's bfloat16 attention through F.scaled_dot_product_attention."""
    from cfqa_core.models import dinov2

    explicit = dinov2._explicit_attention
    dinov2._explicit_attention = torch.nn.functional.scaled_dot_product_attention
    try:
        yield
    finally:
        dinov2._explicit_attention = explicit


def _time_steps(res: int, bf16: bool, repeats: int) -> float:
    from cfqa_core.training.train_model import TrainConfig, make_optimizer, new_embedded_model, train_step

    cfg = replace(TrainConfig(), bf16=bf16)
    torch.manual_seed(0)
    model = new_embedded_model().train()
    opt = make_optimizer(model, cfg)
    grid = model.meta.config.img_size // cfg.loss_stride
    batch = (
        torch.randn(cfg.batch, 3, res, res),
        torch.randint(0, model.meta.cls_classes, (cfg.batch,)),
        torch.randint(0, model.meta.seg_classes, (cfg.batch, grid, grid)),
        torch.rand(cfg.batch, grid, grid) * 10,
    )
    for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
        train_step(model, opt, batch, cfg)
    t0 = time.perf_counter()
    for _ in range(repeats):
        train_step(model, opt, batch, cfg)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    from cfqa_core.models.dinov2 import CONFIGS
    from cfqa_core.training.train_model import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    cfg = TrainConfig()
    torch.set_num_threads(cfg.threads)
    native = CONFIGS["embedded"].img_size
    rows = []
    # float32 never takes the explicit path, so it is timed once (as SDPA).
    for attention, bf16 in (("explicit", True), ("fused-sdpa", True), ("sdpa", False)):
        for res in (cfg.low_res, native):
            with _fused_attention() if attention == "fused-sdpa" else nullcontext():
                s = _time_steps(res, bf16, args.repeats)
            rows.append({"attention": attention, "dtype": "bf16" if bf16 else "fp32", "res": res,
                         "tokens": 1 + (res // CONFIGS["embedded"].patch_size) ** 2, "s_per_step": round(s, 3)})

    def step_s(attention: str, res: int) -> float:
        return next(r["s_per_step"] for r in rows if r["attention"] == attention and r["res"] == res)

    low_steps = int(cfg.steps * cfg.low_res_fraction)
    schedule = {
        a: round(low_steps * step_s(a, cfg.low_res) + (cfg.steps - low_steps) * step_s(a, native))
        for a in ("explicit", "fused-sdpa")
    }
    result = {
        "train_config": {"steps": cfg.steps, "batch": cfg.batch, "low_res": cfg.low_res,
                         "low_res_fraction": cfg.low_res_fraction, "threads": cfg.threads},
        "schedule_train_seconds": schedule,
        "speedup_explicit_vs_fused": round(schedule["fused-sdpa"] / schedule["explicit"], 2),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_avg": os.getloadavg()},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_step.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = ["attention", "dtype", "res", "tokens", "s_per_step"]
    lines = [
        "# Training-step speed of the embedded model",
        "",
        f"Batch {cfg.batch}, {cfg.threads} threads, torch {torch.__version__} "
        f"({result['machine']['cpu_capability']}). The default schedule ({cfg.steps} steps, "
        f"{low_steps} at {cfg.low_res} px then {cfg.steps - low_steps} at {native} px, bf16) implies "
        f"**{schedule['explicit']} s** of training with the explicit attention and {schedule['fused-sdpa']} s "
        f"with fused SDPA ({result['speedup_explicit_vs_fused']}x).",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    lines += ["", "Random pixels and targets; the step's cost does not depend on their values.",
              f"Load average during the run: {', '.join(f'{x:.2f}' for x in result['machine']['load_avg'])}."]
    (RESULTS / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
