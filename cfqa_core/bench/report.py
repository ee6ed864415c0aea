"""The benchmark report: Markdown (the reference README's table layout), CSV, JSON, plots.

The report also checks three findings of the paper against the measured
numbers; every verdict is computed here from the data, never written by hand:

(a) cosine is the best and most stable baseline metric: the highest mean
    oriented PLCC and the lowest standard deviation of per-feature PLCC among
    MSE, cosine and CKA;
(b) hand-crafted codecs (hevc/vvc/av1/hm/vtm) are more predictable than learned
    ones: a higher mean oriented PLCC over the baseline metrics;
(c) Seg is the hardest task: the lowest mean oriented PLCC over codecs and
    baseline metrics.

"Mean PLCC" of a group is the mean of its (codec, task, metric) cell means;
PLCC is oriented (multiplied by the expected sign, see ``bench.protocol``)
so that a metric tracking the distortion scores +1 whatever the task.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.bench import plots
from cfqa_core.bench.protocol import per_feature_correlations, resolve_metrics, summarise, task_order

BASELINES: tuple[str, ...] = ("mse", "cosine", "cka")
DISPLAY = {"mse": "MSE", "psnr": "PSNR", "cosine": "Cosine", "cosine_flat": "Cosine (flat)",
           "cka": "CKA", "cka_seed": "CKA (seed)"}
TASK_DISPLAY = {"cls": "Cls", "seg": "Seg", "dpt": "Dpt"}
HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"
CONVENTION = (
    "PLCC/SROCC: for every original feature (image x task) and codec, the correlation over its rate points "
    "between the metric and the ground-truth distortion, then the mean over features (features whose "
    "distortion or metric is constant are left out and counted). Signs are raw, metric against distortion, "
    "as in the reference corr.py and README: MSE correlates positively and cosine/CKA negatively with a "
    "distortion that grows as quality drops (cls rank, dpt RMSE difference); for seg (mIoU difference, "
    "which falls) the signs flip. Oriented values multiply by the expected sign so that +1 always means "
    "the metric tracks the distortion."
)


@dataclass
class Verdict:
    key: str
    claim: str
    status: str
    detail: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Report:
    summary: object  # pandas DataFrame, one row per codec/task/metric
    per_feature: object
    results: dict
    verdicts: list[Verdict]
    markdown: str
    table_markdown: str
    paths: dict[str, str] = field(default_factory=dict)


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _name(metric: str) -> str:
    return DISPLAY.get(metric, metric)


def results_table_markdown(summary, metrics: Sequence[str]) -> str:
    """The reference README's layout: Codec | Task | <Metric> PLCC | <Metric> SROCC | ..."""
    head = ["**Codec**", "**Task**"]
    for m in metrics:
        head += [f"**{_name(m)} PLCC**", f"**{_name(m)} SROCC**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---:"] * len(head)) + "|"]
    index = {(r.codec, r.task, r.metric): r for r in summary.itertuples()}
    for codec in sorted(summary["codec"].unique()):
        for task in task_order(summary["task"].unique()):
            if not any((codec, task, m) in index for m in metrics):
                continue
            cells = [f"**{codec}**", TASK_DISPLAY.get(task, task)]
            for m in metrics:
                r = index.get((codec, task, m))
                cells += [_fmt(r.plcc), _fmt(r.srocc)] if r is not None else ["n/a", "n/a"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_markdown(summary, metrics: Sequence[str]) -> str:
    head = ["Codec", "Task", "features"] + [f"{_name(m)} used / const / non-finite / short" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    index = {(r.codec, r.task, r.metric): r for r in summary.itertuples()}
    for codec in sorted(summary["codec"].unique()):
        for task in task_order(summary["task"].unique()):
            rows = [index.get((codec, task, m)) for m in metrics]
            if all(r is None for r in rows):
                continue
            nfeat = max(r.n_features for r in rows if r is not None)
            cells = [codec, task, str(nfeat)] + [
                f"{r.n} / {r.n_constant} / {r.n_nonfinite} / {r.n_short}" if r is not None else "n/a" for r in rows
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def oriented_markdown(summary, per_feature, metrics: Sequence[str]) -> str:
    head = ["Codec", "Task"] + [f"{_name(m)} mean ± std" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for codec in sorted(summary["codec"].unique()):
        for task in task_order(summary["task"].unique()):
            cell = per_feature[(per_feature["codec"] == codec) & (per_feature["task"] == task)]
            if cell.empty:
                continue
            vals = []
            for m in metrics:
                v = cell.loc[cell["metric"] == m, "plcc_oriented"].to_numpy(np.float64)
                v = v[np.isfinite(v)]
                vals.append(f"{v.mean():+.3f} ± {v.std():.3f}" if v.size else "n/a")
            lines.append("| " + " | ".join([codec, task, *vals]) + " |")
    return "\n".join(lines)


# ---- verdicts ------------------------------------------------------------------------------


def _cell_mean(summary, mask) -> float:
    v = summary.loc[mask, "plcc_oriented"].to_numpy(np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _baselines(summary) -> list[str]:
    have = set(summary.loc[np.isfinite(summary["plcc_oriented"].to_numpy(np.float64)), "metric"])
    return [m for m in BASELINES if m in have]


def verdict_cosine_best(summary, per_feature) -> Verdict:
    claim = "cosine is the best and most stable metric (highest mean PLCC, lowest std of per-feature PLCC)"
    base = _baselines(summary)
    if "cosine" not in base or len(base) < 2:
        return Verdict("cosine_best", claim, UNTESTABLE,
                       f"needs cosine and at least one of MSE/CKA with defined correlations (have: {', '.join(base) or 'none'})")
    numbers = {}
    for m in base:
        v = per_feature.loc[per_feature["metric"] == m, "plcc_oriented"].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        numbers[m] = {"mean_plcc": _cell_mean(summary, summary["metric"] == m), "std_plcc": float(v.std()),
                      "features": int(v.size)}
    best_mean = max(base, key=lambda m: numbers[m]["mean_plcc"])
    most_stable = min(base, key=lambda m: numbers[m]["std_plcc"])
    ok = best_mean == "cosine" and most_stable == "cosine"
    listing = "; ".join(f"{_name(m)} mean {numbers[m]['mean_plcc']:+.4f}, std {numbers[m]['std_plcc']:.4f}"
                        for m in base)
    detail = (f"{listing}. Highest mean: {_name(best_mean)}; lowest std: {_name(most_stable)}.")
    return Verdict("cosine_best", claim, HOLDS if ok else FAILS, detail, numbers)


def verdict_handcrafted(summary) -> Verdict:
    claim = "hand-crafted codecs are more predictable than learned ones (higher mean PLCC)"
    base = _baselines(summary)
    fam = summary["codec_kind"]
    groups = {g: sorted(summary.loc[fam == g, "codec"].unique()) for g in ("handcrafted", "learned")}
    if not base or not groups["handcrafted"] or not groups["learned"]:
        missing = [g for g in ("handcrafted", "learned") if not groups[g]]
        return Verdict("handcrafted_vs_learned", claim, UNTESTABLE,
                       f"no {' and no '.join(missing) or 'baseline metric'} codec in the table"
                       if missing else "no baseline metric with defined correlations")
    in_base = summary["metric"].isin(base)
    numbers = {g: {"mean_plcc": _cell_mean(summary, in_base & (fam == g)), "codecs": groups[g]}
               for g in groups}
    per_metric = {m: {g: _cell_mean(summary, (summary["metric"] == m) & (fam == g)) for g in groups} for m in base}
    numbers["per_metric"] = per_metric
    hc, lc = numbers["handcrafted"]["mean_plcc"], numbers["learned"]["mean_plcc"]
    agree = sum(1 for m in base if per_metric[m]["handcrafted"] > per_metric[m]["learned"])
    detail = (f"hand-crafted ({', '.join(groups['handcrafted'])}) mean {hc:+.4f} vs learned "
              f"({', '.join(groups['learned'])}) mean {lc:+.4f} over {', '.join(_name(m) for m in base)}; "
              f"higher for hand-crafted with {agree} of {len(base)} metrics.")
    return Verdict("handcrafted_vs_learned", claim, HOLDS if hc > lc else FAILS, detail, numbers)


def verdict_seg_hardest(summary) -> Verdict:
    claim = "Seg is the hardest task (lowest mean PLCC)"
    base = _baselines(summary)
    tasks = task_order(summary["task"].unique())
    if not base or "seg" not in tasks or len(tasks) < 2:
        return Verdict("seg_hardest", claim, UNTESTABLE,
                       f"needs seg and another task with baseline metrics (tasks: {', '.join(tasks) or 'none'})")
    in_base = summary["metric"].isin(base)
    numbers = {t: _cell_mean(summary, in_base & (summary["task"] == t)) for t in tasks}
    finite = {t: v for t, v in numbers.items() if math.isfinite(v)}
    if "seg" not in finite or len(finite) < 2:
        return Verdict("seg_hardest", claim, UNTESTABLE, "no defined correlation for seg or the other tasks", numbers)
    hardest = min(finite, key=finite.get)
    detail = ", ".join(f"{t} {v:+.4f}" for t, v in finite.items()) + f" (mean over codecs and " \
             f"{', '.join(_name(m) for m in base)}); lowest: {hardest}."
    return Verdict("seg_hardest", claim, HOLDS if hardest == "seg" else FAILS, detail, numbers)


def verdicts(summary, per_feature) -> list[Verdict]:
    return [verdict_cosine_best(summary, per_feature), verdict_handcrafted(summary), verdict_seg_hardest(summary)]


# ---- rate-accuracy ---------------------------------------------------------------------------


def rate_accuracy_table(table):
    """Mean bpfp and task score over images, per task x codec x rate point."""
    cols = [c for c in ("bpfp", "task_score", "bytes") if c in table.columns]
    g = table.groupby(["task", "codec", "rate_point"], sort=True)[cols].mean().reset_index()
    g["images"] = table.groupby(["task", "codec", "rate_point"], sort=True).size().to_numpy()
    for c in ("bpfp", "task_score"):
        if c not in g.columns:
            g[c] = np.nan
    return g


# ---- the whole report ------------------------------------------------------------------------


def build_report(table, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None,
                 *, source: str = "", make_plots: bool = True) -> Report:
    """Run the protocol on ``table``; with ``out_dir``, write report.md/.json, CSVs and plots there."""
    metrics = resolve_metrics(table, metrics)
    per_feature = per_feature_correlations(table, metrics)
    summary, results = summarise(per_feature)
    found = verdicts(summary, per_feature)
    table_md = results_table_markdown(summary, metrics)
    report = Report(summary, per_feature, results, found, "", table_md)
    paths: dict[str, str] = {}
    if out_dir is not None:
        out = Path(out_dir)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        curves = rate_accuracy_table(table)
        summary.to_csv(out / "summary.csv", index=False)
        per_feature.to_csv(out / "per_feature.csv", index=False)
        curves.to_csv(out / "rate_accuracy.csv", index=False)
        paths.update(summary_csv="summary.csv", per_feature_csv="per_feature.csv",
                     rate_accuracy_csv="rate_accuracy.csv")
        if make_plots:
            for p in plots.scatter_plots(table, metrics, out / "plots"):
                paths[p.stem] = f"plots/{p.name}"
            paths["plcc_hist"] = f"plots/{plots.plcc_histogram(per_feature, metrics, out / 'plots').name}"
            ra = plots.rate_accuracy(curves, out / "plots")
            if ra is not None:
                paths["rate_accuracy"] = f"plots/{ra.name}"
        paths.update(markdown="report.md", json="report.json")
        report.paths = paths
        report.markdown = render_markdown(report, table, metrics, source)
        (out / "report.md").write_text(report.markdown)
        (out / "report.json").write_text(json.dumps(report_json(report, table, metrics, source), indent=2) + "\n")
    else:
        report.markdown = render_markdown(report, table, metrics, source)
    return report


def render_markdown(report: Report, table, metrics: Sequence[str], source: str) -> str:
    s = report.summary
    n_feat = table.groupby(["task", "image_id"]).ngroups
    lines = [
        "# CFQA benchmark report",
        "",
        f"Source: `{source}`" if source else "",
        f"{len(table)} compressed features from {n_feat} original features; "
        f"tasks: {', '.join(task_order(table['task'].unique()))}; codecs: {', '.join(sorted(table['codec'].unique()))}; "
        f"metrics: {', '.join(metrics)}.",
        "",
        "## PLCC / SROCC (mean over features)",
        "",
        CONVENTION,
        "",
        report.table_markdown,
        "",
        "## Findings of the paper on this data",
        "",
    ]
    for v in report.verdicts:
        lines.append(f"- **{v.claim}**: **{v.status}**. {v.detail}")
    lines += [
        "",
        "(Means of oriented PLCC: +1 = the metric tracks the distortion perfectly.)",
        "",
        "## Oriented per-feature PLCC (mean ± std over features)",
        "",
        oriented_markdown(s, report.per_feature, metrics),
        "",
        "## Features used per cell",
        "",
        "Used / constant distortion or metric (no correlation defined) / non-finite values / "
        "fewer than 3 rate points.",
        "",
        coverage_markdown(s, metrics),
        "",
    ]
    figs = {k: v for k, v in report.paths.items() if v.endswith(".png")}
    if figs:
        lines += ["## Plots", ""] + [f"- [{k}]({v})" for k, v in figs.items()] + [""]
        if "rate_accuracy" not in figs:
            lines += ["No rate-accuracy plot: the table has no finite bpfp / task_score values.", ""]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _clean(x):
    """JSON-safe copy: non-finite floats become null, numpy scalars plain Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def report_json(report: Report, table, metrics: Sequence[str], source: str) -> dict:
    records = report.summary.to_dict("records")
    return _clean({
        "source": source,
        "rows": int(len(table)),
        "metrics": list(metrics),
        "convention": CONVENTION,
        "results": report.results,
        "summary": records,
        "verdicts": [asdict(v) for v in report.verdicts],
        "files": report.paths,
    })
