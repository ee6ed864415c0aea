"""Synthetic benchmark tables with known answers, for tests of the policies.

TEST DATA ONLY: the numbers follow the shapes of real measurements (bytes
halve every 6 QP, the metric's distortion doubles every ``qp_per_doubling``
QP, scaled per image by a *difficulty*) but are not measurements. A frame's
task output is correct exactly when its cosine is at least ``cutoff``, so
the right threshold of a calibration is known.
"""
from __future__ import annotations

import numpy as np

from cfqa_core.benchmark.table.schema import BASE_COLUMNS

QPS: tuple[int, ...] = (22, 26, 30, 34, 38, 42, 46)
ELEMENTS = 145 * 128


def synthetic_frame(difficulty: np.ndarray, *, task: str = "cls", codec: str = "hevc", qps: tuple[int, ...] = QPS,
                    cutoff: float = 0.999, base_gap: float = 2e-4, qp_per_doubling: float = 4.0,
                    base_bytes: float = 20000.0, ref_score: float = 1.0, seed: int = 0):
    """A pandas table in the benchmark schema: one row per image (difficulty) and QP.

    cosine = 1 - base_gap x difficulty x 2^((qp - qps[0]) / qp_per_doubling), monotone in QP;
    bytes = base_bytes x difficulty^0.5 x 2^(-(qp - qps[0]) / 6). cls: task_score 1 when
    cosine >= cutoff else 0; seg/dpt: ``ref_score`` moved by 10 x (cutoff - cosine) when below.
    ``output_change``: cls 1 when the output is wrong; seg/dpt 20 x (1 - cosine), so that it is
    within the default 2 % tolerance exactly when cosine >= 0.999 (the default ``cutoff``).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i, k in enumerate(np.asarray(difficulty, dtype=float)):
        for rank, qp in enumerate(qps):
            q = qp - qps[0]
            gap = base_gap * k * 2.0 ** (q / qp_per_doubling)
            cos = 1.0 - gap
            nbytes = int(base_bytes * np.sqrt(k) * 2.0 ** (-q / 6.0)) + 20
            ok = cos >= cutoff
            if task == "cls":
                score, dist = float(ok), 1.0 if ok else 2.0
            else:
                harm = 0.0 if ok else 10.0 * (cutoff - cos)
                score = ref_score - harm if task == "seg" else ref_score * (1.0 + harm)
                dist = score - ref_score
            rows.append({
                "image_id": f"img{i:04d}", "task": task, "codec": codec, "rate_point": qp, "family": codec,
                "rate_index": rank, "bytes": nbytes, "meta_bytes": 50, "bpfp": 8.0 * nbytes / ELEMENTS,
                "encode_s": 0.010 + 0.001 * rng.random(), "decode_s": 0.002, "gt_distortion": dist,
                "output_change": (0.0 if ok else 1.0) if task == "cls" else 20.0 * gap,
                "task_score": score, "ref_task_score": ref_score, "feature_elements": ELEMENTS,
                "cosine": cos, "proxy": gap / (1.0 - cutoff), "mse": gap * 0.5,
                "psnr": 10.0 * np.log10(1.0 / (gap * 0.5)),
            })
    return pd.DataFrame(rows, columns=[*BASE_COLUMNS, "cosine", "proxy", "mse", "psnr"])
