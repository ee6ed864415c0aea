"""Figures of the benchmark report (matplotlib, Agg backend, PNG): one figure per question.

- ``correlations.png``: how well does each metric track the distortion?
  Oriented PLCC with its 95 % interval, one row per (codec, task) cell that exists.
- ``findings.png``: do the paper's findings hold? Each tested difference with its interval.
- ``rate_halves.png``: are the metrics less reliable at low bitrates? PLCC on the
  high-rate and the low-rate half of each ladder.
- ``plcc_hist.png``: how stable is each metric? Per-feature PLCC distribution, one
  row per task, one panel per codec that task has.
- ``rate_accuracy.png``: how much does each codec damage each task?
- ``scatter_<metric>.png``: the raw data, metric against distortion per existing cell.

Legends sit outside the data (right of the panels); log axes carry at most a
few labelled ticks; the Cls accuracy axis runs 0-100 %.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfqa_core.benchmark.protocol import task_order

DPI = 110
MAX_COLS = 4
DISTORTION_LABEL = {"cls": "rank of true label", "seg": "mIoU(f^) - mIoU(f)", "dpt": "RMSE(f^) - RMSE(f) [m]"}
FIDELITY_LABEL = "output change"
SCORE_LABEL = {"cls": "top-1 accuracy [%]", "seg": "mIoU", "dpt": "RMSE [m] (lower = better)"}
VERDICT_COLOUR = {"holds": "tab:green", "does not hold": "tab:red", "undecided (interval too wide)": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(metrics: Sequence[str]) -> dict[str, tuple]:
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    return {m: palette[k % 10] for k, m in enumerate(metrics)}


def _cells(frame) -> list[tuple[str, str]]:
    """(codec, task) pairs present in ``frame``, in task order then codec name."""
    pairs = set(zip(frame["codec"], frame["task"]))
    return [(c, t) for t in task_order({t for _, t in pairs}) for c in sorted({c for c, tt in pairs if tt == t})]


def _panel_grid(plt, n: int, w: float = 3.3, h: float = 2.6, cols: int = MAX_COLS, right: float = 1.6):
    """Exactly ``n`` panels (unused grid slots removed); ``right`` inches kept for the legend."""
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols + right, 0.8 + h * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def _task_grid(plt, cells: list[tuple[str, str]], w: float = 3.3, h: float = 2.6, right: float = 1.6):
    """One row per task, one panel per codec of that task (unused slots removed): ``{(codec, task): ax}``."""
    tasks = task_order({t for _, t in cells})
    per_task = {t: [c for c, tt in cells if tt == t] for t in tasks}
    cols = max(len(v) for v in per_task.values())
    fig, axes = plt.subplots(len(tasks), cols, figsize=(w * cols + right, 0.8 + h * len(tasks)), squeeze=False)
    out = {}
    for i, t in enumerate(tasks):
        for j in range(cols):
            if j < len(per_task[t]):
                out[(per_task[t][j], t)] = axes[i][j]
            else:
                fig.delaxes(axes[i][j])
    return fig, out


def _finish(fig, path: Path, title: str, legend=None, right: float = 1.6, after=None) -> Path:
    """Title above, legend in the right margin (outside every panel), tight layout, PNG.

    ``after(fig, frac)`` adds what tight_layout must not move (a colour bar in the margin).
    """
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    frac = 1.0 - right / fig.get_figwidth()
    if legend:
        handles, labels = legend
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(frac + 0.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, frac, 1.0))  # tight_layout makes room for the suptitle itself
    if after is not None:
        after(fig, frac)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)  # nothing clipped at the edges
    plt.close(fig)
    return path


def _log_axis(ax, axis: str, values: np.ndarray) -> None:
    """Log scale with a handful of labelled ticks: no overlapping minor labels, whatever the span."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return
    getattr(ax, f"set_{axis}scale")("log")
    span = np.log10(v.max() / v.min()) if v.max() > v.min() else 0.0
    target = ax.xaxis if axis == "x" else ax.yaxis
    subs = (1.0, 2.0, 5.0) if span < 1.5 else (1.0,)
    target.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))
    target.set_major_formatter(LogFormatterSciNotation(base=10, labelOnlyBase=False))
    target.set_minor_formatter(NullFormatter())
    if span >= 1.5:
        # Several decades: label every n-th decade only, at most five labels.
        target.set_major_locator(LogLocator(base=10, numticks=5))


def _metric_axis(metric: str, values: np.ndarray, upper: float | None, higher_is_better: bool):
    """x values, axis label, log: similarities near 1 read best as 1 - s on a log axis."""
    if values.size and upper == 1.0 and np.all(values < 1.0):
        return 1.0 - values, f"1 - {metric}", True
    if values.size and not higher_is_better and np.all(values > 0) and values.max() > 20 * values.min():
        return values, metric, True
    return values, metric, False


# ---- correlations -----------------------------------------------------------------------------


def _forest(ax, rows: list[tuple[str, str]], summary, metrics, colours, col: str = "plcc_oriented") -> None:
    step = 0.8 / max(len(metrics), 1)
    index = {(r.codec, r.task, r.metric): r for r in summary.itertuples()}
    for k, m in enumerate(metrics):
        ys, xs, lo, hi = [], [], [], []
        for i, (c, t) in enumerate(rows):
            r = index.get((c, t, m))
            if r is None or not np.isfinite(getattr(r, col)):
                continue
            ys.append(i + (k - (len(metrics) - 1) / 2) * step)
            xs.append(getattr(r, col))
            lo.append(getattr(r, f"{col}_lo"))
            hi.append(getattr(r, f"{col}_hi"))
        if xs:
            xs, lo, hi = np.array(xs), np.array(lo), np.array(hi)
            ax.errorbar(xs, ys, xerr=[np.clip(xs - lo, 0, None), np.clip(hi - xs, 0, None)], fmt="o", ms=3.5,
                        lw=1, capsize=2, color=colours[m], label=m)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{c} / {t}" for c, t in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)


def correlations(summary, metrics: Sequence[str], out_dir: Path, name: str = "correlations.png",
                 title: str = "How well does each metric track the semantic distortion?") -> Path:
    """Oriented PLCC and SROCC with 95 % intervals per existing (codec, task) cell."""
    plt = _pyplot()
    rows = _cells(summary)
    colours = _colours(metrics)
    h = max(2.5, 0.22 * len(rows) * max(1, len(metrics)) ** 0.5 + 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, h), sharey=True, squeeze=False)
    for ax, col, label in ((axes[0][0], "plcc_oriented", "PLCC"), (axes[0][1], "srocc_oriented", "SROCC")):
        _forest(ax, rows, summary, metrics, colours, col)
        ax.set_xlabel(f"oriented {label} (+1 = tracks the distortion), 95 % interval", fontsize=8)
    return _finish(fig, out_dir / name, title, axes[0][0].get_legend_handles_labels())


# ---- findings ---------------------------------------------------------------------------------


def findings(verdicts, out_dir: Path, margin: float, name: str = "findings.png") -> Path | None:
    """Each tested difference with its interval, coloured by its verdict."""
    rows = [(v, c) for v in verdicts for c in v.comparisons if np.isfinite(c.lo) and np.isfinite(c.hi)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12.5, 1.2 + 0.32 * len(rows)))
    labels = []
    for i, (v, c) in enumerate(rows):
        colour = VERDICT_COLOUR.get(c.status, "grey")
        ax.errorbar([c.estimate], [i], xerr=[[max(c.estimate - c.lo, 0)], [max(c.hi - c.estimate, 0)]], fmt="o",
                    ms=4, capsize=2, color=colour)
        labels.append(f"{v.key.replace('_', ' ')}: {c.label}")
    ax.axvline(0, color="black", lw=0.8)
    ax.axvspan(-margin, margin, color="grey", alpha=0.15, lw=0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("difference claimed > 0 (oriented correlation), 95 % bootstrap interval; grey: |d| < margin",
                  fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=col) for col in VERDICT_COLOUR.values()]
    return _finish(fig, out_dir / name, "Do the paper's findings hold on this data?",
                   (handles, list(VERDICT_COLOUR)), right=2.2)


# ---- ladder halves ----------------------------------------------------------------------------


def rate_halves(cells: dict, metrics: Sequence[str], out_dir: Path, name: str = "rate_halves.png") -> Path | None:
    """PLCC on the high-rate vs the low-rate half of each ladder.

    ``cells``: ``{"codec/task/metric": {"high", "low", "high_ci", "low_ci", "n"}}`` (the low-rate finding's numbers).
    """
    entries = {tuple(k.split("/")): v for k, v in cells.items()}
    keys = [k for k, v in entries.items() if v["n"] and k[2] in metrics]
    if not keys:
        return None
    plt = _pyplot()
    shown = [m for m in metrics if any(k[2] == m for k in keys)]
    rows = _cells({"codec": [k[0] for k in keys], "task": [k[1] for k in keys]})
    fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown) + 1.8 + 1.6, 1.3 + 0.3 * len(rows)),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], shown):
        for half, colour, dy in (("high", "tab:blue", -0.15), ("low", "tab:red", 0.15)):
            ys, xs, lo, hi = [], [], [], []
            for i, (c, t) in enumerate(rows):
                e = entries.get((c, t, m))
                if not e or not e["n"] or e[f"{half}_ci"][0] is None or not np.isfinite(e[half]):
                    continue
                ys.append(i + dy)
                xs.append(e[half])
                lo.append(e[f"{half}_ci"][0])
                hi.append(e[f"{half}_ci"][1])
            xs, lo, hi = np.array(xs), np.array(lo), np.array(hi)
            ax.errorbar(xs, ys, xerr=[np.clip(xs - lo, 0, None), np.clip(hi - xs, 0, None)], fmt="o", ms=3.5,
                        capsize=2, color=colour, label=f"{half}-rate half")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(m, fontsize=9)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("oriented PLCC, 95 % interval", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    counts = {(c, t): max(entries[k]["n"] for k in keys if k[:2] == (c, t)) for c, t in rows}
    axes[0][0].set_yticks(range(len(rows)))
    axes[0][0].set_yticklabels([f"{c} / {t} (n={counts[(c, t)]})" for c, t in rows], fontsize=8)
    axes[0][0].set_ylim(len(rows) - 0.5, -0.5)
    return _finish(fig, out_dir / name, "Are the metrics less reliable at low bitrates? (each ladder split in halves)",
                   axes[0][0].get_legend_handles_labels(), right=1.8)


# ---- per-feature distribution -----------------------------------------------------------------


def plcc_histogram(per_feature, metrics: Sequence[str], out_dir: Path, name: str = "plcc_hist.png") -> Path:
    """Distribution of per-feature oriented PLCC (binned to 0.1 as the paper), one panel per existing cell."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    defined = per_feature[np.isfinite(per_feature["plcc_oriented"].to_numpy(np.float64))]
    cells = _cells(defined if len(defined) else per_feature)
    colours = _colours(metrics)
    fig, axes = _task_grid(plt, cells)
    edges = np.round(np.arange(-1.05, 1.0501, 0.1), 2)
    for (codec, task), ax in axes.items():
        cell = defined[(defined["codec"] == codec) & (defined["task"] == task)]
        for m in metrics:
            v = cell.loc[cell["metric"] == m, "plcc_oriented"].to_numpy(np.float64)
            if v.size:
                ax.hist(v, bins=edges, histtype="step", lw=1.4, color=colours[m], label=m)
        n = cell.groupby("metric").size().max() if len(cell) else 0
        ax.set_title(f"{codec} / {task} (n={n})", fontsize=9)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("per-feature oriented PLCC", fontsize=8)
        ax.set_ylabel("features", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=colours[m], lw=1.4) for m in metrics]
    return _finish(fig, out_dir / name, "How stable is each metric? Per-feature PLCC (+1 = tracks the distortion)",
                   (handles, list(metrics)))


# ---- rate-accuracy ----------------------------------------------------------------------------


def rate_accuracy(curves, out_dir: Path, name: str = "rate_accuracy.png", ladder: str = "") -> Path | None:
    """Mean task score vs mean BPFP per rate point: one panel per task, one line per codec."""
    curves = curves[np.isfinite(curves["bpfp"]) & np.isfinite(curves["task_score"])]
    if curves.empty:
        return None
    plt = _pyplot()
    tasks = task_order(curves["task"].unique())
    codecs = sorted(curves["codec"].unique())
    colours = _colours(codecs)
    fig, axes = _panel_grid(plt, len(tasks), w=3.8, h=3.0, right=2.0)
    for ax, task in zip(axes, tasks):
        part = curves[curves["task"] == task]
        scale = 100.0 if task == "cls" else 1.0
        for codec, c in part.groupby("codec", sort=True):
            c = c.sort_values("bpfp")
            # Not clipped: a Cls point at 100 % stays whole on an axis that stops at 100 %.
            ax.plot(c["bpfp"], c["task_score"] * scale, marker="o", ms=3, color=colours[codec], label=codec,
                    clip_on=task != "cls")
        if "ref_task_score" in part.columns and np.isfinite(part["ref_task_score"]).any():
            ax.axhline(float(np.nanmean(part["ref_task_score"])) * scale, color="black", ls="--", lw=0.8)
        if task == "cls":
            ax.set_ylim(0, 100)
        _log_axis(ax, "x", part["bpfp"].to_numpy(np.float64))
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("bits per feature point (log)", fontsize=8)
        ax.set_ylabel(SCORE_LABEL.get(task, "task score"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[c], marker="o", ms=3) for c in codecs]
    handles.append(plt.Line2D([], [], color="black", ls="--", lw=0.8))
    where = f" on the {ladder} ladder" if ladder else ""
    return _finish(fig, out_dir / name,
                   f"How much does each codec damage each task{where}? (mean over images per rate point)",
                   (handles, [*codecs, "uncompressed"]), right=2.0)


# ---- raw data ---------------------------------------------------------------------------------


def scatter_plots(table, metrics: Sequence[str], out_dir: Path, target: str = "gt_distortion") -> list[Path]:
    """One figure per metric: metric against the target, one panel per existing (codec, task) cell."""
    from cfqa_core.metrics import METRICS

    plt = _pyplot()
    cells = _cells(table)
    top = float(table["rate_index"].max()) if "rate_index" in table.columns else None
    paths = []
    for metric in metrics:
        spec = METRICS.get(metric)
        upper = spec.range[1] if spec and spec.range else None
        hib = bool(spec.higher_is_better) if spec else True
        fig, axes = _task_grid(plt, cells, right=1.2)
        sc = None
        for (codec, task), ax in axes.items():
            cell = table[(table["task"] == task) & (table["codec"] == codec)]
            x = cell[metric].to_numpy(np.float64)
            y = cell[target].to_numpy(np.float64)
            ok = np.isfinite(x) & np.isfinite(y)
            xv, label, log = _metric_axis(metric, x[ok], upper, hib)
            if ok.any():
                # One colour scale for every panel, so the colour bar reads the same on ladders of any length.
                sc = ax.scatter(xv, y[ok], s=6, alpha=0.5, c=cell["rate_index"].to_numpy(np.float64)[ok]
                                if "rate_index" in cell.columns else None, cmap="viridis", linewidths=0,
                                vmin=0, vmax=top)
                if log:
                    _log_axis(ax, "x", xv)
            dropped = int((~ok).sum())
            ax.set_title(f"{codec} / {task}" + (f" ({dropped} non-finite)" if dropped else ""), fontsize=9)
            ax.set_xlabel(label + (" (log)" if log else ""), fontsize=8)
            ax.set_ylabel(DISTORTION_LABEL.get(task, target) if target == "gt_distortion" else FIDELITY_LABEL,
                          fontsize=8)
            ax.tick_params(labelsize=7)
        def colour_bar(fig, frac, sc=sc):
            if sc is not None:
                cax = fig.add_axes((frac + 0.02, 0.2, 0.012, 0.55))
                cbar = fig.colorbar(sc, cax=cax)
                cbar.set_label("ladder position (0 = best)", fontsize=7)
                cbar.ax.tick_params(labelsize=7)

        what = "the semantic distortion" if target == "gt_distortion" else "the output change"
        paths.append(_finish(fig, out_dir / f"scatter_{metric}.png", f"{metric} against {what}, per codec and task",
                             right=1.2, after=colour_bar))
    return paths
