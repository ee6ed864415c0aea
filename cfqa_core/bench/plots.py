"""Figures of the benchmark report (matplotlib, Agg backend, PNG).

- ``scatter_<metric>.png``: metric against GT distortion, one panel per task x codec;
- ``plcc_hist.png``: per-feature PLCC rounded to 0.1, one panel per codec x task
  (as the paper's figure), one bar colour per metric;
- ``rate_accuracy.png``: mean task score against mean BPFP per rate point, one
  line per codec, one panel per task.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfqa_core.bench.protocol import task_order

DPI = 110
HIST_BINS = np.round(np.arange(-1.0, 1.0001, 0.1), 1)
DISTORTION_LABEL = {"cls": "rank of true label", "seg": "mIoU(f^) - mIoU(f)", "dpt": "RMSE(f^) - RMSE(f) [m]"}
SCORE_LABEL = {"cls": "top-1 accuracy", "seg": "mIoU", "dpt": "RMSE [m] (lower = better)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TOP_IN = 0.62  # inches kept above the panels for the title (and legend)


def _grid(plt, rows: int, cols: int, w: float = 3.2, h: float = 2.6):
    # A floor on the width keeps the title readable with a single column of panels.
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, 0.6 + w * cols), TOP_IN + 0.3 + h * rows), squeeze=False)
    return fig, axes


def _finish(fig, path: Path, title: str, legend_handles=None) -> Path:
    """Title (and a one-row legend) above the panels, tight layout below them, save as PNG."""
    top = 1.0 - (TOP_IN if legend_handles else 0.4) / fig.get_figheight()
    fig.suptitle(title, fontsize=11, y=1.0 - 0.12 / fig.get_figheight(), va="top")
    if legend_handles:
        handles, labels = legend_handles
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 1.0 - 0.38 / fig.get_figheight()))
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _metric_axis(metric: str, values: np.ndarray, upper: float | None) -> tuple[np.ndarray, str, bool]:
    """x values, axis label, log scale: similarities near 1 read best as 1 - s on a log axis."""
    if upper == 1.0 and np.all(values < 1.0) and values.size:
        return 1.0 - values, f"1 - {metric} (log)", True
    if metric == "mse" and np.all(values > 0) and values.size:
        return values, "mse (log)", True
    return values, metric, False


def scatter_plots(table, metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """One figure per metric: metric vs distortion for every task x codec."""
    from cfqa_core.metrics import METRICS

    plt = _pyplot()
    tasks = task_order(table["task"].unique())
    codecs = sorted(table["codec"].unique())
    paths = []
    for metric in metrics:
        fig, axes = _grid(plt, len(tasks), len(codecs))
        spec = METRICS.get(metric)
        upper = spec.range[1] if spec and spec.range else None
        for i, task in enumerate(tasks):
            for j, codec in enumerate(codecs):
                ax = axes[i][j]
                cell = table[(table["task"] == task) & (table["codec"] == codec)]
                x = cell[metric].to_numpy(np.float64)
                y = cell["gt_distortion"].to_numpy(np.float64)
                ok = np.isfinite(x) & np.isfinite(y)
                xv, label, log = _metric_axis(metric, x[ok], upper)
                if ok.any():
                    ax.scatter(xv, y[ok], s=6, alpha=0.45, c=cell["rate_point"].to_numpy(np.float64)[ok],
                               cmap="viridis", linewidths=0)
                    if log and np.all(xv > 0):
                        ax.set_xscale("log")
                dropped = int((~ok).sum())
                ax.set_title(f"{codec} / {task}" + (f" ({dropped} non-finite)" if dropped else ""), fontsize=9)
                ax.set_xlabel(label, fontsize=8)
                ax.set_ylabel(DISTORTION_LABEL.get(task, "gt_distortion"), fontsize=8)
                ax.tick_params(labelsize=7)
        paths.append(_finish(fig, out_dir / f"scatter_{metric}.png",
                             f"{metric} vs ground-truth distortion (colour: rate point, dark = high quality)"))
    return paths


def plcc_histogram(per_feature, metrics: Sequence[str], out_dir: Path) -> Path:
    """Histogram of per-feature PLCC rounded to 0.1 (raw sign), codec x task panels."""
    plt = _pyplot()
    codecs = sorted(per_feature["codec"].unique())
    tasks = task_order(per_feature["task"].unique())
    fig, axes = _grid(plt, len(codecs), len(tasks), w=4.0, h=2.4)
    width = 0.085 / max(len(metrics), 1)
    colours = plt.get_cmap("tab10").colors
    for i, codec in enumerate(codecs):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            cell = per_feature[(per_feature["codec"] == codec) & (per_feature["task"] == task)]
            for k, metric in enumerate(metrics):
                v = cell.loc[cell["metric"] == metric, "plcc"].to_numpy(np.float64)
                v = np.round(v[np.isfinite(v)], 1)
                counts = np.array([(np.isclose(v, b)).sum() for b in HIST_BINS])
                offset = (k - (len(metrics) - 1) / 2) * width
                ax.bar(HIST_BINS + offset, counts, width=width, color=colours[k % 10], label=metric)
            if not np.isfinite(cell["plcc"].to_numpy(np.float64)).any():
                ax.text(0.5, 0.5, "no defined PLCC\n(constant distortion)", transform=ax.transAxes,
                        ha="center", va="center", fontsize=8, color="grey")
            ax.set_title(f"{codec} / {task}", fontsize=9)
            ax.set_xlim(-1.08, 1.08)
            ax.set_xlabel("per-feature PLCC (metric vs distortion, raw sign)", fontsize=7)
            ax.set_ylabel("features", fontsize=8)
            ax.tick_params(labelsize=7)
    return _finish(fig, out_dir / "plcc_hist.png", "Distribution of per-feature PLCC (rounded to 0.1)",
                   axes[0][0].get_legend_handles_labels())


def rate_accuracy(curves, out_dir: Path) -> Path | None:
    """Mean task score vs mean BPFP per rate point (``curves`` from report.rate_accuracy_table)."""
    curves = curves[np.isfinite(curves["bpfp"]) & np.isfinite(curves["task_score"])]
    if curves.empty:
        return None
    plt = _pyplot()
    tasks = task_order(curves["task"].unique())
    fig, axes = _grid(plt, 1, len(tasks), w=4.0, h=3.2)
    for j, task in enumerate(tasks):
        ax = axes[0][j]
        for codec, c in curves[curves["task"] == task].groupby("codec", sort=True):
            c = c.sort_values("bpfp")
            ax.plot(c["bpfp"], c["task_score"], marker="o", ms=3, label=codec)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("bits per feature point", fontsize=8)
        ax.set_ylabel(SCORE_LABEL.get(task, "task score"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, out_dir / "rate_accuracy.png", "Rate-accuracy (mean over images per rate point)")
