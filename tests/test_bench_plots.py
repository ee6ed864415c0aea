"""Benchmark figures: panels only for existing cells, readable log axes, Cls within 100 %, legends outside."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfqa_core.benchmark import plots
from cfqa_core.benchmark.bootstrap import OriginalBootstrap
from cfqa_core.benchmark.protocol import per_feature_correlations, summarise
from cfqa_core.benchmark.report import rate_accuracy_table

# Cells that exist: hevc on cls and seg, hyper on seg only (no hyper/cls, no dpt at all).
CELLS = (("hevc", "cls"), ("hevc", "seg"), ("hyper", "seg"))


def table(images: int = 6, points: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for codec, task in CELLS:
        for i in range(images):
            d = np.sort(rng.uniform(0, 1, points))
            for k in range(points):
                rows.append({
                    "image_id": f"im{i}", "task": task, "codec": codec,
                    "family": "hevc" if codec == "hevc" else "learned",
                    "rate_point": k, "rate_index": k, "gt_distortion": float(d[k] if task == "cls" else -d[k]),
                    # bpfp over four decades, MSE over five: log axes with many candidate ticks.
                    "bpfp": 10.0 ** (1 - 4 * k / (points - 1)) * (1 + 0.01 * i),
                    "task_score": float(k < points - 2), "ref_task_score": 1.0,
                    # 1 - cosine within one decade: matplotlib would label its minor ticks, overlapping.
                    "mse": float(1e-5 * 10 ** (5 * d[k])), "cosine": float(1 - 0.1 * (0.25 + 0.6 * d[k])),
                })
    return pd.DataFrame(rows)


@pytest.fixture
def figures(monkeypatch):
    """Every figure as drawn, just before it is saved and closed."""
    seen = {}
    finish = plots._finish

    def record(fig, path, title, legend=None, right=1.6, after=None):
        import matplotlib.pyplot as plt

        orig_close = plt.close
        plt.close = lambda f=None: None  # keep the figure alive for the checks
        try:
            finish(fig, path, title, legend, right, after)
        finally:
            plt.close = orig_close
        fig.canvas.draw()
        seen[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_finish", record)
    yield seen
    import matplotlib.pyplot as plt

    for fig in seen.values():
        plt.close(fig)


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_position().width > 0.05]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_panels_only_for_existing_cells(tmp_path, figures):
    t = table()
    pf = per_feature_correlations(t, ["mse", "cosine"])
    plots.plcc_histogram(pf, ["mse", "cosine"], tmp_path)
    plots.scatter_plots(t, ["mse"], tmp_path)
    for name in ("plcc_hist.png", "scatter_mse.png"):
        titles = sorted(ax.get_title().split(" (")[0] for ax in _panels(figures[name]))
        assert titles == sorted(f"{c} / {k}" for c, k in CELLS), name
    summary, _ = summarise(pf, OriginalBootstrap(pf, resamples=200))
    plots.correlations(summary, ["mse", "cosine"], tmp_path)
    labels = [x.get_text() for x in figures["correlations.png"].axes[0].get_yticklabels()]
    assert labels == ["hevc / cls", "hevc / seg", "hyper / seg"]


def test_log_axes_have_few_non_overlapping_labels_and_cls_stops_at_100(tmp_path, figures):
    t = table()
    plots.rate_accuracy(rate_accuracy_table(t), tmp_path)
    plots.scatter_plots(t, ["mse", "cosine"], tmp_path)
    fig = figures["rate_accuracy.png"]
    cls = next(ax for ax in fig.axes if ax.get_title() == "cls")
    assert cls.get_ylim()[1] <= 100.0
    assert max(np.max(np.asarray(line.get_ydata(), float)) for line in cls.get_lines()) == 100.0
    renderer = fig.canvas.get_renderer()
    for name in ("rate_accuracy.png", "scatter_mse.png", "scatter_cosine.png"):
        for ax in _panels(figures[name]):
            if ax.get_xscale() != "log":
                continue
            shown = [lab for lab in ax.get_xticklabels() if lab.get_text() and lab.get_visible()
                     and ax.get_xlim()[0] <= lab.get_position()[0] <= ax.get_xlim()[1]]
            assert 1 <= len(shown) <= 6, (name, [s.get_text() for s in shown])
            boxes = [lab.get_window_extent(renderer) for lab in shown]
            assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), name


def test_legends_sit_outside_every_panel(tmp_path, figures):
    t = table()
    pf = per_feature_correlations(t, ["mse", "cosine"])
    summary, _ = summarise(pf, OriginalBootstrap(pf, resamples=200))
    plots.correlations(summary, ["mse", "cosine"], tmp_path)
    plots.plcc_histogram(pf, ["mse", "cosine"], tmp_path)
    plots.rate_accuracy(rate_accuracy_table(t), tmp_path)
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        assert fig.legends, name
        box = fig.legends[0].get_window_extent(renderer)
        for ax in _panels(fig):
            assert not _overlap(box, ax.get_window_extent(renderer)), name
