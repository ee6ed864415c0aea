"""The benchmark table: one row per (image, task, codec, rate point).

Every consumer (the PLCC/SROCC protocol, policy evaluation, the simulator's
replay mode) reads the column names from here.
"""
from __future__ import annotations

from pathlib import Path

from cfqa_core.errors import DataError

KEY_COLUMNS: tuple[str, ...] = ("image_id", "task", "codec", "rate_point")
BASE_COLUMNS: tuple[str, ...] = (
    *KEY_COLUMNS,
    "family",          # codec family: hevc, vvc, av1, learned, ...
    "rate_index",      # position on the codec's ladder, 0 = highest quality
    "bytes",           # bitstream bytes that are sent
    "meta_bytes",      # decode sidecar, counted separately
    "bpfp",            # 8 * bytes / feature elements
    "encode_s",
    "decode_s",
    "gt_distortion",   # the paper's semantic distortion (see cfqa_core.distortion)
    "output_change",   # change of the task output from the uncompressed one (cfqa_core.fidelity)
    "task_score",      # absolute score vs ground truth from f^: cls correct 0/1, seg mIoU, dpt RMSE
    "ref_task_score",  # the same from the uncompressed feature f
    "feature_elements",
)
DEFAULT_METRICS: tuple[str, ...] = ("mse", "psnr", "cosine", "cosine_flat", "cka")
TABLE_FILE = "table.parquet"
# Distilled from the embedded model's cloud: their shipped weights fit no other model.
TASK_AWARE_METRICS: tuple[str, ...] = ("proxy", "proxy_risk")


def default_metrics(model: str) -> tuple[str, ...]:
    """The metrics a build scores unless told: the paper's, and the task-aware ones for the embedded model."""
    return DEFAULT_METRICS + (TASK_AWARE_METRICS if model == "embedded" else ())


def require_columns(columns, needed, what: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{what} lacks column(s): {', '.join(missing)}")


def read_table(path: str | Path, metrics: tuple[str, ...] = ()):
    """Load a benchmark table (a parquet file or a build folder) and check its columns."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / TABLE_FILE
    if not path.is_file():
        raise DataError(f"benchmark table not found: {path} (run 'cfqa dataset build')")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise DataError(f"cannot read benchmark table {path}: {str(exc).splitlines()[0]}") from None
    require_columns(table.columns, (*BASE_COLUMNS, *metrics), f"benchmark table {path}")
    return table
